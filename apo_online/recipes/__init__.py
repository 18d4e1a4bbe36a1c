"""The built-in recipes' default settings, one YAML per policy optimizer, shipped inside the package so that an
installed wheel plays the same games as the scripts under recipes/ (`apo-online ppo`, `accelerate launch -m apo_online
ppo`, `python recipes/apo_ppo.py`: one file each, read through recipe_yaml).

A recipe's default may be a short first run that extends its full game (the PPO recipe: apo_ppo.yaml extends
apo_ppo_full.yaml, see config.load_yaml); studies, probes and benchmarks play the full game (full_game_yaml)."""

from __future__ import annotations

from pathlib import Path

RECIPES = {"ppo": "apo_ppo.yaml", "dpo": "apo_dpo.yaml", "rjs": "apo_rjs.yaml", "grpo": "apo_grpo.yaml"}
FULL_GAMES = {"ppo": "apo_ppo_full.yaml"}  # recipes whose default is a shorter first run of this full game


def recipe_yaml(name: str) -> Path:
    """The default YAML of a built-in recipe (ppo, dpo, rjs, grpo)."""
    if name not in RECIPES:
        raise KeyError(f"no built-in recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return Path(__file__).parent / RECIPES[name]


def full_game_yaml(name: str) -> Path:
    """The YAML of a built-in recipe's full game: the settings chosen on validation splits at their full sizes (the
    recipe's default itself where the default is not a shorter first run)."""
    recipe_yaml(name)  # the same error for an unknown name
    return Path(__file__).parent / FULL_GAMES.get(name, RECIPES[name])
