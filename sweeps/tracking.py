"""MLflow layout of a sweep: one experiment per sweep, one parent run per cell and phase, one child
run per trial, logged from the Tune driver by a restore-safe, batched callback.

Child runs carry the flat training config as params, per-epoch metrics with step = epoch, tags
(the cell's: sweep, cell, dataset, model, loss, protocol; and seed = the trial's training seed,
cell_seed = the grid's seed, phase, trial id, `ended` = completed | stopped_early | failed |
interrupted, and the failure reason),
and at the end a metrics JSON, the validation curve and, when the trial's last checkpoint holds an
`artifacts/` folder (replicate phase with `replicate.artifacts: true`), its test embeddings and
adjacency matrices under `artifacts/`. Runs are keyed by trial id and the map survives
`Tuner.restore`, so a resumed sweep never duplicates or orphans a run, and none is left RUNNING.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME
from ray.tune import Callback
from ray.tune.logger import LoggerCallback
from rich.console import Console

from serving.registry import log_exported_model
from sweeps.cleanup import TrialCleanup
from sweeps.resilience import WriteQueue
from sweeps.spec import Cell
from trainables.plan import CELL, PhasePlan

INTERNAL = {"training_iteration", "time_this_iter_s", "time_total_s", "timestamp", "time_since_restore",
            "iterations_since_restore", "pid", "done", "episodes_total", "timesteps_total"}


def experiment_id(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
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


def numeric_metrics(result: dict) -> dict[str, float]:
    out = {}
    for key, value in result.items():
        if key in INTERNAL or key.startswith("config") or isinstance(value, (dict, list, str)) or value is None:
            continue
        if isinstance(value, (bool, int, float)) and math.isfinite(float(value)):
            out[key] = float(value)
    return out


def error_text(trial) -> str:
    """The trial's error trace: the driver's local copy is written at once; storage may lag."""
    local = trial.error_file
    if local and os.path.isfile(local):
        with open(local, encoding="utf-8", errors="replace") as f:
            return f.read()
    try:
        return str(trial.get_error() or trial.get_pickled_error() or "unknown error")
    except Exception as err:  # noqa: BLE001 - never let error reporting fail the sweep
        return f"unknown error ({type(err).__name__} while reading the trace)"


class MLflowTrialLogger(LoggerCallback):
    """Creates and fills one child run per trial under its cell's parent run.

    Args:
        tracking_uri: where MLflow lives.
        experiment: the sweep's experiment id.
        parents: cell name -> parent run id.
        cells: cell name -> `Cell` (its tags go on every trial run).
        plan: the phase's `PhasePlan`, which turns a trial's config into its full training config.
    """

    def __init__(self, tracking_uri: str, experiment: str, parents: dict[str, str], cells: dict[str, Cell],
                 plan: PhasePlan, unlogged_path: str | None = None, flush_timeout_s: float = 120.0):
        self.tracking_uri, self.experiment, self.plan, self.phase = tracking_uri, experiment, plan, plan.phase
        self.parents, self.cells = parents, cells
        self.runs: dict[str, str] = {}  # trial id -> run id
        self.curves: dict[str, list] = {}
        self.ended: set[str] = set()
        self.unlogged_path, self.flush_timeout_s = unlogged_path, flush_timeout_s
        self._client = None
        self._node_tagged: set[str] = set()  # trials whose run has its node_id tag
        self.queue = WriteQueue()
        self.cleanup = TrialCleanup(plan)  # a finished trial's checkpoint goes once its writes are done

    def __getstate__(self) -> dict:  # Tune pickles callbacks: queued closures and the client stay behind
        return {**self.__dict__, "_client": None, "queue": WriteQueue()}

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def get_state(self) -> dict:
        self.cleanup.saved()  # Tune calls this when it saves the experiment state
        return {"runs": dict(self.runs), "curves": dict(self.curves), "ended": set(self.ended)}

    def set_state(self, state: dict) -> None:
        self.runs.update(state.get("runs", {}))
        self.curves.update(state.get("curves", {}))
        self.ended.update(state.get("ended", set()))

    def _run_id(self, trial) -> str:
        if trial.trial_id in self.runs:
            return self.runs[trial.trial_id]
        cell = self.cells[trial.config[CELL]]
        found = self.client.search_runs(
            [self.experiment], f"tags.trial_id = '{trial.trial_id}' and tags.phase = '{self.phase}' and tags.cell = '{cell.name}'",
            max_results=1,
        )
        if found:
            run_id = found[0].info.run_id
        else:
            values = self.plan.values(trial.config)
            tags = {**cell.tags(), "seed": str(values["seed"]), "cell_seed": str(cell.seed), "trial_id": trial.trial_id,
                    "phase": self.phase, "kind": "trial", MLFLOW_PARENT_RUN_ID: self.parents[cell.name],
                    MLFLOW_RUN_NAME: f"{cell.name}/{trial.trial_id}"}
            run_id = self.client.create_run(self.experiment, tags=tags).info.run_id
            params = [Param(k, str(v)[:6000]) for k, v in sorted(values.items())]
            for start in range(0, len(params), 100):
                self.client.log_batch(run_id, params=params[start:start + 100])
        self.runs[trial.trial_id] = run_id
        return run_id

    # Tune's hooks only queue the writes; the queue retries them while MLflow is unreachable.
    def log_trial_start(self, trial) -> None:
        self.queue.submit(trial.trial_id, "start", lambda: self._start(trial))

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        result = dict(result)
        self.queue.submit(trial.trial_id, f"result {result.get('epoch', iteration)}",
                          lambda: self._result(iteration, trial, result))

    def log_trial_end(self, trial, failed: bool = False) -> None:
        """The closing writes, each retried on its own: tags and summaries, the artifacts and the
        exported model from the last checkpoint, then the run's status; then the checkpoint may go."""
        self.queue.submit(trial.trial_id, "end", lambda: self._end(trial, failed))
        if not failed:
            self.queue.submit(trial.trial_id, "checkpoint artifacts", lambda: self._log_checkpoint_artifacts(trial))
            if self.plan.export:
                self.queue.submit(trial.trial_id, "model", lambda: self._log_model(trial))
        self.queue.submit(trial.trial_id, "close", lambda: self._close(trial, failed))

    def on_step_end(self, iteration: int, trials, **info) -> None:
        if len(self.queue):
            self.queue.drain()
        self.cleanup.sweep()

    def _start(self, trial) -> None:
        run_id = self._run_id(trial)
        self.client.update_run(run_id, status="RUNNING")
        self.client.set_tag(run_id, "ended", "running")

    def _result(self, iteration: int, trial, result: dict) -> None:
        run_id = self._run_id(trial)
        if isinstance(result.get("node_id"), str) and trial.trial_id not in self._node_tagged:
            self.client.set_tag(run_id, "node_id", result["node_id"])
            self._node_tagged.add(trial.trial_id)
        values = numbers = numeric_metrics(result)
        step = epochs_trained(result)  # the replicate's closing report is no epoch of its own
        if result.get("final"):  # its val_* are the best epoch's: logged once, as final_val_*
            values = {("final_" + k if k.startswith("val_") else k): v for k, v in values.items()}
        ts = int(float(result.get("timestamp") or time.time()) * 1000)  # when the trial reported, not when logged
        metrics = [Metric(k, v, ts, step) for k, v in values.items()]
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=metrics[start:start + 1000])
        if "epoch" in result and not result.get("final"):
            curve = self.curves.setdefault(trial.trial_id, [])
            curve[:] = [row for row in curve if row["epoch"] < step]  # a restored trial repeats epochs
            curve.append({k: v for k, v in numbers.items() if k == "epoch" or k.startswith("val_")})

    def _end(self, trial, failed: bool) -> None:
        run_id = self._run_id(trial)
        last = trial.last_result or {}
        if failed:
            ended = "failed"
            self.client.set_tag(run_id, "error", error_text(trial)[-4000:])
        else:
            ended = "completed" if last.get("last_epoch") else "stopped_early"
        self.client.set_tag(run_id, "ended", ended)
        with tempfile.TemporaryDirectory() as folder:
            with open(os.path.join(folder, "metrics.json"), "w") as f:
                json.dump({k: v for k, v in last.items() if isinstance(v, (int, float, str, bool))}, f, indent=2)
            curve = self.curves.get(trial.trial_id, [])
            if curve:
                keys = sorted({k for row in curve for k in row})
                with open(os.path.join(folder, "validation_curve.csv"), "w") as f:
                    f.write(",".join(keys) + "\n")
                    for row in curve:
                        f.write(",".join(str(row.get(k, "")) for k in keys) + "\n")
            self.client.log_artifacts(run_id, folder)

    def _from_checkpoint(self, trial, name: str, write) -> None:
        """Call `write(path)` on the folder `name` of the trial's last checkpoint, if there is one.
        What travels this way works from any node and storage. A checkpoint that cannot be read is
        tagged on the run (`artifacts_error`) and not retried; a failed MLflow write is retried."""
        if trial.checkpoint is None:
            return
        try:
            opened = trial.checkpoint.as_directory()
            folder = opened.__enter__()
        except Exception as err:  # noqa: BLE001 - a missing artifact must not fail the sweep
            self.client.set_tag(self._run_id(trial), "artifacts_error", f"{type(err).__name__}: {err}"[:4000])
            return
        try:
            path = os.path.join(folder, name)
            if os.path.isdir(path):
                write(path)
        finally:
            opened.__exit__(None, None, None)

    def _log_checkpoint_artifacts(self, trial) -> None:
        """Test embeddings and adjacency files go to MLflow under `artifacts/`."""
        self._from_checkpoint(trial, "artifacts", lambda path: self.client.log_artifacts(
            self._run_id(trial), path, "artifacts"))

    def _log_model(self, trial) -> None:
        """The exported model becomes the run's MLflow logged model, its URI tagged `model_uri`."""
        def log(path: str) -> None:
            run_id = self._run_id(trial)
            self.client.set_tag(run_id, "model_uri", log_exported_model(self.tracking_uri, self.experiment, run_id, path))

        self._from_checkpoint(trial, "model", log)

    def _close(self, trial, failed: bool) -> None:
        self.client.set_terminated(self._run_id(trial), "FAILED" if failed else "FINISHED")
        self.ended.add(trial.trial_id)
        self.cleanup.hand_over(trial.trial_id, trial.checkpoint)

    def on_experiment_end(self, trials, **info) -> None:
        self.queue.flush(self.flush_timeout_s)
        try:
            self.close_open_runs(trials)
        except Exception as err:  # noqa: BLE001 - the runner closes leftovers again at the end
            self.queue.lost.append({"trial_id": "*", "write": "close open runs", "error": str(err)[:1000]})
        if self.unlogged_path:
            self.queue.record_lost(Path(self.unlogged_path))
        self.cleanup.finish(trials, done=set(self.ended))  # Tune saved its final state before this hook

    def close_open_runs(self, trials) -> None:
        """Runs of trials that did not end (interrupted sweep) are closed as KILLED, to be reopened
        by the same trial id on resume."""
        for trial in trials:
            if trial.trial_id in self.runs and trial.trial_id not in self.ended:
                run_id = self.runs[trial.trial_id]
                self.client.set_tag(run_id, "ended", "interrupted")
                self.client.set_terminated(run_id, "KILLED")


class ProgressPrinter(Callback):
    """One line per finished trial: cell, how it ended, its metric, and the phase's count."""

    def __init__(self, phase: str, metric: str, total: int, width: int | None = None):
        self.phase, self.metric, self.total, self.width = phase, metric, total, width
        self.done = 0
        self._console = None

    def __getstate__(self) -> dict:  # Tune pickles callbacks; a Console holds a lock
        return {**self.__dict__, "_console": None}

    @property
    def console(self) -> Console:
        if self._console is None:
            self._console = Console(width=self.width)
        return self._console

    def _line(self, trial, ended: str) -> None:
        self.done += 1
        line = progress_line(f"{self.phase} {self.done}/{self.total}", trial.config.get(CELL, "?"), trial.trial_id,
                             ended, trial.last_result or {}, self.metric)
        self.console.print(line, markup=False, highlight=False)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._line(trial, "completed" if (trial.last_result or {}).get("last_epoch") else "stopped early (ASHA)")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._line(trial, "FAILED")


def epochs_trained(result: dict) -> int:
    """Epochs a trial trained: its closing test report (replicate) is no epoch of its own."""
    if result.get("final"):
        return int(result.get("epochs_run", 0))
    return int(result.get("epoch", result.get("training_iteration", 0)))


def progress_line(where: str, cell: str, trial_id: str, ended: str, last: dict, metric: str) -> str:
    value = last.get(metric)
    shown = f" {metric}={value:.4f}" if isinstance(value, (int, float)) else ""
    return f"[{where}] {cell} {trial_id}: {ended} after {epochs_trained(last)} epoch(s){shown}"
