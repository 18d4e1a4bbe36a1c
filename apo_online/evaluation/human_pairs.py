"""The game's RM on the held-out human preference pairs: accuracy and expected calibration error. eval/compare.py
reports it at the end of every variant and eval/rm_probe.py for every refit it probes; one function in the package
keeps the two reports the same measurement."""

from __future__ import annotations

from apo_online.evaluation.game_eval import scorer_scores
from apo_online.rm.calibration import pair_calibration, preference_accuracy


def human_pair_metrics(game) -> dict[str, float]:
    """The game's RM (shared reward adapter or separate RM) on all held-out human eval pairs: accuracy and ECE."""
    pairs = game.eval_pairs
    prompts, messages = [p.prompt_ids for p in pairs], [p.messages for p in pairs]
    chosen = scorer_scores(game.scorer, prompts, messages, [p.chosen_ids for p in pairs])
    rejected = scorer_scores(game.scorer, prompts, messages, [p.rejected_ids for p in pairs])
    return {"rm_accuracy_on_human_pairs": preference_accuracy(chosen, rejected),
            "rm_ece_on_human_pairs": pair_calibration(chosen, rejected).ece, "human_pairs": len(chosen)}
