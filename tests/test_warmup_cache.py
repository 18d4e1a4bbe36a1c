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
