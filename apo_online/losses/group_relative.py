"""GRPO's tensor math (Shao et al. 2024, DeepSeekMath), with the Dr. GRPO (Liu et al. 2025) and DAPO (Yu et al. 2025)
normalisations: group-relative advantages, the clipped ratio loss per token with a k3 KL term, and the three ways
of averaging per-token losses.

Shape letters: B = sequences in a batch, T = response tokens, Q = prompts, N = samples per prompt (a group). Rows are
prompt-major: rows q*N .. q*N+N-1 answer prompt q. A `mask` is 1.0 on valid response tokens and 0 elsewhere.

Normalisers: like the PPO losses, `aggregate_token_loss` takes the size of the whole minibatch (over every micro-batch
and process) in the unit its loss type averages over (`group_loss_weights`): sequences for grpo and dr_grpo, tokens
for dapo. Summing the micro-batch losses then gives the minibatch loss whatever the micro-batch layout.
"""

from __future__ import annotations

import torch

from apo_online.losses.policy import clipped_surrogate, kl_estimate

LOSS_TYPES = ("grpo", "dr_grpo", "dapo")
SCALE_REWARDS = ("group", "none")


def group_std(scores: torch.Tensor, samples_per_prompt: int) -> torch.Tensor:
    """Unbiased (Bessel-corrected, torch.std) standard deviation of each prompt's scores: [Q*N] -> [Q]; N >= 2."""
    return scores.reshape(-1, samples_per_prompt).std(1)


def group_relative_advantages(scores: torch.Tensor, samples_per_prompt: int, scale_rewards: str = "group",
                              eps: float = 1e-4) -> torch.Tensor:
    """Each sample's score against the other samples of its prompt (g(i): the group of row i):

        group: A_i = (r_i - mean_g(i)) / (std_g(i) + eps)      (GRPO)
        none:  A_i =  r_i - mean_g(i)                          (Dr. GRPO: no division by the std)

    std is the unbiased standard deviation (divides by N - 1), as torch.std and TRL's GRPOTrainer compute it; a group
    whose samples all score the same gets advantages 0. scores [Q*N] -> advantages [Q*N]."""
    grouped = scores.reshape(-1, samples_per_prompt)  # [Q, N]
    centred = grouped - grouped.mean(1, keepdim=True)
    if scale_rewards == "group":
        centred = centred / (grouped.std(1, keepdim=True) + eps)
    elif scale_rewards != "none":
        raise ValueError(f"unknown scale_rewards {scale_rewards!r}: expected one of {', '.join(SCALE_REWARDS)}")
    return centred.reshape(-1)


def grpo_token_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float,
    cliprange_high: float | None = None,
    beta: float = 0.0,
    ref_logprobs: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token GRPO loss (to minimise), 0 outside the mask:

        l_t = max( -A rho_t, -A clip(rho_t, 1 - eps_low, 1 + eps_high) ) + beta * k3_t
        rho_t = exp(log pi(y_t) - log pi_old(y_t)),   k3_t = exp(ref_t - logp_t) - (ref_t - logp_t) - 1

    with eps_low = cliprange and eps_high = cliprange_high (None: cliprange; DAPO's clip-higher sets it larger), and
    ref_t the reference's log-prob (k3 with the current log-prob, so the KL term has a gradient). pi_old is the
    sampling policy (the rollout's log-probs).

    logprobs, old_logprobs, ref_logprobs, mask: [B, T]; advantages: [B] (one per sequence). Returns (loss [B, T],
    stats [B, T]: "clipped" 1 where the clipped term is the larger, "kl" the k3 values, both 0 outside the mask)."""
    valid = mask.bool()
    # exp of padding positions could overflow (their log-probs are not those of sampled tokens): zero them first
    log_ratio = torch.where(valid, logprobs - old_logprobs, torch.zeros_like(logprobs))
    high = cliprange if cliprange_high is None else cliprange_high
    loss, clipped = clipped_surrogate(log_ratio, advantages.unsqueeze(1), cliprange, high)
    kl = torch.zeros_like(loss)
    if beta:
        if ref_logprobs is None:
            raise ValueError("grpo_token_loss: beta > 0 needs ref_logprobs")
        kl = kl_estimate(logprobs, torch.where(valid, ref_logprobs, logprobs), "k3")
        loss = loss + beta * kl
    zero = torch.zeros_like(loss)
    stats = {"clipped": torch.where(valid, clipped.to(loss.dtype), zero).detach(),
             "kl": torch.where(valid, kl, zero).detach()}
    return torch.where(valid, loss, zero), stats


def group_loss_weights(mask: torch.Tensor, loss_type: str) -> torch.Tensor:
    """What each sequence counts in the normaliser of `aggregate_token_loss`: 1 (grpo, dr_grpo: an average over
    sequences) or its valid tokens (dapo: an average over tokens). mask [B, T] -> [B]."""
    if loss_type in ("grpo", "dr_grpo"):
        return torch.ones(mask.shape[0], dtype=torch.float32, device=mask.device)
    if loss_type == "dapo":
        return mask.float().sum(1)
    raise ValueError(f"unknown GRPO loss_type {loss_type!r}: expected one of {', '.join(LOSS_TYPES)}")


def aggregate_token_loss(
    token_loss: torch.Tensor,
    mask: torch.Tensor,
    loss_type: str,
    normaliser: torch.Tensor | float | None = None,
    max_tokens: int | None = None,
) -> torch.Tensor:
    """Average per-token losses l_it (0 outside the mask) into one loss:

        grpo:    L = 1/G       sum_i 1/|o_i| sum_t l_it     mean over each sequence's tokens, then over sequences
        dr_grpo: L = 1/(G T)   sum_i sum_t l_it             T = max_tokens, a constant (the generation budget)
        dapo:    L = 1/N_tok   sum_i sum_t l_it             mean over every valid token of the batch

    |o_i| = valid tokens of sequence i. normaliser = G (sequences) for grpo and dr_grpo, N_tok (valid tokens) for dapo,
    counted over the whole minibatch (sum of group_loss_weights); None: this batch's. max_tokens None: T of the batch.
    token_loss, mask: [B, T] -> scalar."""
    mask = mask.to(token_loss.dtype)
    if normaliser is None:
        normaliser = group_loss_weights(mask, loss_type).sum().clamp(min=1.0)
    token_loss = token_loss * mask
    if loss_type == "grpo":
        return (token_loss.sum(1) / mask.sum(1).clamp(min=1.0)).sum() / normaliser
    if loss_type == "dr_grpo":
        return token_loss.sum() / (normaliser * (max_tokens or token_loss.shape[1]))
    if loss_type == "dapo":
        return token_loss.sum() / normaliser
    raise ValueError(f"unknown GRPO loss_type {loss_type!r}: expected one of {', '.join(LOSS_TYPES)}")
