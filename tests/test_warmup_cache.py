"""rm.warmup_cache: a game that loads a cached base RM goes on exactly as the game that warmed up itself."""

import pytest
import torch

from apo_online.rm.apo_step import AdversarialRewardStep
from apo_online.run.log import read_metrics
from conftest import make_game


def play(tiny_config, accelerator, output, **extra):
    """(step -> metrics without timings, final adapter weights) of a 3-step game."""
    game = make_game(tiny_config, accelerator, **{"game.output_dir": str(output), "game.total_steps": 3,
                                                  "rm.warmup_steps": 3, **extra})
    game.run()
    metrics = {r["step"]: {k: v for k, v in r.items() if not k.startswith("timing/")}
               for r in read_metrics(output / "metrics.jsonl")}
    return metrics, {k: v.clone() for k, v in game.ctx.trainable_parameters().items()}


def assert_same_run(a, b):
    assert a[0] == b[0]
    assert a[1].keys() == b[1].keys()
    for name in a[1]:
        assert torch.equal(a[1][name], b[1][name]), name


def test_cached_warmup_is_shared_across_arms_and_changes_nothing(tiny_config, single_accelerator, tmp_path,
                                                                  apo_cache, monkeypatch):
    entries = lambda: sorted((apo_cache / "base-rm").glob("*.pt"))  # noqa: E731
    before = entries()
    # the APO arm warms up and fills the cache
    play(tiny_config, single_accelerator(), tmp_path / "apo", **{"rm.warmup_cache": "true"})
    assert len(entries()) == len(before) + 1
    # the frozen arm of the same seed reuses that base RM: the warm-up itself must not run
    uncached_frozen = play(tiny_config, single_accelerator(), tmp_path / "frozen_plain", **{"rm.update_every": 0})
    real_warmup = AdversarialRewardStep.warmup
    monkeypatch.setattr(AdversarialRewardStep, "warmup", lambda *a, **k: pytest.fail("warmed up despite the cache"))
    cached_frozen = play(tiny_config, single_accelerator(), tmp_path / "frozen_cached",
                         **{"rm.update_every": 0, "rm.warmup_cache": "true"})
    assert_same_run(cached_frozen, uncached_frozen)
    assert "rm_warmup/loss" in cached_frozen[0][0]
    # another seed is another warm-up
    monkeypatch.setattr(AdversarialRewardStep, "warmup", real_warmup)
    play(tiny_config, single_accelerator(), tmp_path / "seed7", **{"rm.warmup_cache": "true", "game.seed": 7})
    assert len(entries()) == len(before) + 2
    # so is a warm-up that writes out the shared prompts (it rounds differently)
    play(tiny_config, single_accelerator(), tmp_path / "joined", **{"rm.warmup_cache": "true",
                                                                    "rm.shared_prefix": "false"})
    assert len(entries()) == len(before) + 3


def test_cached_warmup_refit_arm_equals_uncached(tiny_config, single_accelerator, tmp_path):
    """The APO arm (refits from the base RM) with its base RM from the cache equals the same arm without the cache:
    the first run computes and stores, the second loads."""
    plain = play(tiny_config, single_accelerator(), tmp_path / "plain", **{"game.seed": 11})
    first = play(tiny_config, single_accelerator(), tmp_path / "first", **{"game.seed": 11, "rm.warmup_cache": "true"})
    second = play(tiny_config, single_accelerator(), tmp_path / "second",
                  **{"game.seed": 11, "rm.warmup_cache": "true"})
    assert_same_run(first, plain)
    assert_same_run(second, plain)


def test_shipped_base_rm_is_loaded_and_plays_as_the_computed_warmup(tiny_config, single_accelerator, tmp_path,
                                                                     monkeypatch):
    """rm.shipped_base_rm: an entry shipped under the game's key replaces the warm-up, and the game then plays
    exactly as one that warmed up itself; continue mode (whose warm-up moments carry on) computes its own."""
    from apo_online.rm import warmup_cache

    plain = play(tiny_config, single_accelerator(), tmp_path / "plain",
                 **{"game.seed": 13, "model.cache_dir": str(tmp_path / "own_cache")})
    # an entry for exactly this game, written by the cache, then moved into a stand-in for the package folder
    play(tiny_config, single_accelerator(), tmp_path / "writer",
         **{"game.seed": 13, "rm.warmup_cache": "true", "model.cache_dir": str(tmp_path / "own_cache")})
    shipped = tmp_path / "shipped"
    (tmp_path / "own_cache" / "base-rm").rename(shipped)
    monkeypatch.setattr(warmup_cache, "SHIPPED_DIR", shipped)
    real_warmup = AdversarialRewardStep.warmup
    monkeypatch.setattr(AdversarialRewardStep, "warmup", lambda *a, **k: pytest.fail("warmed up despite the entry"))
    loaded = play(tiny_config, single_accelerator(), tmp_path / "loaded",
                  **{"game.seed": 13, "model.cache_dir": str(tmp_path / "own_cache")})
    assert_same_run(loaded, plain)
    # continue mode, or the switch off: the warm-up runs
    calls = []
    monkeypatch.setattr(AdversarialRewardStep, "warmup", lambda *a, **k: calls.append(1) or real_warmup(*a, **k))
    play(tiny_config, single_accelerator(), tmp_path / "continue", **{"game.seed": 13, "rm.mode": "continue"})
    play(tiny_config, single_accelerator(), tmp_path / "off", **{"game.seed": 13, "rm.shipped_base_rm": "false"})
    assert len(calls) == 2


def test_the_default_recipe_has_its_base_rm_shipped(tmp_path, single_accelerator):
    """The README's first run skips its warm-up only while the package ships the entry of the default recipe's
    key: a change to the recipe, the testbed's pairs, the model or torch needs `python scripts/ship_base_rm.py`."""
    from apo_online.config import load_config
    from apo_online.game import APOGame
    from apo_online.recipes import recipe_yaml
    from apo_online.rm.warmup_cache import SHIPPED_DIR, cache_key

    config = load_config(["--game.output_dir", str(tmp_path / "run")], default_yaml=recipe_yaml("ppo"))
    key = cache_key(APOGame(config, accelerator=single_accelerator()))
    shipped = sorted(p.name for p in SHIPPED_DIR.glob("*.pt"))
    assert shipped == [f"{key}.pt"], f"shipped {shipped}; the default recipe needs {key}.pt: scripts/ship_base_rm.py"
