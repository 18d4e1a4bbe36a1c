"""The adversarial reward-model step of APO and its buffer of recent policy samples (docs/design.md, step 3).

Every `rm.update_every` policy steps the "reward" adapter (+ reward head) is refit with

    L_RM = apo_coeff * L_APO(gold vs fresh policy samples) + beta2 * L_BT(human preference pairs)

on (gold, sample) groups drawn from the buffer of rollouts on prompts that have a gold response, plus human
preference pairs. "Fresh" means the samples of the last `rm.sample_window` policy steps; with `rm.eos_only` only
samples that ended with the stop token (as every gold response does) enter the APO term, so the RM cannot separate
gold from samples by the stop token alone. In "refit" mode the RM restarts each time from the RM the game started
with (after the warm-up), optimizer state included (the paper's stable setting); in "continue" mode it keeps
training ("seq" setting).
"""

from __future__ import annotations

import logging
import math
import random
from collections import deque
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from apo_online import losses
from apo_online.errors import ConfigError
from apo_online.data.canonical import EncodedPair, EncodedPrompt

logger = logging.getLogger(__name__)


OFFLINE_STEP = -1  # the policy step recorded for offline samples (data.seed_buffer_from_samples)


@dataclass
class BufferedSample:
    prompt_position: int  # position in the game's encoded prompt list
    response_ids: list[int]
    step: int = OFFLINE_STEP  # the policy step (0-based) whose rollout produced it
    has_eos: bool = True  # ended with the stop token (False: cut at max_new_tokens)


class SampleBuffer:
    """The most recent policy samples on gold-annotated prompts (FIFO, `capacity` samples, per process)."""

    def __init__(self, capacity: int):
        self.samples: deque[BufferedSample] = deque(maxlen=capacity)

    def add(self, prompt_positions: list[int], responses: list[list[int]], step: int = OFFLINE_STEP,
            has_eos: list[bool] | None = None) -> None:
        """Samples of one rollout (policy step `step`); has_eos: per sample, default all True (offline samples)."""
        has_eos = [True] * len(responses) if has_eos is None else has_eos
        for position, response, eos in zip(prompt_positions, responses, has_eos):
            self.samples.append(BufferedSample(position, list(response), step, bool(eos)))

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

    def groups(self, since_step: int | None = None, eos_only: bool = False,
               append_stop: int | None = None) -> dict[int, list[list[int]]]:
        """prompt position -> its buffered responses (oldest first).

        since_step: only samples of policy steps >= since_step, plus offline samples (data.seed_buffer_from_samples:
        the user put them there to be compared with gold; fresh samples push them out of the FIFO over time);
        eos_only: only samples that ended with the stop token; append_stop: a stop token id appended to every sample
        that was cut (rm.score_cut_as_stopped)."""
        grouped: dict[int, list[list[int]]] = {}
        for sample in self.samples:
            if since_step is not None and OFFLINE_STEP < sample.step < since_step:
                continue
            if eos_only and not sample.has_eos:
                continue
            response = sample.response_ids
            if append_stop is not None and not sample.has_eos:
                response = response + [append_stop]
            grouped.setdefault(sample.prompt_position, []).append(response)
        return grouped

    def __len__(self) -> int:
        return len(self.samples)

    def state_dict(self) -> dict:
        return {"capacity": self.samples.maxlen,
                "samples": [(s.prompt_position, s.response_ids, s.step, s.has_eos) for s in self.samples]}

    def load_state_dict(self, state: dict) -> None:
        self.samples = deque((BufferedSample(*fields) for fields in state["samples"]), maxlen=state["capacity"])


def untrained_rm_reason(config, task) -> str | None:
    """Why the RM would still be untrained when the policy first optimises it, or None when it will be trained.
    Unless rm.allow_untrained, that stops the game before the model loads (ConfigError); with it the game warns
    and logs rm/untrained_at_start = 1. config: config.Config; task: data.TaskData."""
    if config.model.reward_model_path:
        return None
    if not task.preference_pairs:
        reason = "the data has no human preference pairs (data.preference_file) to warm it up on"
    elif config.rm.warmup_steps == 0:
        reason = "rm.warmup_steps is 0"
    else:
        return None
    if not config.rm.allow_untrained:
        raise ConfigError(f"the reward model would be untrained when the policy starts to optimise it: {reason}, and "
                          f"no trained RM is given (model.reward_model_path); give one of them, or set "
                          f"rm.allow_untrained true if that is meant (an RM taught by the APO term alone)")
    logger.warning("rm.allow_untrained: the policy starts against an untrained reward model (%s)", reason)
    return reason


def warmup_step_count(rm_config, num_pairs: int, processes: int) -> int:
    """rm.warmup_steps, or when null one pass over the human pairs (each seen about once, over all processes)."""
    if rm_config.warmup_steps is not None:
        return rm_config.warmup_steps
    return math.ceil(num_pairs / (max(1, min(rm_config.pairs_per_step, num_pairs)) * processes))


class AdversarialRewardStep:
    """Warm-up (Bradley-Terry on human pairs) and the APO refits of the reward role."""

    def __init__(self, ctx, rm_config, prompts: list[EncodedPrompt], pairs: list[EncodedPair], scorer, seed: int,
                 stop_id: int | None = None):
        self.ctx, self.cfg, self.scorer = ctx, rm_config, scorer  # rm_config: config.RewardConfig; scorer: reward_model
        self.prompts, self.pairs = prompts, pairs
        self.stop_id = stop_id  # the policy's stop token: appended to cut samples under rm.score_cut_as_stopped
        self.rng = random.Random(seed)
        self.base_state: dict[str, torch.Tensor] | None = None
        self.updates = 0
        # a warm-up stopped by a signal resumes from here: its steps done and its metrics' running means so far
        self.warmup_done, self.warmup_totals = 0, {}

    # ---------------------------------------------------------------------------------------------------------------
    def _draw_pairs(self) -> list[EncodedPair]:
        k = min(self.cfg.pairs_per_step, len(self.pairs))
        return self.rng.sample(self.pairs, k) if k else []

    def fresh_groups(self, buffer: SampleBuffer, step: int) -> list[tuple[int, list[list[int]]]]:
        """(prompt position, samples) of gold-annotated prompts from the rollouts of policy steps
        step - rm.sample_window + 1 .. step: what the APO term may use now. Cut samples are dropped (rm.eos_only), or
        with rm.score_cut_as_stopped kept and scored as if the stop token followed, as gold and every rollout are."""
        window = self.cfg.sample_window
        since = step - window + 1 if window else None
        as_stopped = self.cfg.score_cut_as_stopped
        if as_stopped and self.stop_id is None:
            raise ValueError("rm.score_cut_as_stopped needs the stop token id (AdversarialRewardStep(stop_id=...))")
        grouped = buffer.groups(since_step=since, eos_only=self.cfg.eos_only and not as_stopped,
                                append_stop=self.stop_id if as_stopped else None)
        return [(p, r) for p, r in sorted(grouped.items()) if self.prompts[p].gold_ids is not None]

    def _draw_groups(self, groups: list[tuple[int, list[list[int]]]]) -> list[tuple[int, list[list[int]]]]:
        return self.rng.sample(groups, min(self.cfg.queries_per_step, len(groups)))

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
            loss_apo = losses.apo_compared_rm_loss(gold, sample_scores, sample_mask, self.cfg.apo_compare)
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
        """rm.micro_batches contiguous slices of the step's groups and pairs, each with its shares.

        Always that many, on every process (under DeepSpeed ZeRO-3 each backward is a collective, and the number of
        buffered groups differs between processes): an empty slice re-scores one item with zero weight."""
        parts = self.cfg.micro_batches
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

    def _train_step(self, groups: list) -> dict[str, float]:
        """One RM optimizer step on rm.queries_per_step of `groups` and rm.pairs_per_step human pairs; its metrics.
        Inside ctx.phase(("reward",))."""
        step_groups = self._draw_groups(groups) if groups else []
        micro_batches = self._micro_batches(step_groups, self._draw_pairs())
        metrics: dict[str, float] = {}
        for k, (group_slice, pair_slice, apo_share, pref_share) in enumerate(micro_batches):
            with self.ctx.micro_batch(is_last=k == len(micro_batches) - 1):
                loss, part = self.loss(group_slice, pair_slice, apo_share, pref_share)
                self.ctx.backward(loss)
            for key, value in part.items():
                metrics[key] = metrics.get(key, 0.0) + value
        metrics["rm/grad_norm"] = self.ctx.optimizer_step()["grad_norm"]
        return metrics

    def _train(self, steps: int, groups: list) -> dict[str, float]:
        """steps RM optimizer steps on `groups` and human pairs; the means of their metrics."""
        totals: dict[str, float] = {}
        with self.ctx.phase(("reward",)):
            for _ in range(steps):
                add_mean(totals, self._train_step(groups), steps)
        return totals

    # ---------------------------------------------------------------------------------------------------------------
    def warmup_steps(self) -> int:
        return warmup_step_count(self.cfg, len(self.pairs), self.ctx.accelerator.num_processes)

    def warmup(self, steps: int | None = None, show_progress: bool = False,
               should_stop=None) -> dict[str, float] | None:
        """Bradley-Terry training on human pairs before the game (None: self.warmup_steps()); its result is the base RM
        of refit mode; returns the means of its metrics.

        should_stop() is asked before each step (a collective under several processes: each asks it equally often);
        when it says True the warm-up ends early and returns None, its progress kept in this object's state, so
        that after a checkpoint and a resume the next call plays the remaining steps as one warm-up would have."""
        steps = self.warmup_steps() if steps is None else steps
        if not self.warmup_in_progress:  # a new warm-up (a finished one is not resumed: it trains again)
            self.warmup_done, self.warmup_totals = 0, {}
        if steps and self.pairs:
            with self.ctx.phase(("reward",)):
                for _ in tqdm(range(self.warmup_done, steps), desc="RM warm-up", disable=not show_progress,
                              leave=False, initial=self.warmup_done, total=steps):
                    if should_stop is not None and should_stop():
                        return None
                    add_mean(self.warmup_totals, self._train_step([]), steps)
                    self.warmup_done += 1
        self.snapshot_base()
        return {k.replace("rm/", "rm_warmup/"): v for k, v in self.warmup_totals.items()}

    @property
    def warmup_in_progress(self) -> bool:
        """A warm-up stopped part-way (by a signal or a fault), not yet finished: its partial RM is in the weights."""
        return self.warmup_done > 0 and self.base_state is None

    def snapshot_base(self) -> None:
        self.base_state = self.scorer.weights()

    def restore_base(self) -> None:
        """Back to the base RM: weights (and DeepSpeed's fp32 master copies) and a fresh optimizer state."""
        self.scorer.load_weights(self.base_state)
        self.ctx.reset_role_optimizer_state("reward")

    def update(self, buffer: SampleBuffer, step: int) -> dict[str, float]:
        """One adversarial RM update after the rollout of policy step `step` (0-based): refit from the base RM or
        continue, then train on the buffer's fresh samples and human pairs."""
        if self.cfg.mode == "refit":
            self.restore_base()
        self.updates += 1
        groups = self.fresh_groups(buffer, step)
        metrics = self._train(self.cfg.steps_per_update, groups)
        metrics["rm/buffer_size"] = float(len(buffer))
        metrics["rm/fresh_groups"] = float(len(groups))
        metrics["rm/fresh_samples"] = float(sum(len(samples) for _, samples in groups))
        metrics["rm/updates"] = float(self.updates)
        return metrics

    def state_dict(self) -> dict:
        return {"rng": self.rng.getstate(), "base_state": self.base_state, "updates": self.updates,
                "warmup_done": self.warmup_done, "warmup_totals": dict(self.warmup_totals)}

    def load_state_dict(self, state: dict) -> None:
        self.rng.setstate(state["rng"])
        self.base_state, self.updates = state["base_state"], state["updates"]
        # older checkpoints have neither (their warm-up had finished, or restarts from its first step)
        self.warmup_done, self.warmup_totals = state.get("warmup_done", 0), dict(state.get("warmup_totals", {}))


def add_mean(totals: dict[str, float], metrics: dict[str, float], steps: int) -> None:
    """Accumulate one step's metrics into running means over `steps` steps (in place)."""
    for key, value in metrics.items():
        totals[key] = totals.get(key, 0.0) + value / steps
