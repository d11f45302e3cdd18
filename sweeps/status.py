"""A sweep's progress, read from MLflow (works while it runs and after it ends)."""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from sweeps.resilience import redact
from sweeps.tracking import default_tracking_uri

STATES = ("completed", "running", "stopped_early", "failed", "interrupted")


def sweep_status(name: str, tracking_uri: str | None = None) -> list[dict]:
    client = MlflowClient(tracking_uri or default_tracking_uri())
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        raise LookupError(f"no sweep named {name!r} in {redact(tracking_uri or default_tracking_uri())}")
    runs = client.search_runs([experiment.experiment_id], "tags.kind = 'trial'", max_results=50000)
    rows: dict[tuple[str, str], dict] = {}
    for run in runs:
        tags = run.data.tags
        key = (tags.get("phase", "?"), tags.get("cell", "?"))
        row = rows.setdefault(key, {"phase": key[0], "cell": key[1], "best": None, "metric": None,
                                    **{state: 0 for state in STATES}})
        state = tags.get("ended", "running")
        row[state if state in STATES else "running"] += 1
        metric = "test_macro_f1" if key[0] == "replicate" else next(
            (m for m in ("val_macro_f1", "val_macro_silhouette") if m in run.data.metrics), None)
        if metric and metric in run.data.metrics:
            value = run.data.metrics[metric]
            if row["best"] is None or value > row["best"]:
                row["best"], row["metric"] = value, metric
    return [rows[k] for k in sorted(rows)]
