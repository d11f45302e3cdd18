"""Run a sweep: search (every cell at once, one Optuna study and ASHA per cell), replicate (each
cell's best config on N seeds, evaluated on test), then a summary table, printed and logged.

Usage:
    gloss sweep run sweeps/specs/demo.yaml
    gloss sweep run sweeps/specs/mr_minilm.yaml --tracking-uri http://127.0.0.1:5000
    gloss sweep run sweeps/specs/demo.yaml --resume          # after Ctrl-C, a crash or SIGKILL
"""

from __future__ import annotations

import json
import os
import sys
import shutil
import statistics
import tempfile
from pathlib import Path

import ray
from mlflow.tracking import MlflowClient
from ray import tune
from rich.console import Console
from rich.table import Table

from gloss_core.provenance import git_commit, package_versions
from sweeps.cells import CellASHA, CellSearcher
from sweeps.resilience import RetryingClient, redact
from sweeps.spec import SpaceSampler, SweepSpec
from sweeps.tracking import MLflowTrialLogger, ProgressPrinter, default_tracking_uri, experiment_id, parent_run
from trainables.trainable import gloss_trainable

console = Console(width=None if sys.stdout.isatty() else 160)
TEST_KEYS = ("test_accuracy", "test_macro_f1", "test_macro_silhouette")


def _trainable(spec: SweepSpec):
    threads = max(1, int(spec.resources.cpu))
    resources = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
    return tune.with_resources(gloss_trainable, resources), threads


def _can_restore(path: Path) -> bool:
    """Restorable: Tune saved its state and at least one trial folder exists (a sweep interrupted
    before its first trial cannot be restored by Tune; it simply starts again)."""
    return tune.Tuner.can_restore(str(path)) and any(p.is_dir() for p in path.iterdir())


class SweepInterrupted(RuntimeError):
    """The sweep was stopped (Ctrl-C, SIGINT from `ray job stop`); its state is saved for --resume."""


def _interrupted(results, expected: int) -> bool:
    """Tune returns normally on SIGINT: the phase is complete only if every expected trial exists
    and reached a final state."""
    trials = results._experiment_analysis.trials
    return len(trials) < expected or any(t.status not in ("TERMINATED", "ERROR") for t in trials)


def reconcile_trial_runs(client: MlflowClient, exp_id: str, sweep: str, phase: str, trial_ids: set[str]) -> int:
    """Delete runs of trials that the restored experiment does not know (started after the last
    state snapshot, before a SIGKILL): they would be orphans, and the trials run again anyway."""
    runs = client.search_runs([exp_id], f"tags.sweep = '{sweep}' and tags.phase = '{phase}' and tags.kind = 'trial'",
                              max_results=50000)
    orphans = [r for r in runs if r.data.tags.get("trial_id") not in trial_ids]
    for run in orphans:
        client.delete_run(run.info.run_id)
    return len(orphans)


def optuna_states(storage: Path) -> dict[str, dict[str, int]]:
    """Per cell, how many Optuna trials ended COMPLETE, PRUNED or FAIL (read from the saved searcher)."""
    searcher = CellSearcher.__new__(CellSearcher)
    searcher.restore_from_dir(str(storage))
    out = {}
    for cell in searcher.searchers:
        states = [t.state.name for t in searcher.study(cell).trials]
        out[cell] = {state: states.count(state) for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    return out


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
        self.client = RetryingClient(MlflowClient(self.uri))  # phase-boundary calls wait out an outage
        self.exp_id = experiment_id(self.client, spec.name)
        self.cells = spec.cells()

    # ---- phases ---------------------------------------------------------------------------------
    def run(self, resume: bool = False, restart: bool = False) -> dict:
        if restart:
            self.discard_previous()
        elif not resume and self.storage.exists():
            raise FileExistsError(f"{self.storage} holds an earlier run of sweep {self.spec.name!r}: "
                                  "pass --resume to continue it, or --restart to discard it and start again")
        self._summary_run()  # created first: it records the spec, git commit and package versions
        try:
            search = self.search(resume)
            replicate = self.replicate(search, resume) if self.spec.replicate else {}
            summary = self.summarise(search, replicate)
        finally:
            close_running_runs(self.client, self.exp_id, self.spec.name)
        return summary

    def discard_previous(self) -> None:
        """Remove the Tune state and delete this sweep's MLflow runs, so one experiment holds one sweep."""
        if self.storage.exists():
            shutil.rmtree(self.storage)
        for run in self.client.search_runs([self.exp_id], f"tags.sweep = '{self.spec.name}'", max_results=50000):
            self.client.delete_run(run.info.run_id)

    def _tuner(self, name: str, trainable, param_space, tune_config, callback, resume: bool, total: int) -> tune.Tuner:
        path = self.storage / name
        progress = ProgressPrinter(name, self.spec.metric, total, console.width)
        run_config = tune.RunConfig(
            name=name, storage_path=str(self.storage), callbacks=[callback, progress], verbose=0,
            failure_config=tune.FailureConfig(max_failures=1),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        )
        if resume and path.exists() and _can_restore(path):
            return tune.Tuner.restore(str(path), trainable=trainable, resume_unfinished=True, resume_errored=False)
        if path.exists():
            shutil.rmtree(path)
        return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)

    @staticmethod
    def _trial_ids(results) -> set[str]:
        return {t.trial_id for t in results._experiment_analysis.trials}

    def _callback(self, phase: str) -> MLflowTrialLogger:
        parents = {c["name"]: parent_run(self.client, self.exp_id, self.spec.name, c, phase) for c in self.cells}
        tags = {c["name"]: {"sweep": self.spec.name, "cell": c["name"], "dataset": c["dataset"], "model": c["model"],
                            "loss": c["loss"], "seed": str(c["seed"])} for c in self.cells}
        self.parents = parents
        return MLflowTrialLogger(self.uri, self.exp_id, parents, tags, phase,
                                 unlogged_path=str(self.storage / f"mlflow_unlogged_{phase}.json"))

    def search(self, resume: bool) -> dict:
        spec = self.spec
        trainable, threads = _trainable(spec)
        searcher = CellSearcher(
            {c["name"]: (SpaceSampler(c["space"]), {**c["constants"], "_threads": threads}) for c in self.cells},
            spec.search.num_samples, spec.search.max_concurrent, spec.metric, spec.mode, spec.search.seed)
        scheduler = CellASHA(spec.metric, spec.mode, spec.asha.max_t, spec.asha.grace_period, spec.asha.reduction_factor)
        tune_config = tune.TuneConfig(
            metric=spec.metric, mode=spec.mode, search_alg=searcher, scheduler=scheduler,
            num_samples=spec.search.num_samples * len(self.cells),
            max_concurrent_trials=spec.search.max_concurrent * len(self.cells),
            reuse_actors=True,  # a trial's process (torch, transformers imported) serves the next one
        )
        callback = self._callback("search")
        tuner = self._tuner("search", trainable, {}, tune_config, callback, resume,
                            spec.search.num_samples * len(self.cells))
        results = tuner.fit()
        if _interrupted(results, spec.search.num_samples * len(self.cells)):
            raise SweepInterrupted("search")
        reconcile_trial_runs(self.client, self.exp_id, spec.name, "search", self._trial_ids(results))
        self.optuna = optuna_states(self.storage / "search")
        best = {}
        for cell in self.cells:
            trials = [r for r in results if r.config and r.config.get("_cell") == cell["name"]]
            scored = [(r.metrics_dataframe[spec.metric].max() if spec.mode == "max" else r.metrics_dataframe[spec.metric].min(), r)
                      for r in trials if r.metrics_dataframe is not None and spec.metric in r.metrics_dataframe]
            scored = [(v, r) for v, r in scored if v == v]  # drop NaN
            parent = self.parents[cell["name"]]
            for state, count in self.optuna.get(cell["name"], {}).items():
                self.client.log_metric(parent, f"optuna_{state.lower()}", count)
            if not scored:
                self.client.set_tag(parent, "error", "no trial of this cell reported the metric")
                self.client.set_terminated(parent, "FAILED")
                continue
            value, result = (max if spec.mode == "max" else min)(scored, key=lambda pair: pair[0])
            config = {k: v for k, v in result.config.items() if not k.startswith("_")}
            best[cell["name"]] = {"config": config, "value": float(value), "trial_id": result.path and Path(result.path).name}
            self.client.log_metric(parent, f"best_{spec.metric}", float(value))
            self.client.log_dict(parent, config, "best_config.json")
            self.client.set_terminated(parent, "FINISHED")
        return best

    def replicate(self, best: dict, resume: bool) -> dict:
        spec = self.spec
        if not best:
            return {}
        trainable, threads = _trainable(spec)
        replicas = []
        for cell_name, info in best.items():
            for seed in spec.replicate.seeds:
                replicas.append({**info["config"], "seed": seed, "_cell": cell_name, "_threads": threads,
                                 "_report_test": True, "_artifacts": spec.replicate.artifacts})
        tune_config = tune.TuneConfig(num_samples=1, max_concurrent_trials=None, reuse_actors=True)
        callback = self._callback("replicate")
        tuner = self._tuner("replicate", trainable, {"_replica": tune.grid_search(replicas)}, tune_config, callback,
                            resume, len(replicas))
        results = tuner.fit()
        if _interrupted(results, len(replicas)):
            raise SweepInterrupted("replicate")
        reconcile_trial_runs(self.client, self.exp_id, spec.name, "replicate", self._trial_ids(results))
        out: dict[str, list[dict]] = {}
        for r in results:
            if r.error is None and r.metrics and r.metrics.get("final"):
                out.setdefault(r.config["_replica"]["_cell"], []).append(r.metrics)
        for cell in self.cells:
            parent = self.parents[cell["name"]]
            rows = out.get(cell["name"], [])
            for key in TEST_KEYS:
                values = [row[key] for row in rows if key in row]
                if values:
                    self.client.log_metric(parent, f"{key}_mean", statistics.fmean(values))
                    self.client.log_metric(parent, f"{key}_std", statistics.stdev(values) if len(values) > 1 else 0.0)
            self.client.set_terminated(parent, "FINISHED" if rows else "FAILED")
        return out

    # ---- summary --------------------------------------------------------------------------------
    def summarise(self, best: dict, replicate: dict) -> dict:
        spec = self.spec
        table = Table(title=f"sweep {spec.name}: best {spec.metric} (search) and test metrics (replicate seeds)")
        for column in ("cell", f"best {spec.metric}", "n", "test accuracy", "test macro-F1"):
            table.add_column(column)
        rows = []
        for cell in self.cells:
            name = cell["name"]
            reps = replicate.get(name, [])

            def fmt(key):
                values = [r[key] for r in reps if key in r]
                if not values:
                    return "-"
                std = statistics.stdev(values) if len(values) > 1 else 0.0
                return f"{100 * statistics.fmean(values):.2f} ± {100 * std:.2f}"

            search_value = best.get(name, {}).get("value")
            row = {"cell": name, "best": search_value, "n": len(reps), "test_accuracy": fmt("test_accuracy"),
                   "test_macro_f1": fmt("test_macro_f1")}
            rows.append(row)
            table.add_row(name, "-" if search_value is None else f"{search_value:.4f}", str(len(reps)),
                          row["test_accuracy"], row["test_macro_f1"])
        console.print(table)
        summary_run = self._summary_run()
        with tempfile.TemporaryDirectory() as folder:
            Path(folder, "summary.json").write_text(json.dumps({"cells": rows, "best": best}, indent=2, default=str))
            with open(Path(folder, "summary.txt"), "w") as f:
                Console(file=f, width=160).print(table)
            self.client.log_artifacts(summary_run, folder)
        self.client.set_terminated(summary_run, "FINISHED")
        return {"cells": rows, "best": best, "replicate": replicate, "experiment_id": self.exp_id,
                "tracking_uri": self.uri, "optuna": getattr(self, "optuna", {})}

    def _summary_run(self) -> str:
        query = f"tags.sweep = '{self.spec.name}' and tags.kind = 'summary'"
        found = self.client.search_runs([self.exp_id], query, max_results=1)
        if found:
            return found[0].info.run_id
        tags = {"sweep": self.spec.name, "kind": "summary", "phase": "summary", "git_commit": git_commit(),
                "package_versions": json.dumps(package_versions())}
        run_id = self.client.create_run(self.exp_id, run_name="summary", tags=tags).info.run_id
        spec = self.spec.model_dump(mode="json", by_alias=True)
        spec["tracking_uri"] = redact(spec["tracking_uri"]) if spec.get("tracking_uri") else None
        self.client.log_dict(run_id, spec, "spec.json")
        return run_id


def run_sweep(spec: SweepSpec, *, tracking_uri: str | None = None, resume: bool = False, restart: bool = False,
              storage_path: str | None = None, ray_address: str | None = None, num_cpus: int | None = None) -> dict:
    """Start (or join) Ray, run every phase, shut Ray down if this call started it."""
    started = False
    # fail fast on an unreachable server: the sweep's own queue and retries take over (resilience.py)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
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
