"""Figures of the evaluation scripts under eval/ (matplotlib, Agg backend: no display needed). In the package, not
beside the scripts, so that each script imports only apo_online and the figures are importable from an installed
copy. Importing this module selects the Agg backend; nothing else in apo_online imports it."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

from apo_online.rm.calibration import CalibrationReport  # noqa: E402


def reliability_diagram(report: CalibrationReport, path: str | Path, title: str = "") -> Path:
    """Fraction of positives vs mean predicted probability per bin (bars), the diagonal of perfect calibration, and
    the number of predictions per bin underneath."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    edges = report.bin_edges
    centers = [(a + b) / 2 for a, b in zip(edges, edges[1:])]
    width = edges[1] - edges[0]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    frac = [0.0 if math.isnan(v) else v for v in report.bin_frac_positive]
    top.bar(centers, frac, width=width * 0.9, color="tab:blue", alpha=0.8, label="fraction preferred")
    filled = [(c, p) for c, p in zip(centers, report.bin_mean_prob) if not math.isnan(p)]
    top.plot([c for c, _ in filled], [p for _, p in filled], "o", color="tab:orange", label="mean predicted p")
    top.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    top.set_ylim(0, 1)
    top.set_ylabel("fraction of positives")
    top.set_title(f"{title}\nECE {report.ece:.3f}  ACE {report.ace:.3f}  MCE {report.mce:.3f}  "
                  f"(N={report.num_predictions})".strip(), fontsize=9)
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(centers, report.bin_counts, width=width * 0.9, color="gray")
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("predicted probability sigmoid(r_a - r_b)")
    bottom.set_ylabel("count")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def metric_curves(curves: dict[str, dict[str, list[tuple[int, float]]]], metrics: list[tuple[str, str]],
                  path: str | Path, title: str = "") -> Path:
    """One panel per (metric key, label); one line per variant. curves: variant -> metric -> [(step, value)]."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = 3
    rows = math.ceil(len(metrics) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    for axis, (key, label) in zip(axes.flat, metrics):
        for variant, series in curves.items():
            points = [(s, v) for s, v in series.get(key, []) if v is not None and not math.isnan(v)]
            if points:
                axis.plot([s for s, _ in points], [v for _, v in points], "o-", label=variant, markersize=3)
        axis.set_title(label, fontsize=9)
        axis.set_xlabel("policy step")
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(metrics):]:
        axis.axis("off")
    axes.flat[0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def probe_chart(result: dict, path: str | Path) -> Path:
    """eval/rm_probe.py: held-out gold-minus-sample margin (bootstrap 95% CI) and judge agreement per RM setting,
    the base RM as a dashed line."""
    path = Path(path)
    entries = result["sweep"]
    names = [e["name"] for e in entries]
    x = list(range(len(entries)))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6, 0.7 * len(entries) + 2), 7), sharex=True)
    means = [e["heldout_gold_minus_sample"]["mean"] for e in entries]
    lows = [m - e["heldout_gold_minus_sample"]["ci95"][0] for m, e in zip(means, entries)]
    highs = [e["heldout_gold_minus_sample"]["ci95"][1] - m for m, e in zip(means, entries)]
    top.errorbar(x, means, yerr=[lows, highs], fmt="o", capsize=3, label="refit RM")
    base = result["base"]["heldout_gold_minus_sample"]
    top.axhline(base["mean"], color="gray", linestyle="--", label="base RM")
    top.axhspan(base["ci95"][0], base["ci95"][1], color="gray", alpha=0.15)
    top.set_ylabel("held-out r(gold) - r(sample)")
    top.legend(fontsize=8)
    bottom.plot(x, [e["judge_agreement"]["accuracy"] for e in entries], "o", label="judge agreement (fresh pairs)")
    bottom.plot(x, [e["human_pairs"]["accuracy"] for e in entries], "s", label="held-out pair accuracy")
    bottom.axhline(result["base"]["judge_agreement"]["accuracy"], color="tab:blue", linestyle="--", alpha=0.6)
    bottom.axhline(result["base"]["human_pairs"]["accuracy"], color="tab:orange", linestyle="--", alpha=0.6)
    bottom.set_ylabel("accuracy")
    bottom.set_xticks(x, names, rotation=40, ha="right", fontsize=8)
    bottom.legend(fontsize=8)
    fig.suptitle(f"RM probe: {result['policy']} policy, premise {result['premise_gold_win_rate']:.2f}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def study_figures(runs: dict, result: dict, output_dir: str | Path) -> list[Path]:
    """eval/study.py: frontier.png (gold gain over step 0 vs sqrt(KL) for every evaluation of every seed, one colour
    per arm, with the arm's fitted Gao curve) and curves.png (gold score, RM score and the RM's agreement with the
    judge vs step: mean over seeds with a min-max band)."""
    import numpy as np

    output_dir = Path(output_dir)
    colours = dict(zip(sorted(runs), plt.rcParams["axes.prop_cycle"].by_key()["color"] * 3))
    fig, axis = plt.subplots(figsize=(6, 4.5))
    for arm, seed_runs in sorted(runs.items()):
        top = 0.0
        for evals in seed_runs.values():
            d = np.sqrt(np.clip([r["eval/kl"] for r in evals], 0.0, None))
            gold = np.array([r["eval/gold_score"] for r in evals])
            axis.plot(d, gold - gold[0], "o", color=colours[arm], alpha=0.35, markersize=3)
            top = max(top, float(d.max()))
        fit = result["gao_fits"].get(arm, {})
        if top > 0 and not math.isnan(fit.get("alpha", math.nan)):
            grid = np.linspace(1e-3, top, 100)
            second = grid * np.log(grid) if arm.endswith("ppo") else grid * grid
            axis.plot(grid, fit["alpha"] * grid - fit["beta"] * second, "-", color=colours[arm], label=arm)
    axis.axhline(0, color="gray", linewidth=0.8)
    axis.set_xlabel("sqrt(KL to reference)")
    axis.set_ylabel("gold score gain over step 0")
    if axis.get_legend_handles_labels()[0]:  # fits need evaluations past step 0
        axis.legend(fontsize=8)
    axis.set_title("gold-vs-KL frontier (points: evaluations of every seed; lines: Gao et al. fits)", fontsize=9)
    fig.tight_layout()
    frontier = output_dir / "frontier.png"
    fig.savefig(frontier, dpi=110)
    plt.close(fig)
    keys = [("eval/gold_score", "gold score"), ("eval/rm_score", "RM score of policy samples"),
            ("eval/rm_accuracy_on_policy", "RM agreement with the judge (fresh pairs)")]
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.8))
    for axis, (key, label) in zip(axes, keys):
        for arm, seed_runs in sorted(runs.items()):
            steps = sorted({r["step"] for evals in seed_runs.values() for r in evals})
            values = [[r.get(key, math.nan) for evals in seed_runs.values() for r in evals if r["step"] == s]
                      for s in steps]
            mean = [np.nanmean(v) if v else math.nan for v in values]
            axis.plot(steps, mean, "o-", color=colours[arm], label=arm, markersize=3)
            axis.fill_between(steps, [np.nanmin(v) for v in values], [np.nanmax(v) for v in values],
                              color=colours[arm], alpha=0.15)
        axis.set_title(label, fontsize=9)
        axis.set_xlabel("policy step")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    curves = output_dir / "curves.png"
    fig.savefig(curves, dpi=110)
    plt.close(fig)
    return [frontier, curves]


def bon_chart(result: dict, path: str | Path) -> Path:
    """eval/bon_probe.py: the judge's score of each selector's best-of-n pick against KL_bon (bootstrap 95% band),
    and how often the pick is a cut sample."""
    path = Path(path)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 8), sharex=True, gridspec_kw={"height_ratios": [3, 1.4]})
    for name, curve in result["selectors"].items():
        kl = [p["kl_bon"] for p in curve]
        style = {"judge": "k--", "random": "k:"}.get(name, "o-")
        top.plot(kl, [p["gold_mean"] for p in curve], style, markersize=3, label=name)
        top.fill_between(kl, [p["ci95"][0] for p in curve], [p["ci95"][1] for p in curve], alpha=0.12)
        bottom.plot(kl, [p["cut_pick_rate"] for p in curve], style, markersize=3)
    ticks = [p["kl_bon"] for p in next(iter(result["selectors"].values()))]
    top.set_ylabel("judge's score of the pick")
    top.legend(fontsize=7, ncol=2)
    top.set_title(f"best-of-n, {result['n_prompts']} {result['split']} prompts x {result['n_samples']} samples "
                  f"({result['testbed']['name']} {result['testbed']['version']}); sensitivity "
                  f"{result['sensitivity']['ratio']:.2f}", fontsize=9)
    bottom.set_ylabel("pick is cut")
    bottom.set_xlabel("KL_bon = log n - (n-1)/n   (n = 1, 2, 4, ...)")
    bottom.set_xticks(ticks, [f"{t:.1f}" for t in ticks], fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
