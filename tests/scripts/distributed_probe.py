"""Deterministic phases of the game, for comparing 1 process, DDP and DeepSpeed ZeRO (not a test module).

    accelerate launch [--num_processes N ...] tests/scripts/distributed_probe.py OUT_DIR --section.field value ...

Why not compare whole games: each process samples with its own seed, so N processes never draw the samples that
1 process draws. The probe takes sampling out of the comparison. Every process generates the SAME global rollout
(same seed, same weights, all prompts of the global batch) and keeps its own slice of rows, exactly what the game
would hand it if the samples had come out that way. From there nothing is random, and with the same global batch
every setup must reach the same weights and metrics (up to the order of float sums):
  ppo        one PPO update (policy + value) on the sliced rollout
  rm         one adversarial RM update (refit from the base RM) on fixed (gold, sample) groups and human pairs
  rm_again   the same RM update again: the refit must restore the base weights, DeepSpeed's fp32 master copies
             and a fresh optimizer state, so it lands on `rm`'s weights
  reload     save a checkpoint, one more PPO update, load the checkpoint, the same update again: same weights
Writes OUT_DIR/result.pt (main process): weights after each phase, metrics averaged over processes, each
process's weight checksum.
"""

import dataclasses
import sys
from pathlib import Path

import torch
from accelerate.utils import gather_object

from apo_online.run.checkpoint import load_checkpoint, save_checkpoint, weights_checksum
from apo_online.config import load_config
from apo_online.game import APOGame
from apo_online.rollout import Rollout, collect_rollout

REPO = Path(__file__).resolve().parents[2]
ROLLOUT_SEED = 1234


def slice_rollout(rollout: Rollout, rows: slice) -> Rollout:
    values = {f.name: getattr(rollout, f.name) for f in dataclasses.fields(rollout)}
    return Rollout(**{name: value[rows] if torch.is_tensor(value) else value for name, value in values.items()})


def global_rollout(game, num_prompts: int) -> Rollout:
    """The same rollout on every process: same seed, same prompts (the first of the list), same weights."""
    positions = list(range(num_prompts))
    torch.manual_seed(ROLLOUT_SEED)
    return collect_rollout(game.ctx, [game.prompts[i] for i in positions], positions, game.config.rollout,
                           game.spec, game.tokenizer)


def fix_rm_batches(game, rollout: Rollout, rows: slice) -> None:
    """The RM step draws its groups and pairs at random per process: hand it this process's share of fixed ones."""
    responses = rollout.response_lists()
    groups = [(int(rollout.prompt_index[i]), [responses[i]]) for i in range(len(rollout))][rows]
    pairs = game.pairs[: len(rollout)][rows]
    game.rm_step.fresh_groups = lambda buffer, step: groups
    game.rm_step._draw_groups = lambda fresh: fresh
    game.rm_step._draw_pairs = lambda: pairs


def main(out: Path, argv: list[str]) -> None:
    game = APOGame(load_config(argv, default_yaml=REPO / "apo_online" / "recipes" / "apo_ppo.yaml"))
    ctx, accelerator = game.ctx, game.accelerator
    game.rm_step.warmup(0)  # the base RM = the initial reward adapter (no random pair draws)
    per_process = game.config.rollout.prompts_per_step * game.spec.samples_per_prompt
    rows = slice(accelerator.process_index * per_process, (accelerator.process_index + 1) * per_process)
    full = global_rollout(game, game.config.rollout.prompts_per_step * accelerator.num_processes)
    local = slice_rollout(full, rows)
    fix_rm_batches(game, full, rows)

    weights, metrics = {"start": ctx.read_weights()}, {}
    metrics["ppo"] = game.metrics_log.log(game.policy_optimizer.step(local), step=1)
    weights["ppo"] = ctx.read_weights()
    for phase in ("rm", "rm_again"):
        metrics[phase] = game.metrics_log.log(game.rm_step.update(game.buffer, 0), step=1)
        weights[phase] = ctx.read_weights()

    path = save_checkpoint(game, step=1)
    weights["saved"] = ctx.read_weights()
    game.policy_optimizer.step(local)
    weights["after_save"] = ctx.read_weights()
    load_checkpoint(game, path)
    weights["loaded"] = ctx.read_weights()
    game.policy_optimizer.step(local)
    weights["after_load"] = ctx.read_weights()

    checksums = gather_object([weights_checksum(weights["after_load"])])
    if accelerator.is_main_process:
        torch.save({"weights": weights, "metrics": metrics, "checksums": checksums, "zero_stage": ctx.zero_stage,
                    "num_processes": accelerator.num_processes}, out / "result.pt")
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
