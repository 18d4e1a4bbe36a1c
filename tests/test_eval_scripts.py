"""The evaluation scripts end to end on the tiny model: compare (frozen RM vs APO, 2 steps), then policy_eval and
rm_eval on the trained run; and the gold-judge evaluator does not change what training does."""

import json
import math
from pathlib import Path

import pytest

from apo_online.run.log import read_metrics
from conftest import REPO, tiny_overrides

COMPARE_VARIANTS = ["frozen_ppo", "apo_ppo"]


@pytest.fixture(scope="module")
def compared(tmp_path_factory, tiny_model_path):
    """compare.main on the tiny model: 2 steps per variant, gold-judge evaluation at steps 0, 1 and 2."""
    from eval import compare

    output = tmp_path_factory.mktemp("compare")
    overrides = tiny_overrides(output / "unused", **{"game.eval_every": 1, "data.num_eval_prompts": 4})
    summary = compare.main(["--variants", ",".join(COMPARE_VARIANTS + ["apo_nosuchopt"]),
                            "--output_dir", str(output)] + overrides)
    return output, summary


def _not_json(token):
    raise ValueError(f"{token} is not JSON")


def test_compare_writes_summary_and_plots(compared):
    output, summary = compared
    assert list(summary["variants"]) == COMPARE_VARIANTS
    assert "apo_nosuchopt" in summary["skipped"]  # an unregistered optimizer is skipped, not fatal
    on_disk = json.loads((output / "summary.json").read_text(), parse_constant=_not_json)  # strict JSON: no NaN
    assert list(on_disk["variants"]) == COMPARE_VARIANTS
    for png in ["curves.png"] + [f"reliability_{name}.png" for name in COMPARE_VARIANTS]:
        assert (output / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    frozen, apo = (summary["variants"][name] for name in COMPARE_VARIANTS)
    assert frozen["config"]["rm"]["update_every"] == 0 and apo["config"]["rm"]["update_every"] == 1
    assert [step for step, _ in apo["curves"]["eval/gold_score"]] == [0, 1, 2]
    # at step 0 the policy is the reference and the eval seed is fixed: both variants start from the same point
    assert frozen["gold_score_step0"] == apo["gold_score_step0"]
    for name in COMPARE_VARIANTS:
        row = summary["variants"][name]
        assert math.isfinite(row["gold_score_final"]) and 0 <= row["gold_win_rate_vs_human_final"] <= 1
        assert row["policy_pairs_pooled"] > 0 and 0 <= row["rm_accuracy_on_policy_pooled"] <= 1
        assert 0 <= row["rm_ece_on_policy_pooled"] <= 1 and row["human_pairs"] > 0
        records = read_metrics(output / name / "metrics.jsonl")
        logged = {key for record in records for key in record}
        assert {"eval/gold_score", "eval/rm_accuracy_on_policy", "eval/rm_ece_on_policy", "eval/kl"} <= logged
        # the step-0 evaluation is logged by the game (metrics.jsonl and TensorBoard), not only in summary.json
        assert [r["eval/gold_score"] for r in records if r["step"] == 0] == [row["gold_score_step0"]]


def test_policy_eval_on_the_tiny_model(compared, tmp_path):
    from eval import policy_eval

    output, _ = compared
    target = tmp_path / "policy_eval.json"
    result = policy_eval.main(["--run", str(output / "apo_ppo"), "--judges", "rm,gold", "--num_prompts", "3",
                               "--samples_per_prompt", "2", "--output", str(target)])
    assert json.loads(target.read_text())["prompts"] == 3
    policy, reference = result["sides"]["policy"], result["sides"]["reference"]
    assert reference["kl"] == 0.0 and math.isfinite(policy["kl"])
    for side in (policy, reference):
        assert 1 <= side["response_length"] <= 6  # rollout.max_new_tokens of tiny_overrides
        assert math.isfinite(side["rm_score"]) and math.isfinite(side["gold_score"])
        assert 0 <= side["gold_win_rate_vs_human"] <= 1 and len(side["examples"]) == 5
    assert 0 <= result["policy_vs_reference"]["gold_win_rate"] <= 1
    assert "rm score" in policy_eval.format_table(result)


def test_generate_shows_policy_and_reference_answers_with_their_scores(compared, tmp_path, capsys):
    from apo_online.testbeds.gold_judge import load_gold_judge
    from eval import generate

    output, _ = compared
    questions = tmp_path / "questions.txt"
    questions.write_text("What is your favourite book?\n\nDo you like music?\n")
    argv = ["--run", str(output / "apo_ppo"), "--prompt", "Hello, who are you?", "--prompts", str(questions),
            "--samples_per_prompt", "2", "--output", str(tmp_path / "answers.json")]
    result = generate.main(argv)
    printed = capsys.readouterr().out
    assert [item["prompt"] for item in result["prompts"]] == ["Hello, who are you?", "What is your favourite book?",
                                                              "Do you like music?"]  # the blank line is no prompt
    assert result["judges"] == ["rm", "gold"]  # the embedded task: the gold judge by default
    answers = [(item["prompt"], a) for item in result["prompts"] for side in ("policy", "reference")
               for a in item[side]]
    assert len(answers) == 3 * 2 * 2
    # the gold scores shown are the judge's scores of exactly the texts shown
    judge = load_gold_judge()
    rescored = judge.score([q for q, _ in answers], [a["text"] for _, a in answers]).tolist()
    assert rescored == pytest.approx([a["gold_score"] for _, a in answers], abs=1e-5)
    for prompt, answer in answers:
        assert math.isfinite(answer["rm_score"]) and answer["stopped"] in (True, False)
        text = answer["text"].strip().replace("\n", " ") + ("" if answer["stopped"] else " ...")
        assert text in printed and f"] {prompt}" in printed
    assert json.loads((tmp_path / "answers.json").read_text()) == result
    assert generate.main(argv) == result  # the same seed, the same answers


def test_generate_refuses_empty_prompts_and_the_gold_judge_off_the_embedded_task(compared, capsys):
    from eval import generate
    from apo_online.run.loading import load_run

    output, _ = compared
    with pytest.raises(SystemExit) as info:
        generate.main(["--run", str(output / "apo_ppo"), "--prompt", "Hi?", "--prompt", " "])
    assert info.value.code == 2 and "error: --prompt number 2: empty prompt" in capsys.readouterr().err
    loaded = load_run(output / "apo_ppo")
    loaded.config.data.dataset_name = "prompts.jsonl"
    with pytest.raises(ValueError, match="the gold judge is trained on the embedded task's hidden queries only"):
        generate.generate(loaded, generate.read_prompts(["Hi?"], None, loaded.config), ["rm", "gold"])


def test_rm_eval_on_the_tiny_run(compared, tmp_path):
    from apo_online.rm.calibration import preference_accuracy
    from eval import rm_eval

    output, _ = compared
    result = rm_eval.main(["--run", str(output / "apo_ppo"), "--max_pairs", "12", "--output_dir", str(tmp_path)])
    assert result["pairs"] == 12 and result["calibration"]["num_predictions"] == 24  # both orientations
    assert result["accuracy"] == preference_accuracy(result["chosen_scores"], result["rejected_scores"])
    assert (tmp_path / "reliability.png").is_file() and (tmp_path / "rm_eval.json").is_file()
    held_out = (tmp_path / "rm_eval.json").read_text()
    pairs = tmp_path / "mine.jsonl"
    pairs.write_text(json.dumps({"prompt": "Hi?", "chosen": "Hello.", "rejected": "No."}) + "\n")
    other = rm_eval.main(["--run", str(output / "apo_ppo"), "--pairs", str(pairs), "--output_dir", str(tmp_path)])
    assert other["pairs"] == 1 and (tmp_path / "rm_eval_mine.json").is_file()
    assert (tmp_path / "reliability_mine.png").is_file()
    assert (tmp_path / "rm_eval.json").read_text() == held_out  # not overwritten by another pairs file
    assert rm_eval.default_output_dir(str(output / "apo_ppo"), None) == output / "apo_ppo" / "rm_eval"
    assert rm_eval.default_output_dir(None, str(tmp_path)) == tmp_path / "rm_eval"
    assert rm_eval.default_output_dir(None, "org/model") == Path("runs/rm_eval_base/org--model")


def test_gold_judge_evaluations_do_not_change_training(compared, tmp_path):
    """The frozen_ppo run of `compared` evaluated at every step; the same game without evaluations must train the
    same way (evaluation draws no numbers from the training's random streams)."""
    from apo_online.config import load_config
    from apo_online.game import APOGame
    from eval.compare import _reset_accelerate

    output, _ = compared
    config = load_config(tiny_overrides(tmp_path / "plain", **{"rm.update_every": 0,
                                                                "data.num_eval_prompts": 4}),
                         default_yaml=REPO / "apo_online/recipes/apo_ppo.yaml")
    _reset_accelerate()
    APOGame(config).run()

    def training_metrics(path):
        return {r["step"]: {k: v for k, v in r.items() if not k.startswith(("eval/", "timing/"))}
                for r in read_metrics(path / "metrics.jsonl")}

    plain, evaluated = training_metrics(tmp_path / "plain"), training_metrics(output / "frozen_ppo")
    assert sorted(plain) == sorted(evaluated) == [0, 1, 2]
    for step in plain:
        assert plain[step] == pytest.approx(evaluated[step], rel=1e-6), f"step {step}"


def test_compare_merges_variants_run_in_separate_processes(compared, tmp_path):
    from eval import compare

    output, summary = compared
    for name in COMPARE_VARIANTS:  # as if each variant had been run by its own compare.py
        part = dict(summary, variants={name: summary["variants"][name]}, skipped={})
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps(part))
    merged = compare.main(["--merge"] + [str(tmp_path / n) for n in COMPARE_VARIANTS]
                          + ["--output_dir", str(tmp_path / "merged")])
    assert list(merged["variants"]) == COMPARE_VARIANTS
    assert merged["variants"]["apo_ppo"]["gold_score_final"] == summary["variants"]["apo_ppo"]["gold_score_final"]
    assert (tmp_path / "merged" / "curves.png").is_file()
    with pytest.raises(SystemExit, match="already merged"):
        compare.main(["--merge", str(tmp_path / "apo_ppo"), str(tmp_path / "apo_ppo"),
                      "--output_dir", str(tmp_path / "twice")])
