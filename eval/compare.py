"""Side-by-side runs on the same seed and budget: a frozen RM vs APO's adversarially updated RM.

    python eval/compare.py                          # frozen_ppo vs apo_ppo (+ apo_dpo, apo_rjs if registered)
    python eval/compare.py --variants frozen_ppo,apo_ppo --output_dir runs/compare \
        --game.total_steps 20 --game.eval_every 5

A variant is `<mode>_<optimizer>`: mode `frozen` (rm.update_every 0: the RM stays the warm-up RM) or `apo`
(the adversarial RM updates of the config), optimizer any registered policy optimizer (ppo, and dpo / rjs where they
are registered; unknown ones are skipped with a message). Every other argument is a config override
(`--section.field value`, `--config file.yaml`) applied to all variants on top of the full game of the variant's
recipe (apo_ppo_full.yaml for ppo).
Each variant plays the game in this process with game.gold_judge on; the hidden gold judge scores fresh policy samples
on held-out prompts at step 0 (policy = reference) and every game.eval_every steps. Reported side by side:
  gold score and gold win rate vs the human answers (true quality), RM accuracy and ECE on pairs of fresh policy
  samples ranked by the gold judge (does the RM keep up with the policy?), pooled over all evaluations after step 0,
  RM accuracy and ECE on the held-out human eval pairs at the end, KL to the reference, response length.
Writes <output_dir>/summary.json, curves.png and reliability_<variant>.png; each variant's run is in
<output_dir>/<variant>.
Variants run one after another; to use more cores, run one variant per process and combine them:
    python eval/compare.py --merge runs/cmp_frozen runs/cmp_apo --output_dir runs/compare
(with --game.cpu_threads = cores / processes on each, or the processes oversubscribe the CPU).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import this checkout's packages, not an installed copy
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from apo_online.rm.calibration import pair_calibration, preference_accuracy  # noqa: E402
from apo_online.config import ConfigError, load_config  # noqa: E402
from apo_online.evaluation.human_pairs import human_pair_metrics  # noqa: E402
from apo_online.optimizers.base import known_optimizer_names  # noqa: E402
from apo_online.config_help import config_help  # noqa: E402
from apo_online.evaluation.plots import metric_curves, reliability_diagram  # noqa: E402
from apo_online.evaluation.report_json import write_json  # noqa: E402
from apo_online.recipes import RECIPES, full_game_yaml  # noqa: E402

RECIPE_YAML = Path(__file__).resolve().parents[1] / "apo_online" / "recipes" / "apo_ppo_full.yaml"
DEFAULT_VARIANTS = "frozen_ppo,apo_ppo,apo_dpo,apo_rjs"
MODES = ("frozen", "apo")
CURVES = [("eval/gold_score", "gold score of policy samples"),
          ("eval/gold_win_rate_vs_human", "gold win rate vs human"),
          ("eval/rm_score", "RM score of policy samples"),
          ("eval/rm_accuracy_on_policy", "RM accuracy on policy pairs"),
          ("eval/rm_ece_on_policy", "RM ECE on policy pairs"), ("eval/kl", "KL to reference (nats)")]


def variant_overrides(name: str, output_dir: Path) -> list[str]:
    """CLI overrides of one variant; raises ConfigError for a malformed name or an unregistered optimizer."""
    mode, _, optimizer = name.partition("_")
    if mode not in MODES or not optimizer:
        raise ConfigError(f"variant {name!r}: expected <mode>_<optimizer> with mode in {MODES}, e.g. apo_ppo")
    if optimizer not in known_optimizer_names():
        known = ", ".join(known_optimizer_names())
        raise ConfigError(f"policy optimizer {optimizer!r} is not registered (known: {known})")
    overrides = ["--game.policy_optimizer", optimizer, "--game.output_dir", str(output_dir / name),
                 "--game.gold_judge", "true"]
    return overrides + (["--rm.update_every", "0"] if mode == "frozen" else [])


def variant_recipe(name: str) -> Path:
    """The full game of the optimizer's own recipe (e.g. DPO and RJS need several samples per prompt), else
    apo_ppo_full.yaml."""
    optimizer = name.partition("_")[2]
    return full_game_yaml(optimizer) if optimizer in RECIPES else RECIPE_YAML


def variant_config(name: str, overrides: list[str], output_dir: Path):
    config = load_config(overrides + variant_overrides(name, output_dir), default_yaml=variant_recipe(name))
    if name.startswith("apo_") and config.rm.update_every < 1:
        raise ConfigError(f"variant {name} needs rm.update_every >= 1 (0 freezes the RM)")
    return config


def _reset_accelerate() -> None:
    """accelerate keeps process-wide singletons; each variant needs a fresh Accelerator."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def run_variant(config) -> dict:
    """Play one game with the gold-judge evaluator, which evaluates at step 0 too (game.eval_at_start: after the RM
    warm-up, with the policy still the reference; logged to TensorBoard like every evaluation). Returns its history
    and end metrics."""
    from apo_online.game import APOGame

    if config.game.eval_every < 1:
        raise ConfigError("compare needs game.eval_every >= 1 (the gold-judge curves come from the evaluations)")
    _reset_accelerate()
    started = time.perf_counter()
    config.game.eval_at_start = True
    game = APOGame(config)
    evaluator = game.evaluators[0]
    game.run()
    if game.stop_signal is not None:  # the game caught SIGINT/SIGTERM and checkpointed: stop the comparison too
        raise SystemExit(f"stopped by a signal at step {game.step} of {config.game.output_dir}")
    result = {"history": evaluator.history, "end": human_pair_metrics(game), "wall_s": time.perf_counter() - started,
              "gold_judge": evaluator.judge.info}
    del game, evaluator
    gc.collect()
    return result


def summarise(name: str, run: dict, output_dir: Path) -> dict:
    """Curves, final and pooled metrics of one variant; writes its reliability diagram on pooled policy pairs."""
    history = run["history"]
    curves = {key: [(h["step"], h["metrics"].get(key, math.nan)) for h in history] for key, _ in CURVES}
    trained = [h for h in history if h["step"] > 0]
    better = [s for h in trained for s in h["rm_better"]]
    worse = [s for h in trained for s in h["rm_worse"]]
    report = pair_calibration(better, worse)
    reliability_diagram(report, output_dir / f"reliability_{name}.png",
                        title=f"{name}: RM on pairs of fresh policy samples ranked by the gold judge")
    final = history[-1]["metrics"]
    return {
        "gold_score_step0": history[0]["metrics"]["eval/gold_score"],
        # APO's premise at step 0 (policy = reference): how often the judge prefers the gold response to a sample
        "premise_gold_win_rate_step0": 1.0 - history[0]["metrics"].get("eval/gold_win_rate_vs_gold", math.nan),
        "gold_score_final": final["eval/gold_score"],
        "gold_score_mean_after_step0": sum(h["metrics"]["eval/gold_score"] for h in trained) / max(len(trained), 1),
        "gold_win_rate_vs_human_final": final["eval/gold_win_rate_vs_human"],
        "gold_win_rate_vs_gold_final": final.get("eval/gold_win_rate_vs_gold", math.nan),
        "rm_accuracy_on_policy_pooled": preference_accuracy(better, worse),
        "rm_ece_on_policy_pooled": report.ece,
        "policy_pairs_pooled": len(better),
        **run["end"],
        "kl_final": final["eval/kl"],
        "response_length_final": final["eval/response_length"],
        "wall_s": run["wall_s"],
        "curves": curves,
        "examples_final": history[-1]["examples"],
    }


TABLE_ROWS = [("premise: gold beats sample, step 0", "premise_gold_win_rate_step0"),
              ("gold score at step 0", "gold_score_step0"), ("gold score, final", "gold_score_final"),
              ("gold score, mean of evals > 0", "gold_score_mean_after_step0"),
              ("gold win rate vs human, final", "gold_win_rate_vs_human_final"),
              ("gold win rate vs gold, final", "gold_win_rate_vs_gold_final"),
              ("RM acc. on policy pairs (pooled)", "rm_accuracy_on_policy_pooled"),
              ("RM ECE on policy pairs (pooled)", "rm_ece_on_policy_pooled"),
              ("policy pairs judged (pooled)", "policy_pairs_pooled"),
              ("RM acc. on human eval pairs", "rm_accuracy_on_human_pairs"),
              ("RM ECE on human eval pairs", "rm_ece_on_human_pairs"),
              ("KL to reference, final", "kl_final"), ("response length, final", "response_length_final"),
              ("wall time (s)", "wall_s")]


def format_table(summaries: dict[str, dict]) -> str:
    names = list(summaries)
    lines = [f"{'':34}" + "".join(f"{n:>14}" for n in names)]
    for label, key in TABLE_ROWS:
        lines.append(f"{label:34}" + "".join(f"{summaries[n][key]:14.3f}" for n in names))
    return "\n".join(lines)


def merge_summaries(folders: list[str], output_dir: Path) -> dict:
    """Side by side from variants run by separate compare.py processes (e.g. in parallel on different cores): their
    summary.json files combined into <output_dir>/summary.json and curves.png. The runs must share seed and budget."""
    variants, skipped, judge_info, sources = {}, {}, None, []
    for folder in folders:
        part = json.loads((Path(folder) / "summary.json").read_text())
        clash = set(part["variants"]) & set(variants)
        if clash:
            raise SystemExit(f"{folder}: variant(s) {sorted(clash)} already merged")
        variants |= part["variants"]
        skipped |= part["skipped"]
        judge_info = judge_info or part["gold_judge"]
        sources.append({"folder": str(folder), "command": part["command"]})
    budgets = {(v["config"]["game"]["seed"], v["config"]["game"]["total_steps"]) for v in variants.values()}
    if len(budgets) != 1:
        raise SystemExit(f"the runs differ in (seed, total_steps): {sorted(budgets)}")
    (seed, total_steps), = budgets
    metric_curves({n: s["curves"] for n, s in variants.items()}, CURVES, output_dir / "curves.png",
                  title=f"{', '.join(variants)}: seed {seed}, {total_steps} steps")
    summary = {"variants": variants, "skipped": skipped, "gold_judge": judge_info, "merged_from": sources}
    write_json(output_dir / "summary.json", summary)
    print(format_table(variants))
    print(f"wrote {output_dir / 'summary.json'} and {output_dir / 'curves.png'}")
    return summary


def main(argv: list[str] | None = None) -> dict:
    epilog = "Other --section.field arguments override every variant's config.\n\n" + config_help(RECIPE_YAML)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False, epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"comma-separated (default {DEFAULT_VARIANTS})")
    parser.add_argument("--output_dir", default="runs/compare")
    parser.add_argument("--merge", nargs="+", metavar="DIR", help="only combine the summary.json of earlier compare "
                        "runs (one variant each, same seed and budget) into --output_dir")
    args, overrides = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if args.merge:
        return merge_summaries(args.merge, output_dir)
    summaries, skipped, judge_info, total_steps = {}, {}, None, 0
    for name in [v.strip() for v in args.variants.split(",") if v.strip()]:
        try:
            config = variant_config(name, overrides, output_dir)
            print(f"=== {name}: {config.game.total_steps} steps, seed {config.game.seed}", flush=True)
            run = run_variant(config)
        except ConfigError as err:
            print(f"skipping variant {name}: {err}", flush=True)
            skipped[name] = str(err)
            continue
        summaries[name] = summarise(name, run, output_dir) | {"config": config.to_dict()}
        judge_info, total_steps = run["gold_judge"], config.game.total_steps
    if not summaries:
        raise SystemExit("no variant ran")
    metric_curves({n: s["curves"] for n, s in summaries.items()}, CURVES, output_dir / "curves.png",
                  title=f"{', '.join(summaries)}: same seed, {total_steps} steps")
    summary = {"variants": summaries, "skipped": skipped, "gold_judge": judge_info,
               "command": " ".join(["python", "eval/compare.py"] + (sys.argv[1:] if argv is None else argv))}
    write_json(output_dir / "summary.json", summary)
    print(format_table(summaries))
    print(f"wrote {output_dir / 'summary.json'}, {output_dir / 'curves.png'} and reliability_<variant>.png")
    return summary


if __name__ == "__main__":
    main()
