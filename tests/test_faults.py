"""Faults inside one process: non-finite losses and gradients, the consecutive-skip stop with its checkpoint, signals,
degenerate generations (EOS first, nothing but truncated one-token answers) and prompts over the length limit."""

import json
import math
import os
import signal

import pytest
import torch
from torch import nn

from apo_online import losses
from apo_online.run.checkpoint import latest_checkpoint
from apo_online.cli import main
from apo_online.run.log import read_metrics
from apo_online.run.stopping import StopRequests
from apo_online.training import NonFiniteUpdates, RoleAdamW, TrainingContext

from conftest import REPO, tiny_overrides


# ---------------------------------------------------------------------------------------------------------------------
# TrainingContext on a two-role toy model
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture
def toy(single_accelerator):
    torch.manual_seed(0)
    model = nn.ModuleDict({"policy": nn.Linear(3, 1), "value": nn.Linear(3, 1)})
    optimizer = RoleAdamW({role: {"params": list(model[role].parameters()), "lr": 0.1} for role in model})
    accelerator = single_accelerator()
    model, optimizer = accelerator.prepare(model, optimizer)
    ctx = TrainingContext(accelerator, model, optimizer, max_grad_norm=1.0, max_consecutive_skips=3)
    return ctx, model


def snapshot(model, optimizer):
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    state = {id(p): {k: v.clone() for k, v in s.items()} for p, s in optimizer.state.items()}
    return weights, state


def update(ctx, model, losses_of_micro_batches) -> dict:
    """One optimizer update accumulated over micro-batches; each item maps the output to a loss."""
    x = torch.ones(2, 3)
    with ctx.phase(("policy",)):
        for k, make_loss in enumerate(losses_of_micro_batches):
            with ctx.micro_batch(is_last=k == len(losses_of_micro_batches) - 1):
                ctx.backward(make_loss(model["policy"](x)))
        return ctx.optimizer_step()


finite = lambda out: out.pow(2).mean()
nan_loss = lambda out: out.pow(2).mean() * float("nan")
inf_gradient = lambda out: torch.sqrt(out - out.detach()).sum()  # value 0, gradient 1/(2*sqrt(0)) = inf


@pytest.mark.parametrize("micro_batches", [[nan_loss], [inf_gradient], [finite, nan_loss], [nan_loss, finite]],
                         ids=["nan_loss", "inf_gradient_finite_loss", "nan_in_last_micro_batch",
                              "nan_in_first_micro_batch"])
def test_non_finite_update_is_skipped_whole(toy, micro_batches):
    ctx, model = toy
    update(ctx, model, [finite])  # Adam has state now: a skipped update must not touch it either
    weights, state = snapshot(model, ctx.role_optimizer)
    result = update(ctx, model, micro_batches)
    assert result["skipped"] == 1.0 and math.isnan(result["grad_norm"])
    assert ctx.skipped_updates == 1 and ctx.consecutive_skips == 1
    after_weights, after_state = snapshot(model, ctx.role_optimizer)
    assert all(torch.equal(weights[n], after_weights[n]) for n in weights)  # the finite micro-batch is dropped too
    assert all(torch.equal(state[p][k], after_state[p][k]) for p in state for k in state[p])
    assert all(p.grad is None for p in model.parameters())
    assert update(ctx, model, [finite])["skipped"] == 0.0  # the next good update goes through
    assert ctx.consecutive_skips == 0 and ctx.skipped_updates == 1


def test_consecutive_skips_stop_with_a_clear_error(toy):
    ctx, model = toy
    update(ctx, model, [nan_loss])
    update(ctx, model, [nan_loss])
    update(ctx, model, [finite])  # resets the run of skips
    update(ctx, model, [nan_loss])
    update(ctx, model, [inf_gradient])
    with pytest.raises(NonFiniteUpdates, match=r"3 consecutive updates had a non-finite loss or gradient "
                                               r"\(limit game.max_consecutive_skips=3\)"):
        update(ctx, model, [nan_loss])
    assert ctx.skipped_updates == 5


# ---------------------------------------------------------------------------------------------------------------------
# the game
# ---------------------------------------------------------------------------------------------------------------------
def argv(output, **extra) -> list[str]:
    return tiny_overrides(output, **({"game.total_steps": 2, "rollout.prompts_per_step": 4} | extra))


def poison_ppo_loss(monkeypatch, calls_to_poison) -> None:
    """Make the PPO policy loss NaN on the given calls (0-based), as a numerical blow-up would."""
    original, count = losses.ppo_policy_loss, iter(range(10**6))

    def maybe_nan(*args, **kwargs):
        loss, stats = original(*args, **kwargs)
        return (loss * float("nan"), stats) if next(count) in calls_to_poison else (loss, stats)

    monkeypatch.setattr(losses, "ppo_policy_loss", maybe_nan)


def run_cli(arguments, capsys) -> tuple[int, str]:
    status = main(arguments, default_yaml=REPO / "apo_online/recipes/apo_ppo.yaml")
    return status, capsys.readouterr().err


def test_repeated_non_finite_updates_stop_the_run_with_a_checkpoint(tmp_path, tiny_model_path, single_accelerator,
                                                                     monkeypatch, capsys):
    poison_ppo_loss(monkeypatch, calls_to_poison=range(10**6))  # every PPO update; 2 per step (2 minibatches)
    status, err = run_cli(argv(tmp_path, **{"game.max_consecutive_skips": 3}), capsys)
    assert status == 3
    message = [line for line in err.splitlines() if line.startswith("error:")]
    assert message == [f"error: 3 consecutive updates had a non-finite loss or gradient (limit "
                       f"game.max_consecutive_skips=3) during step 2; stopped with a checkpoint in "
                       f"{tmp_path / 'checkpoints' / 'step-000001-nonfinite'}"]
    checkpoint = tmp_path / "checkpoints" / "step-000001-nonfinite"
    assert json.loads((checkpoint / "meta.json").read_text())["reason"] == "nonfinite"
    assert latest_checkpoint(tmp_path) is None  # `latest` never resumes from the middle of a failed step
    weights = torch.load(checkpoint / "trainable.pt", weights_only=True)
    assert all(torch.isfinite(w).all() for w in weights.values())
    # no PPO update was applied: LoRA B matrices and the value head are still at their zero initialisation
    untouched = [w for n, w in weights.items() if ("lora_B" in n and ".reward." not in n) or "value_head" in n]
    assert untouched and all(torch.count_nonzero(w) == 0 for w in untouched)
    assert any(torch.count_nonzero(w) for n, w in weights.items() if "lora_B" in n and ".reward." in n)
    step1 = {r["step"]: r for r in read_metrics(tmp_path / "metrics.jsonl")}[1]
    assert step1["train/skipped_updates"] == 2.0 and math.isnan(step1["ppo/grad_norm"])
    assert math.isfinite(step1["rm/loss"])  # the RM step was not affected


def test_a_transient_non_finite_update_is_skipped_and_counted(tmp_path, tiny_model_path, single_accelerator,
                                                              monkeypatch, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    poison_ppo_loss(monkeypatch, calls_to_poison={0})
    status, _ = run_cli(argv(tmp_path), capsys)
    assert status == 0
    records = {r["step"]: r for r in read_metrics(tmp_path / "metrics.jsonl")}
    assert [records[s]["train/skipped_updates"] for s in (1, 2)] == [1.0, 1.0]
    non_finite = {(s, k) for s in (1, 2) for k, v in records[s].items() if not math.isfinite(v)}
    assert non_finite == {(1, "ppo/grad_norm"), (1, "ppo/policy_loss")}  # the poisoned minibatch shows, nothing else
    tensorboard = EventAccumulator(str(tmp_path / "tensorboard"))
    tensorboard.Reload()
    assert [(e.step, e.value) for e in tensorboard.Scalars("train/skipped_updates")] == [(1, 1.0), (2, 1.0)]
    weights = torch.load(tmp_path / "checkpoints" / "step-000002" / "trainable.pt", weights_only=True)
    assert all(torch.isfinite(w).all() for w in weights.values())


class SelfSignallingGame:
    """APOGame that sends itself SIGTERM `times` times while playing step 1."""

    def __new__(cls, config, times: int):
        from apo_online.game import APOGame

        class Game(APOGame):
            def play_step(self):
                if self.step == 0:
                    for _ in range(times):
                        os.kill(os.getpid(), signal.SIGTERM)
                return super().play_step()

        return Game(config)


def test_sigterm_finishes_the_step_then_checkpoints(tiny_config, single_accelerator):
    game = SelfSignallingGame(tiny_config(**{"game.total_steps": 3}), times=1)
    game.run()
    output = game.config.game.output_dir
    assert game.stop_signal == signal.SIGTERM and game.step == 1
    assert [r["step"] for r in read_metrics(f"{output}/metrics.jsonl")] == [0, 1]  # step 1 was completed
    meta = json.loads((latest_checkpoint(output) / "meta.json").read_text())
    assert (meta["step"], meta["reason"]) == (1, "signal")
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored


def test_a_second_signal_after_the_repeat_window_aborts_at_once(tiny_config, single_accelerator, monkeypatch):
    monkeypatch.setattr(StopRequests, "REPEAT_WINDOW_S", 0.0)
    game = SelfSignallingGame(tiny_config(**{"game.total_steps": 3}), times=2)
    with pytest.raises(KeyboardInterrupt, match="second signal"):
        game.run()
    assert latest_checkpoint(game.config.game.output_dir) is None


def test_a_repeat_within_the_window_is_the_same_stop(tiny_config, single_accelerator):
    """Ctrl-C reaches the launcher and the game, the agent forwards it again, the launcher's death adds SIGTERM: one
    stop delivered several times must still end with a checkpoint."""
    game = SelfSignallingGame(tiny_config(**{"game.total_steps": 3}), times=3)
    game.run()
    assert game.stop_signal == signal.SIGTERM and game.step == 1
    meta = json.loads((latest_checkpoint(game.config.game.output_dir) / "meta.json").read_text())
    assert (meta["step"], meta["reason"]) == (1, "signal")


# ---------------------------------------------------------------------------------------------------------------------
# degenerate generations and long prompts
# ---------------------------------------------------------------------------------------------------------------------
def play(tiny_config, suppress, **extra):
    """A 2-step game whose sampler may never emit the tokens `suppress(eos, vocab)` lists."""
    from apo_online.game import APOGame

    game = APOGame(tiny_config(**({"game.total_steps": 2} | extra)))
    eos, vocab = game.tokenizer.eos_token_id, len(game.tokenizer)
    game.ctx.backbone.peft_model.get_base_model().generation_config.suppress_tokens = suppress(eos, vocab)
    game.run()
    records = {r["step"]: r for r in read_metrics(f"{game.config.game.output_dir}/metrics.jsonl")}
    weights = game.ctx.read_weights()
    assert all(torch.isfinite(w).all() for w in weights.values())
    for step in (1, 2):
        assert all(math.isfinite(v) for v in records[step].values()), records[step]
    return game, records


def test_policy_that_answers_eos_first(tiny_config, single_accelerator):
    game, records = play(tiny_config, lambda eos, vocab: [t for t in range(vocab) if t != eos])
    assert [records[s]["response/length"] for s in (1, 2)] == [1.0, 1.0]
    assert [records[s]["response/eos_fraction"] for s in (1, 2)] == [1.0, 1.0]
    assert {tuple(s.response_ids) for s in game.buffer.samples} == {(game.tokenizer.eos_token_id,)}
    assert "rm/loss_apo" in records[2] and records[2]["train/skipped_updates"] == 0.0


def test_one_token_answers_that_never_stop(tiny_config, single_accelerator):
    game, records = play(tiny_config, lambda eos, vocab: [eos], **{"rollout.max_new_tokens": 1,
                                                                   "rollout.missing_eos_penalty": 1.0})
    for step in (1, 2):
        assert records[step]["response/length"] == 1.0 and records[step]["response/eos_fraction"] == 0.0
        penalised = records[step]["objective/rm_scores"] - 1.0  # every answer lacks the stop token
        assert math.isclose(records[step]["objective/scores"], penalised, rel_tol=1e-5, abs_tol=1e-6)


@pytest.mark.parametrize("overflow", ["truncate", "reject"])
def test_prompts_over_the_limit_are_counted_in_the_log(tiny_config, single_accelerator, overflow):
    from apo_online.game import APOGame

    limit = 40  # system turn + chat scaffolding take 30 tiny-llama tokens: a third of the prompts go over 40
    game = APOGame(tiny_config(**{"game.total_steps": 0, "data.max_prompt_tokens": limit,
                                  "data.prompt_overflow": overflow}))
    game.run()
    step0 = read_metrics(f"{game.config.game.output_dir}/metrics.jsonl")[0]
    assert step0["step"] == 0
    counter = {"truncate": "truncated_prompts", "reject": "rejected_prompts"}[overflow]
    assert step0[f"data/prompts_{counter.split('_')[0]}"] == getattr(game.encoder, counter) > 0
    assert all(len(p.input_ids) <= limit for p in game.prompts)
    if overflow == "reject":
        assert step0["data/train_prompts"] == len(game.prompts) < 64
