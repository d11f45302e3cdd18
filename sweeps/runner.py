"""Run a sweep: search (every cell at once, one Optuna study and ASHA per cell), replicate (each
cell's best config on N seeds, evaluated on test), optionally sensitivity (one-at-a-time
perturbations of each chosen cell's best config on the replicate seeds), then a summary.

This module orchestrates the phases and nothing else. Each phase runs one Tuner and returns a
typed outcome (`outcomes.py`); recording it in MLflow is a separate step (`recording.py`, which
registers each cell's best model through `registering.py`); trials are logged as they run by the
phase's `tracking.MLflowTrialLogger`; the console lines are `console.py`'s and `progress.py`'s;
Ray is started or joined by `ray_session.py`.

Usage:
    gloss sweep run sweeps/specs/demo.yaml
    gloss sweep run sweeps/specs/mr_minilm.yaml --tracking-uri http://127.0.0.1:5000
    gloss sweep run sweeps/specs/demo.yaml --resume          # after Ctrl-C, a crash or SIGKILL
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import asdict

import ray
from mlflow.tracking import MlflowClient
from ray import tune

from gloss_core.provenance import default_tracking_uri
from gloss_core.report import SCORE
from serving.registry import delete_registered, quiet_mlflow
from sweeps import console, preflight
from sweeps.cell_groups import CellGroup, plan_groups, planned_cells, read_groups, select_cells, write_groups
from sweeps.cells import CellASHA, CellSearcher, SchedulerState
from sweeps.failures import error_reason, error_text
from sweeps.history import STORAGE, STORAGE_ID, SpecChange, kept_uri, recorded_spec
from sweeps.mlflow_runs import close_running_runs, delete_sweep_runs, experiment_id, parent_run, reconcile_trial_runs
from sweeps.outcomes import (ReplicateOutcome, SearchOutcome, SensitivityOutcome, best_trials, closing_reports,
                             replicates_finished, trial_ids)
from sweeps.pending import pending_trials  # issue 20: trials pending at once
from sweeps.progress import ProgressPrinter
from sweeps.ray_session import ray_session, sigterm_as_sigint
from sweeps.record import summary_run
from sweeps.recording import PhaseRecorder
from sweeps.registering import registered_name
from sweeps.resilience import RetryingClient
from sweeps.resources import CellResources, distinct_needs  # issue 20: resources per cell
from sweeps.sensitivity import points, tags
from sweeps.spec import Cell, SpaceSampler, SweepSpec
from sweeps.startup import PhaseFailed, Start, SweepInterrupted, started  # noqa: F401 - the errors: the runner's API
from sweeps.storage import SweepStorage, check_folder
from sweeps.tracking import MLflowTrialLogger, restored_into
from trainables.plan import CELL, PhasePlan
from trainables.trainable import gloss_trainable


def spec_hash(spec: SweepSpec) -> str:
    return hashlib.sha256(json.dumps(spec.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


class NotRestorable(RuntimeError):
    """A finished group read back for the tables has a phase Tune cannot restore (one added to the
    spec after the group finished): it is left as it is, not trained."""


def _can_restore(storage: SweepStorage, phase: str) -> bool:
    """Restorable: Tune saved its state and at least one trial folder exists (a sweep interrupted
    before its first trial cannot be restored by Tune; it simply starts again)."""
    return tune.Tuner.can_restore(storage.uri_of(phase)) and bool(storage.folders(phase))


def _without_tune_limit(tuner: tune.Tuner) -> None:
    """A search started by an earlier version set `max_concurrent_trials`, so its restored Tuner
    would wrap the searcher in Tune's ConcurrencyLimiter, which drops the end of every trial the
    searcher did not suggest (a retried one) and the phase would never finish. Tune has no public
    setter; `CellSearcher` bounds each cell itself."""
    config = getattr(getattr(tuner, "_local_tuner", None), "_tune_config", None)
    if config is not None and config.max_concurrent_trials:
        config.max_concurrent_trials = None


class SweepRunner:
    def __init__(self, spec: SweepSpec, tracking_uri: str | None = None, storage_path: str | None = None):
        self.spec = spec
        self.uri = tracking_uri or spec.tracking_uri or default_tracking_uri()
        self.storage = SweepStorage(storage_path or spec.storage_path or "ray_results", spec.name)
        # phase-boundary calls wait out an outage; the Model Registry lives in the same store
        self.client = RetryingClient(MlflowClient(self.uri, registry_uri=self.uri))
        self.exp_id = experiment_id(self.client, spec.name, self.uri)
        self.recorder = PhaseRecorder(self.client, self.exp_id, spec)
        self.cells = {cell.name: cell for cell in spec.cells()}
        self.group = CellGroup("", list(self.cells))  # the cells whose phases run now (`sweeps.cell_groups`)
        self.parents: dict[str, dict[str, str]] = {}  # phase -> cell -> its parent run
        self.phase = "search"  # the phase running (or about to)
        self.retry_failed = False  # --resume --retry-failed: restart the failed trials of the phases that may
        self.reading_back = False  # the group runs only to be read back: a phase that cannot be restored is not started

    def run(self, resume: bool = False, restart: bool = False, accepted: list[SpecChange] | None = None,
            retry_failed: bool = False, cells: str | None = None) -> dict:
        """Every phase in turn, for each group of cells that runs (`sweeps.cell_groups`). `accepted`:
        the spec changes a resume accepted (`history.check_resumed_spec`); `retry_failed`: restart each
        phase's failed trials (`_may_retry` says which phases may); `cells`: the `--cells` pattern
        (None: every cell)."""
        selected = select_cells(list(self.cells), cells)
        check_folder(self.storage, resume, restart)
        if restart:
            self.discard_previous()
        started_with = (self.storage.marker() or {}).get("tracking_uri") if resume else None
        marker = self.storage.mark(spec_hash(self.spec), recorded_spec(self.spec), kept_uri(self.uri),
                                   [str(change) for change in accepted or []])
        if started_with and started_with != marker["tracking_uri"]:
            console.say(f"the sweep records to {marker['tracking_uri']} from now on (it started with {started_with})")
        # created first: the spec, git commit, package versions, and which storage folder is this sweep's
        summary = summary_run(self.client, self.exp_id, self.spec, {STORAGE_ID: marker["id"], STORAGE: str(self.storage)})
        groups = read_groups(self.storage, list(self.cells))
        planned = plan_groups(groups, list(self.cells), selected, cells)
        write_groups(self.storage, groups)  # before anything trains: a cell stays in the group that started it
        console.announce(self.spec, len(planned.training()), self.uri, str(self.storage), resume,
                         of=len(self.cells) if cells is not None else None)
        console.groups(planned, resume and retry_failed, selected=len(selected) if cells is not None else None)
        if accepted:
            self.client.log_dict(summary, {"accepted_changes": marker["accepted_changes"]}, "resume_changes.json")
            console.say(f"resumed with {len(accepted)} spec change(s), recorded in the summary run: "
                        + "; ".join(str(change) for change in accepted))
        search, replicate, sensitivity = SearchOutcome({}, {}), ReplicateOutcome({}), SensitivityOutcome([], {}, {})
        failed: list[str] = []  # a group whose phase failed whole does not stop the other groups
        shown: set[str] = set()
        try:
            for group in planned.train + planned.restore:
                self.group = group
                self.retry_failed = resume and retry_failed and group in planned.train
                self.reading_back = group in planned.restore
                try:
                    found = self.run_group(resume)
                except PhaseFailed as err:
                    if len(planned.train) + len(planned.restore) == 1:
                        raise
                    failed.append(f"{group.label()}: {err}")
                    continue
                except NotRestorable as err:
                    console.say(f"{group.label()}: {err}; not in the tables (select it with --cells to run it)")
                    continue
                for whole, part in zip((search, replicate, sensitivity), found):
                    whole.merge(part)
                shown.update(group.cells)
                if not group.done:
                    group.done = True
                    write_groups(self.storage, groups)
            summary = self.summarise(search, replicate, sensitivity, [name for name in self.cells if name in shown])
            if failed:
                raise PhaseFailed("; ".join(failed) + " (the other groups ran; --resume --retry-failed retries)")
            return summary
        except KeyboardInterrupt:  # a signal between two phases' Tuners: nothing of a phase is half-done
            raise SweepInterrupted(self.phase) from None
        finally:
            close_running_runs(self.client, self.exp_id, self.spec.name)

    def run_group(self, resume: bool) -> tuple[SearchOutcome, ReplicateOutcome, SensitivityOutcome]:
        """The phases of `self.group`'s cells, each recorded in MLflow as it ends."""
        self.parents = {}  # a phase this group does not run (no sensitivity point) records nothing
        search = self.search(resume)
        self.recorder.search(self.parents["search"], search)
        if not search.best:
            raise PhaseFailed(f"every search trial failed or reported no {self.spec.metric}; each run's `error` tag "
                              f"says why (gloss sweep status {self.spec.name})")
        replicate = ReplicateOutcome({})
        if self.spec.replicate:
            replicate = self.replicate(search, resume)
            self.recorder.replicate(self.parents["replicate"], replicate)
            if not replicate.finals:
                raise PhaseFailed("every replicate trial failed; each run's `error` tag says why")
        sensitivity = SensitivityOutcome([], {}, {})
        if self.spec.sensitivity:
            sensitivity = self.sensitivity(search, resume)
            self.recorder.sensitivity(self.parents.get("sensitivity", {}), sensitivity)
            if sensitivity.points and not sensitivity.finals:
                raise PhaseFailed("every sensitivity trial failed; each run's `error` tag says why")
        return search, replicate, sensitivity

    def discard_previous(self) -> None:
        """Remove the Tune state, delete this sweep's MLflow runs and its registered models, so one
        experiment holds one sweep; say what went. A folder without this sweep's marker is refused
        before anything is deleted."""
        self.storage.refuse_unless_ours("delete")
        existed = self.storage.holds_run()
        marker = self.storage.marker() if existed else None
        self.storage.remove()
        runs = delete_sweep_runs(self.client, self.exp_id, self.spec.name)
        models = delete_registered(self.client, [registered_name(self.spec.name, cell) for cell in self.cells])
        if existed or runs or models:
            folder = "no Tune state" if not existed else str(self.storage) + (
                f" (sweep {marker['sweep']}, started {marker.get('created', '?')}, spec sha256 "
                f"{str(marker.get('spec_sha256', '?'))[:12]})" if marker else " (a sweep folder from before markers)")
            console.restarted(folder, runs, len(models), self.spec.name)

    @property
    def group_cells(self) -> dict[str, Cell]:
        """The cells of the group whose phases run now, by name."""
        return {name: self.cells[name] for name in self.group.cells}

    def _threads(self, cells: dict[str, Cell] | None = None) -> dict[str, int]:
        """Per cell, torch threads per trial: the whole CPUs its resources give a trial (at least 1)."""
        return {name: max(1, int(cell.resources.cpu)) for name, cell in (cells or self.group_cells).items()}

    def _best_weights_dir(self, phase: str) -> str:
        """Beside the phase's Tune folder, not in it (Tune reads every folder there as a trial)."""
        return self.storage.uri_of("best_weights", self.group.folder(phase))

    # ---- one Tuner per phase --------------------------------------------------------------------
    def _fit(self, plan: PhasePlan, param_space: dict, tune_config: tune.TuneConfig, resume: bool,
             total: int, finished, cells: dict[str, Cell] | None = None, callbacks: tuple = (),
             pending: int | None = None) -> tune.ResultGrid:
        """Run (or restore and finish) one phase's Tuner, its trials logged to MLflow as they go.
        Tune returns normally on SIGINT, and marks the trials it stopped TERMINATED: the phase is
        complete only if every expected trial exists and `finished(results)` says they all ended.
        `cells`: the phase's cells by name (default: the grid's); a sensitivity point's runs go
        under its grid cell's parent run. `callbacks`: the phase's own, after the trial logger and
        the progress line (a restored Tuner keeps those it started with). `pending`: trials Tune
        keeps pending at once (`sweeps.pending`; None: Tune's own)."""
        phase = self.phase = plan.phase
        folder = self.group.folder(phase)
        cells = self.group_cells if cells is None else cells
        bases = {cell.extra_tags.get("base_cell", name) for name, cell in cells.items()}
        base_parents = {base: parent_run(self.client, self.exp_id, self.cells[base], phase) for base in sorted(bases)}
        self.parents[phase] = base_parents
        parents = {name: base_parents[cell.extra_tags.get("base_cell", name)] for name, cell in cells.items()}
        logger = MLflowTrialLogger(self.uri, self.exp_id, parents, cells, plan,
                                   unlogged=self.storage.file(f"mlflow_unlogged_{folder}.json"))
        progress = ProgressPrinter(phase if not self.group.name else f"{phase} ({self.group.name})", self.spec.metric,
                                   total)
        resources = CellResources(cells)  # issue 20: each trial holds its cell's resources
        trainable = tune.with_resources(tune.with_parameters(gloss_trainable, plan=plan), resources)
        retried: list[dict] = []
        if resume and self.storage.exists(folder) and _can_restore(self.storage, folder):
            retry = self.retry_failed and self._may_retry(phase)
            with restored_into(self.uri):  # its trial logger records where this resume does
                tuner = tune.Tuner.restore(self.storage.uri_of(folder), trainable=trainable, resume_unfinished=True,
                                           resume_errored=False, restart_errored=retry)
            if retry and phase == "search":
                _without_tune_limit(tuner)
            if self.retry_failed:
                retried = self._failed_before(phase, retry)
            if retried:  # recorded before they run: an interrupted retry keeps what failed on record
                stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
                self.client.log_dict(summary_run(self.client, self.exp_id, self.spec), retried,
                                     f"retried/{folder}-{stamp}.json")
        elif self.reading_back:
            raise NotRestorable(f"its {phase} phase has no Tune state to read back")
        else:
            self.storage.remove(folder)
            run_config = tune.RunConfig(
                name=folder, storage_path=self.storage.uri, callbacks=[logger, progress, *callbacks], verbose=0,
                failure_config=tune.FailureConfig(max_failures=1),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            )
            tuner = tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)
        with pending_trials(pending):  # a large cluster fills at once
            results = tuner.fit()
        if len(results) < total or not finished(results):
            raise SweepInterrupted(phase)
        superseded = reconcile_trial_runs(self.client, self.exp_id, self.spec.name, phase, trial_ids(results),
                                          set(base_parents.values()))
        if retried:  # their runs gave way to the retries' runs (what failed is in the summary run)
            superseded -= min(superseded, len(retried))
        console.superseded(phase, superseded)
        return results

    def _may_retry(self, phase: str) -> bool:
        """A phase's failed trials may be retried while no later phase has used its results: the
        search's until the replicate phase has started from each cell's best (a retry could change
        that choice); the replicate's and sensitivity's always."""
        later = (self.group.folder("replicate"), self.group.folder("sensitivity"))
        return phase != "search" or not any(self.storage.exists(folder) for folder in later)

    def _failed_before(self, phase: str, retry: bool) -> list[dict]:
        """The phase's failed trials as restored (`--retry-failed`), said on the console; returns
        those being retried (cell, config, error), for the summary run."""
        failed = [{"cell": t.config.get(CELL), "config": dict(t.config), "trial_id": t.trial_id,
                   "error": error_reason(error_text(t), limit=300)}
                  for t in tune.ExperimentAnalysis(self.storage.uri_of(self.group.folder(phase))).trials
                  if t.status == "ERROR"]
        if failed and retry:
            console.say(f"{phase}: retrying {len(failed)} failed trial(s) from the start (--retry-failed); the "
                        f"failures are listed in the summary run's retried/{self.group.folder(phase)}-<time>.json")
        elif failed:
            console.say(f"{phase}: {len(failed)} failed trial(s) not retried: the replicate phase has already run "
                        "from the search's choice of each cell's best, which a retry could change (--restart runs "
                        "the sweep again)")
        return failed if retry else []

    def search(self, resume: bool) -> SearchOutcome:
        """Every cell's study at once. Optuna, ASHA and the choice of each cell's best trial all
        rank trials by their score (`gloss_core.report`): the spec's metric at the best epoch."""
        spec = self.spec
        cells = self.group_cells
        plan = PhasePlan("search", {name: cell.constants for name, cell in cells.items()}, self._threads(),
                         best_weights_dir=self._best_weights_dir("search"))
        searcher = CellSearcher({name: SpaceSampler(cell.space) for name, cell in cells.items()},
                                spec.search.num_samples, spec.search.max_concurrent, SCORE, spec.mode, spec.search.seed)
        scheduler = CellASHA(SCORE, spec.mode, spec.asha.max_t, spec.asha.grace_period, spec.asha.reduction_factor)
        total = searcher.total_trials()  # num_samples distinct configs per cell; a smaller finite space enumerated
        tune_config = tune.TuneConfig(
            metric=SCORE, mode=spec.mode, search_alg=searcher, scheduler=scheduler, num_samples=total,
            # no Tune-wide limit: CellSearcher keeps each cell to max_concurrent itself, and Tune's
            # ConcurrencyLimiter would hide from it the trials it did not suggest (a retried one)
            max_concurrent_trials=None,
            reuse_actors=True,  # a trial's process (torch, transformers imported) serves the next one
        )

        def finished(results) -> bool:  # Optuna heard how every trial ended; an interrupted one is still RUNNING
            with self.storage.local_copy(self.group.folder("search"), "searcher-state-*") as folder:
                searcher.restore_from_dir(folder)  # the studies as Tune saved them at the end
            return not any(states["RUNNING"] for states in searcher.trial_states().values())

        results = self._fit(plan, {}, tune_config, resume, total, finished, callbacks=(SchedulerState(scheduler),),
                            pending=spec.search.max_concurrent * len(cells))
        outcome = SearchOutcome(best_trials(results, plan, spec.mode), searcher.trial_states(), searcher.repeats())
        console.repeats(outcome.repeats, spec.search.num_samples)
        return outcome

    def _seeded(self, phase: str, constants: dict[str, dict], seeds: list[int], resume: bool,
                cells: dict[str, Cell] | None = None, artifacts: bool = False, export: bool = False) -> dict:
        """Run each fixed config (name -> training options) on every replicate seed, closing with the
        test metrics; each trains on its grid seed's training seed for that replicate seed
        (`trainables.plan.training_seed`). Returns name -> the closing report of each seed that finished."""
        grid_seeds = {name: (cells or self.group_cells)[name].seed for name in constants}
        plan = PhasePlan(phase, constants, self._threads(cells), report_test=True, artifacts=artifacts, export=export,
                         best_weights_dir=self._best_weights_dir(phase), grid_seeds=grid_seeds)
        param_space = {CELL: tune.grid_search(list(constants)), "seed": tune.grid_search(seeds)}
        tune_config = tune.TuneConfig(num_samples=1, max_concurrent_trials=None, reuse_actors=True)
        results = self._fit(plan, param_space, tune_config, resume, len(constants) * len(seeds), replicates_finished,
                            cells)
        return closing_reports(results)

    @staticmethod
    def _without_seed(config: dict) -> dict:
        return {k: v for k, v in config.items() if k != "seed"}

    def replicate(self, search: SearchOutcome, resume: bool) -> ReplicateOutcome:
        spec = self.spec
        constants = {name: self._without_seed(best.config) for name, best in search.best.items()}
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
                mine, notes = points(name, self._without_seed(best.config), spec.losses[cell.loss].loss, spec.protocol,
                                     sens.params)
                found += mine
                if notes:
                    skipped[name] = notes
        for note in (note for notes in skipped.values() for note in notes):
            console.say(f"sensitivity: {note}")
        if not found:
            return SensitivityOutcome([], skipped, {})
        cells = {p.name: dataclasses.replace(self.cells[p.cell], name=p.name, constants=p.constants, space={},
                                             extra_tags=tags(p)) for p in found}
        finals = self._seeded("sensitivity", {p.name: p.constants for p in found}, spec.sensitivity_seeds(), resume,
                              cells)
        return SensitivityOutcome(found, skipped, finals)

    def summarise(self, search: SearchOutcome, replicate: ReplicateOutcome, sensitivity: SensitivityOutcome,
                  cells: list[str] | None = None) -> dict:
        """The closing tables on the console and in the summary run, of `cells` (default: all, in
        the spec's order; a `--cells` run leaves out the cells it left as they are); returns what they hold."""
        spec = self.spec
        cells = list(self.cells) if cells is None else cells
        table, rows = console.results_table(spec, cells, search, replicate)
        sens_table, sens_rows = console.sensitivity_table(replicate, sensitivity)
        tables = [table] + ([sens_table] if sens_table is not None else [])
        for shown in tables:
            console.console.print(shown)
        registered = [registered_name(spec.name, name) for name in cells if replicate.finals.get(name)]
        if spec.replicate and spec.replicate.export and registered:
            console.say(f"registered models: {', '.join(registered)} (gloss predict models:/NAME@best INPUT.csv)")
        best = {name: asdict(trial) for name, trial in search.best.items()}
        self.recorder.summary(summary_run(self.client, self.exp_id, spec), {
            "cells": rows, "best": best, "search_repeats": search.repeats, "sensitivity": sens_rows,
            "sensitivity_skipped": sensitivity.skipped}, tables)
        return {"cells": rows, "best": best, "replicate": replicate.finals, "experiment_id": self.exp_id,
                "tracking_uri": self.uri, "optuna": search.optuna, "search_repeats": search.repeats,
                "sensitivity": sensitivity.finals,
                "sensitivity_points": [p.name for p in sensitivity.points]}


def run_sweep(spec: SweepSpec, *, tracking_uri: str | None = None, resume: bool = False, restart: bool = False,
              storage_path: str | None = None, ray_address: str | None = None, num_cpus: int | None = None,
              wait_for_resources: float = 0.0, retry_failed: bool = False, cells: str | None = None) -> dict:
    """Check what can be checked first and take the sweep's lock (`sweeps.startup.started`), then
    `run_started`. A resume records to the tracking URI the sweep started with unless
    `tracking_uri` (or the spec's) moves it. `cells`: run only the cells this `--cells` pattern selects."""
    with started(spec, tracking_uri, resume, restart, storage_path, console.say, cells) as start:
        return run_started(start, ray_address, num_cpus, wait_for_resources, retry_failed)


def run_started(start: Start, ray_address: str | None = None, num_cpus: int | None = None,
                wait_for_resources: float = 0.0, retry_failed: bool = False) -> dict:
    """Start (or join) Ray, check that each cell's trial fits a node, run every phase, shut Ray
    down if this call started it. SIGTERM (`ray job stop`'s default) saves the state as SIGINT does."""
    quiet_mlflow()  # and transformers' progress bars
    with ray_session(ray_address, num_cpus), sigterm_as_sigint():
        # the cells of every group that may train (a group holding a selected cell trains whole)
        storage = SweepStorage(start.location, start.spec.name)
        chosen = set(planned_cells(storage, [cell.name for cell in start.spec.cells()], start.cells))
        for need in distinct_needs([c for c in start.spec.cells() if c.name in chosen]):  # each must fit some node
            preflight.check_resources(need.cpu, need.gpu, ray.nodes(), wait_s=wait_for_resources, say=console.say)
        return SweepRunner(start.spec, start.uri, start.location).run(start.resume, start.restart, start.accepted,
                                                                      retry_failed, start.cells)
