"""`rm.warmup_cache`: reuse the base RM of an earlier game whose warm-up would have computed exactly the same thing.

The warm-up (one pass of Bradley-Terry steps over the human pairs) is about a third of a short CPU run, and the arms
of a study (eval/study.py) that share a seed warm up the same RM: frozen_ppo, apo_ppo and pairs_only_ppo only part
after it. The cache key is the content of everything the warm-up reads: the reward role's initial weights, the
encoded human pairs, the warm-up's rm settings and step count, the random states it draws from, the max gradient
norm, torch's version. An entry holds what the warm-up leaves behind: the base RM's weights, the random states after
it and its metrics. The reward optimizer's moments are reset after a computed warm-up as well (a loaded one has
none), so that a game that loads the entry goes on exactly as the game that wrote it (tests/test_warmup_cache.py).

`rm.shipped_base_rm` (on by default) reads entries shipped inside the package first (`SHIPPED_DIR`, written by
`scripts/ship_base_rm.py`): the default recipe's base RM, so that the README's first run does not spend minutes
warming up. A shipped entry was computed on another machine: the same inputs and code, the floating-point rounding
of that machine's kernels.

One process with the shared reward adapter only: several processes draw from several random streams, and a
separate full RM would make entries the size of a model. Other games warm up as usual (logged).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from pathlib import Path

import numpy as np
import torch

from apo_online.assets import cache_root, file_lock
from apo_online.run.checkpoint import rng_state, set_rng_state

# base RMs shipped with the package, named by cache key (scripts/ship_base_rm.py writes them): the default recipe's,
# so that the README's first run skips its warm-up
SHIPPED_DIR = Path(__file__).resolve().parents[1] / "testbeds" / "base_rm"
CACHE_VERSION = "1"  # bump when the warm-up computes something else from the same inputs
logger = logging.getLogger(__name__)


def warm_up_reward_model(game, show_progress: bool, should_stop=None) -> dict[str, float] | None:
    """The game's RM warm-up (the base RM): the shipped entry when it matches, else through the cache when
    rm.warmup_cache is on, else computed; returns its metrics, or None when should_stop ended a computed warm-up
    early (AdversarialRewardStep.warmup)."""
    step, rm = game.rm_step, game.config.rm

    def compute():
        return step.warmup(show_progress=show_progress, should_stop=should_stop)

    if not (rm.warmup_cache or rm.shipped_base_rm):
        return compute()
    if step.warmup_in_progress:  # resumed after a stop part-way: the weights are no longer the cache key's input
        metrics = compute()
        if metrics is not None and rm.warmup_cache:  # as a computed warm-up of the cache leaves it (below)
            game.ctx.reset_role_optimizer_state("reward")
        return metrics
    if game.accelerator.num_processes > 1 or game.reward_model is not None:
        if rm.warmup_cache:  # asked for; the shipped entry is on by default and need not be announced
            logger.info("rm.warmup_cache works with one process and the shared reward adapter; warming up as usual")
        return compute()
    # a warm-up's optimizer moments survive into the game only in continue mode: there a loaded entry (which has
    # none) would not play as the computed warm-up does, so the shipped one is for refit or frozen games only
    may_ship = rm.shipped_base_rm and (rm.mode == "refit" or rm.update_every == 0) and any(SHIPPED_DIR.glob("*.pt"))
    if not (may_ship or rm.warmup_cache):  # no entry can apply: skip hashing the weights and pairs
        return compute()
    key = cache_key(game)
    shipped = SHIPPED_DIR / f"{key}.pt"
    if may_ship and shipped.is_file():
        return load_entry(step, shipped, "shipped with the package")
    if not rm.warmup_cache:
        return compute()
    path = cache_entry_path(game.config.model.cache_dir, key)
    with file_lock(path.with_suffix(".lock")):  # two runs of one seed started together warm up once
        if path.is_file():
            return load_entry(step, path, "from the warm-up cache")
        metrics = compute()
        if metrics is None:  # stopped part-way: nothing to cache; the resumed run finishes it uncached
            return None
        game.ctx.reset_role_optimizer_state("reward")
        save_entry(step, metrics, path)
        logger.info("base RM saved to the warm-up cache %s", path)
        return metrics


def cache_entry_path(cache_dir: str | None, key: str) -> Path:
    """Where rm.warmup_cache keeps the entry of `key` (model.cache_dir, else the default cache root)."""
    return cache_root(cache_dir) / "base-rm" / f"{key}.pt"


def load_entry(step, path: Path, where: str) -> dict[str, float]:
    """Set the base RM and the random states a warm-up would have left; its metrics."""
    entry = torch.load(path, map_location="cpu", weights_only=False)
    step.scorer.load_weights(entry["weights"])
    step.snapshot_base()
    step.rng.setstate(entry["rm_rng"])
    set_rng_state(entry["rng"])
    logger.info("base RM loaded %s: %s", where, path)
    return entry["metrics"]


def save_entry(step, metrics: dict[str, float], path: Path) -> None:
    """What a warm-up leaves behind, written atomically (a crash leaves no half entry)."""
    entry = {"weights": step.base_state, "rm_rng": step.rng.getstate(), "rng": rng_state(), "metrics": metrics}
    tmp = path.with_suffix(".tmp")
    torch.save(entry, tmp)
    tmp.rename(path)


def cache_key(game) -> str:
    """Hash of every input of the warm-up (module docstring)."""
    step, rm = game.rm_step, game.config.rm
    digest = hashlib.sha256()
    settings = [CACHE_VERSION, torch.__version__, rm.pairs_per_step, rm.micro_batches, rm.learning_rate, rm.beta2,
                step.warmup_steps(), game.config.game.max_grad_norm, game.config.model.dtype,
                rm.shared_prefix]  # the shared prefix rounds differently from joined rows
    digest.update(json.dumps(settings).encode())
    for name, tensor in sorted(step.scorer.weights().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    for pair in step.pairs:
        digest.update(json.dumps([pair.prompt_ids, pair.chosen_ids, pair.rejected_ids]).encode())
    digest.update(repr(step.rng.getstate()).encode())
    digest.update(repr(random.getstate()).encode())
    digest.update(np.random.get_state()[1].tobytes())
    digest.update(torch.get_rng_state().numpy().tobytes())
    return digest.hexdigest()[:24]
