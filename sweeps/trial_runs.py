"""The MLflow run of each trial, from creation to its closing status, keyed by trial id.

A trial's run is a child of its cell's parent run. It carries the flat training config as params
and tags: the cell's (sweep, cell, dataset, model, loss, protocol), `seed` = the trial's training
seed, `cell_seed` = the grid's seed, `replicate_seed` (replicate and sensitivity trials), phase,
trial id, `ended` = running | completed | stopped_early | failed | interrupted, the failure reason
(`error`), where it ran (`node`, `concurrency`, `node_id`, `gpu_ids`, `device`), and
`unlogged_writes` when a write to it was dropped. A sensitivity run also carries base_cell, param,
direction, value, step and centre. At its end: `metrics.json` (the numbers of its last report as
logged, with its epochs trained, best epoch, score and why it stopped) and `validation_curve.csv`.
Every method here runs on the trial logger's writer thread.

The map survives `Tuner.restore` (`state`, `restore`), and a restored phase looks its runs up once,
so a resumed sweep never duplicates or orphans a run.
"""

from __future__ import annotations

import json
import os
import tempfile

from mlflow.entities import Param, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from sweeps.mlflow_runs import trial_run
from sweeps.spec import Cell


class NoRun(LookupError):
    """A write for a trial whose run was never created; the store refused it, so it is not retried."""

    error_code = "RESOURCE_DOES_NOT_EXIST"


class TrialRuns:
    """Trial id -> MLflow run id for one phase, and the writes that open, end and close runs.

    Args:
        tracking_uri: where MLflow lives.
        experiment: the sweep's experiment id.
        phase: the phase's name (a tag of every run).
        sweep: the sweep's name.
        parents: cell name -> parent run id.
    """

    def __init__(self, tracking_uri: str, experiment: str, phase: str, sweep: str, parents: dict[str, str]):
        self.tracking_uri, self.experiment, self.phase, self.sweep, self.parents = (
            tracking_uri, experiment, phase, sweep, parents)
        self.runs: dict[str, str] = {}  # trial id -> run id
        self.ended: set[str] = set()  # trials whose run is closed
        self.create_attempted: set[str] = set()  # trials whose run creation was sent (a retry looks first)
        self.look_up = False  # restored: the phase's existing runs are looked up before the first start
        self._client = None

    def __getstate__(self) -> dict:  # Tune pickles callbacks: the client stays behind
        return {**self.__dict__, "_client": None}

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def state(self) -> dict:
        return {"runs": dict(self.runs), "ended": set(self.ended)}

    def restore(self, state: dict) -> None:
        self.runs.update(state.get("runs", {}))
        self.ended.update(state.get("ended", set()))
        self.look_up = True

    def run_of(self, trial_id: str) -> str:
        """The trial's run id; a trial whose run could not be created has none (a refused write)."""
        try:
            return self.runs[trial_id]
        except KeyError:
            raise NoRun(f"trial {trial_id} has no MLflow run (its creation was refused)") from None

    def _existing(self) -> None:
        """After a restore, one query finds the runs of this phase's trials (some may have been
        created after the state Tune restored was saved)."""
        query = f"tags.phase = '{self.phase}' and tags.kind = 'trial' and tags.sweep = '{self.sweep}'"
        token = None
        while True:
            page = self.client.search_runs([self.experiment], query, max_results=1000, page_token=token)
            for run in page:
                self.runs.setdefault(run.data.tags.get("trial_id", ""), run.info.run_id)
            token = page.token
            if not token:
                return

    def start(self, trial_id: str, cell: Cell, values: dict, extra_tags: dict[str, str] | None = None) -> None:
        """Create the trial's run (or reopen it: a restored or retried trial), with its params."""
        if self.look_up:
            self._existing()
            self.look_up = False
        if trial_id in self.runs:
            run_id = self.runs[trial_id]
            self.client.update_run(run_id, status="RUNNING")
            self.client.set_tag(run_id, "ended", "running")
            return
        found = trial_run(self.client, self.experiment, self.phase, trial_id) if trial_id in self.create_attempted \
            else None  # a retry: the store may have made the run before it failed
        if found is not None:
            run_id = found.info.run_id
        else:
            tags = {**cell.tags(), **(extra_tags or {}), "seed": str(values["seed"]), "cell_seed": str(cell.seed),
                    "trial_id": trial_id,
                    "phase": self.phase, "kind": "trial", "ended": "running",
                    MLFLOW_PARENT_RUN_ID: self.parents[cell.name], MLFLOW_RUN_NAME: f"{cell.name}/{trial_id}"}
            self.create_attempted.add(trial_id)
            run_id = self.client.create_run(self.experiment, tags=tags).info.run_id
        params = [Param(k, str(v)[:6000]) for k, v in sorted(values.items())]  # the same values again: idempotent
        for start in range(0, len(params), 100):
            self.client.log_batch(run_id, params=params[start:start + 100])
        self.runs[trial_id] = run_id

    def tag(self, trial_id: str, tags: dict[str, str]) -> None:
        self.client.log_batch(self.run_of(trial_id), tags=[RunTag(k, v) for k, v in tags.items()])

    def end(self, trial_id: str, ended: str, error: str | None, last: dict[str, float], curve: list[dict],
            conditions: dict[str, str]) -> None:
        """How the trial ended (tags), its last report (`metrics.json`) and its validation curve."""
        self.tag(trial_id, {"ended": ended, **({"error": error} if error is not None else {}), **conditions})
        with tempfile.TemporaryDirectory() as folder:
            with open(os.path.join(folder, "metrics.json"), "w") as f:
                json.dump(last, f, indent=2)
            if curve:
                keys = sorted({k for row in curve for k in row})
                with open(os.path.join(folder, "validation_curve.csv"), "w") as f:
                    f.write(",".join(keys) + "\n")
                    for row in curve:
                        f.write(",".join(str(row.get(k, "")) for k in keys) + "\n")
            self.client.log_artifacts(self.run_of(trial_id), folder)

    def close(self, trial_id: str, failed: bool) -> None:
        self.client.set_terminated(self.run_of(trial_id), "FAILED" if failed else "FINISHED")
        self.ended.add(trial_id)

    def close_open(self, trial_ids) -> None:
        """Runs of trials that did not end (an interrupted sweep) are closed as KILLED, to be
        reopened by the same trial id on resume."""
        for trial_id in trial_ids:
            if trial_id in self.runs and trial_id not in self.ended:
                self.tag(trial_id, {"ended": "interrupted"})
                self.client.set_terminated(self.runs[trial_id], "KILLED")
