"""Reward terms (the reward: section, apo_online/policy_reward/terms.py): the policy's reward as a weighted sum of the RM, the
hidden judge and users' functions; bad input stops at start-up with status 2, a bad value during a game with a
checkpoint and status 3."""

import json
import math
import textwrap

import numpy as np
import pytest
import torch

from apo_online.testbeds import judged_task
from apo_online.cli import main
from apo_online.config import load_config
from apo_online.errors import BadReward, ConfigError
from apo_online.policy_reward.config import parse_reward_terms
from apo_online.policy_reward.terms import FUNCTION_KWARGS, Completions, FunctionTerm, RewardSum, checked_values
from apo_online.run.log import read_metrics
from conftest import REPO, tiny_overrides

RECIPE = REPO / "apo_online/recipes/apo_ppo.yaml"
LENGTH_PENALTY = """
def length_penalty(prompts, completions, **kwargs):
    return [-len(text) / 10 for text in completions]
"""


def write_rewards(tmp_path, source: str, name: str = "my_rewards.py") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return str(path)


def config_with(tmp_path, **extra):
    return load_config(tiny_overrides(tmp_path / "run", **extra), default_yaml=RECIPE)


def run_cli(arguments, capsys) -> tuple[int, list[str]]:
    status = main(arguments, default_yaml=RECIPE)
    return status, [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]


# ---------------------------------------------------------------------------------------------------------------------
# the sum, by hand
# ---------------------------------------------------------------------------------------------------------------------
class Constant:
    forward_roles = ()

    def __init__(self, name, values):
        self.name, self.values = name, values

    def __call__(self, batch):
        return self.values


def batch_of(rows: int) -> Completions:
    return Completions([], list(range(rows)), [[1]] * rows, [True] * rows, None, {})


def test_the_reward_is_the_weighted_sum_of_its_terms_and_a_zero_weight_changes_nothing():
    a, b = Constant("a", [1.0, -2.0, 0.5]), Constant("b", torch.tensor([4.0, 0.0, -1.0]))
    total, values = RewardSum([a, b], [1.0, 0.25])(batch_of(3), "cpu")
    assert total.tolist() == [2.0, -2.0, 0.25]  # 1 * a + 0.25 * b
    assert values["a"].tolist() == [1.0, -2.0, 0.5] and values["b"].tolist() == [4.0, 0.0, -1.0]
    alone, _ = RewardSum([a], [1.0])(batch_of(3), "cpu")
    with_zero, logged = RewardSum([a, b], [1.0, 0.0])(batch_of(3), "cpu")
    assert torch.equal(alone, with_zero) and "b" in logged  # logged, but no part of the reward


@pytest.mark.parametrize("values, message", [
    ([1.0, 2.0], "reward term 'f' returned 2 values for 3 completions"),
    ([1.0, "good", 0.0], "reward term 'f' returned a non-numeric value at row 1: 'good'"),
    ([1.0, None, 0.0], "reward term 'f' returned a non-numeric value at row 1: None"),
    ([1.0, 0.0, float("nan")], "reward term 'f' returned nan at row 2; rewards must be finite"),
    (torch.tensor([1.0, float("inf"), 0.0]), "reward term 'f' returned inf at row 1; rewards must be finite"),
    (0.5, "reward term 'f' returned float; expected a list of 3 numbers"),
])
def test_a_bad_return_value_names_the_term_the_row_and_the_problem(values, message):
    with pytest.raises(BadReward) as err:
        checked_values("f", values, rows=3)
    assert str(err.value) == message


def test_numpy_arrays_tensors_and_ints_are_numbers():
    assert checked_values("f", np.array([1, 2, 3]), 3).tolist() == [1.0, 2.0, 3.0]
    assert checked_values("f", (True, 0, 2.5), 3).tolist() == [1.0, 0.0, 2.5]


def test_a_function_term_gets_texts_and_the_documented_kwargs():
    seen = {}

    def spy(prompts, completions, **kwargs):
        seen.update(kwargs, prompts=prompts, completions=completions)
        return [0.0] * len(completions)

    class Tokenizer:
        def batch_decode(self, ids, skip_special_tokens):
            return ["-".join(map(str, row)) for row in ids]

    prompt = type("Prompt", (), {"input_ids": [7, 8], "messages": [{"role": "user", "content": "hi"}]})()
    batch = Completions([prompt, prompt], [5, 5], [[1, 2], [3]], [True, False], Tokenizer(), {})
    FunctionTerm("spy", spy)(batch)
    assert seen == {"prompts": ["7-8", "7-8"], "completions": ["1-2", "3"], "prompt_ids": [5, 5],
                    "completion_ids": [[1, 2], [3]], "has_eos": [True, False],
                    "messages": [prompt.messages, prompt.messages]}
    assert set(seen) == {"prompts", "completions", *FUNCTION_KWARGS}  # what start-up checks signatures against


# ---------------------------------------------------------------------------------------------------------------------
# start-up checks (ConfigError: status 2)
# ---------------------------------------------------------------------------------------------------------------------
def test_defaults_and_yaml_lists(tmp_path):
    assert [(s.spec, s.name, s.weight) for s in parse_reward_terms(config_with(tmp_path))] == [("rm", "rm", 1.0)]
    spec = write_rewards(tmp_path, LENGTH_PENALTY)
    yaml_file = tmp_path / "reward.yaml"
    yaml_file.write_text(f"reward:\n  terms: [rm, '{spec}:length_penalty']\n  weights: [1.0, 0.1]\n")
    config = load_config(tiny_overrides(tmp_path / "run") + ["--config", str(yaml_file)], default_yaml=RECIPE)
    assert [(s.name, s.weight) for s in parse_reward_terms(config)] == [("rm", 1.0), ("length_penalty", 0.1)]


@pytest.mark.parametrize("source, term, message", [
    (None, "rm,nowhere.py:f", "reward term 'nowhere.py:f': file nowhere.py not found"),
    (LENGTH_PENALTY, "{file}:missing", "has no 'missing' (it defines: length_penalty)"),
    ("scale = 3\n", "{file}:scale", "reward term '{file}:scale': scale is not callable (it is of type int)"),
    ("def f(completions):\n    return []\n", "{file}:f",
     "f(completions) cannot be called as f(prompts, completions, **kwargs)"),
    ("import not_a_module_anywhere\n", "{file}:f", "importing {file} failed: ModuleNotFoundError"),
    (None, "no_such_package.rewards:f", "reward term 'no_such_package.rewards:f': cannot import module"),
    (None, "rm,length", "reward term 'length': expected rm, judge, FILE.py:NAME or package.module:NAME"),
])
def test_a_bad_function_term_is_refused_at_start_up(tmp_path, source, term, message):
    file = write_rewards(tmp_path, source, name=f"rewards_{abs(hash(term))}.py") if source else "nowhere.py"
    config = config_with(tmp_path, **{"reward.terms": term.format(file=file)})
    with pytest.raises(ConfigError, match=None) as err:
        parse_reward_terms(config)
    assert message.format(file=file) in str(err.value)


def test_weights_must_match_the_terms_and_names_must_differ(tmp_path):
    with pytest.raises(ConfigError, match="reward.weights has 1 values for 2 reward.terms"):
        parse_reward_terms(config_with(tmp_path, **{"reward.terms": "rm,rm", "reward.weights": "1"}))
    with pytest.raises(ConfigError, match="same name"):
        parse_reward_terms(config_with(tmp_path, **{"reward.terms": "rm,rm"}))
    with pytest.raises(ConfigError, match="expected float, got 'heavy'"):
        config_with(tmp_path, **{"reward.weights": "heavy"})


def test_bad_terms_stop_the_recipe_with_status_2_and_one_line(tmp_path, tiny_model_path, single_accelerator, capsys):
    status, errors = run_cli(tiny_overrides(tmp_path / "a", **{"reward.terms": "rm,gone.py:f"}), capsys)
    assert status == 2 and errors == [f"error: reward term 'gone.py:f': file gone.py not found (from {pathlib_cwd()})"]
    status, errors = run_cli(tiny_overrides(tmp_path / "a", **{"reward.terms": "rm,gone.py:f"}) + ["--dry_run"], capsys)
    assert status == 2 and errors == [f"error: reward term 'gone.py:f': file gone.py not found (from {pathlib_cwd()})"]
    status, errors = run_cli(tiny_overrides(tmp_path / "b", **{"reward.terms": "judge"}), capsys)
    assert status == 2 and len(errors) == 1
    assert "reward term 'judge' uses the judged testbed's hidden judge" in errors[0] and "got 'embedded'" in errors[0]


def pathlib_cwd():
    from pathlib import Path

    return Path.cwd()


# ---------------------------------------------------------------------------------------------------------------------
# in a game
# ---------------------------------------------------------------------------------------------------------------------
def test_a_game_logs_each_term_and_their_sum(tmp_path, tiny_model_path, single_accelerator, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    spec = write_rewards(tmp_path, LENGTH_PENALTY) + ":length_penalty"
    out = tmp_path / "run"
    status, _ = run_cli(tiny_overrides(out, **{"reward.terms": f"rm,{spec}", "reward.weights": "1,0.1"}), capsys)
    assert status == 0
    steps = [r for r in read_metrics(out / "metrics.jsonl") if r["step"] > 0]
    assert len(steps) == 2
    for record in steps:
        assert record["reward/length_penalty"] < 0  # every response has some text
        assert record["reward/total"] == pytest.approx(record["reward/rm"] + 0.1 * record["reward/length_penalty"],
                                                       abs=1e-5)
        assert record["objective/rm_scores"] == record["reward/total"] and "rm/loss" in record  # APO step ran
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert {"reward/rm", "reward/length_penalty", "reward/total"} <= set(events.Tags()["scalars"])


def test_a_zero_weight_term_leaves_the_game_unchanged(tmp_path, tiny_model_path, single_accelerator, capsys):
    spec = write_rewards(tmp_path, LENGTH_PENALTY) + ":length_penalty"
    assert run_cli(tiny_overrides(tmp_path / "rm"), capsys)[0] == 0
    assert run_cli(tiny_overrides(tmp_path / "zero", **{"reward.terms": f"rm,{spec}", "reward.weights": "1,0"}),
                   capsys)[0] == 0
    plain, zero = (read_metrics(tmp_path / name / "metrics.jsonl") for name in ("rm", "zero"))
    for a, b in zip(plain[1:], zero[1:]):
        assert a["objective/scores"] == b["objective/scores"] and a["rm/loss"] == b["rm/loss"]
        assert a["objective/kl"] == b["objective/kl"]


def test_a_nan_reward_during_the_game_stops_it_with_a_checkpoint(tmp_path, tiny_model_path, single_accelerator,
                                                                   capsys):
    spec = write_rewards(tmp_path, """
        calls = []

        def flaky(prompts, completions, **kwargs):
            calls.append(1)
            return [float("nan") if len(calls) == 2 else 0.0 for _ in completions]
    """) + ":flaky"
    out = tmp_path / "run"
    status, errors = run_cli(tiny_overrides(out, **{"reward.terms": f"rm,{spec}"}), capsys)
    checkpoint = out / "checkpoints" / "step-000001-bad-reward"
    assert status == 3
    assert errors == [f"error: reward term 'flaky' returned nan at row 0; rewards must be finite during step 2; "
                      f"stopped with a checkpoint in {checkpoint}"]
    assert json.loads((checkpoint / "meta.json").read_text())["reason"] == "bad_reward"
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [0, 1]  # step 1 kept, nothing after


def test_the_judge_as_the_only_reward_plays_an_oracle_game_without_the_rm(tmp_path, tiny_model_path,
                                                                          single_accelerator, capsys, monkeypatch):
    def canned(model, tokenizer, questions, seed, per_temperature=None):  # no sampling: the testbed's candidates
        return [[f"{q} Yes.", "the the the", "I like electricity."] for q in questions]

    monkeypatch.setattr(judged_task, "sample_candidates", canned)
    out = tmp_path / "run"
    status, _ = run_cli(tiny_overrides(out, **{"data.dataset_name": "embedded_judged", "data.max_prompts": 4,
                                               "reward.terms": "judge"}), capsys)
    assert status == 0
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records] == [0, 1, 2]
    assert not any(key.startswith("rm/") for key in records[0] if key != "rm/untrained_at_start")  # no warm-up
    for record in records[1:]:
        assert record["objective/rm_scores"] == record["reward/judge"] and math.isfinite(record["reward/judge"])
        assert not any(key.startswith("rm/") for key in record)  # no APO updates either
