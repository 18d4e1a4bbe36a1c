"""Exact resume through `accelerate launch`: kill -9 after step k, or SIGTERM, then --game.resume_from_checkpoint.

A resumed run must log the same per-step metrics (metrics.jsonl and TensorBoard, each step once) and end with the
same adapter weights as a run that was never interrupted."""

import json
import math
import socket
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from apo_online.run.log import read_metrics
from conftest import PYTHON, REPO, python_env, tiny_overrides

FAULTY = "tests/scripts/faulty_recipe.py"
RECIPE = "recipes/apo_ppo.py"
TOTAL_STEPS = 5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(script: str, args: list[str], num_processes: int = 1, env_extra: dict | None = None):
    env = python_env() | (env_extra or {})
    prefix = ["accelerate", "launch", "--num_processes", str(num_processes)]
    if num_processes > 1:
        env["ACCELERATE_USE_CPU"] = "1"
        prefix += ["--multi_gpu", "--main_process_port", str(free_port())]
    return subprocess.run(prefix + [script] + args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def ok(result) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]


def run_args(output, **extra) -> list[str]:
    values = {"game.total_steps": TOTAL_STEPS, "game.save_every": 2, "rollout.prompts_per_step": 2,
              "rm.steps_per_update": 1, "ppo.num_minibatches": 1} | extra
    return tiny_overrides(output, **values)


def step_metrics(output) -> dict[int, dict[str, float]]:
    """step -> metrics without wall-clock timings; fails on a step logged twice."""
    records = read_metrics(output / "metrics.jsonl")
    steps = [r["step"] for r in records]
    assert len(steps) == len(set(steps)), f"steps logged more than once: {steps}"
    return {r["step"]: {k: v for k, v in r.items() if k != "step" and not k.startswith("timing/")} for r in records}


def tensorboard_scalars(output) -> dict[str, list[tuple[int, float]]]:
    """Scalars of the run's TensorBoard folder as TensorBoard shows them (purged steps of a resume removed)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(output / "tensorboard"), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def final_weights(output) -> dict[str, torch.Tensor]:
    weights = {}
    for adapter in ("policy", "value", "reward"):
        for name, value in load_file(output / "final" / adapter / "adapter_model.safetensors").items():
            weights[f"{adapter}/{name}"] = value
    for head, state in torch.load(output / "final" / "heads.pt", weights_only=True).items():
        weights |= {f"{head}/{name}": value for name, value in state.items()}
    return weights


def assert_same_run(resumed, reference) -> None:
    got, want = step_metrics(resumed), step_metrics(reference)
    assert sorted(got) == sorted(want) == list(range(TOTAL_STEPS + 1))
    for step, metrics in want.items():
        assert sorted(got[step]) == sorted(metrics), step
        for key, value in metrics.items():
            assert math.isclose(got[step][key], value, rel_tol=1e-5, abs_tol=1e-6), (step, key, got[step][key], value)
    got_tb, want_tb = tensorboard_scalars(resumed), tensorboard_scalars(reference)
    for tag in ("objective/scores", "ppo/policy_loss", "rm/loss_apo", "train/skipped_updates"):
        assert [s for s, _ in got_tb[tag]] == [s for s, _ in want_tb[tag]] == list(range(1, TOTAL_STEPS + 1)), tag
        for (_, a), (_, b) in zip(got_tb[tag], want_tb[tag]):
            assert math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6), tag
    got_w, want_w = final_weights(resumed), final_weights(reference)
    assert sorted(got_w) == sorted(want_w)
    for name, value in want_w.items():
        assert torch.allclose(got_w[name], value, atol=1e-6, rtol=1e-5), name


@pytest.mark.slow
def test_kill_9_after_step_3_then_resume_reproduces_the_uninterrupted_run(tmp_path, tiny_model_path):
    reference, crashed = tmp_path / "reference", tmp_path / "crashed"
    ok(launch(RECIPE, run_args(reference)))

    killed = launch(FAULTY, run_args(crashed), env_extra={"APO_FAULT": "kill9", "APO_FAULT_STEP": "3"})
    assert killed.returncode != 0
    assert max(step_metrics(crashed)) == 3  # step 3 was logged, then the process died before step 4
    assert sorted(p.name for p in (crashed / "checkpoints").iterdir() if not p.name.startswith(".")) == ["step-000002"]

    ok(launch(RECIPE, run_args(crashed, **{"game.resume_from_checkpoint": "latest"})))
    assert_same_run(crashed, reference)


@pytest.mark.slow
def test_sigterm_checkpoints_and_resume_continues_exactly_on_two_processes(tmp_path, tiny_model_path):
    reference, stopped = tmp_path / "reference", tmp_path / "stopped"
    ok(launch(RECIPE, run_args(reference), num_processes=2))

    # rank 0 sends SIGTERM to `accelerate launch` after step 2, which forwards it to both processes
    result = launch(FAULTY, run_args(stopped, **{"game.save_every": 0}), num_processes=2,
                    env_extra={"APO_FAULT": "sigterm_launcher", "APO_FAULT_STEP": "2",
                               # the launcher SIGKILLs workers that take longer than this to finish the step and
                               # checkpoint (default 30 s: too short on a loaded 2-core CI machine)
                               "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "300"})
    assert result.returncode != 0
    stopped_at = max(step_metrics(stopped))
    assert 2 <= stopped_at < TOTAL_STEPS
    assert f"stopped by signal 15 after step {stopped_at}; checkpoint:" in result.stderr, result.stderr[-4000:]
    meta = json.loads((stopped / "checkpoints" / f"step-{stopped_at:06d}" / "meta.json").read_text())
    assert (meta["step"], meta["reason"], meta["num_processes"]) == (stopped_at, "signal", 2)
    assert meta["rank_weight_checksums"][0] == meta["rank_weight_checksums"][1]
    assert not (stopped / "final").exists()

    # the checkpoint belongs to 2 processes: resuming with 1 is refused with a one-line reason and status 2
    wrong = subprocess.run([PYTHON, RECIPE] + run_args(stopped, **{"game.resume_from_checkpoint": "latest"}),
                           cwd=REPO, env=python_env(), capture_output=True, text=True, timeout=600)
    assert wrong.returncode == 2, wrong.stderr[-3000:]
    assert "was written by 2 processes but this run has 1: resume with --num_processes 2" in wrong.stderr

    ok(launch(RECIPE, run_args(stopped, **{"game.resume_from_checkpoint": "latest"}), num_processes=2))
    assert_same_run(stopped, reference)
