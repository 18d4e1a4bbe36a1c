"""Rollout: sample responses with the policy adapter, cut them at the stop token, and score them with the policy's
reward terms (apo_online/policy_reward/terms.py).

Rows are prompt-major: with n samples per prompt, rows i*n .. i*n+n-1 answer prompt i.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from trl.models.utils import unwrap_model_for_generation
from trl.trainer.utils import selective_log_softmax

from apo_online.backbone import SharedPrefix
from apo_online.data.canonical import EncodedPrompt, left_pad
from apo_online.policy_reward.terms import Completions, RewardSum


@dataclass
class RolloutSpec:
    """What a policy optimizer needs from a rollout."""

    samples_per_prompt: int | None = None  # None: rollout.samples_per_prompt from the config
    needs_values: bool = False
    needs_ref_logprobs: bool = True


@dataclass
class Rollout:
    prompt_index: torch.Tensor  # [B] position of each row's prompt in the game's encoded prompt list
    input_ids: torch.Tensor  # [B, P+R] prompt left-padded to P, then the response (pad after the stop token)
    attention_mask: torch.Tensor  # [B, P+R]
    prompt_length: int  # P
    response_mask: torch.Tensor  # [B, R] float: 1 on response tokens up to and including the stop token
    logprobs: torch.Tensor  # [B, R] policy log-probs at sampling time (temperature-scaled), 0 outside the mask
    scores: torch.Tensor  # [B] the reward (the weighted sum of reward.terms) minus the missing-EOS penalty
    rm_scores: torch.Tensor  # [B] the reward before the penalty: the raw RM score when the reward is the RM alone
    has_eos: torch.Tensor  # [B] bool: the response produced the stop token
    samples_per_prompt: int
    temperature: float
    ref_logprobs: torch.Tensor | None = None  # [B, R]
    values: torch.Tensor | None = None  # [B, R] V(s_t) before each response token, 0 outside the mask
    term_scores: dict[str, torch.Tensor] = field(default_factory=dict)  # [B] each reward term's own value, by name

    @property
    def response_ids(self) -> torch.Tensor:  # [B, R]
        return self.input_ids[:, self.prompt_length :]

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def response_lists(self) -> list[list[int]]:
        """Each row's response tokens without padding (stop token included when present)."""
        return truncate_lists(self.response_ids, self.response_mask)


def truncate_at_stop(responses: torch.Tensor, stop_ids: list[int], pad_id: int):
    """Keep each response up to and including its first stop token; pad the rest.

    responses [B, R] -> (responses [B, R], mask [B, R] float, has_stop [B] bool)."""
    is_stop = torch.isin(responses, torch.tensor(stop_ids, device=responses.device))
    has_stop = is_stop.any(1)
    length = responses.shape[1]
    first_stop = torch.where(has_stop, is_stop.float().argmax(1), torch.full_like(has_stop, length - 1, dtype=torch.long))
    positions = torch.arange(length, device=responses.device)
    mask = positions.unsqueeze(0) <= first_stop.unsqueeze(1)
    return torch.where(mask, responses, torch.full_like(responses, pad_id)), mask.float(), has_stop


def truncate_lists(responses: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    """[B, R] padded responses -> their valid tokens per row."""
    return [row[: int(n)] for row, n in zip(responses.tolist(), mask.sum(1).tolist())]


@torch.no_grad()
def score_sequences(backbone, input_ids, attention_mask, prompt_length: int, roles: tuple[str, ...],
                    temperature: float, batch_size: int) -> dict[str, torch.Tensor]:
    """No-grad forward of `roles` over [B, L] sequences in chunks of `batch_size` rows; outputs concatenated."""
    chunks: dict[str, list[torch.Tensor]] = {role: [] for role in roles}
    for start in range(0, input_ids.shape[0], batch_size):
        out = backbone(input_ids[start : start + batch_size], attention_mask[start : start + batch_size],
                       roles=roles, response_start=prompt_length, temperature=temperature)
        for role in roles:
            chunks[role].append(out[role])
    return {role: torch.cat(parts) for role, parts in chunks.items()}


@torch.no_grad()
def score_shared_prompts(backbone, prompt_ids, prompt_mask, responses, response_mask, n: int, roles: tuple[str, ...],
                         temperature: float, batch_size: int) -> dict[str, torch.Tensor]:
    """score_sequences' outputs for n responses per prompt, each prompt run once (SharedPrefix): the same up to
    float rounding, with (n - 1) / n of the prompt tokens saved (at 64 prompt and 24 response tokens, 4 samples a
    prompt: 0.45 of the tokens). prompt_ids, prompt_mask [G, P] left-padded; responses, response_mask [G*n, R],
    right-padded, the n responses of each prompt together; chunks of about batch_size rows."""
    if n == 1 or backbone.is_gradient_checkpointing:  # nothing shared, or no cache to share it through
        input_ids = torch.cat([prompt_ids.repeat_interleave(n, 0), responses], 1)
        attention_mask = torch.cat([prompt_mask.repeat_interleave(n, 0), response_mask.long()], 1)
        return score_sequences(backbone, input_ids, attention_mask, prompt_ids.shape[1], roles, temperature,
                               batch_size)
    chunks: dict[str, list[torch.Tensor]] = {role: [] for role in roles}
    per_chunk = max(1, batch_size // n)
    for start in range(0, prompt_ids.shape[0], per_chunk):
        prompts = slice(start, start + per_chunk)
        rows = slice(start * n, (start + per_chunk) * n)
        count = prompt_ids[prompts].shape[0]
        prefix = SharedPrefix(prompt_ids[prompts], prompt_mask[prompts],
                              torch.arange(count, device=prompt_ids.device).repeat_interleave(n))
        out = backbone(responses[rows], response_mask[rows].long(), roles=roles, temperature=temperature,
                       prefix=prefix)
        for role in roles:
            chunks[role].append(out[role])
    return {role: torch.cat(parts) for role, parts in chunks.items()}


def collect_rollout(ctx, prompts: list[EncodedPrompt], positions: list[int], rollout_config, spec: RolloutSpec,
                    tokenizer, reward: RewardSum | None = None) -> Rollout:
    """Generate spec.samples_per_prompt responses per prompt and compute what the optimizer needs.

    positions: each prompt's position in the game's encoded prompt list (kept as Rollout.prompt_index).
    ctx: TrainingContext (prepared model + accelerator). reward: the policy's reward terms (policy_reward/terms.py;
    None: the shared reward adapter alone). A term that reads a role of the rollout's own forward (the shared reward
    adapter) gets it from that forward; the others score the responses themselves. The missing-EOS penalty is
    subtracted once, from the weighted sum."""
    cfg, n = rollout_config, spec.samples_per_prompt
    reward = reward or RewardSum.rm_only()
    pad_id = tokenizer.pad_token_id
    stop_ids = [tokenizer.eos_token_id]
    prompt_ids, prompt_mask = left_pad([p.input_ids for p in prompts], pad_id)
    prompt_ids, prompt_mask = prompt_ids.to(ctx.device), prompt_mask.to(ctx.device)
    with unwrap_model_for_generation(ctx.model, ctx.accelerator) as backbone:
        generated = backbone.generate(
            prompt_ids, prompt_mask, do_sample=True, temperature=cfg.temperature, top_k=cfg.top_k or None,
            top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens, num_return_sequences=n, pad_token_id=pad_id,
            eos_token_id=stop_ids, return_dict_in_generate=True, output_logits=cfg.logprobs_from_generation,
        )
        sequences, prompt_length = generated.sequences, prompt_ids.shape[1]
        responses, response_mask, has_eos = truncate_at_stop(sequences[:, prompt_length:], stop_ids, pad_id)
        input_ids = torch.cat([sequences[:, :prompt_length], responses], 1)
        attention_mask = torch.cat([prompt_mask.repeat_interleave(n, 0), response_mask.long()], 1)
        wanted = {"policy": not cfg.logprobs_from_generation, "reference": spec.needs_ref_logprobs,
                  "value": spec.needs_values, "reward": "reward" in reward.forward_roles}
        roles = tuple(role for role, needed in wanted.items() if needed)
        # each prompt run once for its n samples (generate returns a prompt's n sequences together); n = 1: the rows
        out = score_shared_prompts(backbone, prompt_ids, prompt_mask, responses, response_mask, n, roles,
                                   cfg.temperature, cfg.forward_batch_size)
        if cfg.logprobs_from_generation:  # raw logits of every generation step [B, R, V]; same helper as the forward
            step_logits = torch.stack(generated.logits, 1).float()
            out["policy"] = selective_log_softmax(step_logits, responses, temperature=cfg.temperature)
    rows = [p for p in prompts for _ in range(n)]
    completions = Completions(rows, [p for p in positions for _ in range(n)], truncate_lists(responses, response_mask),
                              has_eos.tolist(), tokenizer, {r: out[r] for r in reward.forward_roles})
    raw_scores, term_scores = reward(completions, ctx.device)
    scores = raw_scores.clone()
    if cfg.missing_eos_penalty is not None:
        scores = scores - cfg.missing_eos_penalty * (~has_eos).float()
    return Rollout(
        prompt_index=torch.tensor(positions, device=ctx.device).repeat_interleave(n),
        input_ids=input_ids, attention_mask=attention_mask, prompt_length=prompt_length,
        response_mask=response_mask, logprobs=out["policy"] * response_mask, scores=scores, rm_scores=raw_scores,
        has_eos=has_eos, samples_per_prompt=n, temperature=cfg.temperature, term_scores=term_scores,
        ref_logprobs=out["reference"] * response_mask if "reference" in out else None,
        values=out["value"] * response_mask if "value" in out else None,
    )


def objective_metrics(rollout) -> dict[str, float]:
    """What every policy optimizer's rollout is logged with: its scores (objective/rm_scores before the missing-EOS
    penalty), each reward term (reward/<name>) and their weighted sum (reward/total, = objective/rm_scores), and with
    reference log-probs the sequence KL to the reference (k1, at the sampling temperature) and the entropy estimate."""
    metrics = {"objective/scores": rollout.scores.mean().item(), "objective/rm_scores": rollout.rm_scores.mean().item()}
    if rollout.term_scores:
        metrics["reward/total"] = metrics["objective/rm_scores"]
        metrics.update({f"reward/{name}": values.mean().item() for name, values in rollout.term_scores.items()})
    if rollout.ref_logprobs is not None:
        metrics["objective/kl"] = (rollout.logprobs - rollout.ref_logprobs).sum(1).mean().item()
        metrics["objective/entropy"] = (-rollout.logprobs.sum(1)).mean().item()
    return metrics
