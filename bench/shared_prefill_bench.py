"""Sampling n responses per prompt with each prompt's prefill run once (shared_prefill.py) against transformers'
num_return_sequences, which runs every prompt n times, side by side in one process.

    python bench/shared_prefill_bench.py --size smollm2 --prompts 32 --samples 4 --repeats 2 --threads 1

Builds the full game (build_game of apo_online/benchmarking/apo_game.py), then samples --samples responses of
rollout.max_new_tokens tokens for each of the first --prompts eval prompts with the policy (merged sampling, as the
game samples), in chunks of 32 prompts as the evaluation does, --repeats times per path, the paths interleaved and
each from the same seed. Prints one JSON line: per path the call times, whether the two paths sampled the same
tokens, and the ratio "eval sampling speed shared / repeated".
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

CHUNK = 32  # prompts per generate call, as game_eval.sample_responses


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(MODELS), default="tiny")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--samples", type=int, default=4, help="game.eval_samples_per_prompt")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    offline_environment()
    import torch

    from apo_online.data.canonical import left_pad

    worker_args = game_settings(size=args.size, warmup=0, updates=1, rm_warmup_steps=0, threads=args.threads)
    with tempfile.TemporaryDirectory(prefix="apo_shared_prefill_bench_") as output_dir:
        game = build_game(worker_args, output_dir)
        backbone = game.accelerator.unwrap_model(game.model)
        cfg, pad = game.config.rollout, game.tokenizer.pad_token_id
        prompts = [p.input_ids for p in game.encoder.encode_prompts(game.task.eval_prompts[: args.prompts])]

        def sample(share: bool) -> list[torch.Tensor]:
            torch.manual_seed(0)
            out = []
            for start in range(0, len(prompts), CHUNK):
                ids, mask = left_pad(prompts[start : start + CHUNK], pad)
                out.append(backbone.generate(ids, mask, share_prompts=share, do_sample=True,
                                             temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                                             num_return_sequences=args.samples, pad_token_id=pad,
                                             eos_token_id=[game.tokenizer.eos_token_id]))
            return out

        times, outputs = time_interleaved({"shared": lambda: sample(True), "repeated": lambda: sample(False)},
                                          args.repeats)
    same = all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(outputs["shared"], outputs["repeated"]))
    median = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({"size": args.size, "threads": args.threads, "prompts": len(prompts),
                      "samples_per_prompt": args.samples, "seconds": times, "same_tokens": same,
                      "ratios": {"eval sampling speed shared / repeated": median["repeated"] / median["shared"]}}),
          flush=True)


if __name__ == "__main__":
    main()
