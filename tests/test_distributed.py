"""Two CPU processes under DDP, DeepSpeed ZeRO-2 and ZeRO-3 reach the same weights and metrics as one process with
the same global batch, keep replicas identical, train every role with the one role-tagged optimizer and leave the
inactive roles untouched, refit the RM from base (DeepSpeed's fp32 masters and moments included) and resume from
their own checkpoints. The comparison is deterministic: see tests/scripts/distributed_probe.py."""

import json
import math
import shlex
import subprocess

import pytest
import torch

from conftest import REPO, python_env, tiny_overrides
from test_resume import free_port

PROBE = "tests/scripts/distributed_probe.py"
GLOBAL_PROMPTS = 4
COMPARED_METRICS = ["ppo/policy_loss", "ppo/value_loss", "ppo/approx_kl", "ppo/clipfrac", "ppo/grad_norm",
                    "objective/kl", "objective/scores", "objective/rlhf_reward", "rm/loss", "rm/loss_apo",
                    "rm/loss_pref", "rm/gold_minus_sample", "rm/grad_norm"]


def probe_args(output, num_processes: int) -> list[str]:
    return [str(output)] + tiny_overrides(output, **{
        "rollout.prompts_per_step": GLOBAL_PROMPTS // num_processes,  # same global batch for every setup
        "ppo.num_minibatches": 1, "ppo.gradient_accumulation_steps": 2, "ppo.ppo_epochs": 2,
        "rm.steps_per_update": 2, "rm.learning_rate": 1e-3, "ppo.learning_rate": 1e-3,
        "game.cpu_threads": 1})


def deepspeed_config(tmp_path, stage: int):
    """accelerate config for DeepSpeed on CPU. ZeRO-3 keeps parameters below a size threshold whole on every
    process; the threshold 0 makes it really partition the tiny model's LoRA weights."""
    ds_json = tmp_path / f"zero{stage}.json"
    ds_json.write_text(json.dumps({"zero_optimization": {"stage": stage, "stage3_param_persistence_threshold": 0},
                                   "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1}))
    config = tmp_path / f"zero{stage}.yaml"
    config.write_text(f"compute_environment: LOCAL_MACHINE\ndistributed_type: DEEPSPEED\ndeepspeed_config:\n"
                      f"  deepspeed_config_file: {ds_json}\n  zero3_init_flag: false\nnum_processes: 2\n"
                      f"num_machines: 1\nmachine_rank: 0\nmain_process_port: {free_port()}\n")
    return config


def run_probe(tmp_path, setup: str) -> dict:
    output = tmp_path / setup
    env = python_env()
    if setup == "single":
        prefix = ["accelerate", "launch", "--num_processes", "1"]
        args = probe_args(output, 1)
    elif setup == "ddp":
        env["ACCELERATE_USE_CPU"] = "1"
        prefix = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", str(free_port())]
        args = probe_args(output, 2)
    else:
        env["DS_ACCELERATOR"] = "cpu"
        prefix = ["accelerate", "launch", "--config_file", str(deepspeed_config(tmp_path, int(setup[-1])))]
        args = probe_args(output, 2)
    result = subprocess.run(prefix + [PROBE] + args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return torch.load(output / "result.pt", weights_only=False)


@pytest.fixture(scope="module")
def single_process(tmp_path_factory, tiny_model_path):
    return run_probe(tmp_path_factory.mktemp("single"), "single")


def role_of(name: str) -> str:
    for role, marker in (("policy", ".policy."), ("value", ".value."), ("reward", ".reward."),
                         ("value", "value_head."), ("reward", "reward_head.")):
        if marker in name:
            return role
    raise AssertionError(f"not a role weight: {name}")


def moved_roles(before: dict, after: dict) -> set[str]:
    return {role_of(name) for name in before if not torch.equal(before[name], after[name])}


def assert_close(got: dict, want: dict, atol: float = 1e-5) -> None:
    assert sorted(got) == sorted(want)
    worst = max((got[n] - want[n]).abs().max().item() for n in want)
    assert worst <= atol, f"largest weight difference {worst}"


def check_phases(result: dict) -> None:
    """What must hold inside any one run, whatever the setup."""
    w = result["weights"]
    assert moved_roles(w["start"], w["ppo"]) == {"policy", "value"}  # reward untouched, bit for bit
    assert moved_roles(w["ppo"], w["rm"]) == {"reward"}  # policy and value untouched
    assert_close(w["rm_again"], w["rm"], atol=1e-6)  # the refit really restarted from the base RM
    assert moved_roles(w["saved"], w["after_save"]) == {"policy", "value"}
    assert_close(w["loaded"], w["saved"], atol=0.0)  # the checkpoint restored the weights exactly
    assert_close(w["after_load"], w["after_save"], atol=1e-6)  # ... and the optimizer state
    assert len(set(result["checksums"])) == 1, result["checksums"]  # replicas identical


@pytest.mark.slow
def test_single_process_probe_phases(single_process):
    check_phases(single_process)
    assert single_process["num_processes"] == 1 and single_process["zero_stage"] is None


@pytest.mark.slow
@pytest.mark.parametrize("setup", ["ddp", "zero2", "zero3"])
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, single_process, setup):
    result = run_probe(tmp_path, setup)
    assert result["num_processes"] == 2
    assert result["zero_stage"] == {"ddp": None, "zero2": 2, "zero3": 3}[setup]
    check_phases(result)
    for phase in ("ppo", "rm", "after_load"):
        assert_close(result["weights"][phase], single_process["weights"][phase])
    for phase in ("ppo", "rm"):
        for key in COMPARED_METRICS:
            if key in single_process["metrics"][phase]:
                got, want = result["metrics"][phase][key], single_process["metrics"][phase][key]
                assert math.isclose(got, want, rel_tol=1e-4, abs_tol=1e-6), (phase, key, got, want)


@pytest.mark.slow
def test_the_documented_zero2_cpu_command_really_runs_zero2(tmp_path, tiny_model_path):
    """The `# cpu:` command of accelerate_configs/deepspeed_zero2.yaml, as written, on the tiny model: the run's
    launch.json must say DeepSpeed stage 2 (with ACCELERATE_USE_CPU=1, as the old note said, it was plain DDP)."""
    config = REPO / "accelerate_configs" / "deepspeed_zero2.yaml"
    note = next(line for line in config.read_text().splitlines() if line.startswith("# cpu: "))
    words = shlex.split(note.removeprefix("# cpu: "))
    env_words = words[: words.index("accelerate")]
    command = words[len(env_words):]
    command[2:2] = ["--main_process_port", str(free_port())]  # accelerate launch --main_process_port N ...
    output = tmp_path / "zero2"
    env = python_env() | dict(word.split("=", 1) for word in env_words)
    overrides = tiny_overrides(output, **{"game.total_steps": 1, "rollout.prompts_per_step": 2, "game.cpu_threads": 1,
                                          "ppo.num_minibatches": 1})
    result = subprocess.run(command + overrides, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    launch = json.loads((output / "launch.json").read_text())
    assert (launch["distributed_type"], launch["zero_stage"], launch["num_processes"]) == ("DEEPSPEED", 2, 2)
    assert "launch: distributed_type DEEPSPEED, num_processes 2, zero_stage 2" in result.stderr
