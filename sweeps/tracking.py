"""MLflow layout of a sweep: one experiment per sweep, one parent run per cell and phase, one child
run per trial, logged from the Tune driver by a restore-safe callback whose writes run off Tune's
event loop, batched.

Child runs carry the flat training config as params, per-epoch metrics with step = epoch, tags
(the cell's: sweep, cell, dataset, model, loss, protocol; and seed = the trial's training seed,
cell_seed = the grid's seed, phase, trial id, `ended` = completed | stopped_early | failed |
interrupted, the failure reason, and `node` / `concurrency`: where it ran and how many trials ran
beside it; a sensitivity run also carries base_cell, param, direction, value, step and centre),
and at the end a metrics JSON, the validation curve and, when the trial's last checkpoint holds an
`artifacts/` folder (replicate phase with `replicate.artifacts: true`), its test embeddings and
adjacency matrices under `artifacts/`. Runs are keyed by trial id and the map survives
`Tuner.restore`, so a resumed sweep never duplicates or orphans a run, and none is left RUNNING.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import time

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME
from ray.tune import Callback
from ray.tune.logger import LoggerCallback
from rich.console import Console

from gloss_core.provenance import sqlite_database
from serving.registry import log_exported_model
from sweeps.cleanup import TrialCleanup
from sweeps.resilience import MetricWrite, WriteQueue
from sweeps.spec import Cell
from trainables.plan import CELL, PhasePlan

INTERNAL = {"training_iteration", "time_this_iter_s", "time_total_s", "timestamp", "time_since_restore",
            "iterations_since_restore", "pid", "done", "episodes_total", "timesteps_total"}


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


def error_reason(trace: str, limit: int = 200) -> str:
    """The one line of a trace a reader needs: the exception and its message, shortened."""
    lines = [line.strip() for line in trace.strip().splitlines() if line.strip()]
    found = next((line for line in reversed(lines) if re.match(r"^[\w.]*(Error|Exception|Failed)\b", line)), None)
    if found is None:
        found = next((line for line in lines if re.match(r"^[\w.]*(Error|Exception)", line)), lines[-1] if lines else "")
    found = re.sub(r"\x1b\[[0-9;]*m|\[\d+m", "", found)
    return found if len(found) <= limit else found[:limit - 3] + "..."


class NoRun(LookupError):
    """A write for a trial whose run was never created; the store refused it, so it is not retried."""

    error_code = "RESOURCE_DOES_NOT_EXIST"


class MLflowTrialLogger(LoggerCallback):
    """Creates and fills one child run per trial under its cell's parent run.

    Tune's hooks run on its event loop and only queue writes: a background thread (one per phase,
    `WriteQueue.start()`) owns the MLflow client, keeps each trial's writes in order, batches the
    metric writes that queue up for one run, and retries through outages. The queue drains before
    Tune saves its experiment state (so a restore finds every finished trial logged), at the
    phase's end and on SIGINT. Run ids: a new phase creates its runs without any search; a
    restored one finds its existing runs with one query.

    Args:
        tracking_uri: where MLflow lives.
        experiment: the sweep's experiment id.
        parents: cell name -> parent run id.
        cells: cell name -> `Cell` (its tags go on every trial run).
        plan: the phase's `PhasePlan`, which turns a trial's config into its full training config.
    """

    def __init__(self, tracking_uri: str, experiment: str, parents: dict[str, str], cells: dict[str, Cell],
                 plan: PhasePlan, unlogged=None, flush_timeout_s: float = 120.0):
        self.tracking_uri, self.experiment, self.plan, self.phase = tracking_uri, experiment, plan, plan.phase
        self.parents, self.cells = parents, cells
        self.runs: dict[str, str] = {}  # trial id -> run id (filled by the writer thread)
        self.curves: dict[str, list] = {}
        self.ended: set[str] = set()
        self.unlogged, self.flush_timeout_s = unlogged, flush_timeout_s  # where lost writes are listed
        self.restored = False  # set_state ran: trials that ended before the restored save get closed
        self.look_up_runs = False  # set_state ran: the phase's existing runs are looked up once
        self._client = None
        self._node_tagged: set[str] = set()  # trials whose run has its node_id tag
        self.active: dict[str, str | None] = {}  # running trial id -> its node's IP (None until it reports)
        self.concurrency: dict[str, set[int]] = {}  # trial id -> how many trials ran on its node at its results
        self.create_attempted: set[str] = set()  # trials whose run creation was sent (a retry looks first)
        self.queue = WriteQueue().start()
        self.cleanup = TrialCleanup(plan)  # a finished trial's checkpoint goes once its writes are done

    def __getstate__(self) -> dict:  # Tune pickles callbacks: the thread, queued closures and the client stay behind
        return {**{k: v for k, v in self.__dict__.items() if k not in ("queue", "_client")}, "_client": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.queue = WriteQueue().start()

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    # ---- state Tune saves and restores -------------------------------------------------------------
    def get_state(self) -> dict:
        self.queue.wait_idle(30.0)  # what Tune's saved state calls finished is in MLflow (not in an outage)
        self.cleanup.saved()  # Tune calls this when it saves the experiment state
        return {"runs": dict(self.runs), "curves": dict(self.curves), "ended": set(self.ended)}

    def set_state(self, state: dict) -> None:
        self.runs.update(state.get("runs", {}))
        self.curves.update(state.get("curves", {}))
        self.ended.update(state.get("ended", set()))
        self.restored = self.look_up_runs = True

    # ---- Tune's hooks: they only queue writes ---------------------------------------------------------
    def log_trial_start(self, trial) -> None:
        cell = self.cells[trial.config[CELL]]
        values = self.plan.values(trial.config)
        self.active[trial.trial_id] = None
        self.queue.submit(trial.trial_id, "start", lambda: self._start(trial.trial_id, cell, values))

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        numbers = numeric_metrics(result)
        step = epochs_trained(result)  # the replicate's closing report is no epoch of its own
        values = numbers
        if result.get("final"):  # its val_* are the best epoch's: logged once, as final_val_*
            values = {("final_" + k if k.startswith("val_") else k): v for k, v in numbers.items()}
        ts = int(float(result.get("timestamp") or time.time()) * 1000)  # when the trial reported, not when logged
        tid = trial.trial_id
        ip = result.get("node_ip")
        self.active[tid] = ip
        beside = sum(1 for other in self.active.values() if other in (ip, None))
        self.concurrency.setdefault(tid, set()).add(beside)
        node = result.get("node_id")
        if isinstance(node, str) and tid not in self._node_tagged:
            self._node_tagged.add(tid)
            self.queue.submit(tid, "node tag", lambda: self.client.set_tag(self._run(tid), "node_id", node))
        self.queue.submit(tid, f"result {step}", MetricWrite(lambda: self.client, lambda: self._run(tid),
                                                             [Metric(k, v, ts, step) for k, v in values.items()]))
        if "epoch" in result and not result.get("final"):
            curve = self.curves.setdefault(tid, [])
            curve[:] = [row for row in curve if row["epoch"] < step]  # a restored trial repeats epochs
            curve.append({k: v for k, v in numbers.items() if k == "epoch" or k.startswith("val_")})

    def log_trial_end(self, trial, failed: bool = False) -> None:
        """The closing writes, each retried on its own: tags and summaries, the artifacts and the
        exported model from the last checkpoint, then the run's status; then the checkpoint may go."""
        tid, last, checkpoint = trial.trial_id, dict(trial.last_result or {}), trial.checkpoint
        ended = "failed" if failed else "completed" if last.get("last_epoch") else "stopped_early"
        error = error_text(trial)[-4000:] if failed else None
        curve = list(self.curves.get(tid, []))
        self.active.pop(tid, None)
        conditions = run_conditions(last, self.concurrency.pop(tid, set()))
        self.queue.submit(tid, "end", lambda: self._end(tid, ended, error, last, curve, conditions))
        if not failed:
            self.queue.submit(tid, "checkpoint artifacts", lambda: self._log_checkpoint_artifacts(tid, checkpoint))
            if self.plan.export:
                self.queue.submit(tid, "model", lambda: self._log_model(tid, checkpoint))
        self.queue.submit(tid, "close", lambda: self._close(tid, failed, checkpoint))

    def on_step_begin(self, iteration: int, trials, **info) -> None:
        if self.restored:  # trials that ended before the restored save, with their closing writes undone
            self.restored = False
            for trial in trials:
                if trial.status in ("TERMINATED", "ERROR") and trial.trial_id not in self.ended:
                    self.log_trial_end(trial, failed=trial.status == "ERROR")

    def on_step_end(self, iteration: int, trials, **info) -> None:
        self.cleanup.sweep()

    # ---- the writes (on the writer thread) ------------------------------------------------------------
    def _existing_runs(self) -> None:
        """After a restore, one query finds the runs of this phase's trials (some may have been
        created after the state Tune restored was saved)."""
        query = f"tags.phase = '{self.phase}' and tags.kind = 'trial' and tags.sweep = '{next(iter(self.cells.values())).sweep}'"
        token = None
        while True:
            page = self.client.search_runs([self.experiment], query, max_results=1000, page_token=token)
            for run in page:
                self.runs.setdefault(run.data.tags.get("trial_id", ""), run.info.run_id)
            token = page.token
            if not token:
                return

    def _run(self, trial_id: str) -> str:
        """The trial's run id; a trial whose run could not be created has none (a refused write)."""
        try:
            return self.runs[trial_id]
        except KeyError:
            raise NoRun(f"trial {trial_id} has no MLflow run (its creation was refused)") from None

    def _start(self, trial_id: str, cell: Cell, values: dict) -> None:
        if self.look_up_runs:  # a restored phase: its runs are looked up once
            self._existing_runs()
            self.look_up_runs = False
        if trial_id in self.runs:
            run_id = self.runs[trial_id]
            self.client.update_run(run_id, status="RUNNING")
            self.client.set_tag(run_id, "ended", "running")
            return
        found = []
        if trial_id in self.create_attempted:  # a retry: the store may have made the run before it failed
            found = self.client.search_runs([self.experiment], f"tags.trial_id = '{trial_id}' and tags.phase = "
                                            f"'{self.phase}' and tags.kind = 'trial'", max_results=1)
        if found:
            run_id = found[0].info.run_id
        else:
            tags = {**cell.tags(), "seed": str(values["seed"]), "cell_seed": str(cell.seed), "trial_id": trial_id,
                    "phase": self.phase, "kind": "trial", "ended": "running",
                    MLFLOW_PARENT_RUN_ID: self.parents[cell.name], MLFLOW_RUN_NAME: f"{cell.name}/{trial_id}"}
            self.create_attempted.add(trial_id)
            run_id = self.client.create_run(self.experiment, tags=tags).info.run_id
        params = [Param(k, str(v)[:6000]) for k, v in sorted(values.items())]  # the same values again: idempotent
        for start in range(0, len(params), 100):
            self.client.log_batch(run_id, params=params[start:start + 100])
        self.runs[trial_id] = run_id

    def _end(self, trial_id: str, ended: str, error: str | None, last: dict, curve: list,
             conditions: dict[str, str] | None = None) -> None:
        run_id = self._run(trial_id)
        tags = [RunTag("ended", ended)] + ([RunTag("error", error)] if error is not None else [])
        tags += [RunTag(k, v) for k, v in (conditions or {}).items()]
        self.client.log_batch(run_id, tags=tags)
        with tempfile.TemporaryDirectory() as folder:
            with open(os.path.join(folder, "metrics.json"), "w") as f:
                json.dump({k: v for k, v in last.items() if isinstance(v, (int, float, str, bool))}, f, indent=2)
            if curve:
                keys = sorted({k for row in curve for k in row})
                with open(os.path.join(folder, "validation_curve.csv"), "w") as f:
                    f.write(",".join(keys) + "\n")
                    for row in curve:
                        f.write(",".join(str(row.get(k, "")) for k in keys) + "\n")
            self.client.log_artifacts(run_id, folder)

    def _from_checkpoint(self, trial_id: str, checkpoint, name: str, write) -> None:
        """Call `write(path)` on the folder `name` of the trial's last checkpoint, if there is one.
        What travels this way works from any node and storage. A checkpoint that cannot be read is
        tagged on the run (`artifacts_error`) and not retried; a failed MLflow write is retried."""
        if checkpoint is None:
            return
        try:
            opened = checkpoint.as_directory()
            folder = opened.__enter__()
        except Exception as err:  # noqa: BLE001 - a missing artifact must not fail the sweep
            self.client.set_tag(self._run(trial_id), "artifacts_error", f"{type(err).__name__}: {err}"[:4000])
            return
        try:
            path = os.path.join(folder, name)
            if os.path.isdir(path):
                write(path)
        finally:
            opened.__exit__(None, None, None)

    def _log_checkpoint_artifacts(self, trial_id: str, checkpoint) -> None:
        """Test embeddings and adjacency files go to MLflow under `artifacts/`."""
        self._from_checkpoint(trial_id, checkpoint, "artifacts", lambda path: self.client.log_artifacts(
            self._run(trial_id), path, "artifacts"))

    def _log_model(self, trial_id: str, checkpoint) -> None:
        """The exported model becomes the run's MLflow logged model, its URI tagged `model_uri`."""
        def log(path: str) -> None:
            run_id = self._run(trial_id)
            self.client.set_tag(run_id, "model_uri", log_exported_model(self.tracking_uri, self.experiment, run_id, path))

        self._from_checkpoint(trial_id, checkpoint, "model", log)

    def _close(self, trial_id: str, failed: bool, checkpoint) -> None:
        self.client.set_terminated(self._run(trial_id), "FAILED" if failed else "FINISHED")
        self.ended.add(trial_id)
        self.cleanup.hand_over(trial_id, checkpoint)

    # ---- the phase's end -----------------------------------------------------------------------------
    def on_experiment_end(self, trials, **info) -> None:
        self.queue.flush(self.flush_timeout_s)
        try:
            self.close_open_runs(trials)
        except Exception as err:  # noqa: BLE001 - the runner closes leftovers again at the end
            self.queue.lost.append({"trial_id": "*", "write": "close open runs", "error": str(err)[:1000]})
        if self.unlogged is not None:
            self.queue.record_lost(self.unlogged)
        self.cleanup.finish(trials, done=set(self.ended))  # Tune saved its final state before this hook

    def close_open_runs(self, trials) -> None:
        """Runs of trials that did not end (interrupted sweep) are closed as KILLED, to be reopened
        by the same trial id on resume."""
        for trial in trials:
            if trial.trial_id in self.runs and trial.trial_id not in self.ended:
                run_id = self.runs[trial.trial_id]
                self.client.log_batch(run_id, tags=[RunTag("ended", "interrupted")])
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
        self._line(trial, f"FAILED ({error_reason(error_text(trial))})")


def run_conditions(last: dict, counts: set[int]) -> dict[str, str]:
    """What a trial's seconds per epoch depend on besides its loss: its node and how many trials
    ran on that node at its reports ("2", or "1-4" when it changed). Speed verdicts need both equal."""
    out = {}
    if last.get("node_ip"):
        out["node"] = str(last["node_ip"])
    if counts:
        low, high = min(counts), max(counts)
        out["concurrency"] = str(low) if low == high else f"{low}-{high}"
    return out


def epochs_trained(result: dict) -> int:
    """Epochs a trial trained: its closing test report (replicate) is no epoch of its own."""
    if result.get("final"):
        return int(result.get("epochs_run", 0))
    return int(result.get("epoch", result.get("training_iteration", 0)))


def progress_line(where: str, cell: str, trial_id: str, ended: str, last: dict, metric: str) -> str:
    value = last.get(metric)
    shown = f" {metric}={value:.4f}" if isinstance(value, (int, float)) else ""
    return f"[{where}] {cell} {trial_id}: {ended} after {epochs_trained(last)} epoch(s){shown}"
