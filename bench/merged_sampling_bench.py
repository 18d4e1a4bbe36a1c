"""Sampling with the policy folded into the weights (rollout.merged_sampling) against the adapter per token, side by
side in one process.

    python bench/merged_sampling_bench.py --size smollm2 --repeats 5 --threads 2

Builds the recipe's game (build_game of apo_online/benchmarking/apo_game.py on apo_online/recipes/apo_ppo_full.yaml, the
policy adapter given non-zero weights so that it matters), then times SharedBackbone.generate on the recipe's rollout
shape (rollout.prompts_per_step prompts, rollout.max_new_tokens new tokens, min_new_tokens = max_new_tokens so every
call decodes the same number of tokens) --repeats times per setting, the settings interleaved, each call from the
same seed. Prints one JSON line: per setting the call times and tokens/s, the peak RSS growth during the call (VmHWM,
reset before each; Linux), whether both settings sampled the same tokens, and the ratio "sampling tokens/s merged /
unmerged".
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


def sample_once(backbone, prompts, max_new_tokens: int, merged: bool, seed: int):
    import torch

    backbone.merged_sampling = merged
    torch.manual_seed(seed)
    reset_peak_rss()
    resting = vm_kb("VmRSS")
    started = time.perf_counter()
    sequences = backbone.generate(prompts["input_ids"], prompts["attention_mask"], do_sample=True, temperature=0.7,
                                  max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                                  pad_token_id=prompts["pad_token_id"])
    return time.perf_counter() - started, (vm_kb("VmHWM") - resting) / 1024, sequences


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(MODELS), default="tiny")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    offline_environment()
    import torch

    from apo_online.data.canonical import left_pad

    worker_args = game_settings(size=args.size, dataset="embedded", warmup=0, updates=1, rm_warmup_steps=0,
                                threads=args.threads)
    with tempfile.TemporaryDirectory(prefix="apo_merged_bench_") as output_dir:
        game = build_game(worker_args, output_dir)
        backbone = game.accelerator.unwrap_model(game.model)
        with torch.no_grad():  # a trained policy's adapter is not zero; LoRA B starts at 0
            for name, param in backbone.peft_model.named_parameters():
                if "lora_B.policy" in name:
                    param.normal_(std=0.01)
        cfg = game.config.rollout
        ids, mask = left_pad([p.input_ids for p in game.prompts[:cfg.prompts_per_step]], game.tokenizer.pad_token_id)
        prompts = {"input_ids": ids, "attention_mask": mask, "pad_token_id": game.tokenizer.pad_token_id}
        sample_once(backbone, prompts, cfg.max_new_tokens, True, 0)  # warm both paths up, untimed
        sample_once(backbone, prompts, cfg.max_new_tokens, False, 0)
        times, growth = {"merged": [], "unmerged": []}, {"merged": [], "unmerged": []}
        same_tokens = True
        for repeat in range(args.repeats):
            outputs = {}
            for setting in ("merged", "unmerged") if repeat % 2 == 0 else ("unmerged", "merged"):
                seconds, peak_mb, outputs[setting] = sample_once(backbone, prompts, cfg.max_new_tokens,
                                                                 setting == "merged", repeat)
                times[setting].append(seconds)
                growth[setting].append(peak_mb)
            same_tokens &= bool(torch.equal(outputs["merged"], outputs["unmerged"]))
    tokens = cfg.prompts_per_step * cfg.max_new_tokens
    rate = {k: tokens / statistics.median(v) for k, v in times.items()}
    print(json.dumps({"size": args.size, "threads": args.threads, "tokens_per_call": tokens, "seconds": times,
                      "tokens_per_s": rate, "peak_rss_growth_mb": growth, "same_tokens": same_tokens,
                      "ratios": {"sampling tokens/s merged / unmerged": rate["merged"] / rate["unmerged"]}}),
          flush=True)


if __name__ == "__main__":
    main()
