"""A stop signal during the RM warm-up (a scheduler's SIGTERM in the first half hour of a study run) ends the warm-up
at its next step with a checkpoint, and the resumed run plays the remaining warm-up steps: the same game as one
that was never stopped. Before, the signal was acted on only after the whole warm-up and the evaluation at the start.
"""

import signal

import torch

from apo_online.game import APOGame
from apo_online.rm.apo_step import AdversarialRewardStep
from apo_online.run.checkpoint import latest_checkpoint
from apo_online.run.log import read_metrics
from conftest import make_game

WARMUP_STEPS, STOP_AFTER = 5, 2


def settings(output, **extra) -> dict:
    return {"game.output_dir": str(output), "game.total_steps": 2, "rm.warmup_steps": WARMUP_STEPS,
            "rm.shipped_base_rm": "false", "game.save_every": 0, **extra}


def played(game) -> tuple[dict, dict]:
    """(step -> metrics without timings, trainable weights) of a finished game."""
    metrics = {r["step"]: {k: v for k, v in r.items() if not k.startswith("timing/")}
               for r in read_metrics(game.config.game.output_dir + "/metrics.jsonl")}
    return metrics, {k: v.detach().clone() for k, v in game.ctx.trainable_parameters().items()}


def signal_during_warmup(monkeypatch, signum=signal.SIGTERM):
    """SIGTERM delivered (as the game's handler sees it) while warm-up step STOP_AFTER runs."""
    real_step, calls = AdversarialRewardStep._train_step, []

    def step(self, groups):
        calls.append(1)
        if len(calls) == STOP_AFTER:
            APOGame._request_stop(running[0], signum)
        return real_step(self, groups)

    running: list = []
    real_init = APOGame.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        running[:] = [self]

    monkeypatch.setattr(AdversarialRewardStep, "_train_step", step)
    monkeypatch.setattr(APOGame, "__init__", init)
    return calls


def stop_then_resume(tiny_config, single_accelerator, monkeypatch, output, **extra):
    """A game stopped during its warm-up, then resumed from its checkpoint to the end; (stopped, resumed) games."""
    with monkeypatch.context() as patch:
        calls = signal_during_warmup(patch)
        stopped = make_game(tiny_config, single_accelerator(), **settings(output, **extra))
        assert stopped.run() == {}
    assert len(calls) == STOP_AFTER  # the step under way when the signal came was finished, no further one begun
    assert stopped.stop_signal == signal.SIGTERM and not stopped.warmed_up
    assert stopped.rm_step.warmup_done == STOP_AFTER
    checkpoint = latest_checkpoint(output)
    assert checkpoint is not None and checkpoint.name == "step-000000"
    assert read_metrics(output / "metrics.jsonl") == []  # nothing logged yet: step 0 is logged after the warm-up
    resumed = make_game(tiny_config, single_accelerator(),
                        **settings(output, **{"game.resume_from_checkpoint": "latest", **extra}))
    resumed.run()
    return stopped, resumed


def assert_same_game(a, b) -> None:
    assert a[0] == b[0]
    assert a[1].keys() == b[1].keys()
    for name in a[1]:
        assert torch.equal(a[1][name], b[1][name]), name


def test_sigterm_during_warmup_checkpoints_and_the_resumed_run_equals_the_uninterrupted_one(
        tiny_config, single_accelerator, tmp_path, monkeypatch):
    reference = make_game(tiny_config, single_accelerator(), **settings(tmp_path / "reference"))
    reference.run()
    _, resumed = stop_then_resume(tiny_config, single_accelerator, monkeypatch, tmp_path / "stopped")
    assert resumed.rm_step.warmup_done == WARMUP_STEPS
    want = played(reference)
    assert "rm_warmup/loss" in want[0][0]  # the warm-up's means over all its steps, the same after a resume
    assert_same_game(played(resumed), want)


def test_a_stopped_warmup_is_not_cached_and_its_resume_equals_the_cached_run(tiny_config, single_accelerator, tmp_path,
                                                                             monkeypatch):
    """rm.warmup_cache: a half warm-up writes no entry (its weights are not what the key describes); the resumed
    run finishes it without the cache and plays as the uninterrupted run that computed and stored the entry."""
    cached = {"rm.warmup_cache": "true", "model.cache_dir": str(tmp_path / "cache")}
    _, resumed = stop_then_resume(tiny_config, single_accelerator, monkeypatch, tmp_path / "stopped", **cached)
    assert not list((tmp_path / "cache").glob("base-rm/*.pt"))
    reference = make_game(tiny_config, single_accelerator(), **settings(tmp_path / "reference", **cached))
    reference.run()
    assert len(list((tmp_path / "cache").glob("base-rm/*.pt"))) == 1  # computed (nothing to load), then stored
    assert_same_game(played(resumed), played(reference))


def test_the_command_line_says_the_run_stopped_during_the_warmup(tiny_config, single_accelerator, tmp_path,
                                                                 monkeypatch, capsys):
    from apo_online.cli import main
    from conftest import REPO, tiny_overrides

    signal_during_warmup(monkeypatch)
    single_accelerator()  # a fresh accelerate state for the game main() builds
    args = tiny_overrides(tmp_path / "run", **{"rm.warmup_steps": WARMUP_STEPS, "rm.shipped_base_rm": "false"})
    status = main(args, default_yaml=REPO / "apo_online/recipes/apo_ppo.yaml")
    assert status == 128 + signal.SIGTERM
    assert "stopped by signal 15 during the RM warm-up; checkpoint:" in capsys.readouterr().err


def test_a_finished_warmup_called_again_trains_again(tiny_config, single_accelerator, tmp_path):
    """Only a warm-up stopped part-way is resumed: calling warmup() after one finished plays all its steps again
    (as before the warm-up could stop), with fresh means."""
    game = make_game(tiny_config, single_accelerator(), **settings(tmp_path / "twice"))
    step = game.rm_step
    first = step.warmup(WARMUP_STEPS)
    after_first = {k: v.clone() for k, v in step.base_state.items()}
    second = step.warmup(WARMUP_STEPS)
    assert step.warmup_done == WARMUP_STEPS and first.keys() == second.keys()
    assert any(not torch.equal(after_first[k], step.base_state[k]) for k in after_first)
