"""One benchmark run of apo-online PPO (policy/value/reward/reference on one LoRA backbone). Library venv.

    python bench/apo_worker.py --size tiny --variant apo_ppo_frozen_rm --warmup 1 --updates 3
    python bench/apo_worker.py --size tiny --export bench/.assets/tiny.json   # prompts + model for trl_worker.py

Builds the game from apo_online/recipes/apo_ppo_full.yaml plus the benchmark's overrides (apo_online/benchmarking/
apo_game.py: `overrides()`, `build_game()`, shared with bench/rm_prefix_bench.py), runs `--warmup` untimed game
steps, then `--updates` timed ones (APOGame.play_step: rollout, PPO update, RM update), and prints ONE JSON line on
stdout: step_times, phase times (from the game's timing/* metrics), generation time, tokens generated, RM-update time
and the peak RSS of this process (ru_maxrss, plus children if any).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's apo_online, not an installed copy

from apo_online.allocator import use_preferred_allocator  # noqa: E402 (standard library only)

use_preferred_allocator()  # as the recipes run: tcmalloc/jemalloc when installed (variant *_glibc: the system's)

from apo_online.benchmarking.apo_game import (build_game, game_parser, offline_environment,  # noqa: E402
                                              peak_cuda_mb, peak_rss_mb)

offline_environment()


def export(game, path: Path, args) -> None:
    """Everything trl_worker.py needs, so that the TRL venv never imports apo_online."""
    from apo_online.model_loading import resolve_model_path

    cfg, ppo = game.config, game.config.optimizer_config("ppo")
    tok = game.tokenizer
    data = {
        "size": args.size, "dtype": cfg.model.dtype,
        "lora_r": cfg.model.lora_r, "lora_alpha": cfg.model.lora_alpha,
        "lora_target_modules": cfg.model.lora_target_modules,
        "model_path": resolve_model_path(cfg.model.model_name_or_path, cfg.model.cache_dir),
        "pad_token": tok.pad_token, "pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id,
        "prompts_per_step": cfg.rollout.prompts_per_step, "max_new_tokens": cfg.rollout.max_new_tokens,
        "temperature": cfg.rollout.temperature, "missing_eos_penalty": cfg.rollout.missing_eos_penalty,
        "forward_batch_size": cfg.rollout.forward_batch_size,
        "gradient_checkpointing": cfg.model.gradient_checkpointing,
        "ppo_epochs": ppo.ppo_epochs, "num_minibatches": ppo.num_minibatches, "kl_coef": ppo.kl_coef,
        "cliprange": ppo.cliprange, "cliprange_value": ppo.cliprange_value, "vf_coef": ppo.vf_coef,
        "gamma": ppo.gamma, "lam": ppo.lam, "learning_rate": ppo.learning_rate,
        "prompts": [p.input_ids for p in game.prompts],  # chat template + system prompt already applied
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


def run(game, args) -> dict:
    from apo_online.backbone import SharedBackbone

    generation_times: list[float] = []
    original_generate = SharedBackbone.generate

    def timed_generate(self, *a, **kw):  # the sampling loop alone, inside timing/rollout_s
        started = time.perf_counter()
        try:
            return original_generate(self, *a, **kw)
        finally:
            generation_times.append(time.perf_counter() - started)

    SharedBackbone.generate = timed_generate
    if game.config.rm.update_every:  # untimed, like loading: the warm-up RM is the base of every refit
        game.rm_step.warmup(game.config.rm.warmup_steps)
    game.warmed_up = True
    records = []
    wall_start = None
    for step in range(args.warmup + args.updates):
        if step == args.warmup:
            wall_start = time.perf_counter()
        metrics = game.play_step()
        metrics["tokens"] = float(metrics["response/length"] * args.prompts_per_step)
        metrics["generation_s"] = generation_times[-1]
        records.append(metrics)
    wall = time.perf_counter() - wall_start
    timed = records[args.warmup :]
    return {
        "variant": args.variant, "size": args.size,
        "step_times": [m["timing/step_s"] for m in timed],
        "rollout_times": [m["timing/rollout_s"] for m in timed],
        "generation_times": [m["generation_s"] for m in timed],
        "policy_update_times": [m["timing/policy_update_s"] for m in timed],
        "rm_times": [m["timing/rm_update_s"] for m in timed],
        "rm_time": sum(m["timing/rm_update_s"] for m in timed),
        "wall_time": wall,
        "tokens_generated": int(sum(m["tokens"] for m in timed)),
        "peak_rss_mb": peak_rss_mb(), "peak_cuda_mb": peak_cuda_mb(), "device": str(game.ctx.device),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     parents=[game_parser()])
    parser.add_argument("--export", type=Path, help="write prompts + settings for trl_worker.py and exit")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="apo_bench_") as output_dir:
        game = build_game(args, output_dir)
        if args.export:
            export(game, args.export, args)
            print(json.dumps({"exported": str(args.export), "prompts": len(game.prompts)}), flush=True)
            return
        result = run(game, args)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
