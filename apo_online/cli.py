"""Command-line entry shared by the recipes: config loading, logging, clean errors for bad input."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from apo_online.allocator import allocator_in_use
from apo_online.config import load_config
from apo_online.errors import BAD_INPUT, GAME_FAULTS
from apo_online.run.stopping import follow_launcher


def _setup_logging() -> None:
    rank = os.environ.get("RANK", "0")
    level = logging.INFO if rank == "0" else logging.WARNING
    logging.basicConfig(level=level, format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "filelock", "datasets", "torch.distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


USAGE = """usage: accelerate launch RECIPE [--config FILE.yaml] [--section.field VALUE ...] [--dry_run] [--help]

  --config FILE   a YAML file of sections (model:, data:, rollout:, game:, rm:, reward:, ppo: ...) over the recipe's
                  own; repeatable (applied in order); `extends: other.yaml` in a file applies that file first
  --dry_run       check the config and the data and print the plan, without loading model weights
  --field VALUE   also accepted when only one section has that field
Exit status: 0 finished; 2 bad config, data, checkpoint or run directory; 3 too many non-finite updates or a bad
reward value; 128+N stopped by signal N after a checkpoint (docs/faults_and_resume.md: what each launcher makes of
these)."""


def main(argv: list[str], default_yaml: str | Path | None = None, game_cls=None) -> int:
    """Run one game and return the exit status, with a one-line message (no traceback) when it did not finish:
    2 bad configuration, data or checkpoint, or a run directory in use or holding an earlier run's output;
    3 stopped after too many non-finite updates or a reward term's bad value (a checkpoint was written); 128+N
    stopped by signal N (SIGTERM: 143, SIGINT: 130) after a checkpoint. A launcher may report these differently
    (docs/faults_and_resume.md, fault table)."""

    _setup_logging()
    log = logging.getLogger("apo_online")
    follow_launcher()  # first: a launcher that dies during the loading must not leave the game running alone
    if "--help" in argv or "-h" in argv:
        from apo_online.config_help import config_help

        print(USAGE + "\n\n" + config_help(default_yaml))
        return 0
    dry_run = "--dry_run" in argv  # a flag without a value: check config and data, print the plan, stop
    argv = [arg for arg in argv if arg != "--dry_run"]
    try:
        config = load_config(argv, default_yaml=default_yaml)
        if dry_run:
            from apo_online.dry_run import plan

            if os.environ.get("RANK", "0") == "0":
                print("\n".join(plan(config)))
            return 0
        if game_cls is None:
            from apo_online.game import APOGame as game_cls
        started = time.perf_counter()
        log.info("memory allocator: %s", allocator_in_use())
        game = game_cls(config)
        metrics = game.run()
    except (*BAD_INPUT, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except GAME_FAULTS as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    except KeyboardInterrupt as err:
        print(f"aborted: {err or 'interrupted'}", file=sys.stderr)
        return 130
    if game.stop_signal is not None:
        where = f"after step {game.step}" if game.warmed_up else "during the RM warm-up"
        print(f"stopped by signal {game.stop_signal} {where}; checkpoint: {game.last_checkpoint}; "
              f"continue with --game.resume_from_checkpoint latest", file=sys.stderr)
        return 128 + int(game.stop_signal)
    if game.accelerator.is_main_process:
        log.info("finished %d steps in %.1f s; TensorBoard: tensorboard --logdir %s", game.step,
                 time.perf_counter() - started, config.game.output_dir)
        shown = {k: round(v, 4) for k, v in sorted(metrics.items()) if not k.startswith("timing/")}
        log.info("last step metrics: %s", shown)
    return 0


CONSOLE_USAGE = """usage: apo-online RECIPE [--config FILE.yaml] [--section.field VALUE ...] [--dry_run] [--help]
       accelerate launch -m apo_online RECIPE ...      (several processes, DeepSpeed: the accelerate config decides)

Plays the game of a built-in recipe with its default YAML shipped in the package (apo_online/recipes/): the
same game as `python recipes/apo_<RECIPE>.py` in a checkout. RECIPE: {recipes}.
`apo-online RECIPE --help` lists every config field with the recipe's value."""


def console_main(argv: list[str] | None = None) -> int:
    """`apo-online RECIPE ...` (the installed console command) and `python -m apo_online RECIPE ...`."""
    from apo_online.recipes import RECIPES, recipe_yaml

    argv = sys.argv[1:] if argv is None else list(argv)
    usage = CONSOLE_USAGE.format(recipes=", ".join(RECIPES))
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return 0
    if argv[0] not in RECIPES:
        print(f"error: no recipe {argv[0]!r}; choose one of {', '.join(RECIPES)}\n\n{usage}", file=sys.stderr)
        return 2
    return main(argv[1:], default_yaml=recipe_yaml(argv[0]))
