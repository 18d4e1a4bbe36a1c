"""Benchmark driver (stdlib only): apo-online PPO vs TRL 1.12.0's PPOTrainer, side by side, in one run.

    . .venv/bin/activate        # the library venv (apo-online installed)
    python bench/run_bench.py --sizes tiny smollm2 --repeats 3 --warmup 1 --updates 3

For each size and variant it launches --repeats fresh worker processes (a fresh process per run, so that each
peak RSS is clean), each running --warmup untimed then --updates timed PPO updates and printing one JSON line:
  apo_ppo_frozen_rm  apo-online, RM never updated        (bench/apo_worker.py, this interpreter)
  apo_ppo_refit      apo-online, APO RM refit on          (bench/apo_worker.py)
  trl_ppo            TRL 1.12.0 PPOTrainer, four models   (bench/trl_worker.py, the TRL venv's interpreter)
  trl_ppo_peft       the same with LoRA on the policy      (bench/trl_worker.py --peft; no reference copy)
and, on request (--variants):
  apo_ppo_refit_plain      apo_ppo_refit with rm.shared_prefix off (every row written out in full)
  trl_ppo_fixed_mmap,      trl_ppo / trl_ppo_peft with glibc's mmap threshold fixed at 128 KiB
  trl_ppo_peft_fixed_mmap  (MALLOC_MMAP_THRESHOLD_=131072; bench/README.md says why)
Then prints a table of medians, the ratios apo/trl for step time and peak RSS and the APO refit overhead
(RM-update time / wall time of the timed updates), and writes bench/results.json.
The TRL venv (bench/.venv-trl, pinned by bench/trl_constraints.txt) is created when missing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
TRL_VENV = BENCH / ".venv-trl"
ASSETS = BENCH / ".assets"
DEFAULT_VARIANTS = ("apo_ppo_frozen_rm", "apo_ppo_refit", "trl_ppo", "trl_ppo_peft")
VARIANTS = DEFAULT_VARIANTS + ("apo_ppo_refit_plain", "trl_ppo_fixed_mmap", "trl_ppo_peft_fixed_mmap")
TRL_VARIANTS = ("trl_ppo", "trl_ppo_peft", "trl_ppo_fixed_mmap", "trl_ppo_peft_fixed_mmap")
TRL_SUFFIX = {"trl_ppo": "trl", "trl_ppo_peft": "trl_peft", "trl_ppo_fixed_mmap": "trl_fixed_mmap",
              "trl_ppo_peft_fixed_mmap": "trl_peft_fixed_mmap"}
# apo-online variant -> (bench/apo_worker.py --variant, extra worker flags)
APO_VARIANTS = {"apo_ppo_frozen_rm": ("apo_ppo_frozen_rm", []), "apo_ppo_refit": ("apo_ppo_refit", []),
                "apo_ppo_refit_plain": ("apo_ppo_refit", ["--set", "rm.shared_prefix=false"])}
# glibc reads this at start-up (a fixed threshold: freed large blocks go back to the OS); apo variants take it too
FIXED_MMAP_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_trl_venv(venv: Path = TRL_VENV) -> Path:
    """Create the TRL venv from bench/trl_constraints.txt unless it already imports TRL's PPOTrainer."""
    python = venv_python(venv)
    check = [str(python), "-c", "import trl; from trl.experimental.ppo import PPOTrainer; print(trl.__version__)"]
    env = dict(os.environ, TRL_EXPERIMENTAL_SILENCE="1")
    if python.exists():
        found = subprocess.run(check, capture_output=True, text=True, env=env)
        if found.returncode == 0 and found.stdout.strip() == "1.12.0":
            return python
    print(f"creating the TRL venv in {venv} (a few minutes)", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    constraints = str(BENCH / "trl_constraints.txt")
    pip = [str(python), "-m", "pip", "install", "--quiet", "-c", constraints]
    # plain torch==2.13.0: pip takes the local CPU wheel (another index would pull CUDA builds or be unreachable)
    subprocess.run(pip + ["torch==2.13.0"], check=True)
    subprocess.run(pip + ["trl==1.12.0", "transformers", "accelerate", "datasets", "peft"], check=True)
    subprocess.run(check, check=True, env=env)
    return python


def last_json_line(text: str) -> dict:
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError("worker printed no JSON line")


def worker_env(variant: str) -> dict[str, str]:
    """Environment a variant's worker gets on top of the caller's."""
    return dict(FIXED_MMAP_ENV) if variant.endswith("_fixed_mmap") else {}


def run_worker(command: list[str], log: Path, path_first: tuple[str, ...] = (), extra_env: dict | None = None) -> dict:
    # path_first, the repo, then whatever the caller had (bench/gpu_check.sh puts carried wheels there)
    path = os.pathsep.join([*path_first, str(REPO)]
                           + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=path, **(extra_env or {}))
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(f"$ {' '.join(command)}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}", encoding="utf-8")
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed ({proc.returncode}), see {log}:\n{proc.stderr[-2000:]}")
    result = last_json_line(proc.stdout)
    result["process_s"] = time.perf_counter() - started
    return result


def summarize(runs: list[dict]) -> dict:
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
    return ([python, "bench/trl_worker.py", "--assets", str(assets)] + common
            + (["--peft"] if variant.startswith("trl_ppo_peft") else []))


def apo_command(python: str, size: str, variant: str, common: list[str]) -> list[str]:
    worker_variant, flags = APO_VARIANTS[variant]
    return [python, "bench/apo_worker.py", "--size", size, "--variant", worker_variant] + common + flags


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
    return out


def print_table(summary: dict) -> None:
    header = (f"{'size':8} {'variant':18} {'step s':>8} {'rollout s':>9} {'update s':>8} {'gen share':>9} "
              f"{'tok/s':>7} {'peak RSS MB':>11} {'RM share':>8}")
    print(header)
    print("-" * len(header))
    for size, variants in summary.items():
        for variant, s in variants.items():
            if not isinstance(s, dict) or "step_s" not in s:
                continue
            rollout, update = s.get("rollout_s"), s.get("policy_update_s")
            print(f"{size:8} {variant:18} {s['step_s']:8.3f} {rollout if rollout is not None else float('nan'):9.3f} "
                  f"{update if update is not None else float('nan'):8.3f} {s['generation_share']:9.2f} "
                  f"{s['tokens_per_s']:7.1f} {s['peak_rss_mb']:11.0f} {s['rm_share']:8.2f}")
        for key, value in variants.get("ratios", {}).items():
            print(f"{size:8} {key:40} {value:6.3f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "smollm2"], choices=["tiny", "smollm2"])
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=VARIANTS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--updates", type=int, default=3)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads per worker")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="on both sides (default off on both)")
    parser.add_argument("--logprobs-from-generation", action="store_true",
                        help="apo-online takes sampling log-probs from generate's logits (TRL always does)")
    parser.add_argument("--apo-python", default=sys.executable, help="interpreter of the library venv")
    parser.add_argument("--output", type=Path, default=BENCH / "results.json")
    args = parser.parse_args(argv)
    trl_python = ensure_trl_venv() if set(TRL_VARIANTS) & set(args.variants) else None
    common = ["--warmup", str(args.warmup), "--updates", str(args.updates), "--threads", str(args.threads)]
    apo_flags = (["--gradient-checkpointing"] if args.gradient_checkpointing else []) + (
        ["--logprobs-from-generation"] if args.logprobs_from_generation else [])
    load_before = os.getloadavg()
    results: dict = {"settings": vars(args) | {"output": str(args.output)},
                     "machine": {"cpus": len(os.sched_getaffinity(0)), "platform": platform.platform(),
                                 "loadavg_before": load_before},
                     "runs": {}, "summary": {}}
    for size in args.sizes:
        assets = ASSETS / f"{size}.json"
        run_worker([args.apo_python, "bench/apo_worker.py", "--size", size, "--export", str(assets)] + apo_flags,
                   ASSETS / "logs" / f"{size}_export.log")
        for repeat in range(args.repeats):  # interleave the variants so that load changes hit them alike
            for variant in args.variants:
                if variant in TRL_VARIANTS:
                    command = trl_command(str(trl_python), assets, common, variant)
                else:
                    command = apo_command(args.apo_python, size, variant, common + apo_flags)
                result = run_worker(command, ASSETS / "logs" / f"{size}_{variant}_{repeat}.log",
                                    extra_env=worker_env(variant))
                print(f"{size} {variant} run {repeat}: median step {statistics.median(result['step_times']):.3f}s "
                      f"peak RSS {result['peak_rss_mb']:.0f} MB", file=sys.stderr, flush=True)
                results["runs"].setdefault(size, {}).setdefault(variant, []).append(result)
                args.output.write_text(json.dumps(results, indent=1), encoding="utf-8")  # partial results kept
        summary = {variant: summarize(runs) for variant, runs in results["runs"][size].items()}
        summary["ratios"] = ratios(summary, "peak_rss_mb", "peak RSS")
        results["summary"][size] = summary
    results["machine"]["loadavg_after"] = os.getloadavg()
    args.output.write_text(json.dumps(results, indent=1), encoding="utf-8")
    print_table(results["summary"])
    print(f"load average before {load_before[0]:.2f}, after {results['machine']['loadavg_after'][0]:.2f}; "
          f"wrote {args.output}")


if __name__ == "__main__":
    main()
