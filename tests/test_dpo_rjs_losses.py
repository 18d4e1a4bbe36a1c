"""DPO loss by hand and against trl's own DPOTrainer loss code; choosing pairs and winners by RM score."""

import collections
import math
import types

import pytest
import torch

from apo_online import losses


def close(actual, expected, tol=1e-5):
    assert float(actual) == pytest.approx(expected, abs=tol)


def test_dpo_loss_by_hand_with_and_without_length_normalisation():
    # log-ratios: chosen -2 - (-2.5) = 0.5, rejected -3 - (-2.5) = -0.5, h = 1
    args = (torch.tensor([-2.0]), torch.tensor([-3.0]), torch.tensor([-2.5]), torch.tensor([-2.5]))
    loss, chosen, rejected = losses.dpo_loss(*args, beta=0.1)
    close(loss, math.log1p(math.exp(-0.1)))  # -log sigmoid(0.1) = 0.644397
    close(loss, 0.644397)
    close(chosen, 0.05)
    close(rejected, -0.05)
    # per-token: chosen 0.5 / 2 tokens = 0.25, rejected -0.5 / 4 tokens = -0.125, h = 0.375
    lengths = (torch.tensor([2.0]), torch.tensor([4.0]))
    close(losses.dpo_loss(*args, beta=0.5, loss_type="ipo", chosen_lengths=lengths[0],
                          rejected_lengths=lengths[1])[0], (0.375 - 1.0) ** 2)  # 0.390625
    close(losses.dpo_loss(*args, beta=2.0, loss_type="hinge", chosen_lengths=lengths[0],
                          rejected_lengths=lengths[1])[0], 0.25)  # relu(1 - 2 * 0.375)
    with pytest.raises(ValueError, match="give both chosen_lengths and rejected_lengths"):
        losses.dpo_loss(*args, beta=0.1, chosen_lengths=lengths[0])


def trl_dpo_loss(per_token_logps, completion_mask, ref_chosen, ref_rejected, beta, loss_type):
    """trl 1.16 DPOTrainer._compute_loss, run on given per-token log-probs instead of a model forward.

    The method is called unbound with a stand-in `self` holding only the attributes it reads, and a stand-in
    model that returns `per_token_logps` (rows [chosen..., rejected...], like trl's concatenated batch), so the
    loss arithmetic is trl's own code, untouched. Reference log-probs are passed precomputed."""
    from trl.trainer.dpo_trainer import DPOTrainer

    class GatherlessAccelerator:
        device = torch.device("cpu")

        def gather_for_metrics(self, value):
            return value.reshape(-1) if torch.is_tensor(value) else value

        def gather(self, value):
            return value

    zeros = torch.zeros_like(per_token_logps)

    def model(**kwargs):
        return types.SimpleNamespace(log_probs=per_token_logps, entropy=zeros, mean_logits=zeros,
                                     is_top1=zeros.bool())

    model.training = True
    trainer = types.SimpleNamespace(
        model=model, accelerator=GatherlessAccelerator(), aux_loss_enabled=False, ld_alpha=None,
        precompute_ref_logps=True, f_divergence_type="reverse_kl", loss_types=[loss_type], loss_weights=[1.0],
        beta=beta, label_smoothing=0.0, use_weighting=False,
        _metrics=collections.defaultdict(lambda: collections.defaultdict(list)), _total_train_tokens=0, _tp_size=1)
    rows, length = completion_mask.shape
    inputs = {"input_ids": torch.zeros(rows, length, dtype=torch.long),
              "attention_mask": torch.ones(rows, length, dtype=torch.long),
              "completion_mask": completion_mask, "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}
    loss = DPOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)
    return loss, trainer._metrics["train"]


@pytest.mark.parametrize("trl_loss_type, our_loss_type, normalised", [
    ("sigmoid", "sigmoid", False), ("hinge", "hinge", False), ("ipo", "ipo", True), ("sigmoid_norm", "sigmoid", True),
])
@pytest.mark.parametrize("beta", [0.1, 0.7])
def test_dpo_loss_matches_trl_dpo_trainer(trl_loss_type, our_loss_type, normalised, beta):
    generator = torch.Generator().manual_seed(7)
    pairs, length = 3, 7
    # completion masks: the first token is prompt for every row, completions of different lengths
    completion_mask = torch.zeros(2 * pairs, length, dtype=torch.long)
    for row, (start, end) in enumerate([(1, 7), (2, 5), (1, 3), (3, 7), (1, 6), (2, 4)]):
        completion_mask[row, start:end] = 1
    shifted = completion_mask[:, 1:].float()  # trl's log-probs are for tokens 1..L-1
    per_token = -torch.rand(2 * pairs, length - 1, generator=generator) * 3 * shifted
    ref_chosen = -torch.rand(pairs, generator=generator) * 10
    ref_rejected = -torch.rand(pairs, generator=generator) * 10
    expected, metrics = trl_dpo_loss(per_token, completion_mask, ref_chosen, ref_rejected, beta, trl_loss_type)

    sequence = losses.sequence_logprob(per_token, shifted)
    lengths = shifted.sum(1)
    ours, chosen_rewards, rejected_rewards = losses.dpo_loss(
        sequence[:pairs], sequence[pairs:], ref_chosen, ref_rejected, beta, our_loss_type,
        chosen_lengths=lengths[:pairs] if normalised else None, rejected_lengths=lengths[pairs:] if normalised else None)
    assert float(ours) == pytest.approx(float(expected), rel=1e-6, abs=1e-7)
    assert float(expected) > 0.01  # a loss that is not trivially 0 on both sides
    if not normalised:  # trl logs the un-normalised implicit rewards beta * log-ratio
        assert float(chosen_rewards.mean()) == pytest.approx(metrics["rewards/chosen"][0], rel=1e-5)
        assert float(rejected_rewards.mean()) == pytest.approx(metrics["rewards/rejected"][0], rel=1e-5)


def test_pairs_by_score_best_vs_worst_and_all_pairs():
    scores = torch.tensor([0.1, 0.5, 0.3, 1.0, 1.0, 1.0, 2.0, -1.0, 2.0])  # 3 prompts x 3 samples
    chosen, rejected, ties = losses.pairs_by_score(scores, 3, "best_vs_worst")
    # prompt 0: best row 1 (0.5), worst row 0 (0.1); prompt 1: all tied, skipped; prompt 2: best row 6 (first 2.0)
    assert chosen.tolist() == [1, 6] and rejected.tolist() == [0, 7] and ties == 1
    chosen, rejected, ties = losses.pairs_by_score(scores, 3, "all_pairs")
    assert list(zip(chosen.tolist(), rejected.tolist())) == [(1, 0), (1, 2), (2, 0), (6, 7), (8, 7)]
    assert ties == 3 + 1  # the three pairs of prompt 1, and rows 6 vs 8
    # a minimum gap of 0.25 turns the 0.2 gaps of prompt 0 into ties
    chosen, rejected, ties = losses.pairs_by_score(scores, 3, "all_pairs", min_gap=0.25)
    assert list(zip(chosen.tolist(), rejected.tolist())) == [(1, 0), (6, 7), (8, 7)]
    assert ties == 2 + 3 + 1
    with pytest.raises(ValueError, match="unknown pairing 'random'"):
        losses.pairs_by_score(scores, 3, "random")


def test_best_of_n_takes_the_argmax_of_each_prompt():
    scores = torch.tensor([0.1, 0.5, 0.3, 1.0, 1.0, 1.0, -2.0, -1.0, -3.0])
    assert losses.best_of_n(scores, 3).tolist() == [1, 3, 7]  # ties go to the first sample
    assert losses.best_of_n(torch.tensor([3.0, 4.0]), 1).tolist() == [0, 1]
