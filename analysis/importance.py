"""Hyperparameter importance from a sweep's search phase (fANOVA through Optuna).

Each cell's Optuna study is rebuilt from its MLflow search runs. Only trials that ran the full
budget count ("completed", not stopped by ASHA): a truncated trial's metric is not comparable.
A trial's value is its score (`gloss_core.report`: the sweep's metric at the trial's best epoch), the
value Optuna itself was told.
TPE samples the promising region more densely, so the importances describe the explored region,
not the whole space. This is the global counterpart of the one-at-a-time tornado.
"""

from __future__ import annotations

import math

import optuna

optuna.logging.set_verbosity(optuna.logging.WARNING)
import pandas as pd

from analysis.load import Runs
from gloss_core.report import SCORE


def inside(dist, value) -> bool:
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return value in dist.choices
    return isinstance(value, (int, float)) and dist.low <= value <= dist.high


def param_importances(runs: Runs, min_trials: int = 4, seed: int = 0) -> pd.DataFrame:
    """Rows: sweep, cell, dataset, model, method, param, importance, trials (one row per param)."""
    rows = []
    frame = runs.runs
    if frame.empty:
        return pd.DataFrame(columns=["sweep", "cell", "dataset", "model", "method", "param", "importance", "trials"])
    search = frame[(frame["phase"] == "search") & (frame["ended"] == "completed")]
    for name, sweep in runs.sweeps.items():
        if sweep.spec is None:
            continue
        direction = "maximize" if sweep.spec.mode == "max" else "minimize"
        for method, variant in sweep.spec.losses.items():
            space = {k: dist.to_optuna() for k, dist in variant.space.items()}
            if len(space) < 2:
                continue
            mine = search[(search["sweep"] == name) & (search["method"] == method)]
            for cell, part in mine.groupby("cell"):
                trials = []
                for _, run in part.iterrows():
                    value = run.get(f"metrics.{SCORE}")
                    if value is None or value != value:  # a run from before scores: its last value
                        value = run.get(f"metrics.{sweep.spec.metric}")
                    params = {k: run.get(f"params.{k}") for k in space}
                    if value is None or not math.isfinite(value) or any(v is None for v in params.values()):
                        continue
                    if not all(inside(space[k], v) for k, v in params.items()):
                        continue  # a run from an earlier version of the space
                    trials.append(optuna.trial.create_trial(params=params, distributions=space, value=float(value)))
                if len(trials) < min_trials or len({t.value for t in trials}) < 2:
                    continue  # too few trials, or every trial scored the same: importance is undefined
                study = optuna.create_study(direction=direction)
                study.add_trials(trials)
                try:
                    scores = optuna.importance.get_param_importances(
                        study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed))
                except RuntimeError:  # fANOVA finds no variance to split (e.g. one param constant)
                    continue
                first = part.iloc[0]
                for param, importance in scores.items():
                    rows.append({"sweep": name, "cell": cell, "dataset": first["dataset"], "model": first["model"],
                                 "method": method, "param": param, "importance": float(importance),
                                 "trials": len(trials)})
    return pd.DataFrame(rows, columns=["sweep", "cell", "dataset", "model", "method", "param", "importance", "trials"])
