"""Best-of-n curves: how good is the response a selector picks out of n samples? (Gao et al. 2022, section 3)

For one prompt with N samples, a selector's scores s [N] and the yardstick's values v [N] (the hidden judge's
score, or 1[the sample was cut]), the expected value of the selector's pick among n samples drawn without
replacement from the N is computed exactly, over all C(N, n) subsets instead of one random draw:

    sort the samples by s ascending; the sample of rank r (0-based) is the subset's argmax iff it is in the subset
    and the other n - 1 members come from the r samples below it:

        E[v of the pick] = sum_r  C(r, n - 1) / C(N, n) * v_(r)

Ties in s are broken uniformly at random: that gives every member of a tie group the group's mean v (the weights
are linear in the order within a group, and every order is equally likely). A random selector is one big tie: its
value is mean(v) at every n, the floor.

    KL_bon(n) = log n - (n - 1) / n     (the KL of the best-of-n policy to the sampling policy; Stiennon et al. 2020)
"""

from __future__ import annotations

import math

import numpy as np

from apo_online.evaluation.statistics import bootstrap_mean_ci


def kl_best_of_n(n: int) -> float:
    return math.log(n) - (n - 1) / n


def best_of_n_weights(num_samples: int, n: int) -> np.ndarray:
    """[N] probability that the sample of rank r (ascending) is the best of a uniform n-subset: C(r, n-1) / C(N, n)."""
    if not 1 <= n <= num_samples:
        raise ValueError(f"best-of-{n} needs 1 <= n <= {num_samples} samples")
    total = math.comb(num_samples, n)
    return np.array([math.comb(r, n - 1) / total for r in range(num_samples)], dtype=np.float64)


def expected_pick(selector_scores, values, n: int) -> float:
    """E[values of the selector's argmax among n of the N samples], exact, ties broken at random.
    selector_scores, values: [N]."""
    s, v = np.asarray(selector_scores, dtype=np.float64), np.asarray(values, dtype=np.float64)
    order = np.argsort(s, kind="stable")
    s, v = s[order], v[order]
    _, group, counts = np.unique(s, return_inverse=True, return_counts=True)
    tied_mean = np.bincount(group, weights=v) / counts  # every member of a tie group gets the group's mean
    return float(best_of_n_weights(len(v), n) @ tied_mean[group])


def powers_of_two(limit: int) -> list[int]:
    return [2**k for k in range(int(math.log2(limit)) + 1)]


def per_prompt_picks(selector: list, values: list, n: int, keep: list | None = None) -> list[float]:
    """[P'] expected value of the pick on each prompt that has at least n kept samples.
    selector, values: [P][N_p]; keep: [P][N_p] bools (None: every sample)."""
    out = []
    for p, (s, v) in enumerate(zip(selector, values)):
        rows = [i for i in range(len(v)) if keep is None or keep[p][i]]
        if len(rows) >= n:
            out.append(expected_pick([s[i] for i in rows], [v[i] for i in rows], n))
    return out


def _summary(values: list[float]) -> dict:
    lo, hi = bootstrap_mean_ci(values)
    return {"mean": float(np.mean(values)) if len(values) else float("nan"), "ci95": [lo, hi]}


def selector_curve(selector: list, judge: list, has_eos: list, ns: list[int]) -> list[dict]:
    """One point per n: the judge's score of the pick (mean over prompts, bootstrap 95% CI over prompts), how often
    the pick is a cut sample, and the same judge curve among finished samples only (prompts with >= n of them).
    selector, judge: [P][N] scores; has_eos: [P][N] bools."""
    cut = [[0.0 if e else 1.0 for e in row] for row in has_eos]
    points = []
    for n in ns:
        gold, finished = per_prompt_picks(selector, judge, n), per_prompt_picks(selector, judge, n, has_eos)
        points.append({"n": n, "kl_bon": kl_best_of_n(n), "gold_mean": float(np.mean(gold)),
                       "ci95": list(bootstrap_mean_ci(gold)),
                       "cut_pick_rate": float(np.mean(per_prompt_picks(selector, cut, n))),
                       "finished_only": dict(_summary(finished), n_prompts=len(finished))})
    return points


def paired_difference(selector: list, baseline: list, judge: list, n: int) -> dict:
    """Per prompt, judge(pick of selector) - judge(pick of baseline) at n; mean and bootstrap 95% CI over prompts."""
    diff = np.subtract(per_prompt_picks(selector, judge, n), per_prompt_picks(baseline, judge, n))
    return dict(_summary(diff.tolist()), n=n, n_prompts=len(diff))


def gain_ratio(selector: list, judge: list, n: int, resamples: int = 2000, seed: int = 0) -> dict:
    """(selector's gain from n = 1 to n) / (the judge's own gain as selector): the share of the achievable best-of-n
    gain the selector gets. Point estimate and a percentile-bootstrap 95% CI over prompts."""
    own = np.array(per_prompt_picks(selector, judge, n)) - np.array(per_prompt_picks(selector, judge, 1))
    best = np.array(per_prompt_picks(judge, judge, n)) - np.array(per_prompt_picks(judge, judge, 1))
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(own), size=(resamples, len(own)))
    ratios = own[draws].mean(1) / best[draws].mean(1)
    return {"ratio": float(own.mean() / best.mean()), "ci95": [float(np.percentile(ratios, 2.5)),
                                                               float(np.percentile(ratios, 97.5))],
            "selector_gain": float(own.mean()), "judge_gain": float(best.mean()), "n": n}
