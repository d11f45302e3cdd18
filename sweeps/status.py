"""A sweep's progress, read from MLflow (works while it runs and after it ends).

"Best" in the search phase is the best trial score (`gloss_core.report`: the sweep's metric at each
trial's best epoch, under its recorded mode), the value the search ranked trials by; in the
replicate and sensitivity phases it is test macro-F1.
"""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from gloss_core.provenance import default_tracking_uri, redact
from gloss_core.report import SCORE, better
from sweeps.mlflow_runs import all_runs
from sweeps.record import read_record
from sweeps.spec import DEFAULT_METRIC

STATES = ("completed", "running", "stopped_early", "failed", "interrupted")


def sweep_status(name: str, tracking_uri: str | None = None) -> list[dict]:
    uri = tracking_uri or default_tracking_uri()
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        raise LookupError(f"no sweep named {name!r} in {redact(uri)}")
    if experiment.lifecycle_stage != "active":
        raise LookupError(f"sweep {name!r} in {redact(uri)} is deleted (experiment id {experiment.experiment_id}): "
                          f"`mlflow experiments restore --experiment-id {experiment.experiment_id}` brings it back")
    spec = read_record(client, experiment.experiment_id, name).spec
    runs = all_runs(client, experiment.experiment_id, "tags.kind = 'trial'")
    rows: dict[tuple[str, str], dict] = {}
    for run in runs:
        tags = run.data.tags
        key = (tags.get("phase", "?"), tags.get("cell", "?"))
        row = rows.setdefault(key, {"phase": key[0], "cell": key[1], "best": None, "metric": None,
                                    **{state: 0 for state in STATES}})
        state = tags.get("ended", "running")
        row[state if state in STATES else "running"] += 1
        if key[0] in ("replicate", "sensitivity"):
            metric, mode, value = "test_macro_f1", "max", run.data.metrics.get("test_macro_f1")
        else:  # the score is of the spec's metric (a sweep from before specs were recorded: the default)
            metric = spec.metric if spec is not None else DEFAULT_METRIC.get(tags.get("protocol", ""), "val_macro_f1")
            mode = spec.mode if spec is not None else "max"
            value = run.data.metrics.get(SCORE, run.data.metrics.get(metric))  # runs from before scores: the last value
        if value is not None and better(value, row["best"], mode):
            row["best"], row["metric"] = value, metric
    return [rows[k] for k in sorted(rows)]
