"""Convergence speed: epochs until the validation metric first reaches a fraction (95%) of the run's
best, and the epoch of the best, mean ± std over seeds."""

from __future__ import annotations

import math

import pandas as pd

from analysis.table import Table, fmt, pm


def convergence_table(history: pd.DataFrame, metric: str = "val_macro_f1", fraction: float = 0.95) -> Table | None:
    """`history`: per-epoch rows (block, method, run_id, seed, epoch, value) of one metric."""
    if history.empty:
        return None
    reached = []
    for (block, method, run_id), part in history.groupby(["block", "method", "run_id"], sort=False):
        part = part.sort_values("epoch")
        best = part["value"].max()
        first = part.loc[part["value"] >= fraction * best, "epoch"].min()
        reached.append({"block": block, "method": method, "epochs": float(first), "best_epoch":
                        float(part.loc[part["value"].idxmax(), "epoch"])})
    frame = pd.DataFrame(reached)
    cells, numbers = [], []
    for (block, method), part in frame.groupby(["block", "method"], sort=False):
        n = len(part)
        std = part["epochs"].std(ddof=1) if n > 1 else math.nan
        cells.append({"Dataset": block, "Loss": method, f"epochs to {fraction:.0%} of best": pm(part["epochs"].mean(), std, 1),
                      "epoch of best": fmt(part["best_epoch"].mean(), 1), "n": str(n)})
        numbers.append({"dataset": block, "method": method, "epochs_mean": round(part["epochs"].mean(), 1),
                        "epochs_std": round(std, 1) if n > 1 else math.nan,
                        "best_epoch_mean": round(part["best_epoch"].mean(), 1), "n": n})
    notes = [f"{metric} per epoch of the replicate runs: the first epoch at which it reaches {fraction:.0%} of the "
             "run's best value, and the epoch of the best; mean ± std over seeds."]
    return Table("convergence", "Convergence speed", pd.DataFrame(cells), pd.DataFrame(numbers), {}, notes)
