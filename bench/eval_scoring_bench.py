"""The evaluation's scoring of n samples per prompt with each prompt run once (score_shared_prompts) against the rows
written out in full (score_sequences), side by side in one process.

    python bench/eval_scoring_bench.py --size smollm2 --prompts 16 --samples 4 --repeats 3 --threads 1

Builds the recipe's game (build_game of apo_online/benchmarking/apo_game.py), draws --samples responses of
rollout.max_new_tokens tokens for each of the first --prompts eval prompts (random tokens: the scoring's cost does not
depend on which), then scores them for the roles an evaluation reads (policy, reference, reward), --repeats times per
path, the paths interleaved. Prints one JSON line: per path the call times, the largest difference between the two
paths' outputs, the prompt and response tokens, and the ratio "eval scoring speed shared / joined".
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's apo_online, not an installed copy

from apo_online.benchmarking.apo_game import (MODELS, build_game, game_settings, offline_environment,  # noqa: E402
                                              time_interleaved)

ROLES = ("policy", "reference", "reward")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(MODELS), default="tiny")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--samples", type=int, default=4, help="game.eval_samples_per_prompt")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    offline_environment()
    import torch

    from apo_online.data.canonical import left_pad
    from apo_online.rollout import score_sequences, score_shared_prompts

    worker_args = game_settings(size=args.size, warmup=0, updates=1, rm_warmup_steps=0, threads=args.threads)
    with tempfile.TemporaryDirectory(prefix="apo_eval_scoring_bench_") as output_dir:
        game = build_game(worker_args, output_dir)
        backbone = game.accelerator.unwrap_model(game.model)
        cfg, n, pad = game.config.rollout, args.samples, game.tokenizer.pad_token_id
        prompts = [p.input_ids for p in game.encoder.encode_prompts(game.task.eval_prompts[: args.prompts])]
        ids, mask = left_pad(prompts, pad)
        generator = torch.Generator().manual_seed(0)
        responses = torch.randint(5, len(game.tokenizer) - 1, (len(prompts) * n, cfg.max_new_tokens),
                                  generator=generator)
        response_mask = torch.ones_like(responses, dtype=torch.float)
        joined_ids = torch.cat([ids.repeat_interleave(n, 0), responses], 1)
        joined_mask = torch.cat([mask.repeat_interleave(n, 0), response_mask.long()], 1)
        paths = {
            "shared": lambda: score_shared_prompts(backbone, ids, mask, responses, response_mask, n, ROLES,
                                                   cfg.temperature, 32),
            "joined": lambda: score_sequences(backbone, joined_ids, joined_mask, ids.shape[1], ROLES,
                                              cfg.temperature, 32)}
        times, outputs = time_interleaved(paths, args.repeats)
    difference = max((outputs["shared"][r] - outputs["joined"][r]).abs().max().item() for r in ROLES)
    median = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({"size": args.size, "threads": args.threads, "prompts": len(prompts), "samples_per_prompt": n,
                      "prompt_tokens": int(mask.sum()), "response_tokens": int(response_mask.sum()),
                      "seconds": times, "max_abs_difference": difference,
                      "ratios": {"eval scoring speed shared / joined": median["joined"] / median["shared"]}}),
          flush=True)


if __name__ == "__main__":
    main()
