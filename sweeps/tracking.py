"""The trial logger: a restore-safe Tune callback that fills one MLflow run per trial, from the
Tune driver, with its writes off Tune's event loop, batched.

Tune's hooks run on its event loop and only queue writes: a background thread (one per phase,
`sweeps.resilience.WriteQueue`) keeps each trial's writes in order, batches the metric writes that
queue up for one run, and retries through outages. The queue drains before Tune saves its
experiment state (so a restore finds every finished trial logged), at the phase's end and on
SIGINT. The jobs are split by what they write: `trial_runs.TrialRuns` (each run's lifecycle),
`resilience.MetricWrite` (per-epoch metrics, step = epoch), `transfer.CheckpointTransfer`
(artifacts and the exported model from the last checkpoint), `cleanup.TrialCleanup` (a finished
trial's checkpoint goes once its writes are done); `node_load.NodeLoad` keeps the conditions a
trial ran under. Results are read through `trainables.report.read_result`.
"""

from __future__ import annotations

import contextlib
import math
import time

from mlflow.entities import Metric
from ray.tune.logger import LoggerCallback

from sweeps.cleanup import TrialCleanup
from sweeps.failures import error_text
from sweeps.node_load import NodeLoad
from sweeps.ray_session import settle_heap
from sweeps.resilience import MetricWrite, WriteQueue
from sweeps.spec import Cell
from sweeps.transfer import CheckpointTransfer
from sweeps.trial_runs import TrialRuns
from trainables.plan import CELL, PhasePlan
from trainables.report import EPOCH, read_result


_RESTORED_INTO: list[str] = []  # the tracking URI a Tuner being restored records to (`restored_into`)


@contextlib.contextmanager
def restored_into(tracking_uri: str):
    """A trial logger that a `Tuner.restore` inside this block unpickles records to `tracking_uri`
    (the sweep's store, perhaps at a new address), not to the URI it was pickled with."""
    _RESTORED_INTO.append(tracking_uri)
    try:
        yield
    finally:
        _RESTORED_INTO.pop()


class MLflowTrialLogger(LoggerCallback):
    """Creates and fills one child run per trial under its cell's parent run.

    Args:
        tracking_uri: where MLflow lives.
        experiment: the sweep's experiment id.
        parents: cell name -> parent run id.
        cells: cell name -> `Cell` (its tags go on every trial run).
        plan: the phase's `PhasePlan`, which turns a trial's config into its full training config.
        unlogged: where writes still undone at the phase's end are listed (a `StorageFile`).
    """

    def __init__(self, tracking_uri: str, experiment: str, parents: dict[str, str], cells: dict[str, Cell],
                 plan: PhasePlan, unlogged=None, flush_timeout_s: float = 120.0):
        self.cells, self.plan, self.phase = cells, plan, plan.phase
        self.trial_runs = TrialRuns(tracking_uri, experiment, plan.phase, next(iter(cells.values())).sweep, parents)
        self.transfer = CheckpointTransfer(self.trial_runs)
        self.curves: dict[str, list[dict]] = {}  # trial id -> its validation curve, one row per epoch
        self.load = NodeLoad()
        self.unlogged, self.flush_timeout_s = unlogged, flush_timeout_s
        self.restored = False  # set_state ran: trials that ended before the restored save get closed
        self._tagged: set[str] = set()  # trials whose run has its node and device tags
        self.queue = self._writer()
        self.cleanup = TrialCleanup(plan)

    def __getstate__(self) -> dict:  # Tune pickles callbacks: the thread and queued closures stay behind
        return {k: v for k, v in self.__dict__.items() if k != "queue"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if _RESTORED_INTO:
            self.trial_runs.tracking_uri = _RESTORED_INTO[-1]
        self.queue = self._writer()

    def _writer(self) -> WriteQueue:
        """The writer thread's queue: a dropped write tags its run; reading the experiment tells a
        store that is down from a write that fails on its own."""
        runs = self.trial_runs
        return WriteQueue(on_lost=runs.tag, probe=lambda: runs.client.get_experiment(runs.experiment)).start()

    @property
    def runs(self) -> dict[str, str]:
        """Trial id -> run id (filled by the writer thread)."""
        return self.trial_runs.runs

    # ---- state Tune saves and restores -------------------------------------------------------------
    def get_state(self) -> dict:
        self.queue.wait_idle(30.0)  # what Tune's saved state calls finished is in MLflow (not in an outage)
        self.cleanup.saved()  # Tune calls this when it saves the experiment state
        return {**self.trial_runs.state(), "curves": dict(self.curves)}

    def set_state(self, state: dict) -> None:
        self.trial_runs.restore(state)
        self.curves.update(state.get("curves", {}))
        self.restored = True

    def setup(self, **info) -> None:
        """The phase starts: what earlier phases left (their trials, results and studies) is
        long-lived now, kept out of the full collections that would walk it while the phase's
        results wait (`sweeps.ray_session.settle_heap`)."""
        settle_heap()

    # ---- Tune's hooks: they only queue writes ---------------------------------------------------------
    def log_trial_start(self, trial) -> None:
        cell = self.cells[trial.config[CELL]]
        values = self.plan.values(trial.config)
        tags = {"replicate_seed": str(trial.config["seed"])} if self.plan.grid_seeds else {}
        self.load.started(trial.trial_id)
        self.queue.submit(trial.trial_id, "start", lambda: self.trial_runs.start(trial.trial_id, cell, values, tags))

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        tid, read = trial.trial_id, read_result(result)
        ts = int((read.timestamp or time.time()) * 1000)  # when the trial reported, not when logged
        self.load.reported(tid, read.node_ip)
        if read.node_id and tid not in self._tagged:
            self._tagged.add(tid)
            where = {"node_id": read.node_id, "device": read.device, **({"gpu_ids": read.gpu_ids} if read.gpu_ids else {})}
            self.queue.submit(tid, "where", lambda: self.trial_runs.tag(tid, where))
        metrics = [Metric(k, v, ts, read.epochs) for k, v in read.metrics.items()]
        self.queue.submit(tid, f"result {read.epochs}", MetricWrite(lambda: self.trial_runs.client,
                                                                    lambda: self.trial_runs.run_of(tid), metrics))
        if read.curve:
            curve = self.curves.setdefault(tid, [])
            curve[:] = [row for row in curve if row[EPOCH] < read.epochs]  # a restored trial repeats epochs
            curve.append(read.curve)

    def log_trial_end(self, trial, failed: bool = False) -> None:
        """The closing writes, each retried on its own: tags and summaries, the artifacts and the
        exported model from the last checkpoint, then the run's status; then the checkpoint may go."""
        tid, checkpoint, last = trial.trial_id, trial.checkpoint, read_result(trial.last_result)
        ended = "failed" if failed else "completed" if last.last else "stopped_early"
        error = error_text(trial)[-4000:] if failed else None
        curve = list(self.curves.get(tid, []))
        conditions = self.load.ended(tid, last.node_ip)
        summary = {**last.metrics, "epochs": last.epochs, "best_epoch": last.best_epoch, "stop": last.stop,
                   "score": last.score if math.isfinite(last.score) else None}
        self.queue.submit(tid, "end", lambda: self.trial_runs.end(tid, ended, error, summary, curve, conditions))
        if not failed:
            self.queue.submit(tid, "checkpoint artifacts", lambda: self.transfer.artifacts(tid, checkpoint))
            if self.plan.export:
                self.queue.submit(tid, "model", lambda: self.transfer.model(tid, checkpoint))
        self.queue.submit(tid, "close", lambda: self._close(tid, failed, checkpoint))

    def on_step_begin(self, iteration: int, trials, **info) -> None:
        if self.restored:  # trials that ended before the restored save, with their closing writes undone
            self.restored = False
            for trial in trials:
                if trial.status in ("TERMINATED", "ERROR") and trial.trial_id not in self.trial_runs.ended:
                    self.log_trial_end(trial, failed=trial.status == "ERROR")

    def on_step_end(self, iteration: int, trials, **info) -> None:
        self.cleanup.sweep()

    def _close(self, trial_id: str, failed: bool, checkpoint) -> None:
        self.trial_runs.close(trial_id, failed)
        self.cleanup.hand_over(trial_id, checkpoint)

    # ---- the phase's end -----------------------------------------------------------------------------
    def on_experiment_end(self, trials, **info) -> None:
        self.queue.flush(self.flush_timeout_s)
        try:
            self.trial_runs.close_open(trial.trial_id for trial in trials)
        except Exception as err:  # noqa: BLE001 - the runner closes leftovers again at the end
            self.queue.lost.append({"trial_id": "*", "write": "close open runs", "error": str(err)[:1000]})
        if self.unlogged is not None:
            self.queue.record_lost(self.unlogged)
        self.cleanup.finish(trials, done=set(self.trial_runs.ended))  # Tune saved its final state before this hook
