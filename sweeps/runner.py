"""Run a sweep: search (every cell at once, one Optuna study and ASHA per cell), replicate (each
cell's best config on N seeds, evaluated on test), optionally sensitivity (one-at-a-time
perturbations of each chosen cell's best config on the replicate seeds), then a summary table,
printed and logged.

Each phase runs one Tuner and returns a small outcome; recording that outcome in MLflow (parent
runs, best configs, test means) is a separate step. Trials are logged as they run by the phase's
`MLflowTrialLogger`.

Usage:
    gloss sweep run sweeps/specs/demo.yaml
    gloss sweep run sweeps/specs/mr_minilm.yaml --tracking-uri http://127.0.0.1:5000
    gloss sweep run sweeps/specs/demo.yaml --resume          # after Ctrl-C, a crash or SIGKILL
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import ray
from mlflow.tracking import MlflowClient
from ray import tune
from rich.console import Console
from rich.table import Table

from gloss_core.errors import UserError
from gloss_core.provenance import default_tracking_uri, redact
from gloss_core.spread import mean_std
from serving.registry import delete_registered, quiet_mlflow, register
from sweeps import preflight
from sweeps.cells import CellASHA, CellSearcher
from sweeps.record import summary_run
from sweeps.resilience import RetryingClient
from sweeps.sensitivity import Point, describe, points, tags
from sweeps.spec import Cell, SpaceSampler, SweepSpec
from sweeps.storage import SweepStorage
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


class SweepExists(UserError, FileExistsError):
    """The sweep's folder holds an earlier run, and neither --resume nor --restart was given."""


class PhaseFailed(RuntimeError):
    """Every trial of a phase failed: the sweep ends with exit status 3 (what ran is recorded)."""


def check_folder(storage: SweepStorage, resume: bool, restart: bool) -> None:
    """The sweep's folder may be used: absent, or carrying this sweep's marker, with --resume or
    --restart when it holds an earlier run."""
    if storage.exists():
        storage.refuse_unless_ours("delete" if restart else "write into")  # a folder another sweep (or none) owns
        if not resume and not restart:
            raise SweepExists(f"{storage} holds an earlier run of sweep {storage.name!r}: pass --resume to continue it, "
                              "or --restart to discard it and start again")


def spec_hash(spec: SweepSpec) -> str:
    return hashlib.sha256(json.dumps(spec.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


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


@dataclass
class SensitivityOutcome:
    points: list[Point]  # every perturbed config that ran
    skipped: dict[str, list[str]]  # cell -> why a perturbation was not run (out of range, not numeric, ...)
    finals: dict[str, list[dict]]  # point name -> the closing test report of each seed that finished


def _can_restore(storage: SweepStorage, phase: str) -> bool:
    """Restorable: Tune saved its state and at least one trial folder exists (a sweep interrupted
    before its first trial cannot be restored by Tune; it simply starts again)."""
    return tune.Tuner.can_restore(storage.uri_of(phase)) and bool(storage.folders(phase))


def _replicates_finished(results: tune.ResultGrid) -> bool:
    """Every replicate trial failed or sent its closing test report."""
    return all(result.error is not None or result.metrics.get("final") for result in results)


def _by_seed(finals: list[dict], key: str) -> dict[int, float]:
    """Training seed -> `key` of closing test reports (for pairing a point with its centre)."""
    return {r["config"]["seed"]: r[key] for r in finals if key in r and "config" in r}


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
        self.storage = SweepStorage(storage_path or spec.storage_path or "ray_results", spec.name)
        # phase-boundary calls wait out an outage; the Model Registry lives in the same store
        self.client = RetryingClient(MlflowClient(self.uri, registry_uri=self.uri))
        self.exp_id = experiment_id(self.client, spec.name, self.uri)
        self.cells = {cell.name: cell for cell in spec.cells()}
        self.threads = max(1, int(spec.resources.cpu))
        self.parents: dict[str, dict[str, str]] = {}  # phase -> cell -> its parent run

    def run(self, resume: bool = False, restart: bool = False) -> dict:
        check_folder(self.storage, resume, restart)
        if restart:
            self.discard_previous()
        self.storage.mark(spec_hash(self.spec))
        summary_run(self.client, self.exp_id, self.spec)  # created first: the spec, git commit, package versions
        self.announce(resume)
        try:
            search = self.search(resume)
            self.record_search(search)
            if not search.best:
                raise PhaseFailed(f"every search trial failed or reported no {self.spec.metric}; each run's `error` tag "
                                  f"says why (gloss sweep status {self.spec.name})")
            replicate = ReplicateOutcome({})
            if self.spec.replicate:
                replicate = self.replicate(search, resume)
                self.record_replicate(replicate)
                if not replicate.finals:
                    raise PhaseFailed("every replicate trial failed; each run's `error` tag says why")
            sensitivity = SensitivityOutcome([], {}, {})
            if self.spec.sensitivity:
                sensitivity = self.sensitivity(search, resume)
                self.record_sensitivity(sensitivity)
                if sensitivity.points and not sensitivity.finals:
                    raise PhaseFailed("every sensitivity trial failed; each run's `error` tag says why")
            return self.summarise(search, replicate, sensitivity)
        finally:
            close_running_runs(self.client, self.exp_id, self.spec.name)

    def announce(self, resume: bool) -> None:
        """What is about to run and where its results go, in two lines."""
        spec = self.spec
        replicate = f", then each cell's best on seeds {spec.replicate.seeds}" if spec.replicate else ""
        console.print(f"sweep {spec.name}{' (resumed)' if resume else ''}: {len(self.cells)} cells, "
                      f"{spec.search.num_samples} search trials each (ASHA up to {spec.asha.max_t} epochs){replicate}",
                      markup=False, highlight=False)
        if spec.sensitivity:
            console.print(f"then sensitivity of {', '.join(spec.sensitivity.losses)} around its best config: "
                          f"{describe(spec.sensitivity.params)} on seeds {spec.sensitivity_seeds()}",
                          markup=False, highlight=False)
        console.print(f"MLflow: {redact(self.uri)} | Tune state: {self.storage}", markup=False, highlight=False)

    def discard_previous(self) -> None:
        """Remove the Tune state, delete this sweep's MLflow runs and its registered models, so one
        experiment holds one sweep; say what went. A folder without this sweep's marker is refused
        before anything is deleted."""
        self.storage.refuse_unless_ours("delete")
        existed = self.storage.exists()
        marker = self.storage.marker() if existed else None
        self.storage.remove()
        runs = self.client.search_runs([self.exp_id], f"tags.sweep = '{self.spec.name}'", max_results=50000)
        for run in runs:
            self.client.delete_run(run.info.run_id)
        models = delete_registered(self.client, [registered_name(self.spec.name, cell) for cell in self.cells])
        if existed or runs or models:
            folder = "no Tune state" if not existed else str(self.storage) + (
                f" (sweep {marker['sweep']}, started {marker.get('created', '?')}, spec sha256 "
                f"{str(marker.get('spec_sha256', '?'))[:12]})" if marker else " (a sweep folder from before markers)")
            console.print(f"--restart: deleted {folder}, {len(runs)} MLflow runs of sweep {self.spec.name!r} and "
                          f"{len(models)} registered models", markup=False, highlight=False)

    def _best_weights_dir(self, phase: str) -> str:
        """Beside the phase's Tune folder, not in it (Tune reads every folder there as a trial)."""
        return self.storage.uri_of("best_weights", phase)

    # ---- one Tuner per phase --------------------------------------------------------------------
    def _fit(self, plan: PhasePlan, param_space: dict, tune_config: tune.TuneConfig, resume: bool,
             total: int, finished, cells: dict[str, Cell] | None = None) -> tune.ResultGrid:
        """Run (or restore and finish) one phase's Tuner, its trials logged to MLflow as they go.
        Tune returns normally on SIGINT, and marks the trials it stopped TERMINATED: the phase is
        complete only if every expected trial exists and `finished(results)` says they all ended.
        `cells`: the phase's cells by name (default: the grid's); a sensitivity point's runs go
        under its grid cell's parent run."""
        phase = plan.phase
        cells = self.cells if cells is None else cells
        bases = {cell.extra_tags.get("base_cell", name) for name, cell in cells.items()}
        base_parents = {base: parent_run(self.client, self.exp_id, self.cells[base], phase) for base in sorted(bases)}
        self.parents[phase] = base_parents
        parents = {name: base_parents[cell.extra_tags.get("base_cell", name)] for name, cell in cells.items()}
        logger = MLflowTrialLogger(self.uri, self.exp_id, parents, cells, plan,
                                   unlogged=self.storage.file(f"mlflow_unlogged_{phase}.json"))
        progress = ProgressPrinter(phase, self.spec.metric, total, console.width)
        resources = {"cpu": self.spec.resources.cpu, "gpu": self.spec.resources.gpu}
        trainable = tune.with_resources(tune.with_parameters(gloss_trainable, plan=plan), resources)
        if resume and self.storage.exists(phase) and _can_restore(self.storage, phase):
            tuner = tune.Tuner.restore(self.storage.uri_of(phase), trainable=trainable, resume_unfinished=True,
                                       resume_errored=False)
        else:
            self.storage.remove(phase)
            run_config = tune.RunConfig(
                name=phase, storage_path=self.storage.uri, callbacks=[logger, progress], verbose=0,
                failure_config=tune.FailureConfig(max_failures=1),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            )
            tuner = tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)
        results = tuner.fit()
        if len(results) < total or not finished(results):
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

        def finished(results) -> bool:  # Optuna heard how every trial ended; an interrupted one is still RUNNING
            with self.storage.local_copy("search", "searcher-state-*") as folder:
                searcher.restore_from_dir(folder)  # the studies as Tune saved them at the end
            return not any(states["RUNNING"] for states in searcher.trial_states().values())

        results = self._fit(plan, {}, tune_config, resume, total, finished)
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

    def _seeded(self, phase: str, constants: dict[str, dict], seeds: list[int], resume: bool,
                cells: dict[str, Cell] | None = None, artifacts: bool = False, export: bool = False) -> dict[str, list[dict]]:
        """Run each fixed config (name -> training options) on every seed, closing with the test
        metrics; returns name -> the closing report of each seed that finished."""
        plan = PhasePlan(phase, constants, self.threads, report_test=True, artifacts=artifacts, export=export,
                         best_weights_dir=self._best_weights_dir(phase))
        param_space = {CELL: tune.grid_search(list(constants)), "seed": tune.grid_search(seeds)}
        tune_config = tune.TuneConfig(num_samples=1, max_concurrent_trials=None, reuse_actors=True)
        results = self._fit(plan, param_space, tune_config, resume, len(constants) * len(seeds), _replicates_finished,
                            cells)
        finals: dict[str, list[dict]] = {}
        for result in results:
            if result.error is None and result.metrics.get("final"):
                finals.setdefault(result.config[CELL], []).append(result.metrics)
        return finals

    @staticmethod
    def _without_seed(best: BestTrial) -> dict:
        return {k: v for k, v in best.config.items() if k != "seed"}

    def replicate(self, search: SearchOutcome, resume: bool) -> ReplicateOutcome:
        spec = self.spec
        constants = {name: self._without_seed(best) for name, best in search.best.items()}
        return ReplicateOutcome(self._seeded("replicate", constants, spec.replicate.seeds, resume,
                                             artifacts=spec.replicate.artifacts, export=spec.replicate.export))

    def sensitivity(self, search: SearchOutcome, resume: bool) -> SensitivityOutcome:
        """Each chosen cell's best config perturbed one parameter at a time, on the replicate
        seeds; the replicate runs are the centre (not rerun)."""
        spec, sens = self.spec, self.spec.sensitivity
        found, skipped = [], {}
        for name, best in search.best.items():
            cell = self.cells[name]
            if cell.loss in sens.losses:
                mine, notes = points(name, self._without_seed(best), spec.losses[cell.loss].loss, spec.protocol,
                                     sens.params)
                found += mine
                if notes:
                    skipped[name] = notes
        for note in (note for notes in skipped.values() for note in notes):
            console.print(f"sensitivity: {note}", markup=False, highlight=False)
        if not found:
            return SensitivityOutcome([], skipped, {})
        cells = {p.name: dataclasses.replace(self.cells[p.cell], name=p.name, constants=p.constants, space={},
                                             extra_tags=tags(p)) for p in found}
        finals = self._seeded("sensitivity", {p.name: p.constants for p in found}, spec.sensitivity_seeds(), resume,
                              cells)
        return SensitivityOutcome(found, skipped, finals)

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

    def record_sensitivity(self, outcome: SensitivityOutcome) -> None:
        """Per cell: its points (param, direction, value) and the skipped perturbations with reasons."""
        for name, parent in self.parents.get("sensitivity", {}).items():
            mine = [dataclasses.asdict(p) | {"constants": None, "seeds_finished": len(outcome.finals.get(p.name, []))}
                    for p in outcome.points if p.cell == name]
            self.client.log_dict(parent, {"points": mine, "skipped": outcome.skipped.get(name, [])},
                                 "sensitivity_points.json")
            complete = all(p["seeds_finished"] for p in mine)
            self.client.set_terminated(parent, "FINISHED" if mine and complete else "FAILED")

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

    def summarise(self, search: SearchOutcome, replicate: ReplicateOutcome, sensitivity: SensitivityOutcome) -> dict:
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
        sens_table, sens_rows = self.sensitivity_table(replicate, sensitivity)
        if sens_table is not None:
            console.print(sens_table)
        registered = [registered_name(spec.name, name) for name in self.cells if replicate.finals.get(name)]
        if spec.replicate and spec.replicate.export and registered:
            console.print(f"registered models: {', '.join(registered)} (gloss predict models:/NAME/latest INPUT.csv)",
                          markup=False, highlight=False)
        best = {name: asdict(trial) for name, trial in search.best.items()}
        run_id = summary_run(self.client, self.exp_id, spec)
        with tempfile.TemporaryDirectory() as folder:
            Path(folder, "summary.json").write_text(json.dumps(
                {"cells": rows, "best": best, "sensitivity": sens_rows, "sensitivity_skipped": sensitivity.skipped},
                indent=2, default=str))
            with open(Path(folder, "summary.txt"), "w") as f:
                Console(file=f, width=160).print(table)
                if sens_table is not None:
                    Console(file=f, width=160).print(sens_table)
            self.client.log_artifacts(run_id, folder)
        self.client.set_terminated(run_id, "FINISHED")
        return {"cells": rows, "best": best, "replicate": replicate.finals, "experiment_id": self.exp_id,
                "tracking_uri": self.uri, "optuna": search.optuna, "sensitivity": sensitivity.finals,
                "sensitivity_points": [p.name for p in sensitivity.points]}

    @staticmethod
    def sensitivity_table(replicate: ReplicateOutcome, sensitivity: SensitivityOutcome) -> tuple[Table | None, list[dict]]:
        """Each point's test macro-F1 beside its centre (the replicate runs), paired over seeds."""
        if not sensitivity.points:
            return None, []
        table = Table(title="sensitivity: test macro-F1 of each perturbation, paired with the centre (replicate) seeds")
        for column in ("cell", "param", "value", "n", "test macro-F1", "Δ vs centre"):
            table.add_column(column)
        rows = []
        for point in sensitivity.points:
            centre = _by_seed(replicate.finals.get(point.cell, []), "test_macro_f1")
            mine = _by_seed(sensitivity.finals.get(point.name, []), "test_macro_f1")
            spread = mean_std(mine.values())
            delta = mean_std(mine[s] - centre[s] for s in mine if s in centre)
            row = {"point": point.name, "cell": point.cell, "param": point.param, "direction": point.direction,
                   "value": point.value, "n": spread.n, "test_macro_f1_mean": spread.mean if spread.n else None,
                   "delta_vs_centre": delta.mean if delta.n else None}
            rows.append(row)
            table.add_row(point.cell, point.param, f"{point.value:g} ({point.direction})", str(spread.n),
                          spread.format(scale=100) if spread.n else "-",
                          f"{100 * delta.mean:+.2f}" if delta.n else "-")
        return table, rows

def resolve_address(given: str | None) -> str:
    """--address, else RAY_ADDRESS (as `ray job submit` sets it), else "local": a new local cluster,
    never the one a possibly stale `ray_current_cluster` file names."""
    return given or os.environ.get("RAY_ADDRESS") or "local"


def run_sweep(spec: SweepSpec, *, tracking_uri: str | None = None, resume: bool = False, restart: bool = False,
              storage_path: str | None = None, ray_address: str | None = None, num_cpus: int | None = None) -> dict:
    """Check what can be checked first (store, storage, address), start (or join) Ray, check that
    a trial fits a node, run every phase, shut Ray down if this call started it."""
    uri = tracking_uri or spec.tracking_uri or default_tracking_uri()
    location = storage_path or spec.storage_path or "ray_results"
    preflight.check_tracking_uri(uri)
    preflight.check_storage(location)
    check_folder(SweepStorage(location, spec.name), resume, restart)
    started = False
    # fail fast on an unreachable server: the sweep's own queue and retries take over (resilience.py)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    quiet_mlflow()
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's own reporter, silent at verbose=0: our lines instead
    if not ray.is_initialized():
        # Only --address or RAY_ADDRESS joins a cluster ("local": never the cluster a stale
        # ray_current_cluster file names). RAY_AUTH_MODE is left to the user: unset, a local cluster
        # runs with Ray's default token auth (token made in ~/.ray/auth_token), which matters
        # because Ray binds the node's address, not loopback (the README says so, so Ray's notice
        # of its default is not repeated on every run); joining a cluster follows that cluster's mode.
        address = resolve_address(ray_address)
        preflight.check_address(address)
        logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(
            lambda record: "Token authentication is enabled" not in record.getMessage())
        # a failed trial: its reason is on its progress line and in its run's `error` tag, not a
        # traceback from Tune on the console
        logging.getLogger("ray.tune.execution.tune_controller").addFilter(
            lambda record: "Trial task failed" not in record.getMessage())
        logging.getLogger("ray.tune.tune").addFilter(lambda record: "Trials did not complete" not in record.getMessage())
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
        ray.init(address=address, include_dashboard=False, num_cpus=num_cpus, log_to_driver=False,
                 logging_level=logging.WARNING,
                 runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}})
        started = True
    try:
        preflight.check_resources(spec.resources.cpu, spec.resources.gpu, ray.nodes())
        return SweepRunner(spec, uri, location).run(resume, restart)
    finally:
        if started:
            ray.shutdown()
