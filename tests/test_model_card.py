"""The model card of final/: the adapters load with peft from the folder and answer as the trained policy does, the
card's snippet runs, and a built-in base model is named by its hub id (with how the offline copy was made)."""

import json
import re
import subprocess

import pytest
import torch
import yaml

from apo_online.config import Config
from apo_online.run.model_card import apo_settings, render_card, write_model_card
from apo_online.model_loading import resolve_model_path
from conftest import PYTHON, python_env


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_path):
    """A 1-step tiny game run to its end (final/ written), with the game object for comparisons."""
    from accelerate.state import AcceleratorState, GradientState

    from apo_online.config import load_config
    from apo_online.game import APOGame
    from conftest import REPO, tiny_overrides

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    output = tmp_path_factory.mktemp("card")
    game = APOGame(load_config(tiny_overrides(output, **{"game.total_steps": 1}),
                               default_yaml=REPO / "apo_online/recipes/apo_ppo.yaml"))
    game.run()
    yield game, output / "final"
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def test_the_policy_adapter_loads_with_peft_from_the_folder_and_is_the_trained_policy(finished_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    game, final = finished_run
    config = json.loads((final / "policy" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == resolve_model_path("tiny-llama")  # no hub id: the local copy
    base = AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"])
    policy = PeftModel.from_pretrained(base, str(final / "policy")).eval()
    ids = torch.tensor([game.prompts[0].input_ids])
    backbone = game.ctx.backbone
    with torch.no_grad(), backbone.role("policy"):
        trained = backbone.peft_model(input_ids=ids).logits
    with torch.no_grad():
        loaded = policy(input_ids=ids).logits
    assert torch.allclose(loaded, trained, atol=1e-5)
    with torch.no_grad(), policy.disable_adapter():
        untouched = policy(input_ids=ids).logits
    assert not torch.allclose(untouched, trained, atol=1e-5)  # one PPO step moved the policy: the check can fail


def test_the_card_says_what_was_trained_and_its_snippet_runs(finished_run):
    game, final = finished_run
    card = (final / "README.md").read_text()
    assert front_matter(card)["library_name"] == "peft" and "base_model" not in front_matter(card)  # no hub id
    assert "[More Information Needed]" not in card  # not peft's template
    for text in ("| `policy/` | the policy: answers prompts | `ppo` policy optimizer |",
                 "| `reward/` | the APO reward model", "APO reward-model settings", "`rm.update_every` | 1 |",
                 "| `kl_coef` | 0.05 |", "the embedded task", "| `objective/scores` | 1 |", "| `data/train_prompts` | 0 | 64 |"):
        assert text in card, text
    snippet = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    result = subprocess.run([PYTHON, "-c", snippet], env=python_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def smollm2_config(tmp_path) -> dict:
    raw = Config().to_dict()
    raw["game"]["output_dir"] = str(tmp_path)
    raw["ppo"] = {"learning_rate": 1e-4}
    return raw


def test_a_built_in_base_model_is_named_by_its_hub_id_with_its_offline_copy(tmp_path):
    raw = smollm2_config(tmp_path)
    for role in ("policy", "value", "reward"):
        (tmp_path / "final" / role).mkdir(parents=True)
        (tmp_path / "final" / role / "adapter_config.json").write_text(json.dumps(
            {"base_model_name_or_path": "/root/.cache/apo_online/smollm2-135m-instruct-v1", "r": 8}))
    write_model_card(tmp_path / "final", raw, ("policy", "value"), num_processes=2, has_chat_template=True)
    for role in ("policy", "value", "reward"):
        config = json.loads((tmp_path / "final" / role / "adapter_config.json").read_text())
        assert config == {"base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct", "r": 8}
    card = (tmp_path / "final" / "README.md").read_text()
    assert front_matter(card)["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "(hub id `HuggingFaceTB/SmolLM2-135M-Instruct`)" in card and "SmolLM2-135M-Instruct.Q4_1.gguf" in card
    assert "resolve_model_path('smollm2-135m-instruct')" in card and "0 policy steps on 2 processes" in card


def test_apo_settings_come_from_an_rm_section_when_the_config_has_one(tmp_path):
    raw = smollm2_config(tmp_path)
    old = {section: values for section, values in raw.items() if section != "rm"}  # saved before the rm: section
    old["game"] = old["game"] | {"rm_update_every": 2, "beta2": 1.0}
    assert apo_settings(old)["game.beta2"] == 1.0 and "game.seed" not in apo_settings(old)
    raw["rm"] = {"update_every": 2, "beta2": 0.5}
    assert apo_settings(raw) == {"rm.update_every": 2, "rm.beta2": 0.5}
    assert "| `rm.beta2` | 0.5 |" in render_card(raw, tmp_path, ("policy",), [], 1, True)
