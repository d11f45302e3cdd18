"""Tables 2 and 3: each protocol's test metrics, mean ± std per model x method x dataset.

- table2: integrated protocol; accuracy / macro-F1; bold: the best and every method not
  significantly worse than it; ↑ / ↓ significantly better / worse than a baseline; n; average
  rank over the datasets every method covers.
- table3: standalone protocol; accuracy, macro-F1, silhouette, total time, time per epoch, epochs.

Std is the sample std (ddof = 1); n is the number of seeds.
"""

from __future__ import annotations

import math

import pandas as pd

from analysis.load import Runs
from analysis.stats import ALPHA, holm, paired_test
from analysis.table import Table, fmt, pm
from analysis.tables.compare import common_datasets, matched, mean_std_n, n_text, not_worse_than_best
from analysis.tables.frames import scores


# ---- Table 2 -------------------------------------------------------------------------------------
def table2(runs: Runs, baseline: str | None = "ce", alpha: float = ALPHA, decimals: int = 2) -> Table | None:
    metrics = {"acc": scores(runs, "test_accuracy", "integrated"), "F1": scores(runs, "test_macro_f1", "integrated")}
    if metrics["acc"].empty:
        return None
    datasets = list(dict.fromkeys(metrics["acc"]["dataset"]))
    rows = metrics["acc"][["model", "method"]].drop_duplicates().to_numpy().tolist()
    cells, numbers, marks = [], [], {}
    means = {}
    sig = {}  # (model, method, dataset, short) -> (Holm p, diff) against the baseline
    bold = {}  # (model, dataset, short) -> methods in bold
    use_baseline = baseline if baseline in set(metrics["acc"]["method"]) else None
    for short, frame in metrics.items():
        summary = mean_std_n(frame, ["model", "method", "dataset"])
        for r in summary.itertuples():
            means[(r.model, r.method, r.dataset, short)] = (round(100 * r.mean, decimals), 100 * r.std, r.n)
        for (model, dataset), part in frame.groupby(["model", "dataset"], sort=False):
            bold[(model, dataset, short)] = not_worse_than_best(part, True, alpha)
        if use_baseline:
            for (model, method), _ in frame.groupby(["model", "method"]):
                if method == use_baseline:
                    continue
                tests = []
                for dataset in datasets:
                    part = frame[(frame["model"] == model) & (frame["dataset"] == dataset)]
                    a, b = matched(part, method, use_baseline)
                    tests.append(paired_test(a, b) if len(a) >= 2 else None)
                adjusted = holm([t.p if t is not None else math.nan for t in tests])
                for dataset, test, p in zip(datasets, tests, adjusted):
                    sig[(model, method, dataset, short)] = (p, test.diff if test is not None else math.nan)
    for model, method in rows:
        row = {"Model": model, "Loss": method}
        counts = []
        for dataset in datasets:
            for short in ("acc", "F1"):
                mean, std, n = means.get((model, method, dataset, short), (math.nan, math.nan, 0))
                p, diff = sig.get((model, method, dataset, short), (None, math.nan))
                arrow = ("↑" if diff > 0 else "↓") if p is not None and p < alpha else ""
                row[f"{dataset} {short}"] = (pm(mean, std, decimals) + arrow) if n else "–"
                numbers.append({"model": model, "method": method, "dataset": dataset, "metric": short,
                                "mean": mean, "std": round(std, decimals) if n > 1 else math.nan, "n": n,
                                "p_holm_vs_baseline": p, "direction_vs_baseline": arrow or None,
                                "bold": method in bold.get((model, dataset, short), set())})
                if n:
                    counts.append(n)
        row["n"] = n_text(counts) if counts else "0"
        cells.append(row)
    frame = pd.DataFrame(cells)
    for i, (model, method) in enumerate(rows):
        for dataset in datasets:
            for short in ("acc", "F1"):
                if method in bold.get((model, dataset, short), set()):
                    marks[(i, f"{dataset} {short}")] = "best"
    common, left_out = common_datasets(metrics["acc"], ["model"])
    acc_means = common.groupby(["model", "dataset", "method"])["value"].mean()
    ranks = {}
    for model in frame["Model"].unique():
        if model in acc_means.index.get_level_values("model"):
            per_dataset = acc_means.loc[model].unstack("method")
            ranks.update({(model, m): v for m, v in per_dataset.rank(axis=1, ascending=False).mean().items()})
    frame["avg rank (acc)"] = [fmt(ranks.get((m, l), math.nan), 2) for m, l in zip(frame["Model"], frame["Loss"])]
    notes = ["Test accuracy and macro-F1 (%), mean ± std (ddof=1) over n seeds of each cell's best configuration.",
             f"Bold: the best mean and every method not significantly worse than it within its model (paired t-test "
             f"over matched seeds, Holm across the methods compared, α={alpha}); a method with < 2 matched seeds "
             "cannot be told apart and stays bold.",
             "avg rank: mean over the datasets every method of the model covers of its accuracy rank (1 = best)."]
    notes += [f"avg rank: {note}" for note in left_out]
    if use_baseline:
        notes.append(f"↑ / ↓: significantly better / worse than {use_baseline} (paired t-test over matched seeds, "
                     f"Holm across datasets, α={alpha}).")
    return Table("table2", "Table 2: integrated protocol, test accuracy / macro-F1", frame,
                 pd.DataFrame(numbers), marks, notes)


# ---- Table 3 -------------------------------------------------------------------------------------
TABLE3 = [  # column, metric, scale, decimals, higher is better, mean ± std?
    ("Accuracy (%)", "test_accuracy", 100, 2, True, True),
    ("Macro-F1 (%)", "test_macro_f1", 100, 2, True, True),
    ("Silhouette", "test_macro_silhouette", 1, 4, True, True),
    ("Total time (s)", "total_time_s", 1, 2, False, False),
    ("Time/epoch (s)", "time_per_epoch_s", 1, 2, False, False),
    ("Epochs", "best_epoch", 1, 1, False, False),
]


def table3(runs: Runs) -> Table | None:
    frames = {metric: scores(runs, metric, "standalone") for _, metric, *_ in TABLE3}
    base = frames["test_accuracy"]
    if base.empty:
        return None
    order = base[["block", "method"]].drop_duplicates().to_numpy().tolist()
    cells, numbers, means = [], [], {}
    for column, metric, scale, decimals, _, spread in TABLE3:
        for r in mean_std_n(frames[metric], ["block", "method"]).itertuples():
            means[(r.block, r.method, column)] = (round(scale * r.mean, decimals), scale * r.std, r.n)
    for block, method in order:
        row, record = {"Dataset": block, "Loss": method}, {"dataset": block, "method": method}
        for column, metric, scale, decimals, _, spread in TABLE3:
            mean, std, n = means.get((block, method, column), (math.nan, math.nan, 0))
            row[column] = (pm(mean, std, decimals) if spread else fmt(mean, decimals)) if n else "–"
            record[metric + "_mean"] = mean
            if spread:
                record[metric + "_std"] = round(std, decimals) if n > 1 else math.nan
        record["n"] = means.get((block, method, "Accuracy (%)"), (0, 0, 0))[2]
        row["n"] = str(record["n"])
        cells.append(row)
        numbers.append(record)
    frame, marks = pd.DataFrame(cells), {}
    for column, metric, scale, decimals, higher, spread in TABLE3:
        if metric in ("total_time_s", "time_per_epoch_s"):
            continue  # wall-clock seconds depend on the machine's load: shown, never ranked here
        for block, part in frames[metric].groupby("block", sort=False):
            if spread:
                chosen = not_worse_than_best(part, higher)
            else:
                block_means = part.groupby("method")["value"].mean()
                chosen = {block_means.idxmax() if higher else block_means.idxmin()} if len(block_means) > 1 else set()
            for i, (b, method) in enumerate(order):
                if b == block and method in chosen:
                    marks[(i, column)] = "best"
    notes = ["Standalone protocol: each loss alone, then a linear probe on frozen embeddings. Mean ± std (ddof=1) "
             "over n seeds; times and epochs are means. Epochs: the early-stopping epoch (best validation "
             "silhouette).",
             f"Bold: the best mean and every method not significantly worse than it per dataset (paired t-test over "
             f"matched seeds, Holm, α={ALPHA}); Epochs: the fewest. Times are wall-clock seconds and depend on what "
             "else ran on the machine: they are not ranked."]
    return Table("table3", "Table 3: standalone protocol", frame, pd.DataFrame(numbers), marks, notes)
