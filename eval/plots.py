"""Figures of the evaluation scripts (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

from apo_online.calibration import CalibrationReport  # noqa: E402


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
