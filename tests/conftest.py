"""Shared fixtures: a tiny Llama (built from config, tokenizer trained on shipped text) and small game configs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Never reach a hub from the tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def apo_cache(tmp_path_factory) -> Path:
    """A private cache for built-in models, shared by every test and subprocess of this session."""
    cache = Path(os.environ.get("APO_ONLINE_TEST_CACHE") or tmp_path_factory.mktemp("apo_cache"))
    os.environ["APO_ONLINE_CACHE"] = str(cache)
    return cache


@pytest.fixture(scope="session")
def tiny_model_path(apo_cache) -> str:
    from apo_online.model_loading import resolve_model_path

    return resolve_model_path("tiny-llama")


@pytest.fixture
def adapted_backbone(tiny_model_path):
    """A SharedBackbone on the tiny Llama whose adapters are not zero (LoRA B starts at 0): every role's output
    differs from the base model's, so a test can tell the policy, the folded policy and the reference apart."""
    import torch

    from apo_online.backbone import LoraSettings, SharedBackbone
    from apo_online.config import ModelConfig
    from apo_online.model_loading import load_causal_lm

    torch.manual_seed(0)
    lm, _ = load_causal_lm(ModelConfig(model_name_or_path="tiny-llama"))
    backbone = SharedBackbone.build(lm, LoraSettings(r=4, alpha=8))
    with torch.no_grad():
        for name, param in backbone.peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    return backbone


def tiny_overrides(output_dir, **extra) -> list[str]:
    """CLI overrides for a seconds-long game on the tiny model."""
    values = {
        "model.model_name_or_path": "tiny-llama",
        "model.lora_r": 4,
        "model.lora_alpha": 8,
        # the plain embedded task: the judge-labelled testbed samples candidates from the model (tested on its own)
        "data.dataset_name": "embedded",
        "game.output_dir": str(output_dir),
        "game.total_steps": 2,
        "rm.warmup_steps": 2,
        "rm.update_every": 1,
        "rm.steps_per_update": 2,
        # the tiny model rarely stops within 6 tokens: with the stop-token guard the APO term would see no samples
        # (the guard has its own tests in test_reward_step.py)
        "rm.eos_only": "false",
        "game.eval_every": 0,
        "rollout.prompts_per_step": 4,
        "rollout.max_new_tokens": 6,
        "data.max_prompts": 64,
        "data.max_preference_pairs": 64,
    }
    values.update(extra)
    args: list[str] = []
    for key, value in values.items():
        args += [f"--{key}", str(value)]
    return args


@pytest.fixture
def tiny_config(tmp_path, tiny_model_path):
    from apo_online.config import load_config

    def make(**extra):
        return load_config(tiny_overrides(tmp_path / "run", **extra), default_yaml=REPO / "apo_online/recipes/apo_ppo.yaml")

    return make


@pytest.fixture
def single_accelerator():
    """A fresh accelerate state per test (accelerate keeps process-wide singletons)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield lambda **kw: Accelerator(**kw)
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    del PartialState


def python_env() -> dict[str, str]:
    """Environment for subprocesses: the repo importable, the test cache, no hub."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


PYTHON = sys.executable


def make_game(tiny_config, accelerator, **extra):
    """An APOGame on the tiny model with config overrides `extra` (dotted keys)."""
    from apo_online.game import APOGame

    return APOGame(tiny_config(**extra), accelerator=accelerator)


def fresh_rollout(game):
    """One rollout of the game's next prompt batch, as play_step collects it."""
    from apo_online.rollout import collect_rollout

    positions = game.sampler.next_batch()
    return collect_rollout(game.ctx, [game.prompts[i] for i in positions], positions, game.config.rollout, game.spec,
                           game.tokenizer)
