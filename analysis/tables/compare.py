"""What the tables compare with: matched seeds, mean ± std per group, the methods not significantly
worse than the best, the datasets every method covers, and how a count range and a p-value are shown.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.stats import ALPHA, holm, paired_test
from gloss_core.spread import mean_std


def matched(frame: pd.DataFrame, a: str, b: str) -> tuple[np.ndarray, np.ndarray]:
    """Values of methods a and b on the seeds both have, in seed order."""
    wide = frame[frame["method"].isin([a, b])].pivot_table(index="seed", columns="method", values="value")
    if a not in wide or b not in wide:
        return np.array([]), np.array([])
    wide = wide[[a, b]].dropna().sort_index()
    return wide[a].to_numpy(), wide[b].to_numpy()


def mean_std_n(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Mean, sample std (ddof=1) and count of `value` per group, groups in order of appearance."""
    rows = []
    for key, group in frame.groupby(by, sort=False):
        spread = mean_std(group["value"])
        rows.append({**dict(zip(by, key if isinstance(key, tuple) else (key,))), "mean": spread.mean,
                     "std": spread.std, "n": spread.n})
    return pd.DataFrame(rows, columns=[*by, "mean", "std", "n"])


def n_text(counts) -> str:
    lo, hi = int(min(counts)), int(max(counts))
    return str(lo) if lo == hi else f"{lo}–{hi}"


def not_worse_than_best(part: pd.DataFrame, higher_is_better: bool = True, alpha: float = ALPHA) -> set[str]:
    """The method with the best mean in `part` (method, seed, value) and every method not
    significantly worse than it: paired t-test over matched seeds, Holm across the methods
    compared. A method with fewer than two matched seeds cannot be told apart: it stays in."""
    means = part.groupby("method")["value"].mean().dropna()
    if means.empty:
        return set()
    best = means.idxmax() if higher_is_better else means.idxmin()
    others = [m for m in means.index if m != best]
    ps = []
    for method in others:
        a, b = matched(part, best, method)
        result = paired_test(a, b) if len(a) >= 2 else None
        if result is None:
            ps.append(math.nan)
        elif not np.isfinite(result.p):  # every pair differs by the same amount: a tie only if that is 0
            ps.append(1.0 if result.diff == 0 else 0.0)
        else:
            ps.append(result.p)
    adjusted = holm(ps)
    return {best} | {m for m, p in zip(others, adjusted) if not p < alpha}


def common_datasets(frame: pd.DataFrame, by: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """Within each group of `by`, keep only the datasets every method of the group covers; returns
    the kept rows and one sentence per dataset left out, saying which methods lack it."""
    kept, notes = [], []
    for key, part in frame.groupby(by, sort=False):
        methods = set(part["method"])
        coverage = part.groupby("dataset")["method"].agg(set)
        full = [d for d, have in coverage.items() if have == methods]
        for dataset, have in coverage.items():
            if have != methods:
                label = " / ".join(map(str, key if isinstance(key, tuple) else (key,)))
                notes.append(f"{label}: {dataset} left out: {', '.join(sorted(methods - have))} did not run on it")
        kept.append(part[part["dataset"].isin(full)])
    return (pd.concat(kept, ignore_index=True) if kept else frame.iloc[0:0]), notes


def p_text(p) -> str:
    if p is None or not np.isfinite(p):
        return "–"
    return f"{p:.2e}" if p < 1e-3 else f"{p:.4f}"
