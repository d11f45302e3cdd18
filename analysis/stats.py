"""Significance tests with their small-sample limits said out loud (Demsar 2006).

The tests are scipy.stats's (`ttest_rel` and its confidence interval, `wilcoxon`,
`friedmanchisquare`, `studentized_range`, `bootstrap`). This module decides when each may run,
what an undefined result is, and says why; by hand are only what no library in the dependencies
computes (Cohen's d_z, P(A > B), the smallest p an exact Wilcoxon test can reach, the
Iman-Davenport correction, the best p Friedman's test can reach) and Holm's correction, whose
statsmodels version is slow to call (see `holm`; the tests compare the two).

- Per dataset: a paired t-test over matched seeds, Cohen's d_z, the t-interval of the mean
  difference, P(A > B) over pairs, and the Wilcoxon signed-rank test when n >= 6 (below that its
  smallest two-sided p is >= 0.0625, so it is not run and the reason is given).
- Across datasets: Holm's step-down correction; Friedman's test on per-dataset means with the
  Nemenyi critical difference; percentile-bootstrap CIs (seeds resampled within datasets).

Example:
    >>> r = paired_test([0.86, 0.87, 0.85], [0.85, 0.85, 0.84])
    >>> r.n, round(r.diff, 4)
    (3, 0.0133)
    >>> holm([0.01, 0.04, 0.03]).round(3).tolist()
    [0.03, 0.06, 0.06]
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

ALPHA = 0.05
STAR_LEGEND = "* p < 0.05, ** p < 0.01, *** p < 0.001 (Holm-adjusted, two-sided)"


def stars(p: float | None) -> str:
    if p is None or not np.isfinite(p):
        return ""
    return "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.05 else ""


def min_wilcoxon_p(n: int) -> float:
    """The smallest two-sided p an exact Wilcoxon signed-rank test can give with n untied pairs
    (every difference of one sign: 2 / 2^n). By hand: scipy gives a test's p, not the bound."""
    return min(1.0, 2.0 ** (1 - n))


@dataclass
class Paired:
    n: int
    mean_a: float
    mean_b: float
    diff: float  # mean of a - b
    ci_low: float
    ci_high: float
    t: float
    p: float
    dz: float  # Cohen's d_z: mean difference / sd of the differences
    p_better: float  # P(A > B) over the pairs, ties counted half
    wilcoxon_p: float | None
    note: str


def paired_test(a, b, alpha: float = ALPHA, confidence: float = 0.95) -> Paired:
    """Paired comparison of matched measurements `a` and `b` (same seeds, same order).

    t, p and the t-interval of the mean difference are scipy's `ttest_rel`; the Wilcoxon p is
    scipy's `wilcoxon`. By hand (no library gives them): d_z = mean / sd of the differences, and
    P(A > B) with ties counted half. Fewer than 2 pairs: no test; differences all equal: t and d_z
    undefined, the interval collapses to the difference; NaN values give NaN results."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired samples need equal 1-D shapes, got {a.shape} and {b.shape}")
    d = a - b
    n = len(d)
    nan = math.nan
    mean_a, mean_b = (float(a.mean()), float(b.mean())) if n else (nan, nan)
    diff = float(d.mean()) if n else nan
    p_better = float(np.mean(d > 0) + 0.5 * np.mean(d == 0)) if n else nan
    notes = []
    if n < 2:
        return Paired(n, mean_a, mean_b, diff, nan, nan, nan, nan, nan, p_better, None,
                      f"n={n} pair(s): no test possible")
    sd = float(d.std(ddof=1))
    if sd == 0.0:
        t = p = dz = nan
        low = high = diff
        notes.append("every pair differs by the same amount: t and d_z are undefined")
    else:
        result = stats.ttest_rel(a, b)
        t, p = float(result.statistic), float(result.pvalue)
        interval = result.confidence_interval(confidence)
        low, high, dz = float(interval.low), float(interval.high), diff / sd
    wilcoxon_p = None
    if n >= 6:
        rounded = np.round(d, 12)  # float round-off must not break ties (scipy docs)
        if np.any(rounded != 0):
            wilcoxon_p = float(stats.wilcoxon(rounded).pvalue)
    else:
        notes.append(f"Wilcoxon not run: with n={n} pairs its smallest two-sided p is "
                     f"{min_wilcoxon_p(n):.4g} >= {alpha}")
    return Paired(n, mean_a, mean_b, diff, low, high, t, p, dz, p_better, wilcoxon_p, "; ".join(notes))


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN entries stay NaN and do not count).

    By hand on purpose: statsmodels' `multipletests(p, method="holm")` gives the same numbers (the
    tests check it) but runs `gc.collect()` on every call (statsmodels 0.14-0.15), about 20 ms
    each beside the report's MLflow and pandas objects; a report makes hundreds of these calls,
    and the test store's three reports took 37 s with it instead of 20 s."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    valid = np.flatnonzero(np.isfinite(p))
    m = len(valid)
    running = 0.0
    for rank, index in enumerate(valid[np.argsort(p[valid], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[index]))
        out[index] = running
    return out


@dataclass
class RankTest:
    ranks: pd.Series  # average rank per method (1 = best)
    n_blocks: int
    friedman_chi2: float | None
    friedman_p: float | None
    iman_davenport_p: float | None
    cd: float  # Nemenyi critical difference at alpha
    alpha: float
    notes: list[str]

    def differs(self, a: str, b: str) -> bool:
        return abs(self.ranks[a] - self.ranks[b]) > self.cd


def nemenyi_q(k: int, alpha: float = ALPHA) -> float:
    """q_alpha of the Nemenyi test: the studentized range quantile / sqrt(2) (2.343 for k=3)."""
    return float(stats.studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2))


def friedman_nemenyi(scores: pd.DataFrame, higher_is_better: bool = True, alpha: float = ALPHA) -> RankTest:
    """Friedman's test and Nemenyi's critical difference over blocks (rows: datasets, each a mean
    over seeds) and methods (columns).

    Ranks, chi-square and p are scipy's (`rankdata`, `friedmanchisquare`), q_alpha is scipy's
    studentized range. By hand, as no library in the dependencies has them: the Iman-Davenport F
    correction (Demsar 2006, eq. 2, on scipy's F distribution), the best p Friedman's test can
    reach with N blocks (identical rankings everywhere, chi-square = N(k-1)) and the CD formula."""
    scores = scores.dropna()
    n, k = scores.shape
    if k < 2 or n < 1:
        raise ValueError(f"rank tests need >= 2 methods and >= 1 complete dataset, got {k} and {n}")
    ranks = scores.apply(lambda row: pd.Series(stats.rankdata(-row if higher_is_better else row), index=row.index),
                         axis=1)
    average = ranks.mean().sort_values()
    notes, chi2, p, p_id = [], None, None, None
    if k >= 3 and n >= 2:
        chi2, p = (float(v) for v in stats.friedmanchisquare(*[scores[c] for c in scores.columns]))
        if chi2 < n * (k - 1):
            f = (n - 1) * chi2 / (n * (k - 1) - chi2)
            p_id = float(stats.f.sf(f, k - 1, (k - 1) * (n - 1)))
        else:
            p_id = 0.0
        best_p = float(stats.chi2.sf(n * (k - 1), k - 1))
        if best_p >= alpha:
            notes.append(f"Friedman cannot reach p < {alpha} with N={n} datasets and k={k} methods "
                         f"(even identical rankings everywhere give p = {best_p:.3g})")
    else:
        notes.append(f"Friedman's test needs k >= 3 methods and N >= 2 datasets (here k={k}, N={n})")
    cd = nemenyi_q(k, alpha) * math.sqrt(k * (k + 1) / (6 * n)) if k >= 2 else math.nan
    if cd >= k - 1:
        notes.append(f"Nemenyi: CD = {cd:.2f} ranks >= k-1 = {k - 1}: with N={n} datasets no pair of "
                     "methods can differ significantly")
    if k == 2:
        notes.append(f"two methods over N={n} datasets: the Wilcoxon signed-rank test on the per-dataset "
                     f"means is the recommended test; its smallest two-sided p is {min_wilcoxon_p(n):.4g}")
    return RankTest(average, n, chi2, p, p_id, cd, alpha, notes)


def stratified_bootstrap_ci(scores: dict[str, np.ndarray], confidence: float = 0.95, reps: int = 10000,
                            seed: int = 0) -> tuple[float, float, float]:
    """Percentile bootstrap: (point, low, high) of the mean over datasets of the per-dataset mean over
    seeds; seeds resampled within each dataset (rliable's stratified bootstrap). `scores`: dataset ->
    values over seeds; one dataset gives the plain percentile bootstrap of the mean. With 3-5 seeds
    the interval is too narrow (percentile bootstraps undercover at small n).

    scipy's `bootstrap` with one sample per dataset (`paired=False` resamples each within itself)
    and the mean of their means as the statistic. A dataset with a single seed is the same in
    every resample: scipy refuses such a sample, so it enters the statistic as its value; with
    only such datasets the interval is the point. NaN values give a NaN interval."""
    arrays = [np.asarray(v, dtype=float) for v in scores.values()]
    point = float(np.mean([a.mean() for a in arrays]))
    varying = [a for a in arrays if len(a) > 1]

    def mean_of_means(*resampled, axis=-1):
        draws = iter(resampled)
        total = 0.0
        for a in arrays:  # in the datasets' order, so the sum is the same whichever are constant
            total = total + (next(draws).mean(axis=axis) if len(a) > 1 else a[0])
        return total / len(arrays)

    if not varying:
        value = float(mean_of_means())
        return point, value, value
    with warnings.catch_warnings():  # NaN values: scipy warns of a degenerate BCa interval, not ours
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        interval = stats.bootstrap(varying, mean_of_means, n_resamples=reps, confidence_level=confidence,
                                   method="percentile", vectorized=True, rng=np.random.default_rng(seed)).confidence_interval
    return point, float(interval.low), float(interval.high)
