"""MLflow runs of one or more sweeps -> tidy pandas DataFrames, with checks for missing seeds and
duplicate runs.

Usage:
    from analysis.load import load_runs
    runs = load_runs(["table2"], "sqlite:///mlflow.db")
    runs.tidy                     # one row per (run, metric, epoch); epoch NaN = the run's final value
    runs.final("test_accuracy")   # one row per run: identifiers, params.*, value
    runs.problems                 # missing seeds, duplicates, failed runs, said in words
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from gloss_core.provenance import redact
from gloss_core.report import EPOCHS_RUN
from sweeps.record import SweepRecord, read_record

ID_COLUMNS = ["sweep", "protocol", "phase", "method", "loss", "dataset", "model", "seed", "cell", "trial_id",
              "ended", "status", "run_id"]
DUPLICATE_KEY = ["sweep", "protocol", "phase", "cell", "seed"]  # two completed runs that agree here are duplicates
HISTORY_PREFIXES = ("val_", "train_", "time_", "epoch_time")  # per-epoch metrics (step = epoch)


@dataclass
class Runs:
    runs: pd.DataFrame  # one row per trial run: ID_COLUMNS, params.*, tags.*, metrics.* (final values)
    tidy: pd.DataFrame  # ID_COLUMNS + metric, value, epoch
    sweeps: dict[str, SweepRecord]
    problems: list[str]
    tracking_uri: str = ""
    artifact_uris: dict[str, str] = field(default_factory=dict)  # run id -> its artifact root (as MLflow gave it)

    def final(self, metric: str, phase: str | None = "replicate", completed_only: bool = True) -> pd.DataFrame:
        """One row per run with the run's final value of `metric` as `value` (runs without it dropped)."""
        column = f"metrics.{metric}"
        frame = self.runs
        if phase is not None:
            frame = frame[frame["phase"] == phase]
        if completed_only:
            frame = frame[frame["ended"] == "completed"]
        if column not in frame:
            return frame.iloc[0:0].assign(value=pd.Series(dtype=float))
        frame = frame[frame[column].notna()]
        return frame.assign(value=frame[column].astype(float))

    def history(self, metric: str, phase: str | None = "replicate") -> pd.DataFrame:
        """Per-epoch values of `metric`: ID_COLUMNS + epoch, value."""
        frame = self.tidy[(self.tidy["metric"] == metric) & self.tidy["epoch"].notna()]
        if phase is not None:
            frame = frame[frame["phase"] == phase]
        return frame


def _paged(client: MlflowClient, experiment_ids: list[str], query: str):
    token = None
    while True:
        page = client.search_runs(experiment_ids, query, run_view_type=ViewType.ACTIVE_ONLY, max_results=1000,
                                  page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def _number(text: str | None):
    """Params are strings in MLflow; give numbers back as numbers (ints stay ints)."""
    if text is None:
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"True": True, "False": False, "None": None}.get(text, text)


BULK_RUNS = 500  # run ids per bulk history query (SQLite allows 999 bound variables in older builds)


def _histories(client: MlflowClient, wanted: dict[str, list[str]]) -> dict[tuple[str, str], list]:
    """(run id, metric key) -> its logged points, in the order `get_metric_history` gives them
    (timestamp, step, value), for each run id -> the keys wanted of it.

    A SQL store (SQLite, PostgreSQL: MLflow's `SqlAlchemyStore`) is read with one query per metric
    key and `BULK_RUNS` runs (`get_metric_history_bulk`): a paper-scale sweep's 180 replicate runs
    with about 10 per-epoch metrics each were 1,800 `get_metric_history` calls, each a session, a
    run check and a query (issue 20). Other stores (an `mlflow server`'s REST API has no bulk
    read) are read run by run, key by key."""
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    bulk = getattr(store, "get_metric_history_bulk", None)
    if bulk is None:
        return {(run_id, key): client.get_metric_history(run_id, key) for run_id, keys in wanted.items() for key in keys}
    by_key: dict[str, list[str]] = {}
    for run_id, keys in wanted.items():
        for key in keys:
            by_key.setdefault(key, []).append(run_id)
    out: dict[tuple[str, str], list] = {(run_id, key): [] for run_id, keys in wanted.items() for key in keys}
    for key, run_ids in by_key.items():
        for start in range(0, len(run_ids), BULK_RUNS):
            for point in bulk(run_ids[start:start + BULK_RUNS], key, max_results=None):  # None: no limit
                out[(point.run_id, key)].append(point)  # a Metric, with its run_id
    return out


def load_runs(experiments: list[str] | str, tracking_uri: str, history: tuple[str, ...] | None = ("replicate",)) -> Runs:
    """Read every trial run of the named sweeps (MLflow experiments).

    Args:
        experiments: sweep names.
        tracking_uri: the MLflow store.
        history: phases whose per-epoch metric histories are read (learning curves, timing);
            None reads none. The final values of every run are always read.

    Raises:
        LookupError: an experiment does not exist (the message lists those that do).
    """
    names = [experiments] if isinstance(experiments, str) else list(experiments)
    client = MlflowClient(tracking_uri)
    rows, tidy, sweeps, artifact_uris = [], [], {}, {}
    for name in names:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            known = sorted(e.name for e in client.search_experiments())
            raise LookupError(f"no experiment {name!r} at {redact(tracking_uri)}; experiments there: {known}")
        sweeps[name] = read_record(client, exp.experiment_id, name)
        found = list(_paged(client, [exp.experiment_id], "tags.kind = 'trial'"))
        wanted = {run.info.run_id: [key for key in run.data.metrics if key.startswith(HISTORY_PREFIXES)]
                  for run in found if history is not None and run.data.tags.get("phase") in history}
        histories = _histories(client, wanted)
        for run in found:
            tags, params = run.data.tags, run.data.params
            seed = _number(tags.get("seed") or params.get("seed"))
            protocol = tags.get("protocol") or params.get("protocol", "integrated")  # runs from before the tag
            ids = {"sweep": tags.get("sweep", name), "protocol": protocol, "phase": tags.get("phase"), "method": tags.get("loss"),
                   "loss": params.get("loss"), "dataset": tags.get("dataset"), "model": tags.get("model"),
                   "seed": seed, "cell": tags.get("cell"), "trial_id": tags.get("trial_id"),
                   "ended": tags.get("ended"), "status": run.info.status, "run_id": run.info.run_id}
            row = dict(ids)
            row.update({f"params.{k}": _number(v) for k, v in params.items()})
            row.update({f"tags.{k}": v for k, v in tags.items() if not k.startswith("mlflow.")})
            row.update({f"metrics.{k}": v for k, v in run.data.metrics.items()})
            rows.append(row)
            artifact_uris[run.info.run_id] = run.info.artifact_uri
            for key, value in run.data.metrics.items():
                tidy.append({**ids, "metric": key, "value": value, "epoch": math.nan})
            if run.info.run_id in wanted:
                last = run.data.metrics.get(EPOCHS_RUN)
                for key in wanted[run.info.run_id]:
                    for point in histories[(run.info.run_id, key)]:
                        if last is None or point.step <= last:
                            tidy.append({**ids, "metric": key, "value": point.value, "epoch": point.step})
    runs = pd.DataFrame(rows, columns=None if rows else ID_COLUMNS)
    tidy_frame = pd.DataFrame(tidy, columns=ID_COLUMNS + ["metric", "value", "epoch"])
    problems = check_runs(runs) + [record.problem for record in sweeps.values() if record.problem]
    return Runs(runs, tidy_frame, sweeps, problems, tracking_uri, artifact_uris)


def check_runs(runs: pd.DataFrame) -> list[str]:
    """Problems a reader must know before trusting a table: seeds that some methods lack within a
    (sweep, protocol, dataset, model) group, duplicate runs (same DUPLICATE_KEY), runs that trained
    the same config with the same seeds, failed runs."""
    problems = []
    if runs.empty:
        return ["no trial runs found"]
    reps = runs[runs["phase"] == "replicate"]
    done = reps[reps["ended"] == "completed"]
    for (sweep, protocol, dataset, model), group in done.groupby(["sweep", "protocol", "dataset", "model"]):
        expected = set(group["seed"])
        for method, rows in group.groupby("method"):
            missing = sorted(expected - set(rows["seed"]))
            if missing:
                problems.append(f"missing seeds: {sweep}/{protocol}/{dataset}/{model}/{method} lacks seed(s) "
                                f"{missing} that other methods have; paired tests use matched seeds only")
    finished = runs[runs["phase"].isin(["replicate", "sensitivity"]) & (runs["ended"] == "completed")]
    dupes = finished[finished.duplicated(DUPLICATE_KEY, keep=False)]
    for key, rows in dupes.groupby(DUPLICATE_KEY):
        problems.append(f"duplicate runs: {'/'.join(map(str, key))} has {len(rows)} completed runs "
                        f"({', '.join(rows['run_id'])}); the first is used")
    problems += same_config_and_seeds(runs[runs["ended"] == "completed"])
    failed = runs[runs["ended"].isin(["failed", "interrupted"])]
    for (sweep, phase, ended), rows in failed.groupby(["sweep", "phase", "ended"]):
        problems.append(f"{ended} runs: {len(rows)} in {sweep}/{phase} (excluded from the tables)")
    return problems


def same_config_and_seeds(runs: pd.DataFrame) -> list[str]:
    """Completed runs of one sweep that trained the same config with the same seeds (every param
    equal, the seed included): the same training run twice, whatever their cells and phases."""
    params = sorted(c for c in runs.columns if c.startswith("params."))
    if runs.empty or not params:
        return []
    keys = runs[["dataset", "model", "protocol", *params]].map(str).agg("|".join, axis=1)
    out = []
    for (sweep, _), rows in runs.assign(_config=keys).groupby(["sweep", "_config"]):
        if len(rows) > 1:
            where = ", ".join(f"{r.run_id} ({r.phase} {r.cell}, seed {r.seed})" for r in rows.itertuples())
            out.append(f"same config and seeds: {sweep} ran one training run {len(rows)} times: {where}")
    return out


def dedupe(frame: pd.DataFrame) -> pd.DataFrame:
    """Keep the first completed run per DUPLICATE_KEY, as check_runs says."""
    return frame.drop_duplicates(DUPLICATE_KEY, keep="first")
