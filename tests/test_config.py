"""Configuration: YAML < --config < CLI precedence, type conversion, and the documented errors."""

from dataclasses import dataclass

import re

import pytest

from apo_online.config import Config, ConfigError, load_config
from apo_online.optimizers.registry import _REGISTRY, register_optimizer

from conftest import REPO

DEFAULT_YAML = REPO / "apo_online/recipes/apo_ppo.yaml"
FULL_GAME_YAML = REPO / "apo_online/recipes/apo_ppo_full.yaml"


def test_precedence_yaml_then_config_file_then_cli(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("game:\n  total_steps: 7\nrm:\n  beta2: 0.5\nppo:\n  cliprange: 0.1\n")
    config = load_config(["--config", str(extra), "--game.total_steps", "9", "--kl_coef=0.2"],
                         default_yaml=DEFAULT_YAML)
    assert config.game.total_steps == 9  # CLI beats --config
    assert config.rm.beta2 == 0.5  # --config beats the recipe default
    assert config.optimizer_config("ppo").cliprange == 0.1
    assert config.optimizer_config("ppo").kl_coef == 0.2  # bare, unambiguous field name
    assert config.model.model_name_or_path == "smollm2-135m-instruct"  # recipe default kept


def test_types_are_converted_and_none_accepted():
    config = load_config(["--rollout.missing_eos_penalty", "none", "--rm.update_every", "3",
                          "--model.gradient_checkpointing", "true"])
    assert config.rollout.missing_eos_penalty is None
    assert config.rm.update_every == 3 and isinstance(config.rm.update_every, int)
    assert config.model.gradient_checkpointing is True


@pytest.mark.parametrize("argv, message", [
    (["--game.total_steps", "many"], "game.total_steps: expected int, got 'many'"),
    (["--game.no_such_field", "1"], "unknown field game.no_such_field"),
    (["--nosection.field", "1"], "unknown section 'nosection'"),
    (["--totally_unknown", "1"], "--totally_unknown: no such field"),
    (["--game.total_steps"], "needs a value"),
    (["positional"], "expected --key value"),
    (["--model.gradient_checkpointing", "maybe"], "expected true/false"),
])
def test_bad_command_lines_name_the_field(argv, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(argv)


def test_bad_yaml_files(tmp_path):
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(["--config", str(missing)])
    broken = tmp_path / "broken.yaml"
    broken.write_text("game: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(["--config", str(broken)])
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("game: 3\n")
    with pytest.raises(ConfigError, match="section 'game' must be a mapping"):
        load_config(["--config", str(scalar)])


def test_extends_applies_the_base_file_first_relative_to_the_extending_file(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "base.yaml").write_text("game:\n  total_steps: 30\n  eval_every: 10\nrm:\n  beta2: 2.0\n")
    (tmp_path / "configs" / "middle.yaml").write_text("extends: base.yaml\ngame:\n  total_steps: 6\n")
    top = tmp_path / "top.yaml"
    top.write_text("extends: configs/middle.yaml\nrm:\n  beta2: 0.5\n")
    config = load_config(["--config", str(top), "--game.eval_every", "3"])
    assert config.game.total_steps == 6  # middle beats base
    assert config.rm.beta2 == 0.5  # top beats base
    assert config.game.eval_every == 3  # the command line beats every file


def test_several_config_files_apply_in_order(tmp_path):
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    first.write_text("game:\n  total_steps: 30\n  eval_every: 10\n")
    second.write_text("game:\n  total_steps: 6\n")
    config = load_config(["--config", str(first), "--config", str(second)], default_yaml=DEFAULT_YAML)
    assert (config.game.total_steps, config.game.eval_every) == (6, 10)
    # the study's way: the full game, then a user's file that changes one thing, on the short first run's recipe
    config = load_config(["--config", str(FULL_GAME_YAML), "--config", str(second)], default_yaml=DEFAULT_YAML)
    assert config.game.total_steps == 6 and config.rollout.prompts_per_step == 8 and config.rm.steps_per_update == 8


@pytest.mark.parametrize("files, message", [
    ({"a.yaml": "extends:\n"}, "a.yaml: extends: expected the path of a YAML file, got None"),
    ({"a.yaml": "extends: nowhere.yaml\n"}, "a.yaml: extends: config file not found: .*nowhere.yaml"),
    ({"a.yaml": "extends: b.yaml\n", "b.yaml": "extends: a.yaml\n"}, "extend each other in a cycle: .*a.yaml -> "),
    ({"a.yaml": "extends: a.yaml\n"}, "cycle"),
    ({"a.yaml": "extends: [b.yaml]\n"}, "a.yaml: extends: expected the path of a YAML file, got \\['b.yaml'\\]"),
])
def test_bad_extends_names_the_file_and_what_was_wrong(tmp_path, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(["--config", str(tmp_path / "a.yaml")])


# what the README's first run changes of the full game: sizes only, never a setting of the game itself
FIRST_RUN_SIZES = {("game", "total_steps"), ("game", "eval_every"), ("game", "output_dir"),
                   ("rollout", "prompts_per_step"), ("rm", "update_every"), ("rm", "steps_per_update"),
                   ("rm", "heldout_margin_prompts"), ("data", "num_eval_prompts")}


def test_the_first_run_is_the_full_game_at_smaller_sizes_and_shows_every_part():
    first, full = load_config([], default_yaml=DEFAULT_YAML), load_config([], default_yaml=FULL_GAME_YAML)
    first_dict, full_dict = first.to_dict(), full.to_dict()
    changed = {(section, key) for section, values in full_dict.items() if isinstance(values, dict)
               for key, value in values.items() if first_dict[section][key] != value}
    assert changed == FIRST_RUN_SIZES
    g, rm = first.game, first.rm
    assert g.total_steps // rm.update_every >= 2  # at least two RM refits
    assert g.eval_every and g.total_steps % g.eval_every == 0  # the judge evaluates at the end
    # --config apo_ppo_full.yaml over the recipe's default plays exactly the full game (so the full file sets every
    # field the first run changes, even where it keeps the dataclass default)
    assert load_config(["--config", str(FULL_GAME_YAML)], default_yaml=DEFAULT_YAML).to_dict() == full_dict


def test_ambiguous_bare_field_asks_for_the_section():
    @dataclass
    class OtherConfig:
        kl_coef: float = 0.0

    @register_optimizer("ambiguity_probe", OtherConfig)
    class Probe:  # never instantiated
        pass

    try:
        with pytest.raises(ConfigError, match="it is in .*ppo.*write --<section>.kl_coef"):
            load_config(["--kl_coef", "0.3"])
    finally:
        _REGISTRY.pop("ambiguity_probe")


def test_validate_unknown_optimizer_and_inconsistent_sizes():
    config = load_config(["--game.policy_optimizer", "nope"])
    with pytest.raises(ConfigError, match="unknown policy optimizer 'nope'.*registered: .*ppo"):
        config.validate()
    config = load_config(["--rollout.prompts_per_step", "6", "--ppo.num_minibatches", "4"])
    with pytest.raises(ConfigError, match="6 rollouts per process must divide evenly into .* = 4 micro-batches"):
        config.validate()
    config = load_config(["--rm.mode", "sometimes"])
    with pytest.raises(ConfigError, match="rm.mode must be 'refit' or 'continue'"):
        config.validate()
    Config().validate()  # the defaults are consistent


def test_to_dict_round_trips_through_yaml(tmp_path):
    import yaml

    config = load_config(["--game.total_steps", "5", "--ppo.cliprange", "0.3"], default_yaml=DEFAULT_YAML)
    path = tmp_path / "dump.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    again = load_config(["--config", str(path)])
    assert again.to_dict() == config.to_dict()


@pytest.mark.parametrize("argv, message", [
    (["--game.rm_update_every", "3"], "command line: game.rm_update_every moved to the rm: section; write rm.update_every"),
    (["--rm_warmup_steps", "3"], "command line: --rm_warmup_steps moved to the rm: section; write --rm.warmup_steps"),
    (["--game.beta2", "3"], "game.beta2 moved to the rm: section; write rm.beta2"),
])
def test_old_game_rm_keys_name_their_new_home(argv, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(argv)


def test_old_game_rm_keys_in_yaml_name_their_new_home(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text("game:\n  rm_learning_rate: 1.0e-5\n")
    with pytest.raises(ConfigError, match=re.escape(f"{old}: game.rm_learning_rate moved to the rm: section; "
                                                    "write rm.learning_rate")):
        load_config(["--config", str(old)])


def test_flags_of_an_optimizer_that_is_not_running_are_refused_yaml_sections_warned(tmp_path, caplog):
    with pytest.raises(ConfigError, match=r"--dpo.loss_type sets the dpo optimizer, but this game runs "
                                          r"game.policy_optimizer=ppo; add --game.policy_optimizer dpo"):
        load_config(["--dpo.loss_type", "ipo"], default_yaml=DEFAULT_YAML)
    assert load_config(["--dpo.loss_type", "ipo", "--game.policy_optimizer", "dpo"],
                       default_yaml=DEFAULT_YAML).optimizer_config().loss_type == "ipo"
    shared = tmp_path / "shared.yaml"
    shared.write_text("rjs:\n  epochs: 2\ndpo:\n  beta: 0.2\n")
    caplog.clear()
    load_config(["--config", str(shared)], default_yaml=DEFAULT_YAML)  # a file shared by recipes: allowed
    assert "config sections dpo:, rjs: are ignored: this game runs game.policy_optimizer=ppo" in caplog.text


@pytest.mark.parametrize("script", ["recipes/apo_ppo.py", "recipes/apo_rjs.py", "eval/rm_probe.py", "eval/bon_probe.py",
                                    "eval/study.py"])
def test_help_lists_every_field_with_its_default_and_description(script):
    import dataclasses
    import subprocess

    from apo_online.config_help import field_descriptions
    from apo_online.optimizers.base import known_optimizer_names
    from conftest import PYTHON, python_env

    result = subprocess.run([PYTHON, script, "--help"], cwd=REPO, env=python_env(), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    config = load_config([])
    sections = [(n, getattr(config, n)) for n in Config.CORE_SECTIONS]
    sections += [(n, config.optimizer_config(n)) for n in known_optimizer_names()]
    for name, section in sections:
        described = field_descriptions(type(section))
        for f in dataclasses.fields(section):
            assert f"--{name}.{f.name} " in result.stdout, f"{name}.{f.name} missing from {script} --help"
            assert described.get(f.name), f"{name}.{f.name} has no description (a # comment beside or above it)"
    if script.startswith("recipes"):  # the recipe's value, not the dataclass default (20)
        assert f"--game.total_steps {4 if script.endswith('ppo.py') else 20}" in result.stdout
