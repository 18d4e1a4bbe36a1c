"""apo-online PPO vs TRL 1.12.0's PPOTrainer on randomly initialised Llamas: generation tokens/s, step time, peak
CUDA memory, into one JSON. Run by bench/gpu_check.sh; needs no weights and no network.

    python bench/gpu_bench.py --output /tmp/gpu_bench.json            # CUDA: both shapes in bfloat16
    python bench/gpu_bench.py --output /tmp/gpu_bench.json --cpu      # the CPU fallback: 2-layer cuts, float32
    python bench/gpu_bench.py --output /tmp/gpu_user.json --scale user  # a user's batch: 1B, 256 x 128 tokens

Scales: `smoke` (16 prompts x 64 new tokens: launch-bound, proves the path) and `user` (the 1B shape, 256 prompts x
1 sample x 128 new tokens per step, the batch a GPU user runs; TRL's PPO draws one sample per prompt, so both sides
sample 256 sequences from 256 prompts; with and without merged sampling). Every variant also reports its model
FLOPs utilisation against --peak-tflops (the H200's ~790 TFLOP/s bf16 by default), by the conventional 2N / 6N
count (apo_online/benchmarking/workers.py: model_flops_utilisation).

Shapes (config only, weights drawn at seed 0): `smollm2-135m` (SmolLM2-135M: 30 layers, width 576, vocab 49152) and
`llama-1b` (Llama-3.2-1B: 16 layers, width 2048, vocab 128256). Both use the tiny BPE tokenizer (1024 tokens, ChatML
template); the model keeps its full vocabulary, so the output layer and log-prob costs are the real ones. Random
weights rarely emit the stop token, so every response runs to --max-new-tokens on both sides alike.
Variants, each in a fresh process, one after the other: apo_ppo_frozen_rm, apo_ppo_refit (bench/apo_worker.py),
trl_ppo and trl_ppo_peft (bench/trl_worker.py, the same interpreter with --trl-path first on PYTHONPATH: a folder
holding TRL 1.12.0, the last release with PPOTrainer, while apo-online runs on the TRL it pins). The JSON is
rewritten after every run, so a run stopped at its time limit keeps what it measured. Launching the workers and the
medians and ratios are apo_online/benchmarking/workers.py, shared with bench/run_bench.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))  # this checkout's apo_online, not an installed copy

from apo_online.benchmarking.apo_game import game_settings  # noqa: E402 (light: argparse and the recipe names)
from apo_online.benchmarking.workers import (APO_VARIANTS, APO_WORKER, DEFAULT_VARIANTS, TRL_VARIANTS,  # noqa: E402
                                             VARIANTS, model_flops_utilisation, ratios, run_worker, summarize,
                                             trl_command, worker_env)

SHAPES = {  # LlamaConfig fields of each shape
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, rope_theta=100000.0, tie_word_embeddings=True),
    "llama-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0, tie_word_embeddings=True),
}
CPU_LAYERS = 2  # the CPU fallback keeps each shape's widths and vocabulary but only this many layers
# scale -> (shapes, prompts per step, new tokens, variants) on CUDA; the CPU fallback shrinks the batch (cpu_batch)
SCALES = {
    "smoke": (list(SHAPES), 16, 64, list(DEFAULT_VARIANTS)),
    "user": (["llama-1b"], 256, 128, ["apo_ppo_refit", "apo_ppo_refit_unmerged", "trl_ppo", "trl_ppo_peft"]),
}


def cpu_batch(scale: str) -> tuple[int, int]:
    """(prompts, new tokens) of the CPU fallback: enough to run every code path on 2 cores in minutes."""
    return (4, 8) if scale == "smoke" else (8, 16)


def trained_tokens(assets: Path, prompts: int, new_tokens: int, ppo_epochs: int) -> float:
    """Tokens the policy trains on per step: prompts x (mean prompt length + new tokens, as random weights rarely
    stop) x PPO epochs."""
    data = json.loads(assets.read_text(encoding="utf-8"))
    mean_prompt = sum(len(p) for p in data["prompts"]) / len(data["prompts"])
    return prompts * (mean_prompt + new_tokens) * ppo_epochs


def build_random_model(shape: str, folder: Path, dtype: str, layers: int | None) -> dict:
    """Save a seed-0 random Llama of `shape` with the tiny tokenizer in `folder`; returns its parameter count."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from apo_online.model_loading import train_tiny_tokenizer

    tokenizer = train_tiny_tokenizer()
    fields = dict(SHAPES[shape], max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    if layers is not None:
        fields["num_hidden_layers"] = layers
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):  # drawing 1B weights on the CPU takes longer than the benchmark
        model = LlamaForCausalLM(LlamaConfig(**fields)).to(getattr(torch, dtype))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    count = sum(p.numel() for p in model.parameters())
    del model
    return {"parameters": count, "layers": fields["num_hidden_layers"], "dtype": dtype}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--scale", choices=list(SCALES), default="smoke", help="the batch (module docstring)")
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), help="default: the scale's")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, help="default: the scale's")
    parser.add_argument("--peak-tflops", type=float, default=790.0, help="the device's dense bf16 peak, for MFU")
    parser.add_argument("--cpu", action="store_true", help="the CPU fallback: float32, 2-layer cuts, fewer tokens")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--updates", type=int, default=4, help="timed; 4 = one refit at the recipe's cadence")
    parser.add_argument("--prompts-per-step", type=int, default=None, help="default: the scale's (CPU: smaller)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the scale's (CPU: smaller)")
    parser.add_argument("--trl-path", default="", help="folder holding TRL 1.12.0 (pip install --target)")
    parser.add_argument("--work-dir", type=Path, default=BENCH / ".assets" / "gpu")
    args = parser.parse_args(argv)
    import torch

    if not args.cpu and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: pass --cpu for the CPU fallback")
    dtype, layers = ("float32", CPU_LAYERS) if args.cpu else ("bfloat16", None)
    shapes, scale_prompts, scale_tokens, variants = SCALES[args.scale]
    if args.cpu:
        scale_prompts, scale_tokens = cpu_batch(args.scale)
    args.shapes, args.variants = args.shapes or shapes, args.variants or variants
    prompts = args.prompts_per_step or scale_prompts
    new_tokens = args.max_new_tokens or scale_tokens
    common = ["--warmup", str(args.warmup), "--updates", str(args.updates)]
    apo_common = common + ["--prompts-per-step", str(prompts), "--max-new-tokens", str(new_tokens), "--dtype", dtype,
                           # human gold: the judged testbed is built for SmolLM2's weights; random weights never
                           # stop, so the stop-token guard would leave the APO term without samples
                           "--dataset", "embedded", "--set", "rm.eos_only=false"]
    results: dict = {
        "settings": {"scale": args.scale, "dtype": dtype, "prompts_per_step": prompts, "max_new_tokens": new_tokens,
                     "warmup": args.warmup, "updates": args.updates, "cpu_fallback": args.cpu,
                     "peak_tflops": args.peak_tflops},
        "machine": {"cpus": len(os.sched_getaffinity(0)), "platform": platform.platform(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "shapes": {}, "runs": {}, "summary": {},
    }
    memory = ("peak_rss_mb", "peak RSS") if args.cpu else ("peak_cuda_mb", "peak CUDA memory")
    started = time.perf_counter()
    for shape in args.shapes:
        folder = args.work_dir / shape
        results["shapes"][shape] = build_random_model(shape, folder, dtype, layers)
        assets = args.work_dir / f"{shape}.json"
        apo = [sys.executable, APO_WORKER, "--size", "tiny", "--model", str(folder)]
        run_worker(apo + apo_common + ["--export", str(assets)], args.work_dir / "logs" / f"{shape}_export.log", REPO)
        for variant in args.variants:
            is_trl = variant in TRL_VARIANTS
            if is_trl:
                command = trl_command(sys.executable, assets, common, variant)
            else:
                worker_variant, flags = APO_VARIANTS[variant]
                command = apo + ["--variant", worker_variant] + apo_common + flags
            first = (args.trl_path,) if is_trl and args.trl_path else ()
            log = args.work_dir / "logs" / f"{shape}_{variant}.log"
            try:
                result = run_worker(command, log, REPO, first, worker_env(variant))
            except RuntimeError as err:  # e.g. out of memory at a user's batch: keep the others' figures
                results.setdefault("failed", {}).setdefault(shape, {})[variant] = str(err)[-1500:]
                print(f"{shape} {variant}: failed, see {log}", flush=True)
                continue
            results["runs"].setdefault(shape, {})[variant] = [result]
            summary = {v: summarize(runs) for v, runs in results["runs"][shape].items()}
            tokens = trained_tokens(assets, prompts, new_tokens, game_settings().ppo_epochs)  # the worker's own
            for name, figures in summary.items():
                figures["mfu"] = model_flops_utilisation(figures, results["shapes"][shape]["parameters"], tokens,
                                                         args.peak_tflops)
            results["summary"][shape] = summary | {"ratios": ratios(summary, *memory)}
            results["elapsed_s"] = time.perf_counter() - started
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(json.dumps(results, indent=1), encoding="utf-8")
            print(f"{shape} {variant}: step {summary[variant]['step_s']:.3f}s, generation "
                  f"{summary[variant]['generation_tokens_per_s']:.0f} tok/s, peak CUDA "
                  f"{summary[variant]['peak_cuda_mb'] or 0:.0f} MB, peak RSS {summary[variant]['peak_rss_mb']:.0f} MB, "
                  f"MFU sampling {summary[variant]['mfu']['sampling']:.4f} step {summary[variant]['mfu']['step']:.4f} "
                  f"({time.perf_counter() - started:.0f}s)", flush=True)
    print(json.dumps(results["summary"], indent=1))


if __name__ == "__main__":
    main()
