"""Sampling and scoring for evaluation, and the gold-judge evaluator that the game runs every game.eval_every steps.

`sample_responses` draws responses from the policy adapter or from the reference (adapters disabled) and measures
what the evaluation reports: RM score, sequence KL to the reference, length, stop token. `GoldJudgeEvaluator` is a
`game.evaluators` entry (enabled by `game.gold_judge`): on fixed held-out eval prompts it samples
`game.eval_samples_per_prompt` responses per prompt and logs how the hidden gold judge
(apo_online/testbeds/gold_judge.py) rates them and how well the game's own RM agrees with the judge on pairs of those
fresh policy samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from trl.models.utils import unwrap_model_for_generation

from apo_online.rm.calibration import pair_calibration, preference_accuracy
from apo_online.errors import ConfigError
from apo_online.data.canonical import left_pad
from apo_online.data.task import BUILTIN_TASKS
from apo_online.testbeds.gold_judge import load_gold_judge, question_text
from apo_online.rm.scorers import reward_role_scores
from apo_online.rollout import score_shared_prompts, truncate_at_stop
from apo_online.shared_prefill import generate_sharing_prompts

EVAL_SEED_OFFSET = 7919  # eval samples use their own seed: the same every evaluation, apart from training's stream


@dataclass
class SampledResponses:
    """Rows are prompt-major: rows i*n .. i*n+n-1 answer prompt i (n samples per prompt)."""

    prompt_positions: list[int]  # [B] index of each row's prompt in the list given to sample_responses
    prompt_ids: list[list[int]]  # [B] prompt tokens without padding
    response_ids: list[list[int]]  # [B] response tokens up to and including the stop token
    texts: list[str]  # [B] decoded responses without special tokens
    has_eos: torch.Tensor  # [B] bool
    kl: torch.Tensor  # [B] sum_t log pi(y_t) - log pi_ref(y_t) (k1, temperature-scaled); 0 for reference samples
    rm_scores: torch.Tensor  # [B] raw score of the reward role (no missing-EOS penalty)

    @property
    def lengths(self) -> torch.Tensor:  # [B] response tokens
        return torch.tensor([len(r) for r in self.response_ids], dtype=torch.float32)


def _generate(backbone, role: str, ids: torch.Tensor, mask: torch.Tensor, **kwargs) -> torch.Tensor:
    if role == "policy":
        return backbone.generate(ids, mask, **kwargs)
    with backbone.role(role):  # "reference": the untouched base model, adapters disabled
        return generate_sharing_prompts(backbone.peft_model, ids, mask, **kwargs)


@torch.no_grad()
def sample_responses(backbone, tokenizer, prompt_ids: list[list[int]], role: str = "policy",
                     samples_per_prompt: int = 1, max_new_tokens: int = 32, temperature: float = 0.7,
                     top_k: int = 0, top_p: float = 1.0, batch_size: int = 32) -> SampledResponses:
    """Sample from `role` ("policy" or "reference"), cut at the stop token, and score with the reward role.

    backbone: an unwrapped SharedBackbone. Prompts are generated in chunks of `batch_size` prompts."""
    if role not in ("policy", "reference"):
        raise ValueError(f"can only sample from 'policy' or 'reference', got {role!r}")
    n, pad_id, stop_ids = samples_per_prompt, tokenizer.pad_token_id, [tokenizer.eos_token_id]
    device = next(backbone.parameters()).device
    parts: dict[str, list] = {"ids": [], "prompts": [], "responses": [], "eos": [], "kl": [], "rm": []}
    for start in range(0, len(prompt_ids), batch_size):
        chunk = prompt_ids[start : start + batch_size]
        ids, mask = (t.to(device) for t in left_pad(chunk, pad_id))
        sequences = _generate(backbone, role, ids, mask, do_sample=True, temperature=temperature,
                              top_k=top_k or None, top_p=top_p, max_new_tokens=max_new_tokens,
                              num_return_sequences=n, pad_token_id=pad_id, eos_token_id=stop_ids)
        P = ids.shape[1]
        responses, response_mask, has_eos = truncate_at_stop(sequences[:, P:], stop_ids, pad_id)
        roles = ("policy", "reference", "reward") if role == "policy" else ("reward",)
        # each prompt run once for its n samples (generate returns a prompt's n sequences together)
        out = score_shared_prompts(backbone, ids, mask, responses, response_mask, n, roles, temperature, batch_size)
        kl = ((out["policy"] - out["reference"]) * response_mask).sum(1) if role == "policy" else torch.zeros(
            len(responses), device=device)
        lengths = response_mask.sum(1).long().tolist()
        parts["prompts"] += [p for p in chunk for _ in range(n)]
        parts["responses"] += [row[:k] for row, k in zip(responses.tolist(), lengths)]
        parts["ids"] += [start + i for i in range(len(chunk)) for _ in range(n)]
        parts["eos"].append(has_eos.cpu())
        parts["kl"].append(kl.float().cpu())
        parts["rm"].append(out["reward"].float().cpu())
    return SampledResponses(
        prompt_positions=parts["ids"], prompt_ids=parts["prompts"], response_ids=parts["responses"],
        texts=tokenizer.batch_decode(parts["responses"], skip_special_tokens=True),
        has_eos=torch.cat(parts["eos"]), kl=torch.cat(parts["kl"]), rm_scores=torch.cat(parts["rm"]))


def _in_batches(score, rows: int, batch_size: int) -> torch.Tensor:
    """score(slice of rows) -> scores, over all rows in batches -> [rows] float32 on the CPU."""
    scores = [score(slice(i, i + batch_size)).float().cpu() for i in range(0, rows, batch_size)]
    return torch.cat(scores) if scores else torch.zeros(0)


@torch.no_grad()
def reward_scores(backbone, prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int,
                  batch_size: int = 16) -> torch.Tensor:
    """Score of a loaded backbone's reward role for each (prompt, response) token pair -> [B] float32 on the CPU."""
    device = next(backbone.parameters()).device
    return _in_batches(lambda rows: reward_role_scores(backbone, device, pad_id, prompt_ids[rows], response_ids[rows]),
                       len(prompt_ids), batch_size)


@torch.no_grad()
def scorer_scores(scorer, prompt_ids: list[list[int]], messages: list, response_ids: list[list[int]],
                  batch_size: int = 16) -> torch.Tensor:
    """A game's RM scorer (apo_online/rm/scorers.py: shared reward adapter or separate RM) on [B] rows of
    (prompt tokens, chat messages, response tokens) -> [B] float32 on the CPU."""
    return _in_batches(lambda rows: scorer.score(prompt_ids[rows], messages[rows], response_ids[rows]),
                       len(prompt_ids), batch_size)


def judged_pairs(judge_scores, prompt_positions: list[int], tie_tolerance: float = 1e-6) -> list[tuple[int, int]]:
    """(better, worse) row pairs among the samples of each prompt, ordered by a judge; ties are left out.

    judge_scores: [B]; prompt_positions: [B]. Every unordered pair of rows answering the same prompt is a candidate."""
    scores = np.asarray(judge_scores, dtype=np.float64)
    by_prompt: dict[int, list[int]] = {}
    for row, position in enumerate(prompt_positions):
        by_prompt.setdefault(position, []).append(row)
    pairs = []
    for rows in by_prompt.values():
        for i, a in enumerate(rows):
            for b in rows[i + 1 :]:
                if abs(scores[a] - scores[b]) > tie_tolerance:
                    pairs.append((a, b) if scores[a] > scores[b] else (b, a))
    return pairs


def win_rate(scores, baseline_scores) -> float:
    """mean_i 1[s_i > b_i] + 0.5 * 1[s_i == b_i]: how often a response beats its baseline under one judge."""
    s, b = np.asarray(scores, dtype=np.float64), np.asarray(baseline_scores, dtype=np.float64)
    return float(np.mean((s > b) + 0.5 * (s == b))) if s.size else float("nan")


class GoldJudgeEvaluator:
    """`game.evaluators` entry: the hidden gold judge scores fresh policy samples on held-out eval prompts.

    Logs eval/gold_score, eval/gold_win_rate_vs_human (judge prefers the sample to the prompt's first human answer),
    eval/gold_win_rate_vs_gold (... to the prompt's gold response; at step 0, 1 minus APO's premise),
    eval/rm_score, eval/rm_accuracy_on_policy and eval/rm_ece_on_policy (the game's RM against the judge on pairs of
    samples of the same prompt), eval/kl, eval/response_length, eval/eos_fraction. `history` keeps each evaluation's
    metrics and RM scores of the judged pairs, so a comparison can pool them (eval/compare.py)."""

    def __init__(self, game):
        self.game, self.history = game, []
        task, cfg = game.task, game.config
        if not self.available(task):
            raise ConfigError("game.gold_judge needs held-out judge pairs and eval prompts, which the embedded task "
                              "has (data.dataset_name: embedded); set --game.gold_judge false for other data")
        examples = task.eval_prompts[: cfg.data.num_eval_prompts]
        self.prompts = game.encoder.encode_prompts(examples)
        self.questions = [question_text(examples[p.prompt_index].messages) for p in self.prompts]
        # human: the prompt's first human answer; gold: its gold response (on embedded_judged the judge's best
        # candidate, on embedded the first human answer again)
        self.human_answers = [(examples[p.prompt_index].references or [examples[p.prompt_index].gold])[0]
                              for p in self.prompts]
        self.gold_answers = [examples[p.prompt_index].gold or self.human_answers[i] for i, p in enumerate(self.prompts)]
        self.judge, self.human_scores, self.gold_scores = None, None, None
        self.seed = cfg.game.seed + EVAL_SEED_OFFSET + 1000 * game.accelerator.process_index

    @staticmethod
    def available(task) -> bool:
        """Whether the task carries what the judge needs: its held-out pairs and eval prompts."""
        return bool(task.judge_pairs) and bool(task.eval_prompts)

    def _judge(self):
        if self.judge is None:  # built on first use: runs without evaluations never load the encoder
            config = self.game.config
            pairs = None if config.data.dataset_name in BUILTIN_TASKS else self.game.task.judge_pairs  # None: default
            self.judge = load_gold_judge(pairs, config.model.cache_dir)
            self.human_scores = self.judge.score(self.questions, self.human_answers)
            self.gold_scores = self.judge.score(self.questions, self.gold_answers)
        return self.judge

    def __call__(self, game) -> dict[str, float]:
        # Evaluation must not shift the training's random stream (loading the encoder draws from it, sampling too):
        # with or without evaluations, and with or without a cached judge, training takes the same path.
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            return self._evaluate(game)

    def _evaluate(self, game) -> dict[str, float]:
        judge, rollout_config = self._judge(), game.config.rollout
        torch.manual_seed(self.seed)  # the same seed at every evaluation: curves differ by the policy, not by luck
        with unwrap_model_for_generation(game.ctx.model, game.accelerator) as backbone:
            samples = sample_responses(
                backbone, game.tokenizer, [p.input_ids for p in self.prompts], "policy",
                game.config.game.eval_samples_per_prompt, rollout_config.max_new_tokens,
                rollout_config.temperature, rollout_config.top_k, rollout_config.top_p)
        if game.reward_model is not None:  # a separate RM replaces the reward adapter: score with it
            rows = [self.prompts[i] for i in samples.prompt_positions]
            samples.rm_scores = scorer_scores(game.scorer, [p.input_ids for p in rows], [p.messages for p in rows],
                                              samples.response_ids)
        gold = judge.score([self.questions[i] for i in samples.prompt_positions], samples.texts)
        pairs = judged_pairs(gold, samples.prompt_positions)
        rm_better = samples.rm_scores[[a for a, _ in pairs]]
        rm_worse = samples.rm_scores[[b for _, b in pairs]]
        metrics = {
            "eval/gold_score": gold.mean().item(),
            "eval/gold_win_rate_vs_human": win_rate(gold, self.human_scores[samples.prompt_positions]),
            "eval/gold_win_rate_vs_gold": win_rate(gold, self.gold_scores[samples.prompt_positions]),
            "eval/rm_score": samples.rm_scores.mean().item(),
            "eval/kl": samples.kl.mean().item(),
            "eval/response_length": samples.lengths.mean().item(),
            "eval/eos_fraction": samples.has_eos.float().mean().item(),
            "eval/judged_pairs": float(len(pairs)),
        }
        if pairs:
            metrics["eval/rm_accuracy_on_policy"] = preference_accuracy(rm_better, rm_worse)
            metrics["eval/rm_ece_on_policy"] = pair_calibration(rm_better, rm_worse).ece
        examples = [(self.questions[i], text) for i, text in zip(samples.prompt_positions[:4], samples.texts[:4])]
        self.history.append({"step": game.step, "metrics": dict(metrics), "rm_better": rm_better.tolist(),
                             "rm_worse": rm_worse.tolist(), "examples": examples})
        return metrics
