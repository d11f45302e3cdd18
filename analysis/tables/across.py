"""Across datasets, on the datasets every compared method covers: average ranks with Friedman's
test and Nemenyi's critical difference, and the mean over datasets with a stratified bootstrap CI
(given only with >= 5 seeds per dataset).
"""

from __future__ import annotations

import math

import pandas as pd

from analysis.load import Runs
from analysis.stats import ALPHA, friedman_nemenyi, stratified_bootstrap_ci
from analysis.table import Table, fmt
from analysis.tables.compare import common_datasets, n_text, p_text
from analysis.tables.frames import scores

MIN_BOOTSTRAP_SEEDS = 5  # percentile bootstraps of fewer seeds only restate the observed values


def rank_groups(runs: Runs, metric: str = "test_accuracy") -> tuple[list[tuple[str, pd.DataFrame]], list[str]]:
    """Per (protocol, model): datasets x methods of the mean over seeds (Demsar's unit), on the
    datasets every method of the group covers; and a sentence for each dataset left out."""
    frame, notes = common_datasets(scores(runs, metric), ["protocol", "model"])
    out = []
    for (protocol, model), part in frame.groupby(["protocol", "model"], sort=False):
        wide = part.groupby(["dataset", "method"])["value"].mean().unstack("method")
        if wide.shape[1] >= 2 and len(wide):
            out.append((f"{protocol} / {model}", wide))
    return out, notes


def ranks_table(runs: Runs, metric: str = "test_accuracy", alpha: float = ALPHA) -> tuple[Table | None, dict]:
    cells, numbers, tests = [], [], {}
    groups, left_out = rank_groups(runs, metric)
    for label, wide in groups:
        result = friedman_nemenyi(wide, True, alpha)
        tests[label] = result
        for method, rank in result.ranks.items():
            cells.append({"Group": label, "Method": method, "avg rank": fmt(rank, 2), "N datasets": str(result.n_blocks),
                          "Friedman p": p_text(result.friedman_p), f"CD (α={alpha})": fmt(result.cd, 2)})
            numbers.append({"group": label, "method": method, "avg_rank": round(rank, 2), "n_datasets": result.n_blocks,
                            "friedman_chi2": result.friedman_chi2, "friedman_p": result.friedman_p,
                            "iman_davenport_p": result.iman_davenport_p, "cd": round(result.cd, 2)})
    if not cells:
        return None, tests
    notes = [f"{metric}: per-dataset means over seeds ranked within each dataset (1 = best), Friedman's test, "
             "Nemenyi's critical difference (two methods differ when their average ranks differ by more than CD). "
             "Only datasets that every method of the group covers are ranked."]
    notes += left_out
    for label, result in tests.items():
        notes += [f"{label}: {note}" for note in result.notes]
    return Table("ranks", "Average ranks across datasets (Friedman + Nemenyi)", pd.DataFrame(cells),
                 pd.DataFrame(numbers), {}, notes), tests


def aggregate_table(runs: Runs, metric: str = "test_accuracy", reps: int = 10000) -> Table | None:
    frame, left_out = common_datasets(scores(runs, metric), ["protocol", "model"])
    cells, numbers = [], []
    few = False
    for (protocol, model, method), part in frame.groupby(["protocol", "model", "method"], sort=False):
        per_dataset = {d: g["value"].to_numpy() for d, g in part.groupby("dataset")}
        point, low, high = stratified_bootstrap_ci(per_dataset, reps=reps)
        fewest = min(len(v) for v in per_dataset.values())
        if fewest < MIN_BOOTSTRAP_SEEDS:
            low = high = math.nan
            few = True
        n = n_text([len(v) for v in per_dataset.values()])
        cells.append({"Protocol / model": f"{protocol} / {model}", "Method": method, "datasets": str(len(per_dataset)),
                      "seeds": n, "mean (%)": fmt(100 * point, 2),
                      "95% bootstrap CI": f"[{fmt(100 * low, 2)}, {fmt(100 * high, 2)}]" if low == low else "–"})
        numbers.append({"group": f"{protocol} / {model}", "method": method, "datasets": len(per_dataset),
                        "mean": round(100 * point, 2), "ci_low": round(100 * low, 2) if low == low else math.nan,
                        "ci_high": round(100 * high, 2) if high == high else math.nan})
    if not cells:
        return None
    notes = [f"{metric}: mean over the datasets every method of the group covers of the per-dataset mean over seeds; "
             f"percentile bootstrap CI with seeds resampled within each dataset ({reps} resamples, seed 0). With 5-10 "
             "seeds a percentile bootstrap is still too narrow: read it as a bootstrap CI (n = seeds), not as a guarantee."]
    if few:
        notes.append(f"–: fewer than {MIN_BOOTSTRAP_SEEDS} seeds on some dataset; a percentile bootstrap of so few "
                     "values only restates them, so no interval is given.")
    notes += left_out
    return Table("aggregate", "Mean over datasets with bootstrap CIs", pd.DataFrame(cells), pd.DataFrame(numbers),
                 {}, notes)
