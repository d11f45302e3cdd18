"""A sweep's MLflow layout, above its trials: one experiment per sweep, one parent run per cell and
phase; and the sweep-wide run bookkeeping the runner does between phases (orphans of a SIGKILL,
runs left RUNNING, a discarded sweep's runs).

Trial runs are children of their cell's parent run; `sweeps/trial_runs.py` creates and closes them.
"""

from __future__ import annotations

from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from gloss_core.provenance import sqlite_database
from sweeps.spec import MAX_TRIALS, Cell

MAX_RUNS = MAX_TRIALS  # per search: a phase's trials (the spec refuses more)


def artifact_location(tracking_uri: str, name: str) -> str | None:
    """A SQLite store keeps its experiments' artifacts beside its database file (`mlartifacts/NAME`),
    not in whatever folder the command ran from; other stores choose their own."""
    database = sqlite_database(tracking_uri)
    return None if database is None else str(database.resolve().parent / "mlartifacts" / name)


def experiment_id(client: MlflowClient, name: str, tracking_uri: str = "") -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location(tracking_uri, name))
    except Exception:  # noqa: BLE001 - created concurrently by someone else
        return client.get_experiment_by_name(name).experiment_id


def parent_run(client: MlflowClient, exp_id: str, cell: Cell, phase: str) -> str:
    """Get or create the parent run of one cell and phase (idempotent across resumes)."""
    query = (f"tags.sweep = '{cell.sweep}' and tags.cell = '{cell.name}' and tags.phase = '{phase}' "
             "and tags.kind = 'cell'")
    found = client.search_runs([exp_id], query, max_results=1)
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return run_id
    tags = {**cell.tags(), "phase": phase, "kind": "cell"}
    return client.create_run(exp_id, run_name=f"{phase}:{cell.name}", tags=tags).info.run_id


def trial_run(client: MlflowClient, exp_id: str, phase: str, trial_id: str):
    """The run of one trial of a phase, or None."""
    found = client.search_runs([exp_id], f"tags.trial_id = '{trial_id}' and tags.phase = '{phase}' and "
                               "tags.kind = 'trial'", max_results=1)
    return found[0] if found else None


def all_runs(client: MlflowClient, exp_id: str, query: str) -> list:
    """Every run matching `query`, page by page (a sweep's runs over all phases pass one page)."""
    runs, token = [], None
    while True:
        page = client.search_runs([exp_id], query, max_results=MAX_RUNS, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def reconcile_trial_runs(client: MlflowClient, exp_id: str, sweep: str, phase: str, trial_ids: set[str],
                         parents: set[str]) -> int:
    """Delete the runs of this phase's trials (children of `parents`, this sweep's parent runs)
    that the restored experiment does not know: trials started after the last state snapshot,
    before a SIGKILL, which Tune ran again, so each is superseded by its retried trial's run.
    Returns how many were deleted; no other run is touched."""
    runs = all_runs(client, exp_id, f"tags.sweep = '{sweep}' and tags.phase = '{phase}' and tags.kind = 'trial'")
    orphans = [r for r in runs if r.data.tags.get("trial_id") not in trial_ids
               and r.data.tags.get(MLFLOW_PARENT_RUN_ID) in parents]
    for run in orphans:
        client.delete_run(run.info.run_id)
    return len(orphans)


def close_running_runs(client: MlflowClient, exp_id: str, sweep: str) -> int:
    """Mark every run of this sweep still RUNNING as KILLED (interrupted); returns how many."""
    runs = all_runs(client, exp_id, f"tags.sweep = '{sweep}' and attributes.status = 'RUNNING'")
    for run in runs:
        client.set_tag(run.info.run_id, "ended", "interrupted")
        client.set_terminated(run.info.run_id, "KILLED")
    return len(runs)


def delete_sweep_runs(client: MlflowClient, exp_id: str, sweep: str) -> int:
    """Delete every run of the sweep (--restart); returns how many."""
    runs = all_runs(client, exp_id, f"tags.sweep = '{sweep}'")
    for run in runs:
        client.delete_run(run.info.run_id)
    return len(runs)
