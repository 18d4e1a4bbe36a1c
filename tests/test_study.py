"""eval/study.py: the paired statistics and frontier reading by hand, merging partial studies, and a 2-arm x 2-seed
x 2-step smoke on the tiny model."""

import json
import math

import numpy as np
import pytest

from conftest import tiny_overrides


def _evals(kls, golds, start_step=0, eos=0.8, length=12.0):
    return [{"step": start_step + k, "eval/kl": kl, "eval/gold_score": g, "eval/rm_accuracy_on_policy": 0.5,
             "eval/eos_fraction": eos, "eval/response_length": length} for k, (kl, g) in enumerate(zip(kls, golds))]


def test_gold_at_reads_the_frontier_by_linear_interpolation():
    from eval.study import gold_at

    evals = _evals([0.0, 1.0, 4.0], [-4.0, -3.0, -3.5])  # sqrt(KL) 0, 1, 2; gains 0, 1, 0.5
    assert gold_at(evals, 0.5) == pytest.approx(0.5)
    assert gold_at(evals, 1.5) == pytest.approx(0.75)
    assert math.isnan(gold_at(evals, 3.0))  # never reached


def test_gao_fit_recovers_known_coefficients():
    from eval.study import fit_gao

    d = np.linspace(0.1, 3, 20)
    assert fit_gao(d, d * (1.5 - 0.4 * np.log(d)), "rl") == pytest.approx((1.5, 0.4))
    assert fit_gao(d, d * (0.8 - 0.2 * d), "bon") == pytest.approx((0.8, 0.2))


def test_paired_summary_by_hand():
    from eval.study import summarise

    runs = {"apo_ppo": {s: _evals([0.0, 1.0], [-4.0, -4.0 + g], eos=0.5 + s / 100, length=14.0)
                        for s, g in zip(range(1, 6), [1, 2, 3, 4, 5])},
            "frozen_ppo": {s: _evals([0.0, 1.0], [-4.0, -4.0]) for s in range(1, 6)}}
    result = summarise(runs)
    mechanism = result["mechanism"]["apo_ppo-frozen_ppo"]  # 0.51..0.55 against 0.8: finishes less, 2 tokens longer
    assert mechanism["eos_fraction"]["mean"] == pytest.approx(-0.27)
    assert mechanism["eos_fraction"]["sign_test_p"] == pytest.approx(2 / 32)
    assert mechanism["response_length"]["mean"] == pytest.approx(2.0)
    assert result["arms"]["apo_ppo"]["final_eos_fraction"] == pytest.approx([0.51, 0.52, 0.53, 0.54, 0.55])
    final = result["paired"]["apo_ppo-frozen_ppo"]
    half = 2.776445 * math.sqrt(2.5) / math.sqrt(5)  # d = 1..5: mean 3, sd sqrt(2.5), t_{4, 0.975}
    assert final["mean"] == pytest.approx(3.0) and final["ci95"] == pytest.approx([3 - half, 3 + half], abs=1e-5)
    assert final["n_seeds"] == 5 and final["sign_test_p"] == pytest.approx(2 / 32)
    assert final["min_detectable_effect"] == pytest.approx((2.776445 + 0.841621) * math.sqrt(2.5) / math.sqrt(5),
                                                           abs=1e-4)
    assert result["frontier"]["apo_ppo-frozen_ppo"]["mean"] == pytest.approx(3.0)  # both reach sqrt(KL) = 1
    assert result["arms"]["apo_ppo"]["final_gold"] == [-3.0, -2.0, -1.0, 0.0, 1.0]


def test_pairs_only_is_compared_with_frozen_too():
    from eval.study import summarise

    runs = {"pairs_only_ppo": {s: _evals([0.0, 1.0], [-4.0, -3.5 + s / 10]) for s in (1, 2)},
            "frozen_ppo": {s: _evals([0.0, 1.0], [-4.0, -3.5]) for s in (1, 2, 3)}}
    result = summarise(runs)
    assert list(result["paired"]) == ["pairs_only_ppo-frozen_ppo"]
    assert result["paired"]["pairs_only_ppo-frozen_ppo"]["differences"] == pytest.approx([0.1, 0.2])


def _not_json(token):
    raise ValueError(f"{token} is not JSON")


def test_result_files_are_strict_json(tmp_path):
    """NaN (a paired difference with one seed, a run that never reached a sqrt(KL)) is written as null."""
    from apo_online.evaluation.report_json import write_json
    from eval.study import summarise

    runs = {"apo_ppo": {1: _evals([0.0, 1.0], [-4.0, -3.0])}, "frozen_ppo": {1: _evals([0.0, 4.0], [-4.0, -3.5])}}
    result = summarise(runs)
    assert math.isnan(result["paired"]["apo_ppo-frozen_ppo"]["ci95"][0])  # one seed: no interval
    write_json(tmp_path / "summary.json", result)
    on_disk = json.loads((tmp_path / "summary.json").read_text(), parse_constant=_not_json)
    assert on_disk["paired"]["apo_ppo-frozen_ppo"]["ci95"] == [None, None]
    assert on_disk["paired"]["apo_ppo-frozen_ppo"]["mean"] == pytest.approx(0.5)


def _write_run(root, arm, seed, evals, finished=True):
    folder = root / arm / f"seed_{seed}"
    (folder / "final").mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in evals))
    if finished:
        (folder / "final" / "config.yaml").write_text("game: {}\n")


def test_partial_studies_merge_and_a_seed_twice_is_refused(tmp_path):
    from eval.study import load_runs

    _write_run(tmp_path / "a", "apo_ppo", 1, _evals([0.0, 1.0], [-4.0, -3.0]))
    _write_run(tmp_path / "b", "apo_ppo", 2, _evals([0.0, 1.0], [-4.0, -3.5]))
    _write_run(tmp_path / "b", "frozen_ppo", 1, _evals([0.0, 1.0], [-4.0, -3.9]))
    _write_run(tmp_path / "b", "frozen_ppo", 2, _evals([0.0, 1.0], [-4.0, -3.9]), finished=False)
    runs = load_runs([tmp_path / "a", tmp_path / "b"])
    assert sorted(runs["apo_ppo"]) == [1, 2] and sorted(runs["frozen_ppo"]) == [1]  # seed 2 unfinished: left out
    _write_run(tmp_path / "c", "apo_ppo", 1, _evals([0.0], [-4.0]))
    with pytest.raises(SystemExit, match="apo_ppo seed 1 is in two"):
        load_runs([tmp_path / "a", tmp_path / "c"])


def test_adversary_margins_by_hand(tmp_path):
    """Is the adversary ahead: each seed's mean margin over its RM updates, then a t-interval over seeds; runs without
    updates (frozen) and unfinished runs have no entry."""
    from eval.study import adversary_summary, load_margins

    updates = {1: [-1.0, 1.0, 3.0], 2: [2.0, 4.0], 3: [0.5, -0.5]}  # seed means 1, 3, 0; positive 2/3, 2/2, 1/2
    for seed, margins in updates.items():
        rows = [{"step": k + 1, "rm/heldout_gold_minus_sample": m, "rm/gold_minus_sample": -m}
                for k, m in enumerate(margins)]
        _write_run(tmp_path, "apo_ppo", seed, _evals([0.0], [-4.0]) + rows)
    _write_run(tmp_path, "apo_ppo", 4, [{"step": 1, "rm/heldout_gold_minus_sample": 9.0}], finished=False)
    _write_run(tmp_path, "frozen_ppo", 1, _evals([0.0, 1.0], [-4.0, -3.0]))
    result = adversary_summary(load_margins([tmp_path], ["apo_ppo", "frozen_ppo"]))
    assert list(result) == ["apo_ppo"]
    heldout = result["apo_ppo"]["rm/heldout_gold_minus_sample"]
    assert heldout["seeds"] == [1, 2, 3] and heldout["updates"] == [3, 2, 2]
    assert heldout["seed_means"] == pytest.approx([1.0, 3.0, 0.0]) and heldout["mean"] == pytest.approx(4 / 3)
    assert heldout["share_positive"] == pytest.approx([2 / 3, 1.0, 0.5])
    half = 4.302653 * math.sqrt(7 / 3) / math.sqrt(3)  # seed means 1, 3, 0: sd sqrt(7/3), t_{2, 0.975}
    assert heldout["ci95"] == pytest.approx([4 / 3 - half, 4 / 3 + half], abs=1e-5)
    assert result["apo_ppo"]["rm/gold_minus_sample"]["mean"] == pytest.approx(-4 / 3)
    assert load_margins([tmp_path], ["frozen_ppo"]) == {}


@pytest.mark.slow
def test_two_arms_two_seeds_two_steps_on_the_tiny_model(tmp_path, tiny_model_path):
    from eval import study

    overrides = tiny_overrides(tmp_path / "unused", **{"game.eval_every": 1, "data.num_eval_prompts": 3,
                                                       "game.save_every": 1})
    overrides = [a for k, v in zip(overrides[::2], overrides[1::2]) if k != "--game.output_dir" for a in (k, v)]
    args = ["--output_dir", str(tmp_path / "runs"), "--arms", "frozen_ppo,apo_ppo", "--seeds", "1,2", "--jobs", "2"]
    study.main(["run"] + args + overrides)
    assert all(study.finished(tmp_path / "runs" / arm / f"seed_{s}") for arm in ("frozen_ppo", "apo_ppo")
               for s in (1, 2))
    result = study.main(["summarise", "--output_dir", str(tmp_path / "out"), "--runs", str(tmp_path / "runs"),
                         "--arms", "frozen_ppo,apo_ppo"])
    assert result["arms"]["apo_ppo"]["seeds"] == [1, 2] and result["arms"]["frozen_ppo"]["final_step"] == [2, 2]
    assert result["arms"]["apo_ppo"]["eval_steps"] == [[0, 1, 2], [0, 1, 2]]  # game.eval_at_start: step 0 too
    assert result["paired"]["apo_ppo-frozen_ppo"]["n_seeds"] == 2
    on_disk = json.loads((tmp_path / "out" / "summary.json").read_text(), parse_constant=_not_json)  # strict JSON
    assert set(on_disk) >= {"arms", "paired", "frontier", "gao_fits"}
    for png in ("frontier.png", "curves.png"):
        assert (tmp_path / "out" / png).read_bytes()[:4] == b"\x89PNG"
    run = tmp_path / "runs" / "apo_ppo" / "seed_1"
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-000002"]  # only the newest is kept
    import yaml
    played = yaml.safe_load((run / "final" / "config.yaml").read_text())
    # the recipe's full game (8 held-out margin prompts), not its short first run (4), under the study's overrides
    assert played["rm"]["heldout_margin_prompts"] == 8 and played["game"]["eval_every"] == 1
    before = (run / "metrics.jsonl").stat().st_mtime_ns
    study.main(["run"] + args + overrides)  # everything finished: nothing is played again
    assert (run / "metrics.jsonl").stat().st_mtime_ns == before


def test_summarise_keeps_to_the_arms_asked_for_in_the_figures_too(tmp_path, monkeypatch):
    from eval import study

    for arm, seed in (("apo_ppo", 1), ("frozen_ppo", 1), ("frozen_rjs", 1)):
        _write_run(tmp_path / "runs", arm, seed, _evals([0.0, 1.0], [-4.0, -3.5]))
    drawn = []
    monkeypatch.setattr(study, "study_figures", lambda runs, result, output: drawn.append(sorted(runs)))
    args = ["summarise", "--output_dir", str(tmp_path / "out"), "--runs", str(tmp_path / "runs")]
    result = study.main(args + ["--arms", "frozen_ppo,apo_ppo"])
    assert sorted(result["arms"]) == drawn[0] == ["apo_ppo", "frozen_ppo"]  # frozen_rjs: in neither
    with pytest.raises(SystemExit, match="no finished runs of apo_rjs under"):
        study.main(args + ["--arms", "apo_rjs"])


def test_every_arm_plays_the_full_game_of_its_recipe(tmp_path):
    from eval import study
    from apo_online.recipes import full_game_yaml

    for arm, recipe in [("apo_ppo", "ppo"), ("oracle_ppo", "ppo"), ("apo_rjs", "rjs"), ("frozen_grpo", "grpo")]:
        command = study.run_command(arm, 1, tmp_path, 1, ["--game.total_steps", "3"])
        assert command[2:4] == ["--config", str(full_game_yaml(recipe))], arm
        assert command[-2:] == ["--game.total_steps", "3"]  # the study's overrides come last: they win
    assert full_game_yaml("ppo").name == "apo_ppo_full.yaml" and full_game_yaml("rjs").name == "apo_rjs.yaml"
