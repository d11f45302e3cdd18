"""Run a sweep: search (every cell at once, one Optuna study and ASHA per cell), replicate (each
cell's best config on N seeds, evaluated on test), then a summary table, printed and logged.

Each phase runs one Tuner and returns a small outcome; recording that outcome in MLflow (parent
runs, best configs, test means) is a separate step. Trials are logged as they run by the phase's
`MLflowTrialLogger`.

Usage:
    gloss sweep run sweeps/specs/demo.yaml
    gloss sweep run sweeps/specs/mr_minilm.yaml --tracking-uri http://127.0.0.1:5000
    gloss sweep run sweeps/specs/demo.yaml --resume          # after Ctrl-C, a crash or SIGKILL
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import ray
from mlflow.tracking import MlflowClient
from ray import tune
from rich.console import Console
from rich.table import Table

from gloss_core.provenance import default_tracking_uri
from gloss_core.spread import mean_std
from serving.registry import delete_registered, quiet_mlflow, register
from sweeps.record import summary_run
from sweeps.resilience import RetryingClient
from sweeps.cells import CellASHA, CellSearcher
from sweeps.spec import SpaceSampler, SweepSpec
from sweeps.tracking import MLflowTrialLogger, ProgressPrinter, experiment_id, parent_run
from trainables.plan import CELL, PhasePlan
from trainables.trainable import gloss_trainable

console = Console(width=None if sys.stdout.isatty() else 160)
TEST_KEYS = ("test_accuracy", "test_macro_f1", "test_macro_silhouette")


def registered_name(sweep: str, cell: str) -> str:
    """A cell's model in the MLflow Model Registry."""
    return f"{sweep}.{cell}"


class SweepInterrupted(RuntimeError):
    """The sweep was stopped (Ctrl-C, SIGINT from `ray job stop`); its state is saved for --resume."""


@dataclass(frozen=True)
class BestTrial:
    """A cell's best search trial: its full training options, its best metric value, its id."""

    config: dict
    value: float
    trial_id: str


@dataclass
class SearchOutcome:
    best: dict[str, BestTrial]  # cell -> best trial; cells where no trial reported the metric are absent
    optuna: dict[str, dict[str, int]]  # cell -> Optuna trial states and their counts


@dataclass
class ReplicateOutcome:
    finals: dict[str, list[dict]]  # cell -> the closing test report of each replicate seed that finished


def _can_restore(path: Path) -> bool:
    """Restorable: Tune saved its state and at least one trial folder exists (a sweep interrupted
    before its first trial cannot be restored by Tune; it simply starts again)."""
    return tune.Tuner.can_restore(str(path)) and any(p.is_dir() for p in path.iterdir())


def _interrupted(results: tune.ResultGrid, expected: int) -> bool:
    """Tune returns normally on SIGINT: the phase is complete only if every expected trial exists
    and reached a final state (terminated or errored)."""
    return len(results) < expected or results.num_terminated + results.num_errors < len(results)


def _trial_ids(results: tune.ResultGrid) -> set[str]:
    return {r.metrics["trial_id"] for r in results}


def reconcile_trial_runs(client: MlflowClient, exp_id: str, sweep: str, phase: str, trial_ids: set[str]) -> int:
    """Delete runs of trials that the restored experiment does not know (started after the last
    state snapshot, before a SIGKILL): they would be orphans, and the trials run again anyway."""
    runs = client.search_runs([exp_id], f"tags.sweep = '{sweep}' and tags.phase = '{phase}' and tags.kind = 'trial'",
                              max_results=50000)
    orphans = [r for r in runs if r.data.tags.get("trial_id") not in trial_ids]
    for run in orphans:
        client.delete_run(run.info.run_id)
    return len(orphans)


def close_running_runs(client: MlflowClient, exp_id: str, sweep: str) -> int:
    """Mark every run of this sweep still RUNNING as KILLED (interrupted); returns how many."""
    runs = client.search_runs([exp_id], f"tags.sweep = '{sweep}' and attributes.status = 'RUNNING'", max_results=5000)
    for run in runs:
        client.set_tag(run.info.run_id, "ended", "interrupted")
        client.set_terminated(run.info.run_id, "KILLED")
    return len(runs)


class SweepRunner:
    def __init__(self, spec: SweepSpec, tracking_uri: str | None = None, storage_path: str | None = None):
        self.spec = spec
        self.uri = tracking_uri or spec.tracking_uri or default_tracking_uri()
        self.storage = Path(storage_path or spec.storage_path or "ray_results").resolve() / spec.name
        # phase-boundary calls wait out an outage; the Model Registry lives in the same store
        self.client = RetryingClient(MlflowClient(self.uri, registry_uri=self.uri))
        self.exp_id = experiment_id(self.client, spec.name)
        self.cells = {cell.name: cell for cell in spec.cells()}
        self.threads = max(1, int(spec.resources.cpu))
        self.parents: dict[str, dict[str, str]] = {}  # phase -> cell -> its parent run

    def run(self, resume: bool = False, restart: bool = False) -> dict:
        if restart:
            self.discard_previous()
        elif not resume and self.storage.exists():
            raise FileExistsError(f"{self.storage} holds an earlier run of sweep {self.spec.name!r}: "
                                  "pass --resume to continue it, or --restart to discard it and start again")
        summary_run(self.client, self.exp_id, self.spec)  # created first: the spec, git commit, package versions
        try:
            search = self.search(resume)
            self.record_search(search)
            replicate = ReplicateOutcome({})
            if self.spec.replicate and search.best:
                replicate = self.replicate(search, resume)
                self.record_replicate(replicate)
            return self.summarise(search, replicate)
        finally:
            close_running_runs(self.client, self.exp_id, self.spec.name)

    def discard_previous(self) -> None:
        """Remove the Tune state, delete this sweep's MLflow runs and its registered models, so one
        experiment holds one sweep."""
        if self.storage.exists():
            shutil.rmtree(self.storage)
        for run in self.client.search_runs([self.exp_id], f"tags.sweep = '{self.spec.name}'", max_results=50000):
            self.client.delete_run(run.info.run_id)
        delete_registered(self.client, [registered_name(self.spec.name, cell) for cell in self.cells])

    def _best_weights_dir(self, phase: str) -> str:
        """Beside the phase's Tune folder, not in it (Tune reads every folder there as a trial)."""
        return str(self.storage / "best_weights" / phase)

    # ---- one Tuner per phase --------------------------------------------------------------------
    def _fit(self, plan: PhasePlan, param_space: dict, tune_config: tune.TuneConfig, resume: bool,
             total: int) -> tune.ResultGrid:
        """Run (or restore and finish) one phase's Tuner, its trials logged to MLflow as they go."""
        phase, path = plan.phase, self.storage / plan.phase
        self.parents[phase] = {name: parent_run(self.client, self.exp_id, cell, phase) for name, cell in self.cells.items()}
        logger = MLflowTrialLogger(self.uri, self.exp_id, self.parents[phase], self.cells, plan,
                                   unlogged_path=str(self.storage / f"mlflow_unlogged_{phase}.json"))
        progress = ProgressPrinter(phase, self.spec.metric, total, console.width)
        resources = {"cpu": self.spec.resources.cpu, "gpu": self.spec.resources.gpu}
        trainable = tune.with_resources(tune.with_parameters(gloss_trainable, plan=plan), resources)
        if resume and path.exists() and _can_restore(path):
            tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_unfinished=True, resume_errored=False)
        else:
            if path.exists():
                shutil.rmtree(path)
            run_config = tune.RunConfig(
                name=phase, storage_path=str(self.storage), callbacks=[logger, progress], verbose=0,
                failure_config=tune.FailureConfig(max_failures=1),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            )
            tuner = tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)
        results = tuner.fit()
        if _interrupted(results, total):
            raise SweepInterrupted(phase)
        reconcile_trial_runs(self.client, self.exp_id, self.spec.name, phase, _trial_ids(results))
        return results

    def search(self, resume: bool) -> SearchOutcome:
        spec = self.spec
        plan = PhasePlan("search", {name: cell.constants for name, cell in self.cells.items()}, self.threads,
                         best_weights_dir=self._best_weights_dir("search"))
        searcher = CellSearcher({name: SpaceSampler(cell.space) for name, cell in self.cells.items()},
                                spec.search.num_samples, spec.search.max_concurrent, spec.metric, spec.mode,
                                spec.search.seed)
        scheduler = CellASHA(spec.metric, spec.mode, spec.asha.max_t, spec.asha.grace_period, spec.asha.reduction_factor)
        total = spec.search.num_samples * len(self.cells)
        tune_config = tune.TuneConfig(
            metric=spec.metric, mode=spec.mode, search_alg=searcher, scheduler=scheduler, num_samples=total,
            max_concurrent_trials=spec.search.max_concurrent * len(self.cells),
            reuse_actors=True,  # a trial's process (torch, transformers imported) serves the next one
        )
        results = self._fit(plan, {}, tune_config, resume, total)
        searcher.restore_from_dir(str(self.storage / "search"))  # the studies as Tune saved them at the end
        best = {}
        pick = max if spec.mode == "max" else min
        for name in self.cells:
            scored = []
            for result in results:
                history = result.metrics_dataframe
                if result.config.get(CELL) == name and history is not None and spec.metric in history:
                    value = history[spec.metric].agg(spec.mode)  # the best epoch's value (NaN skipped)
                    if value == value:
                        scored.append((float(value), result))
            if scored:
                value, result = pick(scored, key=lambda pair: pair[0])
                best[name] = BestTrial(plan.values(result.config), value, result.metrics["trial_id"])
        return SearchOutcome(best, searcher.trial_states())

    def replicate(self, search: SearchOutcome, resume: bool) -> ReplicateOutcome:
        spec = self.spec
        constants = {name: {k: v for k, v in best.config.items() if k != "seed"} for name, best in search.best.items()}
        plan = PhasePlan("replicate", constants, self.threads, report_test=True, artifacts=spec.replicate.artifacts,
                         export=spec.replicate.export, best_weights_dir=self._best_weights_dir("replicate"))
        param_space = {CELL: tune.grid_search(list(constants)), "seed": tune.grid_search(spec.replicate.seeds)}
        tune_config = tune.TuneConfig(num_samples=1, max_concurrent_trials=None, reuse_actors=True)
        results = self._fit(plan, param_space, tune_config, resume, len(constants) * len(spec.replicate.seeds))
        finals: dict[str, list[dict]] = {}
        for result in results:
            if result.error is None and result.metrics.get("final"):
                finals.setdefault(result.config[CELL], []).append(result.metrics)
        return ReplicateOutcome(finals)

    # ---- recording in MLflow --------------------------------------------------------------------
    def record_search(self, search: SearchOutcome) -> None:
        for name, parent in self.parents["search"].items():
            for state, count in search.optuna.get(name, {}).items():
                self.client.log_metric(parent, f"optuna_{state.lower()}", count)
            best = search.best.get(name)
            if best is None:
                self.client.set_tag(parent, "error", "no trial of this cell reported the metric")
                self.client.set_terminated(parent, "FAILED")
                continue
            self.client.log_metric(parent, f"best_{self.spec.metric}", best.value)
            self.client.log_dict(parent, best.config, "best_config.json")
            self.client.set_terminated(parent, "FINISHED")

    def record_replicate(self, replicate: ReplicateOutcome) -> None:
        for name, parent in self.parents["replicate"].items():
            rows = replicate.finals.get(name, [])
            spreads = {key: mean_std(row[key] for row in rows if key in row) for key in TEST_KEYS}
            for key, spread in spreads.items():
                if spread.n:
                    self.client.log_metric(parent, f"{key}_mean", spread.mean)
                    self.client.log_metric(parent, f"{key}_std", 0.0 if spread.n == 1 else spread.std)
            if rows and self.spec.replicate.export:
                self.register_best(name, rows, spreads)
            self.client.set_terminated(parent, "FINISHED" if rows else "FAILED")

    def register_best(self, cell: str, rows: list[dict], spreads: dict) -> str | None:
        """Register the cell's replicate with the best validation metric (never chosen on test) as
        `<sweep>.<cell>`; its tags carry the cell's test mean ± std over seeds and the run id."""
        metric, mode = self.spec.metric, self.spec.mode
        scored = [row for row in rows if isinstance(row.get(metric), (int, float))]
        if not scored:
            return None
        sign = -1 if mode == "max" else 1  # ties go to the lowest replicate seed
        chosen = min(scored, key=lambda row: (sign * row[metric], row.get("config", {}).get("seed", 0)))
        query = f"tags.trial_id = '{chosen['trial_id']}' and tags.phase = 'replicate' and tags.kind = 'trial'"
        found = self.client.search_runs([self.exp_id], query, max_results=1)
        model_uri = found[0].data.tags.get("model_uri") if found else None
        if model_uri is None:
            return None
        run_id = found[0].info.run_id
        tags = {"sweep": self.spec.name, "cell": cell, "run_id": run_id, "seed": found[0].data.tags.get("seed", ""),
                "selected_on": f"validation {metric} = {chosen[metric]:.4f} ({mode}), the best of {len(rows)} seeds"}
        for key, spread in spreads.items():
            if spread.n:
                percent = key != "test_macro_silhouette"
                tags[key] = spread.format(scale=100 if percent else 1, decimals=2 if percent else 4) + (
                    f"{' %' if percent else ''} (mean ± std over {spread.n} seeds)")
        name = registered_name(self.spec.name, cell)
        version = register(self.client, name, model_uri, run_id, tags)
        self.client.set_tag(run_id, "registered_as", f"models:/{name}/{version}")
        return version

    def summarise(self, search: SearchOutcome, replicate: ReplicateOutcome) -> dict:
        spec = self.spec
        table = Table(title=f"sweep {spec.name}: best {spec.metric} (search) and test metrics (replicate seeds)")
        for column in ("cell", f"best {spec.metric}", "n", "test accuracy", "test macro-F1"):
            table.add_column(column)
        rows = []
        for name in self.cells:
            reps = replicate.finals.get(name, [])

            def fmt(key: str) -> str:
                spread = mean_std(r[key] for r in reps if key in r)
                return spread.format(scale=100) if spread.n else "-"

            best = search.best.get(name)
            row = {"cell": name, "best": best.value if best else None, "n": len(reps),
                   "test_accuracy": fmt("test_accuracy"), "test_macro_f1": fmt("test_macro_f1")}
            rows.append(row)
            table.add_row(name, "-" if best is None else f"{best.value:.4f}", str(len(reps)), row["test_accuracy"],
                          row["test_macro_f1"])
        console.print(table)
        best = {name: asdict(trial) for name, trial in search.best.items()}
        run_id = summary_run(self.client, self.exp_id, spec)
        with tempfile.TemporaryDirectory() as folder:
            Path(folder, "summary.json").write_text(json.dumps({"cells": rows, "best": best}, indent=2, default=str))
            with open(Path(folder, "summary.txt"), "w") as f:
                Console(file=f, width=160).print(table)
            self.client.log_artifacts(run_id, folder)
        self.client.set_terminated(run_id, "FINISHED")
        return {"cells": rows, "best": best, "replicate": replicate.finals, "experiment_id": self.exp_id,
                "tracking_uri": self.uri, "optuna": search.optuna}


def run_sweep(spec: SweepSpec, *, tracking_uri: str | None = None, resume: bool = False, restart: bool = False,
              storage_path: str | None = None, ray_address: str | None = None, num_cpus: int | None = None) -> dict:
    """Start (or join) Ray, run every phase, shut Ray down if this call started it."""
    started = False
    # fail fast on an unreachable server: the sweep's own queue and retries take over (resilience.py)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    quiet_mlflow()
    if not ray.is_initialized():
        # RAY_AUTH_MODE is left to the user: unset, a new local cluster runs with Ray's default token
        # auth (token made in ~/.ray/auth_token), which matters because Ray binds the node's address,
        # not loopback; joining a cluster follows that cluster's mode
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
        ray.init(address=ray_address, include_dashboard=False, num_cpus=num_cpus, log_to_driver=False,
                 runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}})
        started = True
    try:
        return SweepRunner(spec, tracking_uri, storage_path).run(resume, restart)
    finally:
        if started:
            ray.shutdown()
