"""The frames every table reads: one final metric per replicate run, grouped by sweep and protocol,
in the paper's order; and which G-Loss variant the comparisons take (chosen on validation).

Every number is grouped by sweep and protocol: with several sweeps, a model's label carries its
sweep ("bert-base [table2]"), and a block names its protocol when protocols differ.
"""

from __future__ import annotations

import math

import pandas as pd

from analysis.load import Runs, dedupe
from gloss_core.report import SCORE
from sweeps.spec import DEFAULT_METRIC

PAPER_DATASETS = {"mr": "MR", "r8": "R8", "r52": "R52", "ohsumed": "Ohsumed", "20ng": "20NG"}
KEYS = ["sweep", "protocol", "dataset", "model", "method", "loss", "seed"]


def scores(runs: Runs, metric: str, protocol: str | None = None, phase: str = "replicate",
           extra: tuple[str, ...] = ()) -> pd.DataFrame:
    """Final `metric` of completed runs of a phase, one per unit of replication (`by_unit`): its
    `seed` column names the unit every table counts and pairs by. With several sweeps the model's
    label names its sweep, so no number mixes two sweeps."""
    frame = dedupe(runs.final(metric, phase=phase))
    if protocol is not None:
        frame = frame[frame["protocol"] == protocol]
    frame = by_unit(frame.reindex(columns=KEYS + ["value", "tags.cell_seed", *extra]), list(extra))
    frame = frame.reindex(columns=KEYS + ["value", *extra]).copy()
    if runs.runs.get("sweep", pd.Series(dtype=str)).nunique() > 1:
        frame["model"] = frame["model"].astype(str) + " [" + frame["sweep"].astype(str) + "]"
    frame["block"] = block_labels(frame)
    return in_paper_order(frame)


def by_unit(frame: pd.DataFrame, extra: list[str] | None = None) -> pd.DataFrame:
    """One row per unit of replication (docs/statistics.md). In a sweep with several grid seeds the
    unit is the grid seed: each is an independent repetition of search, selection and test, and its
    replicate runs (re-trainings of that repetition's choice) are averaged into one value, whose
    `seed` is the grid seed. In a sweep with one grid seed the unit is the replicate seed (one run).
    So the n of Table 2 is the n of the paired tests for the same cells."""
    if frame.empty or "tags.cell_seed" not in frame or frame["tags.cell_seed"].isna().all():
        return frame
    grids = frame.groupby("sweep")["tags.cell_seed"].transform("nunique")
    single, several = frame[grids <= 1], frame[grids > 1]
    if several.empty:
        return frame
    by = [k for k in KEYS if k != "seed"] + ["tags.cell_seed"]
    averaged = several.groupby(by, sort=False, dropna=False).agg(
        {"value": "mean", **{column: "first" for column in extra or []}}).reset_index()
    averaged["seed"] = averaged["tags.cell_seed"].astype(int)
    return pd.concat([single, averaged], ignore_index=True)


LOSS_ORDER = {"ce": 0, "scl": 1, "triplet": 2, "cosine": 3, "gloss": 4}


def in_paper_order(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows by dataset in the paper's order (others alphabetically after), then model, then method
    (CE, SCL, triplet, cosine, G-Loss variants), then seed: tables list things in this order."""
    known = list(PAPER_DATASETS)
    dataset_rank = frame["dataset"].map(lambda d: (known.index(d.lower()), "") if d.lower() in known else (len(known), d))
    loss_rank = frame["loss"].map(lambda loss: LOSS_ORDER.get(loss, len(LOSS_ORDER)))
    order = sorted(range(len(frame)), key=lambda i: (frame["protocol"].iloc[i], dataset_rank.iloc[i], frame["model"].iloc[i],
                                                     loss_rank.iloc[i], frame["method"].iloc[i], frame["seed"].iloc[i]))
    return frame.iloc[order].reset_index(drop=True)


def block_labels(frame: pd.DataFrame) -> pd.Series:
    """The unit of comparison: the dataset, with the model and protocol when those vary."""
    parts = [frame["dataset"].astype(str)]
    for key in ("model", "protocol"):
        if frame[key].nunique() > 1:
            parts.append(frame[key].astype(str))
    label = parts[0]
    for part in parts[1:]:
        label = label + " / " + part
    return label


def validation_scores(runs: Runs) -> pd.DataFrame:
    """Each replicate run's score (`gloss_core.report`: its sweep's validation selection metric at
    its best epoch, val_macro_f1 by default, val_macro_silhouette standalone): what a variant may be
    chosen on. Runs from before scores were logged give their last validation value instead."""
    frame = scores(runs, SCORE)
    if frame.empty:
        parts = [scores(runs, metric, proto) for proto, metric in DEFAULT_METRIC.items()]
        parts = [p for p in parts if not p.empty]
        frame = pd.concat(parts, ignore_index=True) if parts else frame
    return frame


def gloss_method(frame: pd.DataFrame, preferred: str | None = None, runs: Runs | None = None) -> str | None:
    """The G-Loss variant to compare: `preferred`, else the G-Loss method with the widest coverage,
    then the best mean validation selection metric of its replicate runs (never the test metric)."""
    if preferred:
        if preferred not in set(frame["method"]):
            raise ValueError(f"method {preferred!r} is not in these runs; methods: {sorted(set(frame['method']))}")
        return preferred
    candidates = frame[frame["loss"] == "gloss"]
    if candidates.empty:
        return None
    validation = validation_scores(runs) if runs is not None else candidates.iloc[0:0]
    validation = validation[validation["method"].isin(set(candidates["method"]))]
    if runs is not None:  # higher is better for the choice: a sweep that minimises its metric counts negated
        sign = validation["sweep"].map(lambda sweep: -1.0 if _mode(runs, sweep) == "min" else 1.0)
        validation = validation.assign(value=validation["value"].astype(float) * sign.astype(float))
    coverage = candidates.groupby("method")["block"].nunique()
    val_mean = validation.groupby("method")["value"].mean().reindex(coverage.index)
    summary = pd.DataFrame({"blocks": coverage, "val": val_mean.fillna(-math.inf)})
    return summary.sort_values(["blocks", "val"], ascending=False).index[0]


def _mode(runs: Runs, sweep: str) -> str:
    record = runs.sweeps.get(sweep)
    return record.spec.mode if record is not None and record.spec is not None else "max"


def chosen_note(target: str, preferred: str | None) -> str:
    return (f"G-Loss variant: {target} (given with --gloss)." if preferred else
            f"G-Loss variant: {target}, chosen among the G-Loss variants by the widest dataset coverage, then the best "
            "mean validation score of its replicate runs (the sweep's selection metric at each run's best epoch: "
            "val_macro_f1, val_macro_silhouette standalone), never by test; --gloss names another.")
