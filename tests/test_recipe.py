"""The real recipe through `accelerate launch`: TensorBoard scalars, saved adapters, two processes in lockstep."""

import json
import re
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import REPO, python_env, tiny_overrides



def readme_scalars() -> dict[str, str]:
    """scalar -> its "when" column, from the TensorBoard table (docs/tensorboard.md)."""
    section = (REPO / "docs" / "tensorboard.md").read_text().split("## TensorBoard\n", 1)[1].split("\n## ", 1)[0]
    table = {}
    for row in section.splitlines():
        cells = [c.strip() for c in row.strip("|").split("|")]
        if row.startswith("| `") and len(cells) == 3:
            table.update({name: cells[1] for name in re.findall(r"`([a-z_]+/[a-z_0-9]+)`", cells[0])})
    return table


def read_scalars(output_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, list[tuple[int, float]]] = {}
    for events in sorted(output_dir.rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in accumulator.Scalars(tag))
    return scalars


def launch(args: list[str], num_processes: int = 1, timeout: int = 600, env_extra: dict | None = None):
    env = python_env()
    env.update(env_extra or {})
    if num_processes > 1:
        env["ACCELERATE_USE_CPU"] = "1"
        prefix = ["accelerate", "launch", "--multi_gpu", "--num_processes", str(num_processes),
                  "--main_process_port", "29533"]
    else:
        prefix = ["accelerate", "launch", "--num_processes", "1"]
    result = subprocess.run(prefix + args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result


@pytest.mark.slow
def test_recipe_smoke_run_writes_tensorboard_scalars_and_adapters(tmp_path, tiny_model_path):
    output = tmp_path / "run"
    launch(["recipes/apo_ppo.py"] + tiny_overrides(output))
    scalars = read_scalars(output)
    # docs/tensorboard.md's table lists exactly what a PPO run without evaluations logs (plus other optimizers, evals)
    documented = {name for name, when in readme_scalars().items()
                  if not when.startswith(("DPO", "RJS", "GRPO", "eval"))}
    assert set(scalars) == documented, (sorted(documented - set(scalars)), sorted(set(scalars) - documented))
    assert scalars["rm/untrained_at_start"] == [(0, 0.0)]
    assert [p.name for p in (output / "tensorboard").iterdir() if p.is_dir()] == []  # one TensorBoard run
    assert [step for step, _ in scalars["objective/scores"]] == [1, 2]
    assert all(value == value for _, value in scalars["ppo/policy_loss"])  # not NaN
    for adapter in ("policy", "value", "reward"):
        assert (output / "final" / adapter / "adapter_model.safetensors").is_file()
    assert (output / "final" / "heads.pt").is_file()
    meta = json.loads((output / "checkpoints" / "step-000002" / "meta.json").read_text())
    assert meta["step"] == 2


@pytest.mark.slow
def test_bad_config_exits_with_a_clear_message(tmp_path, tiny_model_path):
    env = python_env()
    result = subprocess.run(["accelerate", "launch", "--num_processes", "1", "recipes/apo_ppo.py",
                             "--game.policy_optimizer", "sgd"] + tiny_overrides(tmp_path / "run"),
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "unknown policy optimizer 'sgd'" in result.stderr
    assert "Traceback" not in result.stderr.split("unknown policy optimizer")[0][-2000:]


@pytest.mark.slow
def test_two_process_cpu_run_keeps_adapters_identical(tmp_path, tiny_model_path):
    output = tmp_path / "ddp"
    launch(["recipes/apo_ppo.py"] + tiny_overrides(output, **{"rollout.prompts_per_step": 2}), num_processes=2)
    meta = json.loads((output / "checkpoints" / "step-000002" / "meta.json").read_text())
    assert meta["num_processes"] == 2
    checksums = meta["rank_weight_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    scalars = read_scalars(output)
    assert "rm/loss_apo" in scalars and "ppo/policy_loss" in scalars


RECIPE_SCALARS = {
    "recipes/apo_dpo.py": ["dpo/loss", "dpo/pairs", "dpo/accuracy", "dpo/margin", "objective/kl"],
    "recipes/apo_rjs.py": ["rjs/sft_loss", "rjs/winners", "rjs/winner_score", "rjs/winner_advantage"],
    "recipes/custom_optimizer.py": ["rloo/loss", "rloo/advantage_abs", "objective/rlhf_reward"],
}


def policy_weights(output: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(output / "final" / "policy" / "adapter_model.safetensors")


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(RECIPE_SCALARS))
def test_policy_optimizer_recipes_smoke_run(tmp_path, tiny_model_path, recipe):
    """Each recipe through accelerate launch on the tiny model: its own and the game's metrics, finite, per step."""
    from apo_online.run.log import read_metrics

    output = tmp_path / "run"
    result = launch([recipe] + tiny_overrides(output, **{"rollout.samples_per_prompt": 2}))
    assert "APO game: 100%" in result.stderr and "=nan" not in result.stderr  # the bar shows what the step logged
    records = {r["step"]: r for r in read_metrics(output / "metrics.jsonl")}
    assert sorted(records) == [0, 1, 2]
    for step in (1, 2):
        for tag in RECIPE_SCALARS[recipe] + ["objective/scores", "rm/loss_apo", "rm/loss_pref", "timing/step_s"]:
            assert tag in records[step], (step, tag, sorted(records[step]))
            assert records[step][tag] == records[step][tag], (step, tag)  # not NaN
    assert records[2]["train/skipped_updates"] == 0
    for adapter in ("policy", "reward"):
        assert (output / "final" / adapter / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_dpo_recipe_resumes_exactly(tmp_path, tiny_model_path):
    """The DPO optimizer's shuffling state is checkpointed: step 3 after resuming from step 2 is the same step."""
    from apo_online.run.log import read_metrics

    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    extra = {"rollout.samples_per_prompt": 3, "dpo.pairing": "all_pairs", "dpo.num_minibatches": 2,
             "game.total_steps": 3, "game.save_every": 2}
    launch(["recipes/apo_dpo.py"] + tiny_overrides(reference, **extra))
    checkpoint = reference / "checkpoints" / "step-000002"
    launch(["recipes/apo_dpo.py"] + tiny_overrides(resumed, **extra, **{"game.resume_from_checkpoint": checkpoint}))
    want = {r["step"]: r for r in read_metrics(reference / "metrics.jsonl")}[3]
    got = {r["step"]: r for r in read_metrics(resumed / "metrics.jsonl")}[3]
    for key in ("dpo/loss", "dpo/margin", "objective/scores", "rm/loss_apo"):
        assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), key
    got_w, want_w = policy_weights(resumed), policy_weights(reference)
    assert sorted(got_w) == sorted(want_w)
    for name, value in want_w.items():
        assert torch.allclose(got_w[name], value, atol=1e-6), name
