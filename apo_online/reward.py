"""The adversarial reward-model step of APO and its buffer of recent policy samples (DESIGN.md step 4).

Every `game.rm_update_every` policy steps the "reward" adapter (+ reward head) is refit with

    L_RM = apo_coeff * L_APO(gold vs fresh policy samples) + beta2 * L_BT(human preference pairs)

on (gold, sample) groups drawn from the buffer of recent rollouts on prompts that have a gold response, plus human
preference pairs. In "refit" mode the RM restarts each time from the RM the game started with (after the warm-up),
optimizer state included (the paper's stable setting); in "continue" mode it keeps training ("seq" setting).
"""

from __future__ import annotations

import logging
import random
from collections import deque
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from apo_online import losses
from apo_online.data import EncodedPrompt

logger = logging.getLogger(__name__)


@dataclass
class BufferedSample:
    prompt_position: int  # position in the game's encoded prompt list
    response_ids: list[int]


class SampleBuffer:
    """The most recent policy samples on gold-annotated prompts (FIFO, `capacity` samples, per process)."""

    def __init__(self, capacity: int):
        self.samples: deque[BufferedSample] = deque(maxlen=capacity)

    def add(self, prompt_positions: list[int], responses: list[list[int]]) -> None:
        for position, response in zip(prompt_positions, responses):
            self.samples.append(BufferedSample(position, list(response)))

    def add_offline_samples(self, encoder, prompts: list[EncodedPrompt], examples) -> int:
        """Seed with the offline samples (PromptExample.samples) of the gold-annotated prompts; returns how many.

        prompts: the game's encoded prompts; examples: the PromptExamples they were encoded from. Samples beyond the
        capacity push out the oldest, as fresh policy samples later push out these."""
        positions, responses = [], []
        for position, prompt in enumerate(prompts):
            if prompt.gold_ids is not None:
                for text in examples[prompt.prompt_index].samples:
                    positions.append(position)
                    responses.append(encoder.response_ids(text))
        self.add(positions, responses)
        logger.info("seeded the RM sample buffer with %d offline samples", len(responses))
        return len(responses)

    def groups(self) -> dict[int, list[list[int]]]:
        """prompt position -> its buffered responses (oldest first)."""
        grouped: dict[int, list[list[int]]] = {}
        for sample in self.samples:
            grouped.setdefault(sample.prompt_position, []).append(sample.response_ids)
        return grouped

    def __len__(self) -> int:
        return len(self.samples)

    def state_dict(self) -> dict:
        return {"capacity": self.samples.maxlen,
                "samples": [(s.prompt_position, s.response_ids) for s in self.samples]}

    def load_state_dict(self, state: dict) -> None:
        self.samples = deque((BufferedSample(p, r) for p, r in state["samples"]), maxlen=state["capacity"])


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


class AdversarialRewardStep:
    """Warm-up (Bradley-Terry on human pairs) and the APO refits of the reward role."""

    def __init__(self, ctx, game_config, prompts: list[EncodedPrompt], pairs: list[EncodedPair], scorer, seed: int):
        self.ctx, self.cfg, self.scorer = ctx, game_config, scorer  # scorer: apo_online.reward_model
        self.prompts, self.pairs = prompts, pairs
        self.rng = random.Random(seed)
        self.base_state: dict[str, torch.Tensor] | None = None
        self.updates = 0

    # ---------------------------------------------------------------------------------------------------------------
    def _draw_pairs(self) -> list[EncodedPair]:
        k = min(self.cfg.rm_pairs_per_step, len(self.pairs))
        return self.rng.sample(self.pairs, k) if k else []

    def _draw_groups(self, buffer: SampleBuffer) -> list[tuple[int, list[list[int]]]]:
        groups = [(p, r) for p, r in sorted(buffer.groups().items()) if self.prompts[p].gold_ids is not None]
        return self.rng.sample(groups, min(self.cfg.rm_queries_per_step, len(groups)))

    def loss(self, groups, pairs, apo_share: float = 1.0, pref_share: float = 1.0) -> tuple[torch.Tensor, dict]:
        """L_RM on Q (gold, samples) groups and K human pairs, scored in one forward.

        A micro-batch of a larger RM step passes its share of that step's groups (apo_share) and pairs
        (pref_share): both terms are means over their items, so the shares make the micro-batch losses, and the
        metrics, add up to those of the whole step."""
        prompts, messages, responses = [], [], []
        for position, samples in groups:
            prompt = self.prompts[position]
            prompts += [prompt.input_ids] * (1 + len(samples))
            messages += [prompt.messages] * (1 + len(samples))
            responses += [prompt.gold_ids] + samples
        for pair in pairs:
            prompts += [pair.prompt_ids, pair.prompt_ids]
            messages += [pair.messages, pair.messages]
            responses += [pair.chosen_ids, pair.rejected_ids]
        scores = self.scorer.score(prompts, messages, responses)  # one forward for every term
        zero = scores.sum() * 0.0  # keeps the graph connected when a term is empty
        metrics: dict[str, float] = {}
        loss_apo = loss_pref = zero
        cursor = 0
        if groups:
            width = max(len(s) for _, s in groups)
            sample_scores = torch.zeros(len(groups), width, device=scores.device)
            sample_mask = torch.zeros(len(groups), width, device=scores.device)
            gold_rows, sample_rows = [], []
            for _, samples in groups:
                gold_rows.append(cursor)
                sample_rows.append([cursor + 1 + j for j in range(len(samples))])
                cursor += 1 + len(samples)
            gold = scores[torch.tensor(gold_rows, device=scores.device)]
            for q, rows in enumerate(sample_rows):
                sample_scores[q, : len(rows)] = scores[torch.tensor(rows, device=scores.device)]
                sample_mask[q, : len(rows)] = 1.0
            loss_apo = losses.apo_rm_loss(gold, sample_scores, sample_mask)
            gap = gold.detach() - losses.masked_mean(sample_scores.detach(), sample_mask, dim=1)
            metrics.update({"rm/loss_apo": apo_share * loss_apo.item(),
                            "rm/gold_minus_sample": apo_share * gap.mean().item(),
                            "rm/gold_score": apo_share * gold.mean().item()})
        if pairs:
            chosen, rejected = scores[cursor::2], scores[cursor + 1 :: 2]
            loss_pref = losses.bradley_terry_loss(chosen, rejected)
            metrics.update({"rm/loss_pref": pref_share * loss_pref.item(),
                            "rm/pref_accuracy": pref_share * (chosen > rejected).float().mean().item()})
        total = losses.apo_total_rm_loss(apo_share * loss_apo, pref_share * loss_pref, self.cfg.apo_coeff,
                                         self.cfg.beta2)
        metrics["rm/loss"] = total.item()
        return total, metrics

    def _micro_batches(self, groups: list, pairs: list) -> list[tuple[list, list, float, float]]:
        """game.rm_micro_batches contiguous slices of the step's groups and pairs, each with its shares.

        Always that many, on every process (under DeepSpeed ZeRO-3 each backward is a collective, and the number of
        buffered groups differs between processes): an empty slice re-scores one item with zero weight."""
        parts = self.cfg.rm_micro_batches
        if parts == 1 or not (groups or pairs):
            return [(groups, pairs, 1.0, 1.0)]
        cut = lambda items, k: items[k * len(items) // parts: (k + 1) * len(items) // parts]
        slices = []
        for k in range(parts):
            group_slice, pair_slice = cut(groups, k), cut(pairs, k)
            if group_slice or pair_slice:
                slices.append((group_slice, pair_slice, len(group_slice) / max(len(groups), 1),
                               len(pair_slice) / max(len(pairs), 1)))
            else:
                slices.append((groups[:1], pairs[:1], 0.0, 0.0))
        return slices

    def _train(self, steps: int, buffer: SampleBuffer | None, progress: str | None = None) -> dict[str, float]:
        """steps RM optimizer steps; progress: a bar's description (long runs such as the warm-up), None for none."""
        totals: dict[str, float] = {}
        with self.ctx.phase(("reward",)):
            for _ in tqdm(range(steps), desc=progress, disable=progress is None, leave=False):
                groups = self._draw_groups(buffer) if buffer is not None else []
                micro_batches = self._micro_batches(groups, self._draw_pairs())
                metrics: dict[str, float] = {}
                for k, (group_slice, pair_slice, apo_share, pref_share) in enumerate(micro_batches):
                    with self.ctx.micro_batch(is_last=k == len(micro_batches) - 1):
                        loss, part = self.loss(group_slice, pair_slice, apo_share, pref_share)
                        self.ctx.backward(loss)
                    for key, value in part.items():
                        metrics[key] = metrics.get(key, 0.0) + value
                metrics["rm/grad_norm"] = self.ctx.optimizer_step()["grad_norm"]
                for key, value in metrics.items():
                    totals[key] = totals.get(key, 0.0) + value / steps
        return totals

    # ---------------------------------------------------------------------------------------------------------------
    def warmup(self, steps: int, show_progress: bool = False) -> dict[str, float]:
        """Bradley-Terry training on human pairs before the game; its result is the base RM of refit mode."""
        metrics = self._train(steps, None, "RM warm-up" if show_progress else None) if steps and self.pairs else {}
        self.snapshot_base()
        return {k.replace("rm/", "rm_warmup/"): v for k, v in metrics.items()}

    def snapshot_base(self) -> None:
        self.base_state = self.scorer.weights()

    def restore_base(self) -> None:
        """Back to the base RM: weights (and DeepSpeed's fp32 master copies) and a fresh optimizer state."""
        self.scorer.load_weights(self.base_state)
        self.ctx.reset_role_optimizer_state("reward")

    def update(self, buffer: SampleBuffer) -> dict[str, float]:
        """One adversarial RM update on the buffer: refit from the base RM or continue, then train."""
        if self.cfg.rm_mode == "refit":
            self.restore_base()
        self.updates += 1
        metrics = self._train(self.cfg.rm_steps_per_update, buffer)
        metrics["rm/buffer_size"] = float(len(buffer))
        metrics["rm/updates"] = float(self.updates)
        return metrics

    def state_dict(self) -> dict:
        return {"rng": self.rng.getstate(), "base_state": self.base_state, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.rng.setstate(state["rng"])
        self.base_state, self.updates = state["base_state"], state["updates"]
