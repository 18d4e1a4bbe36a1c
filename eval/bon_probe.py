"""Best-of-n probe: is an RM a better selector under optimisation pressure? The judge and random choice bound it.

    python eval/bon_probe.py                                  # reference samples of the 106 eval prompts, N = 64
    python eval/bon_probe.py --policy runs/apo_ppo            # samples of a trained policy
    python eval/bon_probe.py --rm runs/apo_ppo --rm runs/b    # add any run's final RM as a selector
    python eval/bon_probe.py --split validation --sweep refit # choose refit settings on validation prompts
    python eval/bon_probe.py --split validation --sweep strength --policy runs/apo_ppo   # the update's strength

1. Build the recipe's game (apo_online/recipes/apo_ppo_full.yaml + any --section.field override) and its base RM (the
   warm-up, through the warm-up cache: computed once per setting, then loaded).
2. Sample N responses per held-out prompt from the policy (the reference, or --policy's), cached by content hash
   (apo_online/evaluation/bon_samples.py), and score every sample with the hidden judge.
3. Selectors rank each prompt's samples: the judge (the ceiling), random choice (the floor), the base RM, the
   recipe's APO refit of the base RM and its pairs-only control (rm.apo_coeff 0), each refit on one policy sample
   of each of the first --train_prompts policy prompts (the game's own update, apo_online/rm/offline_refit.py), and
   any --rm run. An RM ranks by the game's reward: score - rollout.missing_eos_penalty if the sample was cut.
   "<rm> as stopped" ranks the same RM's score of each cut sample with the stop token appended (minus the same
   penalty): every response scored at a stop position.
4. For n = 1, 2, 4, ..., N: the judge's score of each selector's best-of-n (exact estimator over all n-subsets,
   apo_online/evaluation/best_of_n.py) against KL_bon = log n - (n-1)/n, bootstrap 95% CIs over prompts; how often
   the pick is a cut sample; the curve among finished samples only; at n = 16 each RM's paired difference from the
   base RM; sensitivity = the base RM's gain from n = 1 to 16 / the judge's. finish_bonus: per RM, the mean of
   score(sample ending with the stop token) - score(the same sample without it), over every sample. gold_margin: per
   RM, r(gold) - mean r(samples) per prompt (the adversary is ahead of this policy where it is > 0).
Writes bon_probe.json (or bon_sweep.json with --sweep), bon_scores.json (every sample's judge score, stop token and
selector scores) and bon_probe.png to --output_dir (default eval/results/bon_probe_<date>).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import this checkout's packages, not an installed copy
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from apo_online.evaluation.best_of_n import gain_ratio, paired_difference, powers_of_two, selector_curve  # noqa: E402
from apo_online.evaluation.bon_samples import build_pool  # noqa: E402
from apo_online.config import load_config  # noqa: E402
from apo_online.config_help import config_help  # noqa: E402
from apo_online.backbone import SharedPrefix  # noqa: E402
from apo_online.data.canonical import at_stop_position, right_pad  # noqa: E402
from apo_online.game import APOGame  # noqa: E402
from apo_online.evaluation.game_eval import scorer_scores  # noqa: E402
from apo_online.testbeds.gold_judge import load_gold_judge, question_text  # noqa: E402
from apo_online.testbeds.judged_task import DATASET_VERSIONS  # noqa: E402
from apo_online.rm.offline_refit import fill_buffer, load_run_reward, refit  # noqa: E402
from apo_online.run.loading import find_adapters  # noqa: E402
from apo_online.evaluation.statistics import bootstrap_mean_ci  # noqa: E402
from apo_online.rm.warmup_cache import warm_up_reward_model  # noqa: E402
from apo_online.evaluation.plots import bon_chart  # noqa: E402
from apo_online.evaluation.report_json import write_json  # noqa: E402

RECIPE_YAML = Path(__file__).resolve().parents[1] / "apo_online" / "recipes" / "apo_ppo_full.yaml"
PROBE_SEED = 1234  # the refits' random stream (the same for every setting)
PAIRED_N = 16
REFITS = {"apo_refit": {"rm": {}}, "pairs_only": {"rm": {"apo_coeff": 0.0}}}  # over the recipe's rm settings


def sweep_settings(kind: str) -> dict[str, dict]:
    """Refit settings tried on validation prompts (name -> setting over the recipe's rm fields), besides the recipe's
    own (apo_refit) and its pairs-only control: what the APO term compares, its weight, the refit's strength, the
    human-pair weight, how many samples, and the finish-neutral scoring."""
    if kind == "refit":
        return {
            "apo 0.1": {"rm": {"apo_coeff": 0.1}},
            "no eos guard": {"rm": {"eos_only": False}},
            "cut as stopped": {"rm": {"score_cut_as_stopped": True}},
            "cut as stopped, apo 0.1": {"rm": {"score_cut_as_stopped": True, "apo_coeff": 0.1}},
            "steps 2": {"rm": {"steps_per_update": 2}},
            "beta2 10": {"rm": {"beta2": 10.0}},
            "compare mean": {"rm": {"apo_compare": "mean"}},
            "compare preferred": {"rm": {"apo_compare": "preferred"}},
        }
    if kind == "strength":  # the update's strength: is the adversary ahead of the policy it was refit on?
        return {"steps 2": {"rm": {"steps_per_update": 2}}, "steps 16": {"rm": {"steps_per_update": 16}},
                "steps 32": {"rm": {"steps_per_update": 32}}, "lr 3e-4": {"rm": {"learning_rate": 3e-4}}}
    return {}


def sweep_table(result: dict, selectors: dict, judge: list) -> list[dict]:
    """Every refit as the game would rank with it (its "as stopped" scores when the setting scores cut samples at a
    stop position), plus the other scoring and an even mix with the base RM's reward, each as a paired difference
    from the base RM at n = PAIRED_N."""
    rows = []
    for name, refit_info in result["refits"].items():
        if name.startswith("run:"):
            continue
        stopped = refit_info["settings"]["score_cut_as_stopped"]
        own, other = (f"{name} as stopped", name) if stopped else (name, f"{name} as stopped")
        base = "base as stopped" if stopped else "base"
        mixed = [[(a + b) / 2 for a, b in zip(*rows_)] for rows_ in zip(selectors[own], selectors[base])]
        point = next(p for p in result["selectors"][own] if p["n"] == PAIRED_N)
        rows.append({"name": name, "settings": refit_info["settings"], "selector": own,
                     "paired": result["paired"][own], "other_scoring": {other: result["paired"][other]},
                     "mixed_with_base": paired_difference(mixed, selectors["base"], judge, PAIRED_N),
                     "cut_pick_rate": point["cut_pick_rate"], "train": refit_info["train"]})
    return sorted(rows, key=lambda row: -row["paired"]["mean"])


def parse_args(argv: list[str] | None):
    epilog = "Other --section.field arguments override the recipe's config.\n\n" + config_help(RECIPE_YAML)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", default=None, help="a run folder or checkpoint: sample from its policy adapter "
                        "(default: the reference policy)")
    parser.add_argument("--rm", action="append", default=[], help="a run whose final RM is one more selector "
                        "(repeatable)")
    parser.add_argument("--n", type=int, default=64, help="samples per prompt (N; >= 16)")
    parser.add_argument("--split", choices=("eval", "validation"), default="eval",
                        help="eval: the task's eval prompts (report); validation: the policy prompts after "
                             "--train_prompts (choose settings there)")
    parser.add_argument("--max_prompts", type=int, default=None, help="default: every prompt of the split")
    parser.add_argument("--train_prompts", type=int, default=128, help="policy prompts the refits train on")
    parser.add_argument("--sweep", choices=("none", "refit", "strength"), default="none",
                        help="refit: also try the refit settings of sweep_settings; strength: the update strengths "
                             "(use with --split validation, and --policy for a policy from late in a game)")
    parser.add_argument("--refits", default=",".join(REFITS), help="comma-separated refits measured besides the base "
                        f"RM (default {','.join(REFITS)}; 'none': the base RM only, e.g. to check a testbed's "
                        "sensitivity)")
    parser.add_argument("--output_dir", default=None, help="default eval/results/bon_probe_<date>")
    parser.add_argument("--summarise_again", default=None, metavar="FOLDER",
                        help="recompute a finished probe's summary from its bon_scores.json (no model) and add what "
                             "this version computes to its JSON")
    args, overrides = parser.parse_known_args(argv)
    unknown = set(refit_names(args.refits)) - set(REFITS)
    if unknown:
        parser.error(f"--refits: unknown {sorted(unknown)}; choose from {', '.join(REFITS)} or none")
    if args.n < PAIRED_N:
        parser.error(f"--n must be at least {PAIRED_N} (the paired comparison is at best-of-{PAIRED_N})")
    return args, overrides


def refit_names(spec: str) -> list[str]:
    return [] if spec == "none" else [name.strip() for name in spec.split(",") if name.strip()]


def probe_prompts(game: APOGame, split: str, train_prompts: int, limit: int | None):
    """(encoded prompts, their questions for the judge) of the split; none of them is ever in an RM update here."""
    if split == "eval":
        examples = game.task.eval_prompts[:limit]
        prompts = game.encoder.encode_prompts(examples)
    else:
        examples = game.task.train_prompts
        prompts = game.prompts[train_prompts:][:limit]
    return prompts, [question_text(examples[p.prompt_index].messages) for p in prompts]


def stop_token_scores(game: APOGame, prompts: list, pool, desc: str) -> tuple[list, list]:
    """([P][N] score of each sample ending with the stop token, [P][N] score of the same sample without it): a cut
    sample gets the stop token appended, a finished one is read without it; one forward per prompt (its samples share
    the prompt's prefix; a causal RM reads both positions from it)."""
    eos, pad, device = game.tokenizer.eos_token_id, game.tokenizer.pad_token_id, game.ctx.device
    with_stop, without_stop = [], []
    for prompt, rows, stopped in tqdm(list(zip(prompts, pool.response_ids, pool.has_eos)), desc=desc, leave=False):
        ids, mask = right_pad(at_stop_position(rows, stopped, eos), pad)
        prompt_ids = torch.tensor([prompt.input_ids], device=device)
        prefix = SharedPrefix(prompt_ids, torch.ones_like(prompt_ids), torch.zeros(len(rows), dtype=torch.long,
                                                                                   device=device))
        both = game.ctx.backbone.reward_with_and_without_last_token(ids.to(device), mask.to(device), prefix).cpu()
        with_stop.append(both[:, 0].tolist())
        without_stop.append(both[:, 1].tolist())
    return with_stop, without_stop


def measure_rm(game: APOGame, prompts: list, pool, penalty: float, name: str) -> dict:
    """The current RM as two selectors (as the game scores: a cut sample as it is; "as stopped": every sample at a
    stop position), each ranking by score - penalty if cut; its finish bonus: mean over samples of
    score(with the stop token) - score(without); and when every prompt has a gold response, the adversary's margin
    r(gold) - mean r(the policy's samples) per prompt (scores without the penalty), each with a bootstrap CI over
    prompts."""
    if game.reward_model is not None:
        raise SystemExit("eval/bon_probe.py scores with the shared reward adapter; model.reward_model_path is not "
                         "supported")
    stopped, unstopped = stop_token_scores(game, prompts, pool, f"{name}: scoring")
    plain = [[s if e else u for s, u, e in zip(*rows)] for rows in zip(stopped, unstopped, pool.has_eos)]
    gold = scorer_scores(game.scorer, [p.input_ids for p in prompts], [p.messages for p in prompts],
                         [p.gold_ids for p in prompts]).tolist() if all(p.gold_ids for p in prompts) else None
    bonus = [sum(s - u for s, u in zip(a, b)) / len(a) for a, b in zip(stopped, unstopped)]
    cut = [[0.0 if e else penalty for e in eos] for eos in pool.has_eos]
    reward = lambda scores: [[s - c for s, c in zip(*rows)] for rows in zip(scores, cut)]  # noqa: E731
    margins = {}
    for selector, scores in ((name, plain), (f"{name} as stopped", stopped)) if gold else ():
        per_prompt = [g - sum(row) / len(row) for g, row in zip(gold, scores)]  # r(gold) - mean r(samples)
        margins[selector] = {"mean": sum(per_prompt) / len(per_prompt), "ci95": list(bootstrap_mean_ci(per_prompt))}
    return {"selectors": {name: reward(plain), f"{name} as stopped": reward(stopped)},
            "finish_bonus": {"mean": sum(bonus) / len(bonus), "ci95": list(bootstrap_mean_ci(bonus))},
            "gold_margin": margins}


def train_buffer(game: APOGame, args, policy_dir):
    """One policy sample of each of the first --train_prompts policy prompts, as the game's pseudo rollouts."""
    config = game.config
    prompts = game.prompts[: args.train_prompts]
    pool = build_pool(config.model, config.rollout, [p.input_ids for p in prompts], 1, policy_dir,
                      desc="refit samples")
    buffer, last_step = fill_buffer(list(range(len(prompts))), [rows[0] for rows in pool.response_ids],
                                    [eos[0] for eos in pool.has_eos], config.rollout.prompts_per_step)
    return buffer, last_step, sum(eos[0] for eos in pool.has_eos) / len(prompts)


def summarise(selectors: dict, judge: list, has_eos: list, n: int) -> dict:
    """Curves, paired differences from the base RM and sensitivity; the same again for the "as stopped" selectors
    against "base as stopped" (how a game with rm.score_cut_as_stopped true ranks)."""
    ns = powers_of_two(n)
    rms = [name for name in selectors if name not in ("judge", "random", "base")]
    stopped = [name for name in rms if name.endswith(" as stopped") and name != "base as stopped"]

    def pair(names: list[str], base: str) -> dict:
        return {name: paired_difference(selectors[name], selectors[base], judge, PAIRED_N) for name in names}

    return {"selectors": {name: selector_curve(scores, judge, has_eos, ns) for name, scores in selectors.items()},
            "paired": pair(rms, "base"), "sensitivity": gain_ratio(selectors["base"], judge, PAIRED_N),
            "paired_as_stopped": pair(stopped, "base as stopped"),
            "sensitivity_as_stopped": gain_ratio(selectors["base as stopped"], judge, PAIRED_N)}


def summarise_again(folder: Path) -> dict:
    """Recompute the summary of a finished probe from its bon_scores.json alone (no model): the fields this version
    of summarise adds are written into its bon_probe.json / bon_sweep.json, the rest is left as it was."""
    scores = json.loads((folder / "bon_scores.json").read_text())["prompts"]
    judge = [[s["judge"] for s in p["samples"]] for p in scores]
    names = list(scores[0]["samples"][0]["scores"])
    selectors = {"judge": judge, "random": [[0.0] * len(row) for row in judge]}
    selectors |= {name: [[s["scores"][name] for s in p["samples"]] for p in scores] for name in names}
    has_eos = [[s["has_eos"] for s in p["samples"]] for p in scores]
    path = next(folder / f for f in ("bon_sweep.json", "bon_probe.json") if (folder / f).is_file())
    result = json.loads(path.read_text())
    result |= summarise(selectors, judge, has_eos, len(judge[0]))
    write_json(path, result)
    print(report(result))
    return result


def main(argv: list[str] | None = None) -> dict:
    args, overrides = parse_args(argv)
    if args.summarise_again:
        return summarise_again(Path(args.summarise_again))
    started = time.perf_counter()
    config = load_config(overrides + ["--rm.warmup_cache", "true"], default_yaml=RECIPE_YAML)
    output = Path(args.output_dir or f"eval/results/bon_probe_{datetime.date.today().isoformat()}")
    config.game.output_dir = str(output / "game")
    game = APOGame(config)
    warm_up_reward_model(game, show_progress=True)
    policy_dir = find_adapters(args.policy)[0] / "policy" if args.policy else None
    prompts, questions = probe_prompts(game, args.split, args.train_prompts, args.max_prompts)
    pool = build_pool(config.model, config.rollout, [p.input_ids for p in prompts], args.n, policy_dir)
    judge = load_gold_judge(cache_dir=config.model.cache_dir)
    gold = [judge.score([q] * len(texts), texts).tolist() for q, texts in zip(questions, pool.texts)]
    penalty = config.rollout.missing_eos_penalty
    selectors = {"judge": gold, "random": [[0.0] * len(row) for row in gold]}
    bonus, margin, train = {}, {}, {}

    def add_current_rm(name: str) -> None:  # the game's RM as it is now: its selectors and finish bonus
        measured = measure_rm(game, prompts, pool, penalty, name)
        selectors.update(measured["selectors"])
        bonus[name] = measured["finish_bonus"]
        margin.update(measured["gold_margin"])

    add_current_rm("base")
    buffer, last_step, train_eos = train_buffer(game, args, policy_dir)
    base_rm = dataclasses.replace(config.rm)
    refits = {name: REFITS[name] for name in refit_names(args.refits)} | sweep_settings(args.sweep)
    for name, setting in refits.items():
        train[name] = refit(game, buffer, last_step, base_rm, setting, PROBE_SEED) | {
            "settings": dataclasses.asdict(game.rm_step.cfg)}
        add_current_rm(name)
    for run in args.rm:
        train[f"run:{run}"] = {"source": load_run_reward(game, run)}
        add_current_rm(f"run:{run}")
    result = {"testbed": {"name": config.data.dataset_name, "version": DATASET_VERSIONS.get(config.data.dataset_name)},
              "split": args.split, "policy": str(policy_dir or "reference"), "model": config.model.model_name_or_path,
              "n_prompts": len(prompts), "n_samples": args.n, "pool_key": pool.key,
              "eos_fraction": sum(map(sum, pool.has_eos)) / (len(prompts) * args.n),
              "missing_eos_penalty": penalty, "refit_train_prompts": args.train_prompts,
              "refit_train_eos_fraction": train_eos, "refits": train, "finish_bonus": bonus, "gold_margin": margin}
    result |= summarise(selectors, gold, pool.has_eos, args.n)
    if args.sweep != "none":
        result["sweep"] = sweep_table(result, selectors, gold)
    result["wall_s"] = time.perf_counter() - started
    output.mkdir(parents=True, exist_ok=True)
    write_json(output / ("bon_sweep.json" if args.sweep != "none" else "bon_probe.json"), result)
    write_json(output / "bon_scores.json", scores_file(questions, pool, gold, selectors, penalty))
    bon_chart(result, output / ("bon_sweep.png" if args.sweep != "none" else "bon_probe.png"))
    print(report(result))
    return result


def scores_file(questions: list[str], pool, gold: list, selectors: dict, penalty: float) -> dict:
    """Everything the curves are computed from, per prompt and sample."""
    rms = [name for name in selectors if name not in ("judge", "random")]
    prompts = [{"question": q, "samples": [{"text": pool.texts[p][i], "has_eos": pool.has_eos[p][i],
                                            "judge": gold[p][i], "scores": {r: selectors[r][p][i] for r in rms}}
                                           for i in range(len(gold[p]))]}
               for p, q in enumerate(questions)]
    return {"scores_are": f"RM score - {penalty} if the sample was cut (what the selector ranks)", "prompts": prompts}


def report(result: dict) -> str:
    lines = [f"best-of-n on {result['n_prompts']} {result['split']} prompts x {result['n_samples']} samples "
             f"(eos fraction {result['eos_fraction']:.2f}); judge's score of the pick at n = {PAIRED_N}:"]
    for name, curve in result["selectors"].items():
        point = next(p for p in curve if p["n"] == PAIRED_N)
        paired = result["paired"].get(name)
        vs_base = f"  vs base {paired['mean']:+.3f} [{paired['ci95'][0]:+.3f}, {paired['ci95'][1]:+.3f}]" if paired \
            else ""
        lines.append(f"  {name:<28} {point['gold_mean']:+.3f} [{point['ci95'][0]:+.3f}, {point['ci95'][1]:+.3f}]"
                     f"  cut picks {point['cut_pick_rate']:.2f}{vs_base}")
    for key, base in (("sensitivity", "base"), ("sensitivity_as_stopped", "base as stopped")):
        s = result[key]
        lines.append(f"sensitivity ({base} gain / judge gain at n = {PAIRED_N}): {s['ratio']:.2f} "
                     f"[{s['ci95'][0]:.2f}, {s['ci95'][1]:.2f}]")
    lines += [f"  {name:<28} vs base as stopped {p['mean']:+.3f} [{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}]"
              for name, p in result["paired_as_stopped"].items()]
    for row in result.get("sweep", []):
        p, m = row["paired"], row["mixed_with_base"]
        lines.append(f"  sweep {row['name']:<26} vs base {p['mean']:+.3f} [{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}]"
                     f"  mixed with base {m['mean']:+.3f} [{m['ci95'][0]:+.3f}, {m['ci95'][1]:+.3f}]"
                     f"  cut picks {row['cut_pick_rate']:.2f}")
    lines.append("finish bonus (score with stop token - without): " + ", ".join(
        f"{k} {v['mean']:+.3f}" for k, v in result["finish_bonus"].items()))
    lines += [f"gold margin r(gold) - mean r(sample) {k}: {v['mean']:+.3f} [{v['ci95'][0]:+.3f}, {v['ci95'][1]:+.3f}]"
              for k, v in result.get("gold_margin", {}).items()]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
