"""Reading the `reward:` section into the policy's reward terms (policy_reward/terms.py), at start-up, before the
model loads: unknown terms, users' functions that are missing, fail to import or cannot take (prompts, completions,
**kwargs), weights that do not match, the judge outside the judged testbed: ConfigError, one line, status 2.

    FILE.py:NAME          NAME in a Python file (a relative path is read from the working directory)
    package.module:NAME   NAME in an importable module
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import inspect
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from apo_online.errors import ConfigError
from apo_online.policy_reward.terms import FUNCTION_KWARGS, FunctionTerm, JudgeTerm, RewardSum, RMTerm

BUILTIN_TERMS = ("rm", "judge")


@dataclass(frozen=True)
class TermSpec:
    spec: str  # as written in reward.terms
    name: str  # logged as reward/<name>: rm, judge, or the function's name
    weight: float


# ---------------------------------------------------------------------------------------------------------------------
def parse_reward_terms(config) -> list[TermSpec]:
    """reward.terms and reward.weights as TermSpecs; loads every function term once to check it (config: Config)."""
    terms, weights = config.reward.terms, config.reward.weights
    if not terms:
        raise ConfigError("reward.terms is empty; give at least one term (rm, judge, FILE.py:NAME or module:NAME)")
    if weights is None:
        weights = [1.0] * len(terms)
    if len(weights) != len(terms):
        raise ConfigError(f"reward.weights has {len(weights)} values for {len(terms)} reward.terms "
                          f"({', '.join(terms)})")
    specs = []
    for spec, weight in zip(terms, weights):
        if not math.isfinite(weight):
            raise ConfigError(f"reward.weights: the weight of {spec!r} must be finite, got {weight}")
        if spec == "judge":
            check_judge_task(config.data.dataset_name)
        elif spec not in BUILTIN_TERMS:
            load_function(spec)
        specs.append(TermSpec(spec, spec if spec in BUILTIN_TERMS else spec.rsplit(":", 1)[-1], float(weight)))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"reward.terms: two terms are logged under the same name ({', '.join(names)}); each must be "
                          f"a different term")
    return specs


def check_judge_task(dataset_name: str) -> None:
    from apo_online.testbeds.judged_task import DATASET_VERSIONS

    if dataset_name not in DATASET_VERSIONS:
        raise ConfigError(f"reward term 'judge' uses the judged testbed's hidden judge, an oracle for ceiling runs: "
                          f"it needs data.dataset_name {' or '.join(sorted(DATASET_VERSIONS))}, got {dataset_name!r}")


@functools.lru_cache(maxsize=None)
def load_function(spec: str) -> Callable:
    """The callable named by FILE.py:NAME (a path, relative to the working directory) or package.module:NAME."""
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name:
        raise ConfigError(f"reward term {spec!r}: expected rm, judge, FILE.py:NAME or package.module:NAME")
    module = _load_file(spec, Path(where)) if where.endswith(".py") or "/" in where else _load_module(spec, where)
    if not hasattr(module, name):
        defined = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise ConfigError(f"reward term {spec!r}: {where} has no {name!r} (it defines: {', '.join(defined) or 'none'})")
    function = getattr(module, name)
    if not callable(function):
        raise ConfigError(f"reward term {spec!r}: {name} is not callable (it is of type {type(function).__name__})")
    try:
        inspect.signature(function).bind(prompts=[], completions=[], **{key: [] for key in FUNCTION_KWARGS})
    except TypeError:
        raise ConfigError(f"reward term {spec!r}: {name}{inspect.signature(function)} cannot be called as "
                          f"f(prompts, completions, **kwargs); write def {name}(prompts, completions, **kwargs)") \
            from None
    except ValueError:  # no signature to read (a builtin): it will be checked by its first call
        pass
    return function


def _load_file(spec: str, path: Path):
    if not path.is_file():
        raise ConfigError(f"reward term {spec!r}: file {path} not found (from {Path.cwd()})")
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    module_spec = importlib.util.spec_from_file_location(f"apo_online_reward_{path.stem}_{key}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:  # the user's file: say which term failed to load, and why
        raise ConfigError(f"reward term {spec!r}: importing {path} failed: {type(err).__name__}: {err}") from None
    return module


def _load_module(spec: str, where: str):
    try:
        return importlib.import_module(where)
    except ImportError as err:
        raise ConfigError(f"reward term {spec!r}: cannot import module {where!r}: {err}") from None


def build_reward(specs: list[TermSpec], scorer, score_cut_as_stopped: bool, cache_dir: str | None) -> RewardSum:
    """The game's RewardSum. scorer: the RM scorer when the rollout's forward cannot give the RM score (a separate RM,
    or rm.score_cut_as_stopped), else None (the shared reward adapter, read from the rollout's forward)."""
    terms = []
    for spec in specs:
        if spec.spec == "rm":
            terms.append(RMTerm(scorer, score_cut_as_stopped))
        elif spec.spec == "judge":
            from apo_online.testbeds.gold_judge import load_gold_judge, question_text

            terms.append(JudgeTerm(load_gold_judge(None, cache_dir), question_text))  # the built-in testbeds' judge
        else:
            terms.append(FunctionTerm(spec.name, load_function(spec.spec)))
    return RewardSum(terms, [spec.weight for spec in specs])
