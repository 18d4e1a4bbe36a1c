"""RM probe: does the game's adversarial RM update teach the RM its own objective on data it never trained on?

    python eval/rm_probe.py                                   # the untouched reference policy, recipe defaults
    python eval/rm_probe.py --run runs/apo_ppo                # samples of a trained policy (its policy adapter)
    python eval/rm_probe.py --sweep default --rm.steps_per_update 16   # one setting; any --section.field override

1. Build the game of apo_online/recipes/apo_ppo_full.yaml (+ overrides) and warm the RM up: the base RM.
2. Sample the policy (the reference, or --run's policy) on --train_prompts policy prompts, --prompts_per_step
   of them per pseudo policy step, into the game's sample buffer: what the RM update sees in a game.
3. Sample --heldout_samples responses on every held-out eval prompt (gold-annotated; no RM update ever sees them),
   and score them and the gold responses with the hidden judge.
4. For the base RM and for each setting of the sweep (refit strength: steps, learning rate, refit vs continue,
   sample window, stop-token guard, coefficients): restore the base RM, run the game's own RM update
   (AdversarialRewardStep.update) with that setting, and measure
     heldout_gold_minus_sample  per held-out prompt r(gold) - mean_j r(sample_j): mean, bootstrap 95% CI over prompts
     (and the same against finished samples only, which the stop token cannot separate from gold)
     judge_agreement            the RM's ranking of pairs of fresh samples of the same prompt vs the judge's:
                                accuracy and ECE (apo_online/rm/calibration.py)
     human_pairs                accuracy on the held-out (judge-labelled) eval preference pairs
     wall_s                     time of the update
premise_gold_win_rate: the fraction of the probed policy prompts on which the judge prefers the gold response to the
reference policy's sample (APO's premise: gold is better than what the policy writes).
Writes rm_probe.json and rm_probe.png to --output_dir (default eval/results/rm_probe_<date>).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import this checkout's packages, not an installed copy
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from trl.models.utils import unwrap_model_for_generation  # noqa: E402

from apo_online.rm.calibration import pair_calibration, preference_accuracy  # noqa: E402
from apo_online.config import load_config  # noqa: E402
from apo_online.evaluation.game_eval import judged_pairs, sample_responses, scorer_scores, win_rate  # noqa: E402
from apo_online.game import APOGame  # noqa: E402
from apo_online.testbeds.gold_judge import load_gold_judge, question_text  # noqa: E402
from apo_online.rm.offline_refit import fill_buffer, load_run_policy, refit  # noqa: E402
from apo_online.evaluation.statistics import bootstrap_mean_ci  # noqa: E402
from apo_online.config_help import config_help  # noqa: E402
from apo_online.evaluation.human_pairs import human_pair_metrics  # noqa: E402
from apo_online.evaluation.plots import probe_chart  # noqa: E402
from apo_online.evaluation.report_json import write_json  # noqa: E402

RECIPE_YAML = Path(__file__).resolve().parents[1] / "apo_online" / "recipes" / "apo_ppo_full.yaml"
PROBE_SEED = 1234  # sampling seed of the probe (train and held-out samples), apart from the game's own


def sweep_settings(kind: str) -> list[dict]:
    """Settings tried besides the recipe default: rm overrides, and `updates` (consecutive updates, one window each:
    what `continue` accumulates; refit restarts every time, so one is enough)."""
    if kind == "default":
        return []
    if kind == "report":  # beside the recipe default: the previous default and two controls of the chosen one
        return [
            {"name": "previous default (steps 2, window 2)", "rm": {"steps_per_update": 2, "sample_window": 2}},
            {"name": "recipe, apo 0 (pairs only)", "rm": {"apo_coeff": 0.0}},
            {"name": "recipe, no eos guard", "rm": {"eos_only": False}},
        ]
    if kind == "strong":  # longer, faster refits on more fresh samples
        return [
            {"name": "steps 16, lr 3e-4", "rm": {"steps_per_update": 16, "learning_rate": 3e-4}},
            {"name": "steps 16, lr 3e-4, window 8", "rm": {"steps_per_update": 16, "learning_rate": 3e-4,
                                                           "sample_window": 8}},
            {"name": "steps 32, lr 3e-4, window 8", "rm": {"steps_per_update": 32, "learning_rate": 3e-4,
                                                           "sample_window": 8}},
            {"name": "steps 16, lr 3e-4, window 8, no eos guard", "rm": {"steps_per_update": 16, "learning_rate": 3e-4,
                                                                         "sample_window": 8, "eos_only": False}},
        ]
    return [
        {"name": "steps 2", "rm": {"steps_per_update": 2}},
        {"name": "steps 8", "rm": {"steps_per_update": 8}},
        {"name": "steps 16", "rm": {"steps_per_update": 16}},
        {"name": "steps 8, lr 3e-4", "rm": {"steps_per_update": 8, "learning_rate": 3e-4}},
        {"name": "steps 8, window 8", "rm": {"steps_per_update": 8, "sample_window": 8}},
        {"name": "steps 8, no eos guard", "rm": {"steps_per_update": 8, "eos_only": False}},
        {"name": "steps 8, apo 0.1 (ref. code)", "rm": {"steps_per_update": 8, "apo_coeff": 0.1}},
        {"name": "steps 8, beta2 10 (paper)", "rm": {"steps_per_update": 8, "beta2": 10.0}},
        {"name": "steps 8, apo 0 (pairs only)", "rm": {"steps_per_update": 8, "apo_coeff": 0.0}},
        {"name": "continue x4, steps 2", "rm": {"steps_per_update": 2, "mode": "continue"}, "updates": 4},
    ]


def parse_args(argv: list[str] | None):
    epilog = "Other --section.field arguments override the recipe's config.\n\n" + config_help(RECIPE_YAML)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default=None, help="a run folder or checkpoint: sample from its policy adapter")
    parser.add_argument("--output_dir", default=None, help="default eval/results/rm_probe_<date>")
    parser.add_argument("--train_prompts", type=int, default=128, help="policy prompts sampled for the RM update")
    parser.add_argument("--prompts_per_step", type=int, default=None, help="default: rollout.prompts_per_step")
    parser.add_argument("--heldout_samples", type=int, default=4, help="samples per held-out prompt (>= 2)")
    parser.add_argument("--heldout", choices=("eval", "validation"), default="eval",
                        help="eval: the task's eval prompts (report); validation: the policy prompts after the "
                             "train prompts (choose settings there, then report on eval)")
    parser.add_argument("--max_heldout_prompts", type=int, default=None, help="default: all of them")
    parser.add_argument("--sweep", choices=("full", "strong", "report", "default"), default="full",
                        help="full: one knob at a time; strong: longer, faster refits on more samples; report: the "
                             "previous default and two controls of the recipe's; default: the recipe's alone")
    parser.add_argument("--base_rm", default=None, help="base_rm.pt of an earlier probe with the same settings: "
                        "skips the warm-up")
    return parser.parse_known_args(argv)


def warm_up_base_rm(game: APOGame, base_rm: str | None, output: Path) -> None:
    """The game's RM warm-up (the base RM), saved to <output>/base_rm.pt; or that file of an earlier probe with the
    same model, data and rm settings (--base_rm), which skips the warm-up."""
    if base_rm:
        game.scorer.load_weights(torch.load(base_rm, map_location="cpu", weights_only=True))
        game.rm_step.snapshot_base()
        return
    game.rm_step.warmup(show_progress=True)
    output.mkdir(parents=True, exist_ok=True)
    torch.save(game.rm_step.base_state, output / "base_rm.pt")


def sample(game: APOGame, prompts: list, n: int, role: str, seed: int):
    rollout = game.config.rollout
    torch.manual_seed(seed)
    with unwrap_model_for_generation(game.ctx.model, game.accelerator) as backbone:
        return sample_responses(backbone, game.tokenizer, [p.input_ids for p in prompts], role, n,
                                rollout.max_new_tokens, rollout.temperature, rollout.top_k, rollout.top_p)


def premise(judge, examples: list, prompts: list, samples) -> float:
    """Fraction of (prompt, sample) rows on which the judge prefers the prompt's gold response to the sample."""
    rows = [prompts[i] for i in samples.prompt_positions]
    questions = [question_text(examples[p.prompt_index].messages) for p in rows]
    gold = judge.score(questions, [examples[p.prompt_index].gold for p in rows])
    return 1.0 - win_rate(judge.score(questions, samples.texts), gold)


class HeldOut:
    """Held-out prompts, their fresh samples, and what the judge thinks of them: fixed for every RM measured."""

    def __init__(self, game: APOGame, judge, n: int, examples: list, prompts: list):
        self.prompts = [p for p in prompts if p.gold_ids is not None]
        self.samples = sample(game, self.prompts, n, "policy", PROBE_SEED + 1)
        questions = [question_text(examples[self.prompts[i].prompt_index].messages)
                     for i in self.samples.prompt_positions]
        self.pairs = judged_pairs(judge.score(questions, self.samples.texts), self.samples.prompt_positions)
        self.premise = premise(judge, examples, self.prompts, self.samples)

    def measure(self, game: APOGame) -> dict:
        prompts, s = self.prompts, self.samples
        rows = [prompts[i] for i in s.prompt_positions]
        sample_scores = scorer_scores(game.scorer, [p.input_ids for p in rows], [p.messages for p in rows],
                                      s.response_ids)
        gold_scores = scorer_scores(game.scorer, [p.input_ids for p in prompts], [p.messages for p in prompts],
                                    [p.gold_ids for p in prompts])
        result = {"heldout_gold_minus_sample": self._margin(gold_scores, sample_scores, torch.ones_like(s.has_eos)),
                  "heldout_gold_minus_finished_sample": self._margin(gold_scores, sample_scores, s.has_eos)}
        better = sample_scores[[a for a, _ in self.pairs]]
        worse = sample_scores[[b for _, b in self.pairs]]
        result["judge_agreement"] = {"accuracy": preference_accuracy(better, worse),
                                     "ece": pair_calibration(better, worse).ece, "n_pairs": len(self.pairs)}
        human = human_pair_metrics(game)  # the game's RM on every held-out eval pair, as compare.py reports it
        result["human_pairs"] = {"accuracy": human["rm_accuracy_on_human_pairs"], "n_pairs": human["human_pairs"]}
        return result

    def _margin(self, gold_scores, sample_scores, keep) -> dict:
        """Per prompt r(gold) - mean r(kept samples); mean and bootstrap 95% CI over the prompts that have any."""
        margins = []
        for i, gold in enumerate(gold_scores.tolist()):
            kept = [sample_scores[r].item() for r, p in enumerate(self.samples.prompt_positions)
                    if p == i and keep[r]]
            if kept:
                margins.append(gold - sum(kept) / len(kept))
        lo, hi = bootstrap_mean_ci(margins)
        return {"mean": sum(margins) / max(len(margins), 1), "ci95": [lo, hi], "n_prompts": len(margins)}


def main(argv: list[str] | None = None) -> dict:
    args, overrides = parse_args(argv)
    started = time.perf_counter()
    config = load_config(overrides, default_yaml=RECIPE_YAML)
    output = Path(args.output_dir or f"eval/results/rm_probe_{datetime.date.today().isoformat()}")
    config.game.output_dir = str(output / "game")
    game = APOGame(config)
    warm_up_base_rm(game, args.base_rm, output)
    source = load_run_policy(game, args.run) if args.run else "reference (adapters at init)"
    judge = load_gold_judge(cache_dir=config.model.cache_dir)
    train = game.prompts[: args.train_prompts]
    reference = sample(game, train, 1, "reference", PROBE_SEED)
    samples = sample(game, train, 1, "policy", PROBE_SEED) if args.run else reference
    buffer, last_step = fill_buffer(samples.prompt_positions, samples.response_ids, samples.has_eos.tolist(),
                                    args.prompts_per_step or config.rollout.prompts_per_step)
    if args.heldout == "eval":  # the task's eval prompts: never in any RM update, of the probe or of a game
        examples = game.task.eval_prompts[: args.max_heldout_prompts]
        heldout_prompts = game.encoder.encode_prompts(examples)
    else:  # "validation": the policy prompts after the probe's train prompts, for choosing settings
        examples = game.task.train_prompts
        heldout_prompts = game.prompts[args.train_prompts:][: args.max_heldout_prompts]
    heldout = HeldOut(game, judge, args.heldout_samples, examples, heldout_prompts)
    base_rm = dataclasses.replace(config.rm)
    result = {"policy": source, "model": config.model.model_name_or_path, "task": config.data.dataset_name,
              "premise_gold_win_rate": premise(judge, game.task.train_prompts, train, reference),
              "premise_n_prompts": len(train), "premise_gold_win_rate_heldout": heldout.premise,
              "train_samples": {"n": len(samples.response_ids), "eos_fraction": samples.has_eos.float().mean().item(),
                                "pseudo_steps": last_step + 1},
              "heldout": {"split": args.heldout, "prompts": len(heldout.prompts),
                          "samples": len(heldout.samples.response_ids),
                          "eos_fraction": heldout.samples.has_eos.float().mean().item()},
              "rm_config": dataclasses.asdict(base_rm), "base": heldout.measure(game)}
    settings = [{"name": "recipe default", "rm": {}}] + sweep_settings(args.sweep)
    result["sweep"] = []
    for setting in settings:
        entry = {"name": setting["name"], "settings": dataclasses.asdict(dataclasses.replace(base_rm,
                                                                                             **setting["rm"])),
                 "updates": setting.get("updates", 1)}
        entry |= refit(game, buffer, last_step, base_rm, setting, PROBE_SEED)
        entry |= heldout.measure(game)
        result["sweep"].append(entry)
        print(format_row(entry), flush=True)
    result["refit"] = recipe_refit(result["sweep"], overrides)
    result["wall_s"] = time.perf_counter() - started
    output.mkdir(parents=True, exist_ok=True)
    write_json(output / "rm_probe.json", result)
    probe_chart(result, output / "rm_probe.png")
    print(format_row({"name": "base RM", **result["base"]}))
    print(f"premise: judge prefers gold to the reference sample on {result['premise_gold_win_rate']:.3f} of "
          f"{len(train)} policy prompts ({heldout.premise:.3f} of held-out samples); wrote {output}/rm_probe.json")
    return result


def recipe_refit(sweep: list[dict], overrides: list[str]) -> dict:
    """The sweep entry played with the recipe's rm settings as they are when the probe ends (the recipe may have
    been given new defaults, chosen on a validation probe, while this one ran); else the first entry."""
    current = dataclasses.asdict(load_config(overrides, default_yaml=RECIPE_YAML).rm)
    return next((e for e in sweep if e["settings"] == current and e["updates"] == 1), sweep[0])


def format_row(entry: dict) -> str:
    margin, agree = entry["heldout_gold_minus_sample"], entry["judge_agreement"]
    return (f"{entry['name']:<32} margin {margin['mean']:+.3f} [{margin['ci95'][0]:+.3f}, {margin['ci95'][1]:+.3f}]"
            f"  finished {entry['heldout_gold_minus_finished_sample']['mean']:+.3f}"
            f"  judge agreement {agree['accuracy']:.3f} (ECE {agree['ece']:.3f}, {agree['n_pairs']} pairs)"
            f"  human pairs {entry['human_pairs']['accuracy']:.3f}  {entry.get('wall_s', 0.0):.1f} s")


if __name__ == "__main__":
    main()
