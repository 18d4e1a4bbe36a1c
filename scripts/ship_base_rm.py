"""Ship a recipe's base RM inside the package, so that its first run skips the RM warm-up (rm.shipped_base_rm).

    python scripts/ship_base_rm.py                       # the default recipe (recipes/apo_ppo.yaml: ppo) at its seed
    python scripts/ship_base_rm.py --recipe ppo --game.seed 42 [other config overrides]

Builds the recipe's game, warms its RM up through the warm-up cache (so an entry computed earlier with exactly the
same inputs is reused) and copies the entry to apo_online/testbeds/base_rm/<key>.pt, replacing the entries shipped
before (the package ships one). Run it again whenever the default recipe, the testbed's human pairs, the model or
torch change: tests/test_warmup_cache.py fails while the default recipe's key has no shipped entry.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import this checkout's package, not an installed copy
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from apo_online.config import load_config  # noqa: E402
from apo_online.game import APOGame  # noqa: E402
from apo_online.recipes import recipe_yaml  # noqa: E402
from apo_online.rm.warmup_cache import (SHIPPED_DIR, cache_entry_path, cache_key,  # noqa: E402
                                        warm_up_reward_model)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="ppo", help="a shipped recipe's name (apo_online/recipes/)")
    args, overrides = parser.parse_known_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        config = load_config(overrides + ["--rm.warmup_cache", "true", "--rm.shipped_base_rm", "false",
                                          "--game.output_dir", scratch], default_yaml=recipe_yaml(args.recipe))
        game = APOGame(config)
        key = cache_key(game)
        warm_up_reward_model(game, show_progress=True)
    cached = cache_entry_path(config.model.cache_dir, key)
    SHIPPED_DIR.mkdir(parents=True, exist_ok=True)
    for old in SHIPPED_DIR.glob("*.pt"):
        old.unlink()
    target = SHIPPED_DIR / cached.name
    shutil.copyfile(cached, target)
    print(f"shipped {target} ({target.stat().st_size / 1e6:.1f} MB)")
    return target


if __name__ == "__main__":
    main()
