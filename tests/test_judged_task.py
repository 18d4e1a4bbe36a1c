"""The judge-labelled testbed (data.dataset_name: embedded_judged): gold is the judge's best candidate, RM pairs are
labelled by the judge, the judge's own queries stay out, candidates are generated once per query and cached."""

import pytest

from apo_online.testbeds import judged_pairs, judged_task
from apo_online.config import DataConfig, ModelConfig
from apo_online.data.task import load_task_data
from apo_online.testbeds.gold_judge import load_gold_judge, question_text


@pytest.fixture(scope="module")
def judge(apo_cache):
    return load_gold_judge()


@pytest.fixture
def canned_samples(monkeypatch):
    """Replace the model's sampling by fixed candidates per question, and count the questions sampled."""
    calls = []

    def fake(model, tokenizer, questions, seed, per_temperature=judged_task.SAMPLES_PER_TEMPERATURE):
        calls.append(list(questions))
        return [[f"{q} Yes, {q.lower()}", "the the the the", "I like electricity."] for q in questions]

    monkeypatch.setattr(judged_task, "sample_candidates", fake)
    return calls


def test_gold_is_the_judges_best_candidate_and_pairs_follow_the_judge(tmp_path, tiny_model_path, judge,
                                                                       canned_samples):
    model = ModelConfig(model_name_or_path="tiny-llama", cache_dir=str(tmp_path))
    task = judged_task.build_judged_task(model, DataConfig(max_prompts=3), judge=judge)
    assert len(task.train_prompts) == 3 and task.eval_prompts and task.preference_pairs
    for prompt in task.train_prompts + task.eval_prompts:
        question = question_text(prompt.messages)
        candidates = list(prompt.references) + [f"{question} Yes, {question.lower()}", "the the the the",
                                                "I like electricity."]
        scores = judge.score([question] * len(candidates), candidates).tolist()
        assert prompt.gold == candidates[max(range(len(candidates)), key=scores.__getitem__)]
        assert prompt.references  # the human replies are kept as references
    for pair in task.preference_pairs + task.eval_preference_pairs:
        question = question_text(pair.messages)
        chosen, rejected = judge.score([question, question], [pair.chosen, pair.rejected]).tolist()
        assert chosen > rejected
    judge_queries = {p.prompt_id for p in task.judge_pairs}
    seen = {p.prompt_id for p in task.train_prompts + task.eval_prompts + task.preference_pairs}
    assert judge_queries and not judge_queries & seen  # the judge's reserved queries stay hidden from the RM


def test_candidates_are_cached_and_only_missing_queries_are_sampled(tmp_path, tiny_model_path, judge, canned_samples,
                                                                    monkeypatch):
    model = ModelConfig(model_name_or_path="tiny-llama", cache_dir=str(tmp_path))
    eval_queries = len(judged_task.build_embedded_task(0).eval_prompts)
    assert judged_task.missing_queries(model, DataConfig(max_prompts=2)) == 2 + eval_queries  # what --dry_run says
    first = judged_task.build_judged_task(model, DataConfig(max_prompts=2), judge=judge)
    assert judged_task.missing_queries(model, DataConfig(max_prompts=2)) == 0
    assert judged_task.missing_queries(model, DataConfig(max_prompts=5)) == 3
    sampled = sum(len(batch) for batch in canned_samples)
    assert sampled == 2 + len(first.eval_prompts)  # policy and eval prompts, GENERATION_BATCH per call
    assert max(len(batch) for batch in canned_samples) <= judged_task.GENERATION_BATCH
    calls = len(canned_samples)
    def no_judge(**_):
        raise AssertionError("everything is cached: the judge must not be needed")

    monkeypatch.setattr(judged_task, "load_gold_judge", no_judge)
    again = judged_task.build_judged_task(model, DataConfig(max_prompts=2))  # candidates and pair labels cached
    assert len(canned_samples) == calls  # the second build came from the cache
    assert [(p.chosen, p.rejected) for p in again.preference_pairs] == \
        [(p.chosen, p.rejected) for p in first.preference_pairs]
    assert [p.gold for p in again.train_prompts] == [p.gold for p in first.train_prompts]
    judged_task.build_judged_task(model, DataConfig(max_prompts=4), judge=judge)
    assert (judged_task.SHIPPED / judged_task.LABELS_FILE).is_file()  # the embedded pairs' labels ship: no judge call
    new_prompts = judged_task.build_embedded_task(0).train_prompts[2:4]
    assert canned_samples[calls:] == [[question_text(p.messages) for p in new_prompts]]  # just the two new ones
    assert judged_task.cache_path("tiny-llama", str(tmp_path)).is_file()


def test_real_sampling_on_the_tiny_model_through_load_task_data(tmp_path, tiny_model_path):
    data = DataConfig(dataset_name="embedded_judged", max_prompts=2, max_preference_pairs=2)
    task = load_task_data(data, seed=0, model_config=ModelConfig(model_name_or_path="tiny-llama"))
    assert len(task.train_prompts) == 2 and all(p.gold for p in task.train_prompts + task.eval_prompts)
    with pytest.raises(ValueError, match="pass model_config"):
        load_task_data(data)


@pytest.fixture
def canned_pair_samples(monkeypatch):
    """Replace the sampling of v3's RM sample pairs by fixed texts per question, and count calls."""
    calls = []

    def fake(model, tokenizer, questions, seed, temperatures, per_temperature):
        calls.append(list(questions))
        return [[f"{q} Yes.", "the the the the", "I like electricity.", "cake"] for q in questions]

    monkeypatch.setattr(judged_pairs, "sample_texts", fake)
    return calls


def test_v3_adds_judge_labelled_sample_pairs_on_rm_prompts_only(tmp_path, tiny_model_path, judge, canned_samples,
                                                                 canned_pair_samples):
    model = ModelConfig(model_name_or_path="tiny-llama", cache_dir=str(tmp_path))
    v2 = judged_task.build_judged_task(model, DataConfig(max_prompts=2), judge=judge)
    by_name = judged_task.build_judged_task(model, DataConfig(dataset_name="embedded_judged_v2", max_prompts=2))
    assert [(p.chosen, p.rejected) for p in by_name.preference_pairs] == \
        [(p.chosen, p.rejected) for p in v2.preference_pairs]  # embedded_judged is v2, loadable by its name
    assert not canned_pair_samples  # v2 samples no pairs
    v3_data = DataConfig(dataset_name="embedded_judged_v3", max_prompts=2)
    rm_prompts = {p.prompt_id for p in v2.preference_pairs}
    assert judged_task.missing_queries(model, v3_data) == len(rm_prompts)  # what --dry_run says: the pair prompts
    v3 = judged_task.build_judged_task(model, DataConfig(dataset_name="embedded_judged_v3", max_prompts=2), judge=judge)
    assert v3.preference_pairs[: len(v2.preference_pairs)] == v2.preference_pairs
    added = v3.preference_pairs[len(v2.preference_pairs):]
    assert len(added) == 2 * len(rm_prompts)  # 4 samples: 2 disjoint pairs per prompt
    for pair in added:
        question = question_text(pair.messages)
        chosen, rejected = judge.score([question, question], [pair.chosen, pair.rejected]).tolist()
        assert chosen > rejected and pair.chosen != pair.rejected
    assert {p.prompt_id for p in added} == rm_prompts  # never a policy, eval or judge query
    assert judged_pairs.pairs_cache_path("tiny-llama", str(tmp_path)).is_file()
    assert judged_task.missing_queries(model, v3_data) == 0
    calls = len(canned_pair_samples)
    again = judged_task.build_judged_task(model, DataConfig(dataset_name="embedded_judged_v3", max_prompts=2))
    assert len(canned_pair_samples) == calls and again.preference_pairs == v3.preference_pairs  # from the cache


def test_pairs_from_scores_drops_duplicates_and_ties():
    messages = [{"role": "user", "content": "hi?"}]
    pairs = judged_pairs.pairs_from_scores("q", messages, ["a", "b", "c", "d", "e"], [1.0, 2.0, 3.0, 0.5, 9.0])
    assert [(p.chosen, p.rejected) for p in pairs] == [("b", "a"), ("c", "d")]  # disjoint; the odd "e" left out
    same_text = judged_pairs.pairs_from_scores("q", messages, ["a", "a", "b", "c"], [1.0, 1.0, 2.0, 2.0])
    assert same_text == []  # equal texts, then equal scores: both dropped
