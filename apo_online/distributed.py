"""Accelerator construction: one place that knows the distributed back-ends' quirks."""

from __future__ import annotations

import os

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs, ProjectConfiguration


def make_accelerator(game_config, log_with: str | None = "tensorboard") -> Accelerator:
    handlers = [
        # Each phase uses one adapter: the others are unused in that backward, which DDP must be told about.
        DistributedDataParallelKwargs(find_unused_parameters=True),
    ]
    if not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # CPU runs (and DeepSpeed on CPU, DS_ACCELERATOR=cpu) need the gloo back-end.
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
    accelerator = Accelerator(
        log_with=log_with,
        project_config=ProjectConfiguration(project_dir=game_config.output_dir, logging_dir=game_config.output_dir),
        kwargs_handlers=handlers,
    )
    if accelerator.device.type == "cpu":
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
        cores = len(os.sched_getaffinity(0))
        torch.set_num_threads(game_config.cpu_threads or max(1, cores // max(local_processes, 1)))
    plugin = accelerator.state.deepspeed_plugin
    if plugin is not None:
        ds = plugin.deepspeed_config
        # The game feeds the engine itself (no dataloader to infer sizes from) and controls accumulation and
        # clipping: micro-batch size is nominal, accumulation boundaries are set per phase (TrainingContext).
        ds["train_micro_batch_size_per_gpu"] = 1
        ds["gradient_accumulation_steps"] = 1
        ds["gradient_clipping"] = game_config.max_grad_norm
        ds["zero_allow_untested_optimizer"] = True  # RoleAdamW is a torch AdamW subclass
        ds.pop("train_batch_size", None)
    return accelerator


def describe_launch(accelerator, model_dtype: str) -> dict:
    """What this launch really got (a config can silently fall back: ACCELERATE_USE_CPU=1 turns a DeepSpeed config
    into plain CPU DDP): distributed mode, processes, ZeRO stage, device, mixed precision, weight dtype."""
    plugin = accelerator.state.deepspeed_plugin if accelerator.distributed_type.name == "DEEPSPEED" else None
    return {"distributed_type": accelerator.distributed_type.name, "num_processes": accelerator.num_processes,
            "zero_stage": None if plugin is None else int(plugin.zero_stage or 0),
            "device": accelerator.device.type, "mixed_precision": str(accelerator.mixed_precision),
            "model_dtype": model_dtype}
