"""eval/bon_probe.py end to end on the tiny model and the judge-labelled testbed: the JSON the best-of-n issue asks
for, curves that respect their floor and ceiling, scores that reproduce the curves, a run's policy and RM, and a
sample pool that is reused instead of sampled again."""

import json

import pytest

from conftest import REPO, tiny_overrides


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model_path):
    """A 1-step tiny game run to its end: its final/ holds a policy and an RM for --policy and --rm."""
    from accelerate.state import AcceleratorState, GradientState

    from apo_online.config import load_config
    from apo_online.game import APOGame

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    output = tmp_path_factory.mktemp("bon_run")
    APOGame(load_config(tiny_overrides(output, **{"game.total_steps": 1}),
                        default_yaml=REPO / "apo_online/recipes/apo_ppo.yaml")).run()
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    return output


def probe_args(tmp_path, *extra):
    overrides = tiny_overrides(tmp_path / "unused", **{"data.dataset_name": "embedded_judged", "data.max_prompts": 8,
                                                       "rm.sample_window": 2, "rollout.prompts_per_step": 2})
    return ["--output_dir", str(tmp_path / "probe"), "--n", "16", "--max_prompts", "3", "--train_prompts", "6"] \
        + overrides + list(extra)


def test_probe_end_to_end_on_the_tiny_model(tmp_path, tiny_run, monkeypatch):
    from accelerate.state import AcceleratorState, GradientState

    from apo_online.evaluation import bon_samples
    from apo_online.evaluation.best_of_n import expected_pick
    from eval import bon_probe

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    result = bon_probe.main(probe_args(tmp_path, "--policy", str(tiny_run), "--rm", str(tiny_run)))
    on_disk = json.loads((tmp_path / "probe" / "bon_probe.json").read_text())
    assert (tmp_path / "probe" / "bon_probe.png").read_bytes()[:4] == b"\x89PNG"
    assert on_disk["testbed"]["name"] == "embedded_judged" and on_disk["n_prompts"] == 3 and on_disk["n_samples"] == 16
    assert on_disk["policy"].endswith("policy")
    run = f"run:{tiny_run}"
    assert set(on_disk["selectors"]) >= {"judge", "random", "base", "apo_refit", "pairs_only", run,
                                         "base as stopped"}
    assert set(on_disk["paired"]) >= {"apo_refit", "pairs_only", run} and "base" not in on_disk["paired"]
    judge, random_pick = on_disk["selectors"]["judge"], on_disk["selectors"]["random"]
    assert [p["n"] for p in judge] == [1, 2, 4, 8, 16]
    for name, curve in on_disk["selectors"].items():
        assert curve[0]["gold_mean"] == pytest.approx(random_pick[0]["gold_mean"])  # n = 1: a random pick
        for point, ceiling in zip(curve, judge):  # nothing picks better than the judge itself
            assert point["gold_mean"] <= ceiling["gold_mean"] + 1e-9
            assert point["ci95"][0] <= point["gold_mean"] <= point["ci95"][1]
            assert 0.0 <= point["cut_pick_rate"] <= 1.0
    assert all(p["gold_mean"] == pytest.approx(random_pick[0]["gold_mean"]) for p in random_pick)
    assert on_disk["refits"]["apo_refit"]["train"]["rm/fresh_samples"] > 0
    assert on_disk["refits"]["pairs_only"]["settings"]["apo_coeff"] == 0.0
    assert on_disk["sensitivity"]["n"] == 16 and set(on_disk["finish_bonus"]) >= {"base", "apo_refit", run}

    # the scores file reproduces every RM's curve
    scores = json.loads((tmp_path / "probe" / "bon_scores.json").read_text())["prompts"]
    assert len(scores) == 3 and all(len(p["samples"]) == 16 for p in scores)
    for name in ("base", "apo_refit", run):
        picks = [expected_pick([s["scores"][name] for s in p["samples"]], [s["judge"] for s in p["samples"]], 16)
                 for p in scores]
        assert sum(picks) / 3 == pytest.approx(on_disk["selectors"][name][-1]["gold_mean"])
    assert result["paired"]["apo_refit"]["n_prompts"] == 3
    assert set(on_disk["paired_as_stopped"]) >= {"apo_refit as stopped", f"{run} as stopped"}
    assert on_disk["sensitivity_as_stopped"]["n"] == 16
    # the adversary's margin r(gold) - mean r(samples) per RM, with its CI over prompts
    assert set(on_disk["gold_margin"]) >= {"base", "base as stopped", "apo_refit"}
    margin = on_disk["gold_margin"]["base"]
    assert margin["ci95"][0] <= margin["mean"] <= margin["ci95"][1]

    # the summary recomputed from bon_scores.json alone (no model) is the one the probe wrote
    written = (tmp_path / "probe" / "bon_probe.json").read_text()
    again = bon_probe.main(["--summarise_again", str(tmp_path / "probe")])
    assert json.loads((tmp_path / "probe" / "bon_probe.json").read_text()) == json.loads(written)
    assert again["paired"] == on_disk["paired"]

    # a second probe of the same policy reuses the cached pool: nothing is sampled again
    monkeypatch.setattr(bon_samples, "_sample_prompt", lambda *a, **k: pytest.fail("sampled again"))
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    again = bon_probe.main(probe_args(tmp_path, "--policy", str(tiny_run)))
    assert again["pool_key"] == result["pool_key"]
    assert [p["gold_mean"] for p in again["selectors"]["base"]] == [p["gold_mean"] for p in result["selectors"]["base"]]


def test_sweep_on_validation_prompts_writes_a_paired_table(tmp_path, tiny_run):
    from accelerate.state import AcceleratorState, GradientState

    from eval import bon_probe

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    # with the stop-token guard on, the tiny model's samples (it never stops) enter the APO term only when cut
    # samples are scored as stopped
    result = bon_probe.main(probe_args(tmp_path, "--split", "validation", "--sweep", "refit", "--rm.eos_only", "true"))
    on_disk = json.loads((tmp_path / "probe" / "bon_sweep.json").read_text())
    assert on_disk["split"] == "validation" and on_disk["n_prompts"] == 2  # policy prompts 6 and 7 of 8
    names = {row["name"] for row in on_disk["sweep"]}
    assert names == {"apo_refit", "pairs_only"} | set(bon_probe.sweep_settings("refit"))
    means = [row["paired"]["mean"] for row in on_disk["sweep"]]
    assert means == sorted(means, reverse=True)  # best first
    stopped = next(row for row in on_disk["sweep"] if row["name"] == "cut as stopped")
    assert stopped["selector"] == "cut as stopped as stopped" and stopped["settings"]["score_cut_as_stopped"]
    assert stopped["train"]["rm/fresh_samples"] > 0  # cut samples enter the APO term (the tiny model never stops)
    guarded = next(row for row in on_disk["sweep"] if row["name"] == "apo_refit")
    assert guarded["selector"] == "apo_refit" and guarded["train"]["rm/fresh_samples"] == 0.0
    assert result["sweep"][0]["paired"]["n"] == 16


def test_refits_option_chooses_the_refits_and_refuses_unknown_names(capsys):
    from eval import bon_probe

    assert bon_probe.refit_names("none") == [] and bon_probe.refit_names("pairs_only") == ["pairs_only"]
    args, _ = bon_probe.parse_args(["--refits", "none"])
    assert bon_probe.refit_names(args.refits) == []
    assert bon_probe.refit_names(bon_probe.parse_args([])[0].refits) == list(bon_probe.REFITS)
    with pytest.raises(SystemExit):
        bon_probe.parse_args(["--refits", "apo_refit,bogus"])
    assert "unknown ['bogus']" in capsys.readouterr().err
