"""The benchmark driver's shared pieces: the variants, how a worker process is launched and its one JSON line read,
the medians of repeated runs and the apo-online / TRL ratios. bench/run_bench.py (CPU, TRL in its own venv) and
bench/gpu_bench.py (CUDA, TRL on PYTHONPATH) launch the same workers and report the same figures through these.

Standard library only: the driver runs in whichever interpreter starts it, before the TRL venv exists. Worker command
lines name the scripts relative to the checkout root (APO_WORKER, TRL_WORKER); run_worker runs them there, so the
caller passes that root (bench/ scripts: the folder above their own).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

APO_WORKER = "bench/apo_worker.py"  # relative to the checkout root, run_worker's working directory
TRL_WORKER = "bench/trl_worker.py"
TRL_VERSION = "1.12.0"  # the last TRL release with PPOTrainer
DEFAULT_VARIANTS = ("apo_ppo_frozen_rm", "apo_ppo_refit", "trl_ppo", "trl_ppo_peft")
VARIANTS = DEFAULT_VARIANTS + ("apo_ppo_refit_plain", "apo_ppo_refit_unmerged", "apo_ppo_refit_glibc",
                                "apo_ppo_refit_jemalloc",
                                "apo_ppo_refit_tcmalloc", "apo_ppo_refit_arena2", "trl_ppo_fixed_mmap",
                                "trl_ppo_peft_fixed_mmap")
TRL_VARIANTS = ("trl_ppo", "trl_ppo_peft", "trl_ppo_fixed_mmap", "trl_ppo_peft_fixed_mmap")
TRL_SUFFIX = {"trl_ppo": "trl", "trl_ppo_peft": "trl_peft", "trl_ppo_fixed_mmap": "trl_fixed_mmap",
              "trl_ppo_peft_fixed_mmap": "trl_peft_fixed_mmap"}
# apo-online variant -> (bench/apo_worker.py --variant, extra worker flags)
APO_VARIANTS = {"apo_ppo_frozen_rm": ("apo_ppo_frozen_rm", []), "apo_ppo_refit": ("apo_ppo_refit", []),
                "apo_ppo_refit_plain": ("apo_ppo_refit", ["--set", "rm.shared_prefix=false"]),
                "apo_ppo_refit_unmerged": ("apo_ppo_refit", ["--set", "rollout.merged_sampling=false"]),
                # the same game under another allocator (worker_env): only the process's memory handling differs
                "apo_ppo_refit_glibc": ("apo_ppo_refit", []),
                "apo_ppo_refit_jemalloc": ("apo_ppo_refit", []), "apo_ppo_refit_tcmalloc": ("apo_ppo_refit", []),
                "apo_ppo_refit_arena2": ("apo_ppo_refit", [])}
# glibc reads this at start-up (a fixed threshold: freed large blocks go back to the OS); apo variants take it too
FIXED_MMAP_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}
# variant suffix -> environment. The apo worker starts as the recipes do (apo_online/allocator.py: tcmalloc, else
# jemalloc, when installed; so apo_ppo_refit runs under what a user's run gets): _glibc keeps glibc's malloc, _jemalloc
# and _tcmalloc name one (a missing one makes the worker fail), _arena2 is glibc's malloc with its arenas capped
ALLOCATOR_ENV = {"_glibc": {"APO_ONLINE_ALLOCATOR": "system"},
                 "_jemalloc": {"APO_ONLINE_ALLOCATOR": "jemalloc"},
                 "_tcmalloc": {"APO_ONLINE_ALLOCATOR": "tcmalloc"},
                 "_arena2": {"APO_ONLINE_ALLOCATOR": "system", "MALLOC_ARENA_MAX": "2"}}


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_trl_venv(venv: Path, constraints: Path) -> Path:
    """Create the TRL venv from the constraints file (bench/trl_constraints.txt) unless it already imports TRL's
    PPOTrainer at TRL_VERSION; returns its interpreter."""
    python = venv_python(venv)
    check = [str(python), "-c", "import trl; from trl.experimental.ppo import PPOTrainer; print(trl.__version__)"]
    env = dict(os.environ, TRL_EXPERIMENTAL_SILENCE="1")
    if python.exists():
        found = subprocess.run(check, capture_output=True, text=True, env=env)
        if found.returncode == 0 and found.stdout.strip() == TRL_VERSION:
            return python
    print(f"creating the TRL venv in {venv} (a few minutes)", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "-c", str(constraints)]
    # plain torch==2.13.0: pip takes the local CPU wheel (another index would pull CUDA builds or be unreachable)
    subprocess.run(pip + ["torch==2.13.0"], check=True)
    subprocess.run(pip + [f"trl=={TRL_VERSION}", "transformers", "accelerate", "datasets", "peft"], check=True)
    subprocess.run(check, check=True, env=env)
    return python


def last_json_line(text: str) -> dict:
    """A worker's result: the last stdout line that starts with '{' (libraries may print before it)."""
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError("worker printed no JSON line")


def worker_env(variant: str) -> dict[str, str]:
    """Environment a variant's worker gets on top of the caller's."""
    if variant.endswith("_fixed_mmap"):
        return dict(FIXED_MMAP_ENV)
    return next((dict(env) for suffix, env in ALLOCATOR_ENV.items() if variant.endswith(suffix)), {})


def run_worker(command: list[str], log: Path, repo: Path, path_first: tuple[str, ...] = (),
               extra_env: dict | None = None) -> dict:
    """Run one worker in a fresh process in the checkout root `repo`, offline; write its command line and output to
    `log`; return its JSON line plus process_s (the whole process, loading included)."""
    # path_first, the repo, then whatever the caller had (bench/gpu_check.sh puts carried wheels there)
    path = os.pathsep.join([*path_first, str(repo)]
                           + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=path, **(extra_env or {}))
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=repo)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(f"$ {' '.join(command)}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}", encoding="utf-8")
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed ({proc.returncode}), see {log}:\n{proc.stderr[-2000:]}")
    result = last_json_line(proc.stdout)
    result["process_s"] = time.perf_counter() - started
    return result


def summarize(runs: list[dict]) -> dict:
    """Medians over the repeated runs of one variant (each run's own median step first, so one slow step of one run
    does not move the figure)."""
    median = statistics.median
    out = {
        "step_s": median(median(r["step_times"]) for r in runs),
        "peak_rss_mb": median(r["peak_rss_mb"] for r in runs),
        "peak_cuda_mb": median(r["peak_cuda_mb"] for r in runs) if runs[0].get("peak_cuda_mb") else None,
        "tokens_per_s": median(r["tokens_generated"] / sum(r["step_times"]) for r in runs),
        "generation_tokens_per_s": median(r["tokens_generated"] / sum(r["generation_times"]) for r in runs),
        "generation_share": median(sum(r["generation_times"]) / sum(r["step_times"]) for r in runs),
        "rm_share": median(r["rm_time"] / r["wall_time"] for r in runs),
    }
    for key in ("rollout_times", "policy_update_times"):
        if key in runs[0]:
            out[key.replace("_times", "_s")] = median(median(r[key]) for r in runs)
    return out


def trl_command(python: str, assets: Path, common: list[str], variant: str) -> list[str]:
    """The TRL worker's command line for a TRL variant."""
    return ([python, TRL_WORKER, "--assets", str(assets)] + common
            + (["--peft"] if variant.startswith("trl_ppo_peft") else []))


def apo_command(python: str, size: str, variant: str, common: list[str]) -> list[str]:
    """The apo-online worker's command line for an apo-online variant."""
    worker_variant, flags = APO_VARIANTS[variant]
    return [python, APO_WORKER, "--size", size, "--variant", worker_variant] + common + flags


def ratios(summary: dict, memory_key: str, memory_name: str) -> dict[str, float]:
    """apo-online / TRL step time and peak memory, against each TRL variant present, and the refit's RM share."""
    out: dict[str, float] = {}
    for trl in TRL_VARIANTS:
        suffix = TRL_SUFFIX[trl]
        for variant in APO_VARIANTS:
            if variant in summary and trl in summary:
                out[f"{variant}/{suffix} step time"] = summary[variant]["step_s"] / summary[trl]["step_s"]
                if summary[trl].get(memory_key):
                    out[f"{variant}/{suffix} {memory_name}"] = summary[variant][memory_key] / summary[trl][memory_key]
    if "apo_ppo_refit" in summary:
        out["refit overhead share of wall time"] = summary["apo_ppo_refit"]["rm_share"]
        unmerged = summary.get("apo_ppo_refit_unmerged")  # the same game, the policy adapter run per token
        if unmerged:
            out["sampling tokens/s merged / unmerged"] = (summary["apo_ppo_refit"]["generation_tokens_per_s"]
                                                          / unmerged["generation_tokens_per_s"])
        for suffix in ALLOCATOR_ENV:
            other = summary.get(f"apo_ppo_refit{suffix}")
            if other:
                base = summary["apo_ppo_refit"]
                out[f"apo_ppo_refit{suffix}/apo_ppo_refit peak RSS"] = other["peak_rss_mb"] / base["peak_rss_mb"]
                out[f"apo_ppo_refit{suffix}/apo_ppo_refit step time"] = other["step_s"] / base["step_s"]
    return out


def model_flops_utilisation(summary: dict, parameters: int, trained_tokens_per_step: float,
                            peak_tflops: float) -> dict[str, float]:
    """Model FLOPs utilisation of one variant's medians, by the conventional count (Kaplan et al. 2020: 2N FLOPs per
    token through a forward pass, 6N per token trained; attention and LoRA's cheaper backward ignored, the same
    count on both sides so that the ratio is fair):
    sampling = 2 N x generation tokens/s / peak; step = 6 N x trained tokens per step / step time / peak."""
    peak = peak_tflops * 1e12
    return {"sampling": 2 * parameters * summary["generation_tokens_per_s"] / peak,
            "step": 6 * parameters * trained_tokens_per_step / summary["step_s"] / peak}
