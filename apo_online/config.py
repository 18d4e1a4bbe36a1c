"""Run configuration: nested dataclasses, loaded from YAML and overridden from the command line.

A CLI override is `--section.field value` (or `--section.field=value`); a bare `--field value` works when the field
name belongs to one section only. Each policy optimizer brings its own config dataclass (see optimizers/base.py);
its section is named after the optimizer (`ppo:`, `dpo:`, `rjs:` or a user-registered name).
Derived sizes are checked once, in `Config.validate`, with messages that name the offending fields.
"""

from __future__ import annotations

import dataclasses
import logging
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from apo_online.config_sections import (DataConfig, GameConfig, ModelConfig, PolicyRewardConfig, RewardConfig,
                                        RolloutConfig)
from apo_online.errors import ConfigError
from apo_online.optimizers.registry import get_optimizer_entry, known_optimizer_names


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    game: GameConfig = field(default_factory=GameConfig)
    rm: RewardConfig = field(default_factory=RewardConfig)
    reward: PolicyRewardConfig = field(default_factory=PolicyRewardConfig)
    # Per-optimizer sections, keyed by registered optimizer name, each its optimizer's own dataclass.
    optimizers: dict[str, Any] = field(default_factory=dict)

    CORE_SECTIONS = ("model", "data", "rollout", "game", "rm", "reward")

    def optimizer_config(self, name: str | None = None) -> Any:
        """The config dataclass of optimizer `name` (default: the one the game uses), defaults if not given."""
        name = name or self.game.policy_optimizer
        if name not in self.optimizers:
            self.optimizers[name] = get_optimizer_entry(name).config_cls()
        return self.optimizers[name]

    def to_dict(self) -> dict[str, Any]:
        out = {name: dataclasses.asdict(getattr(self, name)) for name in self.CORE_SECTIONS}
        for name, section in self.optimizers.items():
            out[name] = dataclasses.asdict(section)
        return out

    def validate(self, world_size: int = 1) -> None:
        """Check values and derived sizes once, before anything heavy starts."""
        def need(condition: bool, message: str) -> None:
            if not condition:
                raise ConfigError(message)

        g, r, d, rm = self.game, self.rollout, self.data, self.rm
        entry = get_optimizer_entry(g.policy_optimizer)  # raises with the list of known names
        need(g.total_steps >= 0, f"game.total_steps must be >= 0, got {g.total_steps}")
        need(rm.update_every >= 0, f"rm.update_every must be >= 0 (0 disables), got {rm.update_every}")
        need(rm.mode in ("refit", "continue"), f"rm.mode must be 'refit' or 'continue', got {rm.mode!r}")
        need(rm.apo_compare in ("each", "mean", "preferred"),
             f"rm.apo_compare must be 'each', 'mean' or 'preferred', got {rm.apo_compare!r}")
        need(rm.beta2 >= 0 and rm.apo_coeff >= 0, f"rm.beta2 and rm.apo_coeff must be >= 0, got {rm.beta2}, "
             f"{rm.apo_coeff}")
        need(rm.micro_batches >= 1, f"rm.micro_batches must be >= 1, got {rm.micro_batches}")
        need(rm.sample_window >= 0, f"rm.sample_window must be >= 0 (0: the whole buffer), got {rm.sample_window}")
        need(rm.warmup_steps is None or rm.warmup_steps >= 0,
             f"rm.warmup_steps must be >= 0 or null (one pass over the human pairs), got {rm.warmup_steps}")
        need(rm.buffer_size >= 1, f"rm.buffer_size must be >= 1, got {rm.buffer_size}")
        need(g.eval_samples_per_prompt >= 1,
             f"game.eval_samples_per_prompt must be >= 1, got {g.eval_samples_per_prompt}")
        need(d.num_eval_prompts >= 1, f"data.num_eval_prompts must be >= 1, got {d.num_eval_prompts}")
        need(g.max_grad_norm > 0, f"game.max_grad_norm must be > 0, got {g.max_grad_norm}")
        need(g.max_consecutive_skips >= 1, f"game.max_consecutive_skips must be >= 1, got {g.max_consecutive_skips}")
        need(g.save_every >= 0 and g.keep_last_checkpoints >= 0,
             f"game.save_every and game.keep_last_checkpoints must be >= 0, got {g.save_every}, "
             f"{g.keep_last_checkpoints}")
        need(r.prompts_per_step >= 1, f"rollout.prompts_per_step must be >= 1, got {r.prompts_per_step}")
        need(r.samples_per_prompt >= 1, f"rollout.samples_per_prompt must be >= 1, got {r.samples_per_prompt}")
        need(r.temperature > 0, f"rollout.temperature must be > 0, got {r.temperature}")
        need(r.max_new_tokens >= 1, f"rollout.max_new_tokens must be >= 1, got {r.max_new_tokens}")
        need(d.prompt_overflow in ("truncate", "reject"),
             f"data.prompt_overflow must be 'truncate' or 'reject', got {d.prompt_overflow!r}")
        need(self.model.dtype in ("float32", "bfloat16", "float16"),
             f"model.dtype must be float32, bfloat16 or float16, got {self.model.dtype!r}")
        entry.validate(self, world_size)


# --------------------------------------------------------------------------------------------------------------------
# loading: YAML file + CLI overrides
# --------------------------------------------------------------------------------------------------------------------
def _convert(value: Any, annotation: Any, where: str) -> Any:
    """Convert a YAML or CLI value to the field's annotated type (str, int, float, bool, list[X], X | None)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        return _convert(value, options[0], where)
    if annotation is Any:
        return value
    if origin is list:  # a YAML list, or comma-separated on the command line
        (inner,) = typing.get_args(annotation) or (Any,)
        items = [item.strip() for item in value.split(",") if item.strip()] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{where}: expected a list (comma-separated on the command line), got {value!r}")
        return [_convert(item, inner, f"{where}[{i}]") for i, item in enumerate(items)]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if annotation in (int, float):
        try:
            converted = annotation(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected {annotation.__name__}, got {value!r}") from None
        if annotation is int and isinstance(value, float) and value != converted:
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return converted
    if annotation is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


# game.<old> -> rm.<new>: the RM step's fields moved to their own section; old keys get an error naming the new one.
MOVED_TO_RM = {"rm_update_every": "update_every", "rm_mode": "mode", "rm_steps_per_update": "steps_per_update",
               "rm_queries_per_step": "queries_per_step", "rm_pairs_per_step": "pairs_per_step",
               "rm_micro_batches": "micro_batches", "rm_learning_rate": "learning_rate", "beta2": "beta2",
               "apo_coeff": "apo_coeff", "buffer_size": "buffer_size", "rm_warmup_steps": "warmup_steps"}


def _apply(section: Any, values: dict[str, Any], section_name: str, source: str) -> None:
    fields = {f.name: f for f in dataclasses.fields(section)}
    types_of = typing.get_type_hints(type(section))  # the annotations are strings under `from __future__`
    for key, value in values.items():
        if section_name == "game" and key in MOVED_TO_RM:
            raise ConfigError(f"{source}: game.{key} moved to the rm: section; write rm.{MOVED_TO_RM[key]}")
        if key not in fields:
            raise ConfigError(f"{source}: unknown field {section_name}.{key}; known: {', '.join(sorted(fields))}")
        setattr(section, key, _convert(value, types_of[key], f"{source}: {section_name}.{key}"))


def _section(config: Config, name: str, source: str) -> Any:
    if name in Config.CORE_SECTIONS:
        return getattr(config, name)
    if name in known_optimizer_names():
        return config.optimizer_config(name)
    raise ConfigError(
        f"{source}: unknown section {name!r}; known: {', '.join(list(Config.CORE_SECTIONS) + known_optimizer_names())}"
    )


EXTENDS_KEY = "extends"  # a YAML file's top-level key naming the file it builds on


def load_yaml(path: str | Path, config: Config | None = None, sections: set[str] | None = None,
              _extended_by: tuple[Path, ...] = ()) -> Config:
    """Apply a YAML file's sections to config (a fresh one if None); their names are added to `sections`.

    A top-level `extends: other.yaml` (relative to this file's folder) applies that file first, so a file need only
    hold what it changes: the PPO recipe's short first run extends its full game (apo_ppo_full.yaml)."""
    config = config or Config()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (model:, data:, ...), got {type(raw).__name__}")
    if EXTENDS_KEY in raw:
        _load_base(path, raw.pop(EXTENDS_KEY), config, sections, _extended_by + (path.resolve(),))
    for name, values in raw.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: section {name!r} must be a mapping, got {values!r}")
        _apply(_section(config, name, str(path)), values, name, str(path))
        if sections is not None:
            sections.add(name)
    return config


def _load_base(path: Path, base: object, config: Config, sections: set[str] | None, chain: tuple[Path, ...]) -> None:
    """The file that `path` extends, applied to config before path's own sections."""
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{path}: {EXTENDS_KEY}: expected the path of a YAML file, got {base!r}")
    base_path = (path.parent / Path(base).expanduser()).resolve()  # an absolute path stays as it is
    if not base_path.is_file():
        raise ConfigError(f"{path}: {EXTENDS_KEY}: config file not found: {base_path}")
    if base_path in chain:
        cycle = " -> ".join(str(p) for p in chain + (base_path,))
        raise ConfigError(f"{path}: {EXTENDS_KEY}: the files extend each other in a cycle: {cycle}")
    load_yaml(base_path, config, sections, chain)


def _field_index(config: Config) -> dict[str, list[str]]:
    """bare field name -> the sections that have it, for unambiguous `--field` overrides."""
    index: dict[str, list[str]] = {}
    for name in list(Config.CORE_SECTIONS) + known_optimizer_names():
        for f in dataclasses.fields(_section(config, name, "cli")):
            index.setdefault(f.name, []).append(name)
    return index


def parse_overrides(argv: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Split argv into (the --config files in order, [(key, value)]). Accepts --key value and --key=value."""
    config_paths, pairs, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(f"command line: expected --key value, got {arg!r}")
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(argv):
                raise ConfigError(f"command line: {arg} needs a value")
            key, value = arg[2:], argv[i + 1]
            i += 2
        if key == "config":
            config_paths.append(value)
        else:
            pairs.append((key, value))
    return config_paths, pairs


def load_config(argv: list[str] | None = None, default_yaml: str | Path | None = None) -> Config:
    """Build the config: dataclass defaults < default_yaml < each --config file, in the order given < CLI overrides.
    (Several --config files layer: eval/study.py passes a recipe's full game, and a user's file goes on top.)"""
    config_paths, pairs = parse_overrides(list(argv or []))
    config, yaml_sections = Config(), set()
    for path in ([default_yaml] if default_yaml is not None else []) + config_paths:
        load_yaml(path, config, yaml_sections)
    index = _field_index(config)
    cli_sections: dict[str, str] = {}  # section -> the first flag that set it
    for key, value in pairs:
        if "." in key:
            section_name, field_name = key.split(".", 1)
        else:
            owners = index.get(key, [])
            if not owners and key in MOVED_TO_RM:
                raise ConfigError(f"command line: --{key} moved to the rm: section; write --rm.{MOVED_TO_RM[key]}")
            if len(owners) != 1:
                hint = f"it is in {', '.join(owners)}: write --<section>.{key}" if owners else "no such field"
                raise ConfigError(f"command line: --{key}: {hint}")
            section_name, field_name = owners[0], key
        _apply(_section(config, section_name, "command line"), {field_name: value}, section_name, "command line")
        cli_sections.setdefault(section_name, f"--{key}")
    _check_optimizer_sections(config, cli_sections, yaml_sections)
    return config


def _check_optimizer_sections(config: Config, cli_sections: dict[str, str], yaml_sections: set[str]) -> None:
    """Flags for an optimizer the game does not run are a mistake (the user forgot --game.policy_optimizer): refused.
    Such sections in a YAML file are allowed (one file shared by several recipes) but listed in a warning."""
    selected = config.game.policy_optimizer
    for section, flag in cli_sections.items():
        if section not in Config.CORE_SECTIONS and section != selected:
            raise ConfigError(f"command line: {flag} sets the {section} optimizer, but this game runs "
                              f"game.policy_optimizer={selected}; add --game.policy_optimizer {section} or drop {flag}")
    unused = sorted(name for name in yaml_sections - set(Config.CORE_SECTIONS) if name != selected)
    if unused:
        logging.getLogger(__name__).warning("config sections %s are ignored: this game runs game.policy_optimizer=%s",
                                            ", ".join(f"{n}:" for n in unused), selected)
