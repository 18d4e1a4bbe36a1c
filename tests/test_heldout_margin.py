"""The in-loop adversary watch (rm.heldout_margin_prompts): logged after every RM update, equal to the RM's own
margin on the held-out prompts, and invisible to training (the game takes the same path with or without it)."""

import json


def play(tiny_config, accelerator, output_dir, margin_prompts: int):
    from apo_online.game import APOGame

    game = APOGame(tiny_config(**{"rm.heldout_margin_prompts": margin_prompts, "rm.update_every": 2,
                                  "game.total_steps": 2, "game.output_dir": str(output_dir)}), accelerator=accelerator)
    game.run()
    with open(output_dir / "metrics.jsonl", encoding="utf-8") as lines:
        return game, [json.loads(line) for line in lines]


def test_margin_is_logged_after_each_update_and_changes_nothing_else(tmp_path, tiny_config, single_accelerator):
    watched, records = play(tiny_config, single_accelerator(), tmp_path / "watched", 3)
    by_step = {r["step"]: r for r in records}
    assert "rm/heldout_gold_minus_sample" not in by_step[1]  # no RM update after step 1 (update_every 2)
    margin = by_step[2]["rm/heldout_gold_minus_sample"]
    assert isinstance(margin, float) and margin == margin  # a number, not nan
    assert len(watched.heldout_margin.prompts) == 3
    assert all(p.gold_ids is not None for p in watched.heldout_margin.prompts)

    # recomputed from the final RM and policy (nothing changed them after that update), at the step it was logged in
    watched.step = 1  # play_step counts the step after the RM update: the watch ran with game.step 1
    assert abs(watched.heldout_margin(watched)["rm/heldout_gold_minus_sample"] - margin) < 1e-4

    unwatched, plain = play(tiny_config, single_accelerator(), tmp_path / "plain", 0)
    assert unwatched.heldout_margin is None and "rm/heldout_gold_minus_sample" not in plain[-1]
    for key in ("objective/rm_scores", "rm/loss", "rm/gold_minus_sample", "response/length"):
        assert plain[-1][key] == by_step[2][key], key  # training's random stream is untouched
