"""The built-in recipes' default settings, one YAML per policy optimizer, shipped inside the package so that an
installed wheel plays the same games as the scripts under recipes/ (`apo-online ppo`, `accelerate launch -m apo_online
ppo`, `python recipes/apo_ppo.py`: one file each, read through recipe_yaml)."""

from __future__ import annotations

from pathlib import Path

RECIPES = {"ppo": "apo_ppo.yaml", "dpo": "apo_dpo.yaml", "rjs": "apo_rjs.yaml", "grpo": "apo_grpo.yaml"}


def recipe_yaml(name: str) -> Path:
    """The default YAML of a built-in recipe (ppo, dpo, rjs, grpo)."""
    if name not in RECIPES:
        raise KeyError(f"no built-in recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return Path(__file__).parent / RECIPES[name]
