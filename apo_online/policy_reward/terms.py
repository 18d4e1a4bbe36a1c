"""The policy's reward: a weighted sum of terms (the `reward:` section), each logged as reward/<name>.

  rm      the game's RM (the shared reward adapter, or model.reward_model_path): the adversary of the APO game.
          Without an rm term the RM is neither warmed up nor updated.
  judge   the judged testbed's hidden gold judge (testbeds/gold_judge.py): for oracle (ceiling) runs only, refused
          on any other task.
  FILE.py:NAME or package.module:NAME
          a user's function with the signature of TRL's reward functions
              f(prompts: list[str], completions: list[str], **kwargs) -> list[float]
          prompts: each row's prompt as the policy saw it (decoded, special tokens left out); completions: each
          response without special tokens. kwargs: prompt_ids (each row's prompt identifier, shared by the samples
          of one prompt), completion_ids (the response's token ids, stop token included when present), has_eos
          (whether the response ended with the stop token), messages (the prompt as chat messages).

    reward = sum_i weight_i * term_i          then the rollout subtracts rollout.missing_eos_penalty from cut samples,
                                              once, whatever the terms.

Rows are prompt-major, as in the rollout (apo_online/rollout.py). A term's values are checked on every call (length,
numbers, finite); a bad value raises BadReward, which the game turns into a checkpoint and a stop (status 3).
Reading the reward: section into terms (start-up checks, loading users' functions) is policy_reward/config.py.
"""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable

import torch

from apo_online.data.canonical import at_stop_position
from apo_online.errors import BadReward

# what a function term is passed besides prompts and completions (reward_config checks signatures against it)
FUNCTION_KWARGS = ("prompt_ids", "completion_ids", "has_eos", "messages")


@dataclass
class Completions:
    """What a reward term reads of one rollout. Rows are prompt-major; every list has one entry per row [B]."""

    prompts: list  # EncodedPrompt of each row (apo_online/data/canonical.py)
    prompt_index: list[int]  # each row's position in the game's prompt list
    response_ids: list[list[int]]  # up to and including the stop token
    has_eos: list[bool]
    tokenizer: Any
    forward: dict[str, torch.Tensor]  # [B] per role computed in the rollout's own forward (the shared "reward")

    @functools.cached_property
    def texts(self) -> list[str]:
        return self.tokenizer.batch_decode(self.response_ids, skip_special_tokens=True)

    @functools.cached_property
    def prompt_texts(self) -> list[str]:
        return self.tokenizer.batch_decode([p.input_ids for p in self.prompts], skip_special_tokens=True)


class RMTerm:
    """The game's RM. scorer None: the shared reward adapter's score from the rollout's forward (no extra pass);
    otherwise scorer.score (a separate RM, or rm.score_cut_as_stopped: a cut response is read with the stop token
    appended)."""

    name = "rm"

    def __init__(self, scorer=None, score_cut_as_stopped: bool = False):
        self.scorer, self.as_stopped = scorer, score_cut_as_stopped
        self.forward_roles = ("reward",) if scorer is None else ()

    @torch.no_grad()
    def __call__(self, batch: Completions) -> torch.Tensor:
        if self.scorer is None:
            return batch.forward["reward"]
        responses = batch.response_ids
        if self.as_stopped:
            responses = at_stop_position(responses, batch.has_eos, batch.tokenizer.eos_token_id)
        return self.scorer.score([p.input_ids for p in batch.prompts], [p.messages for p in batch.prompts], responses)


class JudgeTerm:
    """The judged testbed's hidden judge, scoring (question, response text): the oracle reward."""

    name = "judge"
    forward_roles = ()

    def __init__(self, judge, question_text: Callable):
        self.judge, self.question_text = judge, question_text  # question_text: chat messages -> the judge's question

    def __call__(self, batch: Completions) -> torch.Tensor:
        with torch.random.fork_rng():  # the judge must not shift the training's random stream
            return self.judge.score([self.question_text(p.messages) for p in batch.prompts], batch.texts)


class FunctionTerm:
    """A user's function f(prompts, completions, **kwargs) -> list[float] (module docstring)."""

    forward_roles = ()

    def __init__(self, name: str, function: Callable):
        self.name, self.function = name, function

    def __call__(self, batch: Completions) -> list:
        kwargs = dict(prompt_ids=list(batch.prompt_index), completion_ids=batch.response_ids,
                      has_eos=list(batch.has_eos), messages=[p.messages for p in batch.prompts])
        return self.function(prompts=batch.prompt_texts, completions=batch.texts, **kwargs)


class RewardSum:
    """sum_i weight_i * term_i(completions) -> (total [B], {name: term values [B]}); every term's values checked."""

    def __init__(self, terms: list, weights: list[float]):
        self.terms, self.weights = terms, weights
        self.forward_roles = tuple(sorted({role for term in terms for role in term.forward_roles}))
        self.uses_rm = any(isinstance(term, RMTerm) for term in terms)

    @classmethod
    def rm_only(cls, scorer=None, score_cut_as_stopped: bool = False) -> "RewardSum":
        """The default reward: the game's RM alone, weight 1."""
        return cls([RMTerm(scorer, score_cut_as_stopped)], [1.0])

    def __call__(self, batch: Completions, device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        rows = len(batch.response_ids)
        values = {term.name: checked_values(term.name, term(batch), rows).to(device) for term in self.terms}
        total = torch.zeros(rows, device=device)
        for term, weight in zip(self.terms, self.weights):
            total = total + weight * values[term.name]
        return total, values


def checked_values(name: str, values, rows: int) -> torch.Tensor:
    """A term's return value as [rows] float32, or BadReward naming the term, the row and what was wrong."""
    if isinstance(values, torch.Tensor):
        values = values.detach().float().cpu().reshape(-1).tolist() if values.dim() <= 1 else values
    elif hasattr(values, "tolist"):  # a numpy array
        values = values.tolist()
    if not isinstance(values, (list, tuple)):
        raise BadReward(f"reward term {name!r} returned {type(values).__name__}; expected a list of {rows} numbers")
    if len(values) != rows:
        raise BadReward(f"reward term {name!r} returned {len(values)} values for {rows} completions")
    for row, value in enumerate(values):
        if not isinstance(value, numbers.Real):
            raise BadReward(f"reward term {name!r} returned a non-numeric value at row {row}: {value!r}")
        if not math.isfinite(value):
            raise BadReward(f"reward term {name!r} returned {value} at row {row}; rewards must be finite")
    return torch.tensor([float(v) for v in values], dtype=torch.float32)
