"""eval/rm_probe.py end to end on the tiny model and the judge-labelled testbed: the JSON the adversary issue asks
for, numbers in range, and the base RM restored before every setting."""

import json
import math

from conftest import tiny_overrides


def test_probe_end_to_end_on_the_tiny_model(tmp_path, tiny_model_path):
    from eval import rm_probe

    overrides = tiny_overrides(tmp_path / "unused", **{"data.dataset_name": "embedded_judged", "data.max_prompts": 8,
                                                       "rm.eos_only": "false", "rm.sample_window": 2})
    result = rm_probe.main(["--output_dir", str(tmp_path / "probe"), "--train_prompts", "8", "--prompts_per_step", "2",
                            "--heldout_samples", "3", "--max_heldout_prompts", "5", "--sweep", "default"] + overrides)
    on_disk = json.loads((tmp_path / "probe" / "rm_probe.json").read_text())
    assert (tmp_path / "probe" / "rm_probe.png").read_bytes()[:4] == b"\x89PNG"
    assert on_disk.keys() >= {"premise_gold_win_rate", "base", "refit", "sweep"}
    assert 0.0 <= on_disk["premise_gold_win_rate"] <= 1.0 and on_disk["premise_n_prompts"] == 8
    assert on_disk["train_samples"] == {"n": 8, "eos_fraction": on_disk["train_samples"]["eos_fraction"],
                                        "pseudo_steps": 4}
    for entry in (on_disk["base"], on_disk["refit"]):
        margin = entry["heldout_gold_minus_sample"]
        assert margin["ci95"][0] <= margin["mean"] <= margin["ci95"][1] and margin["n_prompts"] == 5
        assert entry["judge_agreement"]["n_pairs"] <= 5 * 3 and entry["human_pairs"]["n_pairs"] > 0
    refit = on_disk["refit"]
    assert refit["name"] == "recipe default" and refit["settings"]["sample_window"] == 2
    assert refit["train"]["rm/fresh_samples"] == 4.0  # the last 2 pseudo steps of 2 prompts x 1 sample
    assert refit["heldout_gold_minus_sample"]["mean"] != on_disk["base"]["heldout_gold_minus_sample"]["mean"]
    assert math.isfinite(refit["wall_s"]) and result["refit"]["name"] == "recipe default"
