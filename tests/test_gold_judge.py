"""The hidden gold judge: deterministic, cached, better than chance on held-out judge pairs (measured here); and the
pairing / win-rate helpers of the evaluator."""

import math

import pytest
import torch

from apo_online.testbeds.embedded import build_embedded_task
from apo_online.evaluation.game_eval import judged_pairs, win_rate
from apo_online.testbeds.gold_judge import default_judge_pairs, load_gold_judge, split_judge_pairs

PROBES = [("Are you sentient?", "Sort of."), ("Are you sentient?", "the the the the the"),
          ("What is your favorite food?", "I like electricity."), ("Tell me a joke", "xq zz vv")]


@pytest.fixture(scope="module")
def judge(apo_cache):
    return load_gold_judge()  # in the session's cache: trained once, shared with the evaluation tests


def binomial_tail(successes: int, trials: int) -> float:
    """P(X >= successes) for X ~ Binomial(trials, 1/2): the chance a coin-flip judge does at least this well."""
    return sum(math.comb(trials, k) for k in range(successes, trials + 1)) / 2**trials


def test_judge_training_is_deterministic_and_cached(judge, tmp_path):
    again = load_gold_judge(cache_dir=str(tmp_path))  # trained from scratch in an empty cache
    assert torch.equal(again.head.weight, judge.head.weight) and torch.equal(again.head.bias, judge.head.bias)
    cached = list(tmp_path.glob("gold-judge-*.pt"))
    assert len(cached) == 1
    reloaded = load_gold_judge(cache_dir=str(tmp_path))  # from the cache file
    questions, responses = zip(*PROBES)
    scores = judge.score(list(questions), list(responses))
    assert torch.equal(reloaded.score(list(questions), list(responses)), scores)
    assert torch.equal(judge.score(list(questions), list(responses)), scores)  # same call, same answer


def test_judge_does_not_depend_on_the_game_seed():
    """The yardstick is fixed: the judge learns from the task at its own seed whatever game.seed is."""
    assert [(p.prompt_id, p.rejected) for p in default_judge_pairs()] == \
        [(p.prompt_id, p.rejected) for p in build_embedded_task(0).judge_pairs]
    other_seed = build_embedded_task(42).judge_pairs
    assert {p.prompt_id for p in other_seed} == {p.prompt_id for p in default_judge_pairs()}  # same queries


def test_judge_pairs_are_disjoint_from_everything_the_rm_sees():
    task = build_embedded_task(0)
    judge_queries = {p.prompt_id for p in task.judge_pairs}
    rm_queries = {p.prompt_id for p in task.preference_pairs + task.eval_preference_pairs}
    rm_queries |= {p.prompt_id for p in task.train_prompts}
    assert judge_queries and not judge_queries & rm_queries


def test_judge_beats_chance_on_held_out_judge_pairs(judge):
    train, heldout = split_judge_pairs(default_judge_pairs())
    assert not {p.prompt_id for p in train} & {p.prompt_id for p in heldout}
    chosen, rejected = judge.pair_scores(heldout)
    wins = int((chosen > rejected).sum())
    assert len(heldout) >= 20
    assert binomial_tail(wins, len(heldout)) < 1e-3, f"{wins}/{len(heldout)} held-out pairs ranked right"
    assert judge.info["heldout_accuracy"] == pytest.approx(wins / len(heldout))


def test_judge_beats_chance_on_the_rm_pairs_it_never_saw(judge):
    pairs = build_embedded_task(0).preference_pairs[:200]
    chosen, rejected = judge.pair_scores(pairs)
    wins = int((chosen > rejected).sum())
    assert binomial_tail(wins, len(pairs)) < 1e-6, f"{wins}/{len(pairs)}"


def test_judged_pairs_orders_samples_of_the_same_prompt_and_drops_ties():
    # rows 0,1 answer prompt 7; rows 2,3,4 answer prompt 3; rows 2 and 4 tie
    pairs = judged_pairs([0.1, 0.9, 2.0, 1.0, 2.0], [7, 7, 3, 3, 3])
    assert sorted(pairs) == [(1, 0), (2, 3), (4, 3)]


def test_win_rate_counts_ties_as_half():
    assert win_rate([1.0, 2.0, 3.0, 0.0], [0.0, 2.0, 4.0, -1.0]) == pytest.approx((1 + 0.5 + 0 + 1) / 4)


def test_gold_judge_null_evaluates_where_the_task_has_a_judge(tiny_config, single_accelerator):
    """game.gold_judge null (the default recipe's): the judge's evaluator where the task carries its held-out pairs
    and eval prompts, none on data without them (where true stops with a ConfigError)."""
    import dataclasses

    from apo_online.config import ConfigError
    from apo_online.data.task import load_task_data
    from apo_online.evaluation.game_eval import GoldJudgeEvaluator
    from apo_online.game import APOGame

    config = tiny_config(**{"game.gold_judge": "null"})
    task = load_task_data(config.data, config.game.seed, config.model)
    game = APOGame(config, accelerator=single_accelerator(), task=task)
    assert [type(e) for e in game.evaluators] == [GoldJudgeEvaluator]
    without_judge, elsewhere = dataclasses.replace(task, judge_pairs=[]), game.config.game.output_dir
    game = APOGame(tiny_config(**{"game.gold_judge": "null", "game.output_dir": elsewhere + "_2"}),
                   accelerator=single_accelerator(), task=without_judge)
    assert game.evaluators == []
    with pytest.raises(ConfigError, match="game.gold_judge needs held-out judge pairs"):
        APOGame(tiny_config(**{"game.gold_judge": "true", "game.output_dir": elsewhere + "_3"}),
                accelerator=single_accelerator(), task=without_judge)
