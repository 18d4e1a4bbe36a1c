"""The apo-online game a benchmark plays: the recipe's PPO game with the benchmark's settings on top, and the peak
memory figures a worker reports. Shared by bench/apo_worker.py (one timed run per process) and
bench/rm_prefix_bench.py (the RM update with and without the shared prompt prefix), which must build the same game.

torch and the game are imported inside the functions: call offline_environment() first, before anything imports
transformers, which reads those variables at import.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from typing import Any, Callable

from apo_online.recipes import full_game_yaml

MODELS = {"tiny": "tiny-llama", "smollm2": "smollm2-135m-instruct"}
VARIANTS = ("apo_ppo_frozen_rm", "apo_ppo_refit")  # bench/apo_worker.py --variant
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def offline_environment() -> None:
    """No hub or dataset downloads and no tokenizer threads, unless the caller set otherwise: a benchmark measures
    the game, not the network, and the tokenizers' threads would compete with torch's."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


def game_parser() -> argparse.ArgumentParser:
    """The settings of a benchmark's game (bench/apo_worker.py's command line; the other benches build theirs
    with game_settings), as a parent parser."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--size", choices=sorted(MODELS), default="tiny")
    parser.add_argument("--variant", choices=VARIANTS, default="apo_ppo_frozen_rm")
    parser.add_argument("--model", help="a model folder instead of the size's built-in model (bench/gpu_bench.py)")
    parser.add_argument("--dataset", default="embedded_judged",
                        help="data.dataset_name (the recipe's testbed; 'embedded' for a model the testbed was not "
                             "built for: the testbed samples its candidates from the model)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="any other config override, after the benchmark's own (repeatable)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="model.dtype")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--updates", type=int, default=3)
    parser.add_argument("--prompts-per-step", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--ppo-epochs", type=int, default=1)
    parser.add_argument("--num-minibatches", type=int, default=2)
    parser.add_argument("--rm-warmup-steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--logprobs-from-generation", action="store_true",
                        help="rollout.logprobs_from_generation: sampling log-probs from generate's logits")
    return parser


def game_settings(**changes) -> argparse.Namespace:
    """game_parser's defaults with `changes` (attribute names: prompts_per_step, rm_warmup_steps, ...)."""
    args = game_parser().parse_args([])
    unknown = sorted(set(changes) - set(vars(args)))
    if unknown:
        raise TypeError(f"no benchmark game setting {', '.join(unknown)}; known: {', '.join(sorted(vars(args)))}")
    for name, value in changes.items():
        setattr(args, name, value)
    return args


def overrides(size: str, variant: str, output_dir: str, args) -> list[str]:
    """The shared settings (the TRL side reads the same numbers from the exported JSON)."""
    values = {
        "model.model_name_or_path": args.model or MODELS[size],
        "model.dtype": args.dtype,
        "data.dataset_name": args.dataset,
        "game.output_dir": output_dir,
        "game.total_steps": args.warmup + args.updates,
        "game.eval_every": 0,
        "game.save_every": 0,
        "game.cpu_threads": args.threads,
        "rollout.prompts_per_step": args.prompts_per_step,
        "rollout.max_new_tokens": args.max_new_tokens,
        "ppo.ppo_epochs": args.ppo_epochs,
        "ppo.num_minibatches": args.num_minibatches,
        "ppo.gradient_accumulation_steps": 1,
        "model.gradient_checkpointing": args.gradient_checkpointing,  # exported: the TRL side follows
        "rollout.logprobs_from_generation": args.logprobs_from_generation,  # what TRL always does
    }
    if variant == "apo_ppo_frozen_rm":  # RM never updated: the same work as TRL's PPO with a fixed RM
        values.update({"rm.update_every": 0, "rm.warmup_steps": 0, "rm.allow_untrained": True})  # speed only
    else:  # APO refit every rm.update_every steps, as apo_online/recipes/apo_ppo_full.yaml sets it
        values.update({"rm.warmup_steps": args.rm_warmup_steps})
    values.update(dict(item.split("=", 1) for item in args.set))
    out: list[str] = []
    for key, value in values.items():
        out += [f"--{key}", str(value)]
    return out


def peak_rss_mb() -> float:
    """Peak resident memory of this process plus its children (ru_maxrss: the worker runs one game per process)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + children) / 1024.0  # ru_maxrss is in KiB on Linux


def vm_kb(field: str) -> int:
    """A field of /proc/self/status in KiB (VmRSS: resident now; VmHWM: its peak since start or the last reset)."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def reset_peak_rss() -> None:
    """VmHWM := VmRSS (Linux), so that the next VmHWM is the peak of what runs from now on."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def time_interleaved(paths: dict[str, Callable[[], Any]], repeats: int) -> tuple[dict[str, list[float]], dict]:
    """Each of two or more paths called `repeats` times, their order reversed every other repeat so that a drift of
    the machine falls on all alike: (path -> the seconds of each call, path -> its last call's output)."""
    names = list(paths)
    times: dict[str, list[float]] = {name: [] for name in names}
    outputs: dict[str, Any] = {}
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            started = time.perf_counter()
            outputs[name] = paths[name]()
            times[name].append(time.perf_counter() - started)
    return times, outputs


def peak_cuda_mb() -> float | None:
    """Peak memory torch's CUDA allocator handed out in this process (None on CPU)."""
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def build_game(args, output_dir: str, default_yaml=None):
    """The game of `args` (bench/apo_worker.py's command line: size, variant, model, ...) on top of default_yaml
    (default: the built-in PPO recipe), writing to output_dir, with no trackers."""
    offline_environment()
    import torch  # noqa: F401  (heavy imports after the environment is set)

    from apo_online.config import load_config
    from apo_online.distributed import make_accelerator
    from apo_online.game import APOGame

    config = load_config(overrides(args.size, args.variant, output_dir, args),
                         default_yaml=default_yaml or full_game_yaml("ppo"))
    accelerator = make_accelerator(config.game, log_with=None)
    return APOGame(config, accelerator=accelerator)
