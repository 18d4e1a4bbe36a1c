"""APO against a frozen RM with paired seeds: every arm x seed its own resumable run, then statistics and plots.

    python eval/study.py run --output_dir runs/study --seeds 1,2,3,4,5 --jobs 2 --game.total_steps 60
    python eval/study.py summarise --output_dir eval/results/study_<date> --runs runs/study [runs/study_part2 ...]
    python eval/study.py run --arms frozen_ppo,apo_ppo,pairs_only_ppo,oracle_ppo \
        --data.dataset_name embedded_judged_v3 --rm.score_cut_as_stopped true ...   # the testbed that passes the gate

Arms (ARMS below): frozen_ppo (rm.update_every 0), apo_ppo (the recipe), pairs_only_ppo (the same RM updates with
rm.apo_coeff 0: as much RM training, human pairs only; the paper's RM_Base-AB ablation), frozen_rjs, apo_rjs,
frozen_grpo, apo_grpo, and oracle_ppo (the ceiling: PPO on the hidden judge's score, reward.terms judge).
`run` plays each arm x seed that is not finished in <output_dir>/<arm>/seed_<k>, --jobs at a time, each with
--game.cpu_threads = cores / jobs, game.gold_judge on, an evaluation at step 0 and every game.eval_every steps on
data.num_eval_prompts held-out prompts x game.eval_samples_per_prompt samples (fixed eval seed), checkpoints every
game.save_every steps: a stopped study continues where it stopped (each run resumes from its latest checkpoint).
Other arguments are config overrides for every arm. `summarise` reads the metrics.jsonl of every run under --runs
(several folders merge: a study spread over sittings), and writes summary.json, frontier.png, curves.png: per arm
and seed the final and peak gold score, KL, the RM's agreement with the judge on fresh pairs, and the final EOS
fraction and response length (the mechanism: APO once taught the policy to stop finishing); paired differences over
seeds (mean, 95% t-interval, sign test, minimum detectable effect) at the last step, on the gold-vs-sqrt(KL)
frontier (Gao et al. 2022), where each seed's curve is read at the same sqrt(KL) for both arms, and of the final EOS
fraction and length ("mechanism"); and for arms whose RM is updated, is the adversary ahead ("adversary"): per seed
the mean over the run's updates of the gold-minus-sample margin on held-out prompts the RM never trained on
(rm/heldout_gold_minus_sample) and on its own training batch (rm/gold_minus_sample), with a 95% t-interval over seeds.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import this checkout's packages, not an installed copy
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from apo_online.run.log import read_metrics  # noqa: E402
from apo_online.evaluation.statistics import min_detectable_effect, sign_test_p, t_interval  # noqa: E402
from apo_online.config_help import config_help  # noqa: E402
from apo_online.evaluation.plots import study_figures  # noqa: E402
from apo_online.evaluation.report_json import write_json  # noqa: E402
from apo_online.recipes import full_game_yaml  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RECIPE_YAML = REPO / "apo_online" / "recipes" / "apo_ppo_full.yaml"
ARMS = {  # name -> (recipe, overrides)
    "frozen_ppo": ("apo_ppo", ["--rm.update_every", "0"]),
    "apo_ppo": ("apo_ppo", []),
    "pairs_only_ppo": ("apo_ppo", ["--rm.apo_coeff", "0"]),
    "frozen_rjs": ("apo_rjs", ["--rm.update_every", "0"]),
    "apo_rjs": ("apo_rjs", []),
    "frozen_grpo": ("apo_grpo", ["--rm.update_every", "0"]),
    "apo_grpo": ("apo_grpo", []),
    # the ceiling: PPO on the hidden judge's score (reward.terms judge; no RM at all). Judged testbeds only
    "oracle_ppo": ("apo_ppo", ["--reward.terms", "judge"]),
}
# pairs_only_ppo - frozen_ppo: does refitting on the human pairs alone help the policy (the probe's best refit)?
PAIRED = [("apo_ppo", "frozen_ppo"), ("apo_ppo", "pairs_only_ppo"), ("pairs_only_ppo", "frozen_ppo"),
          ("apo_rjs", "frozen_rjs"), ("apo_grpo", "frozen_grpo"), ("oracle_ppo", "frozen_ppo")]
GAO_FORMS = {"ppo": "rl", "rjs": "bon", "grpo": "rl"}  # d(alpha - beta log d) for RL, d(alpha - beta d) for best-of-n


# ----------------------------------------------------------------------------------------------------------------------
# run
# ----------------------------------------------------------------------------------------------------------------------
def run_command(arm: str, seed: int, folder: Path, threads: int, overrides: list[str]) -> list[str]:
    recipe, arm_overrides = ARMS[arm]
    # the recipe's full game, not its short first run (a user's --config among the overrides goes on top of it)
    full_game = ["--config", str(full_game_yaml(recipe.removeprefix("apo_")))]
    return [sys.executable, str(REPO / "recipes" / f"{recipe}.py"), *full_game,
            "--game.output_dir", str(folder), "--game.seed", str(seed), "--game.gold_judge", "true",
            "--game.eval_at_start", "true", "--game.cpu_threads", str(threads), "--game.save_every", "10",
            # checkpoints only serve to resume on this machine (~110 MB each): keep the newest
            "--game.keep_last_checkpoints", "1",
            # the arms of one seed share its warm-up (the base RM): computed by the first, loaded by the others
            "--rm.warmup_cache", "true",
            # resume from the run's latest checkpoint; a run stopped before its first one starts over
            "--game.resume_from_checkpoint", "latest", "--game.overwrite_output_dir", "true",
            *arm_overrides, *overrides]


def finished(folder: Path) -> bool:
    return (folder / "final" / "config.yaml").is_file()


def run_study(arms: list[str], seeds: list[int], output_dir: Path, jobs: int, overrides: list[str]) -> None:
    """Every unfinished arm x seed, `jobs` processes at a time (seed-major, so that pairs complete early)."""
    todo = [(arm, seed) for seed in seeds for arm in arms if not finished(output_dir / arm / f"seed_{seed}")]
    threads = max(1, (os.cpu_count() or 1) // jobs)
    running: list[tuple[str, subprocess.Popen]] = []
    print(f"{len(todo)} runs to play, {jobs} at a time with {threads} thread(s) each", flush=True)
    while todo or running:
        while todo and len(running) < jobs:
            arm, seed = todo.pop(0)
            folder = output_dir / arm / f"seed_{seed}"
            if finished(folder):  # another study process over the same folder played it meanwhile
                continue
            folder.mkdir(parents=True, exist_ok=True)
            log = open(folder / "study.log", "a")
            running.append((f"{arm}/seed_{seed}", subprocess.Popen(run_command(arm, seed, folder, threads, overrides),
                                                                   stdout=log, stderr=subprocess.STDOUT)))
        time.sleep(2)
        for name, process in list(running):
            if process.poll() is not None:
                running.remove((name, process))
                print(f"{name}: exit status {process.returncode}", flush=True)


# ----------------------------------------------------------------------------------------------------------------------
# summarise
# ----------------------------------------------------------------------------------------------------------------------
def run_metrics_files(folders: list[Path]):
    """(arm, seed, path of its metrics.jsonl) of every run under the study folders (<arm>/seed_<k>/), in order."""
    for root in folders:
        for metrics in sorted(root.glob("*/seed_*/metrics.jsonl")):
            yield metrics.parent.parent.name, int(metrics.parent.name.removeprefix("seed_")), metrics


def load_runs(folders: list[Path]) -> dict[str, dict[int, list[dict]]]:
    """arm -> seed -> the evaluation records (metrics.jsonl lines with eval/gold_score), from every folder.

    Unfinished runs are left out (named on stdout): their last evaluation is not the final one."""
    runs: dict[str, dict[int, list[dict]]] = {}
    for arm, seed, metrics in run_metrics_files(folders):
        if not finished(metrics.parent):
            print(f"{metrics.parent}: unfinished, left out", flush=True)
            continue
        evals = [r for r in read_metrics(metrics) if "eval/gold_score" in r]
        if seed in runs.get(arm, {}):
            raise SystemExit(f"{metrics}: {arm} seed {seed} is in two of the merged folders")
        if evals:
            runs.setdefault(arm, {})[seed] = evals
    return runs


ADVERSARY_MARGINS = ("rm/heldout_gold_minus_sample", "rm/gold_minus_sample")  # logged after each RM update


def load_margins(folders: list[Path], arms: list[str]) -> dict[str, dict[int, dict[str, list[float]]]]:
    """arm -> seed -> margin key -> its value after each RM update, for finished runs that logged any."""
    margins: dict[str, dict[int, dict[str, list[float]]]] = {}
    for arm, seed, metrics in run_metrics_files(folders):
        if arm not in arms or not finished(metrics.parent):
            continue
        rows = read_metrics(metrics)
        logged = {key: [r[key] for r in rows if key in r] for key in ADVERSARY_MARGINS}
        if any(logged.values()):
            margins.setdefault(arm, {})[seed] = logged
    return margins


def adversary_summary(margins: dict[str, dict[int, dict[str, list[float]]]]) -> dict:
    """Per arm and margin: each seed's mean over its updates and the share of updates with the gold ahead, and the
    mean over seeds with its 95% t-interval (a seed is one observation: updates of one run are not independent)."""
    result = {}
    for arm, seeds in sorted(margins.items()):
        result[arm] = {}
        for key in ADVERSARY_MARGINS:
            per_seed = {s: values[key] for s, values in sorted(seeds.items()) if values[key]}
            if not per_seed:
                continue
            means = [float(np.mean(v)) for v in per_seed.values()]
            result[arm][key] = {"seeds": list(per_seed), "updates": [len(v) for v in per_seed.values()],
                                "seed_means": means,
                                "share_positive": [float(np.mean(np.array(v) > 0)) for v in per_seed.values()],
                                "mean": float(np.mean(means)), "ci95": list(t_interval(means))}
    return result


def frontier_points(evals: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(sqrt(KL) [E], gold gain over step 0 [E]) of one run's evaluations (KL clipped at 0: k1 can dip below)."""
    d = np.sqrt(np.clip([r["eval/kl"] for r in evals], 0.0, None))
    gold = np.array([r["eval/gold_score"] for r in evals])
    return d, gold - gold[0]


def gold_at(evals: list[dict], d_star: float) -> float:
    """Gold gain of one run read off its frontier at sqrt(KL) = d_star (linear interpolation along the evaluations,
    in order; the first crossing). nan when the run never reached d_star."""
    d, gain = frontier_points(evals)
    for k in range(1, len(d)):
        lo, hi = sorted((d[k - 1], d[k]))
        if lo <= d_star <= hi:
            t = 0.0 if hi == lo else (d_star - d[k - 1]) / (d[k] - d[k - 1])
            return float(gain[k - 1] + t * (gain[k] - gain[k - 1]))
    return math.nan


def fit_gao(d: np.ndarray, gain: np.ndarray, form: str) -> tuple[float, float]:
    """Least squares (alpha, beta) of gain = d (alpha - beta log d) [rl] or d (alpha - beta d) [bon]; d > 0 only."""
    keep = d > 1e-6
    d, gain = d[keep], gain[keep]
    if d.size < 2:
        return math.nan, math.nan
    second = -d * np.log(d) if form == "rl" else -d * d
    (alpha, beta), *_ = np.linalg.lstsq(np.stack([d, second], 1), gain, rcond=None)
    return float(alpha), float(beta)


def arm_summary(seed_runs: dict[int, list[dict]]) -> dict:
    seeds = sorted(seed_runs)
    last = [seed_runs[s][-1] for s in seeds]
    agreement = [np.nanmean([r.get("eval/rm_accuracy_on_policy", math.nan) for r in seed_runs[s][1:]] or [math.nan])
                 for s in seeds]
    return {"seeds": seeds, "final_gold": [r["eval/gold_score"] for r in last],
            "peak_gold": [max(r["eval/gold_score"] for r in seed_runs[s]) for s in seeds],
            "start_gold": [seed_runs[s][0]["eval/gold_score"] for s in seeds],
            "kl": [r["eval/kl"] for r in last], "final_step": [r["step"] for r in last],
            # the mechanism to read when an effect is absent or negative: does the policy still finish, how long
            "final_eos_fraction": [r.get("eval/eos_fraction", math.nan) for r in last],
            "final_response_length": [r.get("eval/response_length", math.nan) for r in last],
            "eval_steps": [[r["step"] for r in seed_runs[s]] for s in seeds],
            "rm_judge_agreement": [float(a) for a in agreement]}


def paired(differences: list[float]) -> dict:
    d = [x for x in differences if not math.isnan(x)]
    sd = float(np.std(d, ddof=1)) if len(d) >= 2 else math.nan
    return {"mean": float(np.mean(d)) if d else math.nan, "ci95": list(t_interval(d)), "n_seeds": len(d),
            "sign_test_p": sign_test_p(d), "sd": sd, "min_detectable_effect": min_detectable_effect(sd, len(d)),
            "differences": differences}


def summarise(runs: dict[str, dict[int, list[dict]]]) -> dict:
    arms = {arm: arm_summary(seed_runs) for arm, seed_runs in sorted(runs.items())}
    result = {"arms": arms, "paired": {}, "frontier": {}, "mechanism": {}, "gao_fits": {}}
    for arm, seed_runs in runs.items():
        points = [frontier_points(e) for e in seed_runs.values()]
        d, gain = np.concatenate([p[0] for p in points]), np.concatenate([p[1] for p in points])
        result["gao_fits"][arm] = dict(zip(("alpha", "beta"), fit_gao(d, gain, GAO_FORMS[arm.rsplit("_", 1)[1]])))
    for treated, control in PAIRED:
        if treated not in runs or control not in runs:
            continue
        seeds = sorted(set(runs[treated]) & set(runs[control]))
        final = [runs[treated][s][-1]["eval/gold_score"] - runs[control][s][-1]["eval/gold_score"] for s in seeds]
        result["paired"][f"{treated}-{control}"] = paired(final) | {"seeds": seeds, "metric": "final gold score"}
        result["mechanism"][f"{treated}-{control}"] = {
            key: paired([runs[treated][s][-1].get(f"eval/{key}", math.nan)
                         - runs[control][s][-1].get(f"eval/{key}", math.nan) for s in seeds]) | {"seeds": seeds}
            for key in ("eos_fraction", "response_length")}
        # on the frontier: both arms read at the largest sqrt(KL) that both runs of the seed reached
        reach = [min(max(frontier_points(runs[a][s])[0]) for a in (treated, control)) for s in seeds]
        at_d = [gold_at(runs[treated][s], d) - gold_at(runs[control][s], d) for s, d in zip(seeds, reach)]
        result["frontier"][f"{treated}-{control}"] = paired(at_d) | {"seeds": seeds, "sqrt_kl": reach,
                                                                      "metric": "gold gain at a common sqrt(KL)"}
    return result


def main(argv: list[str] | None = None) -> dict | None:
    epilog = "Other --section.field arguments override every arm's config.\n\n" + config_help(RECIPE_YAML)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False, epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("run", "summarise"))
    parser.add_argument("--output_dir", required=True, help="run: the study's runs; summarise: where results go")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated from {', '.join(ARMS)}")
    parser.add_argument("--seeds", default="1,2,3,4,5")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (run)")
    parser.add_argument("--runs", nargs="+", default=None, help="summarise: study folders to merge")
    args, overrides = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    output = Path(args.output_dir)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise SystemExit(f"unknown arm(s) {unknown}; known: {', '.join(ARMS)}")
    if args.command == "run":
        run_study(arms, [int(s) for s in args.seeds.split(",")], output, args.jobs, overrides)
        return None
    # the arms asked for, in the summary and the figures alike
    runs = {a: r for a, r in load_runs([Path(f) for f in (args.runs or [output])]).items() if a in arms}
    if not runs:
        raise SystemExit(f"no finished runs of {', '.join(arms)} under {args.runs or [output]} "
                         f"(<arm>/seed_<k>/metrics.jsonl with final/config.yaml)")
    result = summarise(runs)
    result["adversary"] = adversary_summary(load_margins([Path(f) for f in (args.runs or [output])], list(runs)))
    output.mkdir(parents=True, exist_ok=True)
    write_json(output / "summary.json", result)
    study_figures(runs, result, output)
    print(format_report(result))
    return result


def format_report(result: dict) -> str:
    lines = [f"{'arm':16}{'seeds':>6}{'final gold':>12}{'peak gold':>11}{'KL':>8}{'RM-judge agr.':>15}"
             f"{'EOS frac.':>11}{'length':>8}"]
    for arm, s in result["arms"].items():
        lines.append(f"{arm:16}{len(s['seeds']):>6}{np.mean(s['final_gold']):>12.3f}{np.mean(s['peak_gold']):>11.3f}"
                     f"{np.mean(s['kl']):>8.2f}{np.nanmean(s['rm_judge_agreement']):>15.3f}"
                     f"{np.nanmean(s['final_eos_fraction']):>11.3f}{np.nanmean(s['final_response_length']):>8.1f}")
    rows = [(kind, name, p) for kind in ("paired", "frontier") for name, p in result[kind].items()]
    rows += [(key, name, p) for name, keys in result["mechanism"].items() for key, p in keys.items()]
    for kind, name, p in rows:
        lines.append(f"{kind:16}{name:28} {p['mean']:+.3f}  95% CI [{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}]  "
                     f"sign p {p['sign_test_p']:.3f}  n {p['n_seeds']}  MDE {p['min_detectable_effect']:.3f}")
    for arm, keys in result.get("adversary", {}).items():
        for key, m in keys.items():
            lines.append(f"{'adversary':16}{arm + ' ' + key.removeprefix('rm/'):40} {m['mean']:+.3f}  95% CI "
                         f"[{m['ci95'][0]:+.3f}, {m['ci95'][1]:+.3f}]  seeds {len(m['seeds'])}  updates "
                         f"{sum(m['updates'])}  gold ahead {np.mean(m['share_positive']):.2f} of updates")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
