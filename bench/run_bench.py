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
The TRL venv (bench/.venv-trl, pinned by bench/trl_constraints.txt) is created when missing. The variants, worker
launching, medians and ratios are apo_online/benchmarking/workers.py (stdlib only too, and light to import: apo_online
loads nothing heavy until asked), shared with bench/gpu_bench.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))  # this checkout's apo_online, not an installed copy

from apo_online.benchmarking.workers import (APO_WORKER, DEFAULT_VARIANTS, TRL_VARIANTS, VARIANTS,  # noqa: E402
                                             apo_command, ensure_trl_venv, ratios, run_worker, summarize, trl_command,
                                             worker_env)

TRL_VENV = BENCH / ".venv-trl"
ASSETS = BENCH / ".assets"


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
    wants_trl = set(TRL_VARIANTS) & set(args.variants)
    trl_python = ensure_trl_venv(TRL_VENV, BENCH / "trl_constraints.txt") if wants_trl else None
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
        run_worker([args.apo_python, APO_WORKER, "--size", size, "--export", str(assets)] + apo_flags,
                   ASSETS / "logs" / f"{size}_export.log", REPO)
        for repeat in range(args.repeats):  # interleave the variants so that load changes hit them alike
            for variant in args.variants:
                if variant in TRL_VARIANTS:
                    command = trl_command(str(trl_python), assets, common, variant)
                else:
                    command = apo_command(args.apo_python, size, variant, common + apo_flags)
                result = run_worker(command, ASSETS / "logs" / f"{size}_{variant}_{repeat}.log", REPO,
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
