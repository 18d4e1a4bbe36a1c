"""Every loss against values computed by hand (the arithmetic is in the comments)."""

import math

import pytest
import torch

from apo_online import losses


def close(actual, expected, tol=1e-5):
    assert float(actual) == pytest.approx(expected, abs=tol)


def softplus(x):  # -log sigmoid(-x)... i.e. log(1 + e^x)
    return math.log1p(math.exp(x))


def test_masked_mean_var_whiten():
    values = torch.tensor([1.0, 2.0, 3.0, 100.0])
    mask = torch.tensor([1.0, 1.0, 1.0, 0.0])
    close(losses.masked_mean(values, mask), 2.0)  # (1+2+3)/3, the 100 is masked out
    close(losses.masked_var(values, mask), 1.0)  # ((1-2)^2 + 0 + (3-2)^2) / (3-1)
    whitened = losses.whiten(values, mask, losses.masked_mean(values, mask), losses.masked_var(values, mask))
    assert torch.allclose(whitened, torch.tensor([-1.0, 0.0, 1.0, 0.0]), atol=1e-4)
    close(losses.masked_mean(values, torch.zeros(4)), 0.0)  # empty mask: 0, not NaN


def test_bradley_terry_loss():
    # diffs +1 and -1: (log(1+e^-1) + log(1+e^1)) / 2 = (0.313262 + 1.313262) / 2
    loss = losses.bradley_terry_loss(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0]))
    close(loss, (softplus(-1) + softplus(1)) / 2)
    close(loss, 0.813262)
    weighted = losses.bradley_terry_loss(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.0]))
    close(weighted, softplus(-1) / 2)


def test_apo_rm_loss_weights_each_query_once():
    gold = torch.tensor([1.0, 0.0])
    samples = torch.tensor([[0.0, 1.0], [2.0, 123.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    # query 0: two samples, gaps 1 and 0 -> (log(1+e^-1) + log 2) / 2 = (0.313262 + 0.693147) / 2 = 0.503204
    # query 1: one sample (the 123 is padding), gap -2 -> log(1+e^2) = 2.126928
    expected = ((softplus(-1) + math.log(2)) / 2 + softplus(2)) / 2
    close(losses.apo_rm_loss(gold, samples, mask), expected)
    close(expected, 1.315066)
    # a query with no sample at all is ignored
    mask_empty = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    close(losses.apo_rm_loss(gold, samples, mask_empty), (softplus(-1) + math.log(2)) / 2)


def test_apo_rm_loss_gradient_widens_gap():
    gold = torch.tensor([0.0], requires_grad=True)
    sample = torch.tensor([[0.0]], requires_grad=True)
    losses.apo_rm_loss(gold, sample).backward()
    assert gold.grad.item() == pytest.approx(-0.5)  # d/dg -log sigmoid(g - s) at 0 = -sigmoid(0)
    assert sample.grad.item() == pytest.approx(0.5)


def test_apo_compared_rm_loss_mean_and_preferred():
    gold = torch.tensor([1.0, 0.0])
    samples = torch.tensor([[0.0, 2.0], [-1.0, 123.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    # each: the paper's form, unchanged
    close(losses.apo_compared_rm_loss(gold, samples, mask, "each"), float(losses.apo_rm_loss(gold, samples, mask)))
    # mean: query 0 gold 1 vs mean(0, 2) = 1 -> log 2; query 1 gold 0 vs -1 -> log(1+e^-1)
    close(losses.apo_compared_rm_loss(gold, samples, mask, "mean"), (math.log(2) + softplus(-1)) / 2)
    # preferred: query 0 only the sample scored 2 >= gold 1 -> log(1+e^1); query 1 has none (-1 < 0) -> 0,
    # still counted in the mean over the two queries
    close(losses.apo_compared_rm_loss(gold, samples, mask, "preferred"), softplus(1) / 2)
    # a sample tied with gold counts as preferred: gap 0 -> log 2
    close(losses.apo_compared_rm_loss(torch.tensor([0.0]), torch.tensor([[0.0]]), None, "preferred"), math.log(2))
    with pytest.raises(ValueError, match="compare must be"):
        losses.apo_compared_rm_loss(gold, samples, mask, "median")


def test_apo_preferred_sends_no_gradient_to_samples_below_gold():
    gold = torch.tensor([1.0], requires_grad=True)
    samples = torch.tensor([[0.0, 3.0]], requires_grad=True)
    losses.apo_compared_rm_loss(gold, samples, None, "preferred").backward()
    assert samples.grad[0, 0].item() == 0.0  # already below gold: left alone
    assert samples.grad[0, 1].item() == pytest.approx(torch.sigmoid(torch.tensor(2.0)).item())  # pushed down


def test_total_rm_loss():
    close(losses.apo_total_rm_loss(torch.tensor(2.0), torch.tensor(3.0), apo_coeff=0.5, beta2=2.0), 7.0)


def test_kl_estimators():
    logp, ref = torch.tensor([[-1.0]]), torch.tensor([[-1.5]])
    close(losses.kl_estimate(logp, ref, "k1"), 0.5)
    # k3: r = exp(ref - logp) = exp(-0.5) = 0.606531; (r - 1) - log r = -0.393469 + 0.5 = 0.106531
    close(losses.kl_estimate(logp, ref, "k3"), math.exp(-0.5) - 1 + 0.5)
    with pytest.raises(ValueError, match="k2"):
        losses.kl_estimate(logp, ref, "k2")


def test_token_rewards_score_on_last_valid_token():
    rewards = losses.token_rewards(torch.tensor([1.0]), torch.tensor([[0.2, 0.4, 0.6]]),
                                   torch.tensor([[1.0, 1.0, 0.0]]), kl_coef=0.5)
    # -0.5*0.2 = -0.1; -0.5*0.4 + 1.0 = 0.8; masked token gets nothing
    assert torch.allclose(rewards, torch.tensor([[-0.1, 0.8, 0.0]]))


def test_gae_by_hand():
    rewards, values = torch.tensor([[0.0, 1.0]]), torch.tensor([[0.5, 0.25]])
    adv, ret = losses.gae_advantages(rewards, values, torch.ones(1, 2), gamma=1.0, lam=0.5)
    # t=1: delta = 1 + 0 - 0.25 = 0.75 = A1;  t=0: delta = 0 + 0.25 - 0.5 = -0.25, A0 = -0.25 + 0.5*0.75 = 0.125
    assert torch.allclose(adv, torch.tensor([[0.125, 0.75]]))
    assert torch.allclose(ret, torch.tensor([[0.625, 1.0]]))
    # the episode ends at the last valid token: V and A past it count as 0
    adv, ret = losses.gae_advantages(rewards, values, torch.tensor([[1.0, 0.0]]), gamma=1.0, lam=0.5)
    assert torch.allclose(adv, torch.tensor([[-0.5, 0.0]]))
    assert torch.allclose(ret, torch.tensor([[0.0, 0.0]]))


def test_ppo_policy_loss_clipping():
    logp = torch.tensor([[0.0, math.log(1.5)]])
    old = torch.zeros(1, 2)
    loss, stats = losses.ppo_policy_loss(logp, old, torch.ones(1, 2), torch.ones(1, 2), cliprange=0.2)
    # token 0: ratio 1 -> -1; token 1: ratio 1.5, clipped to 1.2 -> max(-1.5, -1.2) = -1.2; mean = -1.1
    close(loss, -1.1)
    close(stats["clipfrac_sum"], 1.0)
    close(stats["approx_kl_sum"], 0.5 * math.log(1.5) ** 2)
    # negative advantage, ratio 0.5: max(0.5, 0.8) = 0.8
    loss, _ = losses.ppo_policy_loss(torch.tensor([[math.log(0.5)]]), torch.zeros(1, 1), -torch.ones(1, 1),
                                     torch.ones(1, 1), cliprange=0.2)
    close(loss, 0.8)
    # an explicit token normaliser (whole minibatch = 4 tokens) divides the same sum
    loss, _ = losses.ppo_policy_loss(logp, old, torch.ones(1, 2), torch.ones(1, 2), cliprange=0.2, num_tokens=4.0)
    close(loss, -2.2 / 4)


def test_ppo_value_loss_clipping():
    loss, stats = losses.ppo_value_loss(torch.tensor([[1.0]]), torch.tensor([[0.0]]), torch.tensor([[2.0]]),
                                        torch.ones(1, 1), cliprange_value=0.2)
    # unclipped (1-2)^2 = 1; clipped value 0.2 -> (0.2-2)^2 = 3.24; 0.5 * max = 1.62
    close(loss, 1.62)
    close(stats["vf_clipfrac_sum"], 1.0)


def test_adaptive_kl_coef():
    # error = clip(9/6 - 1, -0.2, 0.2) = 0.2; 0.1 * (1 + 0.2 * 100/1000) = 0.102
    close(losses.adaptive_kl_coef(0.1, 9.0, 6.0, horizon=1000, n_steps=100), 0.102)
    close(losses.adaptive_kl_coef(0.1, 3.0, 6.0, horizon=1000, n_steps=100), 0.1 * (1 - 0.2 * 0.1))


def test_dpo_loss_variants():
    args = (torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.5]), torch.tensor([-1.5]))
    # h = (-1 + 1.5) - (-2 + 1.5) = 1; sigmoid: -log sigmoid(0.5 * 1) = log(1 + e^-0.5) = 0.474077
    loss, chosen, rejected = losses.dpo_loss(*args, beta=0.5)
    close(loss, softplus(-0.5))
    close(chosen, 0.25)
    close(rejected, -0.25)
    close(losses.dpo_loss(*args, beta=0.5, loss_type="ipo")[0], 0.0)  # (1 - 1/(2*0.5))^2
    close(losses.dpo_loss(*args, beta=0.5, loss_type="hinge")[0], 0.5)  # relu(1 - 0.5)
    # label smoothing 0.1: 0.9 * 0.474077 + 0.1 * log(1 + e^0.5)
    close(losses.dpo_loss(*args, beta=0.5, label_smoothing=0.1)[0], 0.9 * softplus(-0.5) + 0.1 * softplus(0.5))


def test_sft_and_sequence_logprob():
    logp, mask = torch.tensor([[-1.0, -2.0, -3.0]]), torch.tensor([[1.0, 1.0, 0.0]])
    close(losses.sft_loss(logp, mask), 1.5)
    close(losses.sequence_logprob(logp, mask)[0], -3.0)


def test_temperature_scaled_token_logprobs_by_hand():
    """trl's selective_log_softmax, which the backbone and the from-generation rollout path use, scales by 1/T."""
    from trl.trainer.utils import selective_log_softmax

    logits = torch.tensor([[[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]]])  # [B=1, R=2, V=3]
    tokens = torch.tensor([[1, 2]])
    # T = 2: z/T = [0.5, 1, 0] -> log softmax of token 1 = 1 - log(e^0.5 + e^1 + 1); uniform row -> -log 3
    expected = torch.tensor([[1.0 - math.log(math.exp(0.5) + math.exp(1.0) + 1.0), -math.log(3.0)]])
    assert torch.allclose(selective_log_softmax(logits, tokens, temperature=2.0), expected, atol=1e-6)
