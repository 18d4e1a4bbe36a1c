"""The APO RM update with and without the shared prompt prefix (rm.shared_prefix), side by side in one process.

    python bench/rm_prefix_bench.py --size smollm2 --rollouts 4 --repeats 3 --threads 2

Builds the game of bench/apo_worker.py (build_game of apo_online/benchmarking/apo_game.py on
apo_online/recipes/apo_ppo_full.yaml: 8 RM steps per update, 4 groups + 4 human pairs per step, 2 micro-batches), plays
--rollouts game steps to fill the sample buffer, then times AdversarialRewardStep.update --repeats times per setting,
the settings interleaved. Both settings draw the same groups and pairs (the RM step's random state is reset before
each update; refit mode restarts from the same base RM), so they compute the same update. Prints one JSON line: per
setting the update times and the peak RSS growth during an update (VmHWM, reset before each; Linux), the rows and
tokens of one update, and the ratios shared / plain.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's apo_online, not an installed copy

from apo_online.benchmarking.apo_game import (MODELS, build_game, game_settings, offline_environment,  # noqa: E402
                                               reset_peak_rss, vm_kb)

offline_environment()


def count_tokens(scorer, counts: dict[str, int]) -> None:
    """Count the tokens each scoring call puts through the model: rows written out in full against each distinct
    prompt once plus every response (padding not counted)."""
    score = scorer.score

    def counted(prompt_ids, messages, responses):
        counts["rows"] += len(responses)
        counts["tokens_joined_rows"] += sum(len(p) + len(r) for p, r in zip(prompt_ids, responses))
        counts["tokens_shared_prefix"] += (sum(len(p) for p in {tuple(p) for p in prompt_ids})
                                           + sum(len(r) for r in responses))
        return score(prompt_ids, messages, responses)

    scorer.score = counted


def time_updates(game, repeats: int) -> dict[str, dict[str, list[float]]]:
    rng_state = game.rm_step.rng.getstate()
    results = {"plain": {"seconds": [], "peak_rss_growth_mb": []}, "shared": {"seconds": [], "peak_rss_growth_mb": []}}
    for _ in range(repeats):
        for setting in ("plain", "shared"):
            game.scorer.shared_prefix = setting == "shared"
            game.rm_step.rng.setstate(rng_state)
            reset_peak_rss()
            resting = vm_kb("VmRSS")
            started = time.perf_counter()
            game.rm_step.update(game.buffer, game.step - 1)
            results[setting]["seconds"].append(time.perf_counter() - started)
            results[setting]["peak_rss_growth_mb"].append((vm_kb("VmHWM") - resting) / 1024)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(MODELS), default="tiny")
    parser.add_argument("--rollouts", type=int, default=4, help="game steps played first, to fill the buffer")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    args = parser.parse_args(argv)
    worker_args = game_settings(size=args.size, variant="apo_ppo_refit", set=["rm.update_every=0", *args.set],
                                warmup=0, updates=args.rollouts, threads=args.threads)
    with tempfile.TemporaryDirectory(prefix="apo_rm_bench_") as output_dir:
        game = build_game(worker_args, output_dir)
        game.rm_step.warmup(worker_args.rm_warmup_steps)  # the base RM of every refit
        game.warmed_up = True
        for _ in range(args.rollouts):  # rollouts + PPO updates; RM frozen (rm.update_every 0) while filling
            game.play_step()
        counts = {"rows": 0, "tokens_joined_rows": 0, "tokens_shared_prefix": 0}
        count_tokens(game.scorer, counts)
        results = time_updates(game, args.repeats)
        counts = {k: v // (2 * args.repeats) for k, v in counts.items()}  # per update
    median = {k: statistics.median(v["seconds"]) for k, v in results.items()}
    peak = {k: statistics.median(v["peak_rss_growth_mb"]) for k, v in results.items()}
    ratios = {"update time shared/plain": median["shared"] / median["plain"],
              "update peak RSS growth shared/plain": peak["shared"] / max(peak["plain"], 1e-9),
              "tokens shared/plain": counts["tokens_shared_prefix"] / counts["tokens_joined_rows"]}
    print(json.dumps({"size": args.size, "threads": args.threads, **counts, "runs": results, "ratios": ratios}),
          flush=True)


if __name__ == "__main__":
    main()
