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

PAPER_DATASETS = {"mr": "MR", "r8": "R8", "r52": "R52", "ohsumed": "Ohsumed", "20ng": "20NG"}
KEYS = ["sweep", "protocol", "dataset", "model", "method", "loss", "seed"]


def scores(runs: Runs, metric: str, protocol: str | None = None, phase: str = "replicate",
           extra: tuple[str, ...] = ()) -> pd.DataFrame:
    """Final `metric` of completed runs of a phase, one per (sweep, protocol, cell, seed). With
    several sweeps the model's label names its sweep, so no number mixes two sweeps."""
    frame = dedupe(runs.final(metric, phase=phase))
    if protocol is not None:
        frame = frame[frame["protocol"] == protocol]
    frame = frame.reindex(columns=KEYS + ["value", *extra]).copy()
    if runs.runs.get("sweep", pd.Series(dtype=str)).nunique() > 1:
        frame["model"] = frame["model"].astype(str) + " [" + frame["sweep"].astype(str) + "]"
    frame["block"] = block_labels(frame)
    return in_paper_order(frame)


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
    chosen on."""
    return scores(runs, SCORE)


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
    coverage = candidates.groupby("method")["block"].nunique()
    val_mean = validation.groupby("method")["value"].mean().reindex(coverage.index)
    summary = pd.DataFrame({"blocks": coverage, "val": val_mean.fillna(-math.inf)})
    return summary.sort_values(["blocks", "val"], ascending=False).index[0]


def chosen_note(target: str, preferred: str | None) -> str:
    return (f"G-Loss variant: {target} (given with --gloss)." if preferred else
            f"G-Loss variant: {target}, chosen among the G-Loss variants by the widest dataset coverage, then the best "
            "mean validation score of its replicate runs (the sweep's selection metric at each run's best epoch: "
            "val_macro_f1, val_macro_silhouette standalone), never by test; --gloss names another.")
