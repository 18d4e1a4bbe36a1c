"""Canonical data of the game, tokenisation and batching.

Every input format (see data_formats.py) is converted to three record types:
  PromptExample   a query (chat messages ending with a user turn) and, when annotated, its gold response
  PreferencePair  a query with a human-preferred (chosen) and a dispreferred (rejected) response
  TaskData        the train/eval prompts and preference pairs of one run
Prompts are tokenised with the tokenizer's chat template and left-padded for generation; responses are the text's
tokens followed by the stop token (EOS), so gold responses look exactly like finished policy samples to the RM.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import torch

from apo_online.errors import ConfigError

logger = logging.getLogger(__name__)

Messages = list[dict[str, str]]


@dataclass
class PromptExample:
    prompt_id: str
    messages: Messages
    gold: str | None = None  # an annotated (gold) response, used by the APO RM step
    references: list[str] = field(default_factory=list)  # other acceptable answers (evaluation only)
    # responses sampled offline by some LLM (APO samples files); may seed the RM's sample buffer
    samples: list[str] = field(default_factory=list)


@dataclass
class PreferencePair:
    prompt_id: str
    messages: Messages
    chosen: str
    rejected: str


@dataclass
class TaskData:
    train_prompts: list[PromptExample]
    preference_pairs: list[PreferencePair]
    eval_prompts: list[PromptExample] = field(default_factory=list)
    eval_preference_pairs: list[PreferencePair] = field(default_factory=list)
    # Held out from everything the trained RM sees; only the hidden gold judge may use them (embedded task).
    judge_pairs: list[PreferencePair] = field(default_factory=list)
    skipped: list = field(default_factory=list)  # DataFormatError of each row skipped with data.skip_bad_rows

    @property
    def skipped_rows(self) -> int:
        return len(self.skipped)

    def skipped_summary(self) -> str:
        """'3 rows skipped (data.skip_bad_rows): 2 x field 'sample_3': ... (first: f.jsonl, row 2); 1 x ...'."""
        if not self.skipped:
            return "no rows skipped"
        reasons = Counter(f"field {err.field!r}: {err.problem}" if err.field else err.problem for err in self.skipped)
        first: dict[str, str] = {}
        for err in self.skipped:
            reason = f"field {err.field!r}: {err.problem}" if err.field else err.problem
            first.setdefault(reason, err.source if err.row is None else f"{err.source}, row {err.row}")
        parts = [f"{count} x {reason} (first: {first[reason]})" for reason, count in reasons.most_common()]
        rows = f"{len(self.skipped)} row" + ("s" if len(self.skipped) > 1 else "")
        return f"{rows} skipped (data.skip_bad_rows): " + "; ".join(parts)

    def empty_responses(self) -> int:
        """Empty responses loaded (they train as the stop token alone): offline samples and preference pairs."""
        texts = [s for p in self.train_prompts for s in p.samples]
        texts += [t for pair in self.preference_pairs + self.eval_preference_pairs for t in (pair.chosen, pair.rejected)]
        return sum(1 for t in texts if not t.strip())


@dataclass
class EncodedPrompt:
    prompt_index: int  # position in TaskData.train_prompts (or eval_prompts)
    input_ids: list[int]
    gold_ids: list[int] | None
    messages: Messages = field(default_factory=list)  # kept for a separate reward model's own chat template


class PromptEncoder:
    """Tokenises prompts and responses with the limits of DataConfig, counting truncated and rejected prompts."""

    def __init__(self, tokenizer, max_prompt_tokens: int, prompt_overflow: str = "truncate",
                 max_response_tokens: int = 64, system_prompt: str | None = None):
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.max_prompt_tokens = max_prompt_tokens
        self.prompt_overflow = prompt_overflow
        self.max_response_tokens = max_response_tokens
        self.truncated_prompts = 0
        self.rejected_prompts = 0

    def prompt_text(self, messages: Messages) -> str:
        if self.system_prompt is not None and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": self.system_prompt}] + messages
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        # No chat template: a plain transcript ending where the assistant should answer.
        lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
        return "\n".join(lines) + "\nAssistant:"

    def prompt_ids(self, messages: Messages) -> list[int] | None:
        """Token ids of the prompt, or None when it is too long and prompt_overflow == "reject"."""
        ids = self.tokenizer(self.prompt_text(messages), add_special_tokens=False)["input_ids"]
        if len(ids) <= self.max_prompt_tokens:
            return ids
        if self.prompt_overflow == "reject":
            self.rejected_prompts += 1
            return None
        self.truncated_prompts += 1
        return ids[-self.max_prompt_tokens :]  # keep the end: it holds the question and the generation prompt

    def response_ids(self, text: str) -> list[int]:
        """Tokens of a response followed by EOS; cut to max_response_tokens (without EOS when cut)."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= self.max_response_tokens:
            return ids[: self.max_response_tokens]
        return ids + [self.tokenizer.eos_token_id]

    def encode_prompts(self, prompts: list[PromptExample]) -> list[EncodedPrompt]:
        encoded = []
        for index, example in enumerate(prompts):
            ids = self.prompt_ids(example.messages)
            if ids is None:
                continue
            gold = self.response_ids(example.gold) if example.gold is not None else None
            encoded.append(EncodedPrompt(index, ids, gold, example.messages))
        if self.rejected_prompts or self.truncated_prompts:
            logger.warning("prompts longer than %d tokens: %d truncated, %d rejected", self.max_prompt_tokens,
                           self.truncated_prompts, self.rejected_prompts)
        if not encoded:
            raise ConfigError(f"no usable prompts: all {len(prompts)} prompts are longer than data.max_prompt_tokens="
                              f"{self.max_prompt_tokens} tokens (data.prompt_overflow: reject)" if prompts else
                              "no usable prompts: the data holds none")
        return encoded


def at_stop_position(responses: list[list[int]], has_eos, stop_id: int) -> list[list[int]]:
    """Each response as read at a stop position (rm.score_cut_as_stopped): a cut one with stop_id appended, a finished
    one as it is. has_eos: one bool per response (a list or a [B] tensor)."""
    return [r if stopped else r + [stop_id] for r, stopped in zip(responses, list(map(bool, has_eos)))]


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[[ids]] -> (input_ids [B, L] left-padded, attention_mask [B, L])."""
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, length - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[row, length - len(seq) :] = 1
    return ids, mask


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as generate derives them: the first real token gets 0, padding 0 too (it is
    masked). attention_mask [B, L] -> [B, L]."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def right_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[[ids]] -> (input_ids [B, L] right-padded, attention_mask [B, L])."""
    length = max(1, max(len(s) for s in sequences))
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids, mask


def join_prompt_response(prompts: list[list[int]], responses: list[list[int]], pad_id: int):
    """Concatenate each prompt (left-padded to P) with its response (right-padded).

    Returns (input_ids [B, P+R], attention_mask [B, P+R], P)."""
    prompt_ids, prompt_mask = left_pad(prompts, pad_id)
    response_ids, response_mask = right_pad(responses, pad_id)
    return (torch.cat([prompt_ids, response_ids], 1), torch.cat([prompt_mask, response_mask], 1),
            prompt_ids.shape[1])


class PromptSampler:
    """Endless, seeded stream of prompt batches, identical on every rank; each rank takes its own slice.

    One global batch = prompts_per_step * world_size prompts drawn from a fresh permutation each epoch, so the
    global batch does not depend on the number of processes. Its state (epoch, cursor) is checkpointed."""

    def __init__(self, num_prompts: int, prompts_per_step: int, seed: int, rank: int = 0, world_size: int = 1):
        global_batch = prompts_per_step * world_size
        if num_prompts < global_batch:
            raise ConfigError(f"only {num_prompts} usable prompts but one step needs {global_batch} "
                              f"(rollout.prompts_per_step={prompts_per_step} x {world_size} processes)")
        self.num_prompts, self.per_rank, self.seed = num_prompts, prompts_per_step, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.cursor = 0, 0

    def _permutation(self) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.num_prompts, generator=generator).tolist()

    def next_batch(self) -> list[int]:
        """Indices (into the encoded prompt list) of this rank's prompts for the next step."""
        global_batch = self.per_rank * self.world_size
        if self.cursor + global_batch > self.num_prompts:  # drop the ragged tail: every step is full
            self.epoch, self.cursor = self.epoch + 1, 0
        chunk = self._permutation()[self.cursor : self.cursor + global_batch]
        self.cursor += global_batch
        return chunk[self.rank * self.per_rank : (self.rank + 1) * self.per_rank]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.cursor = state["epoch"], state["cursor"]


@dataclass
class EncodedPair:
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    messages: list[dict[str, str]]


def encode_pairs(encoder, pairs) -> list[EncodedPair]:
    """PreferencePair -> token ids (prompts over the limit are dropped or cut per data.prompt_overflow)."""
    encoded = []
    for pair in pairs:
        prompt = encoder.prompt_ids(pair.messages)
        if prompt is not None:
            encoded.append(EncodedPair(prompt, encoder.response_ids(pair.chosen), encoder.response_ids(pair.rejected),
                                       pair.messages))
    return encoded
