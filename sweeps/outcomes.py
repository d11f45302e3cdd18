"""What each phase hands on: the typed outcome of a search, a replicate and a sensitivity phase,
read from Tune's `ResultGrid` through `trainables.report.read_result`."""

from __future__ import annotations

from dataclasses import dataclass, field

from ray import tune

from gloss_core.report import better
from sweeps.sensitivity import Point
from trainables.plan import CELL, PhasePlan
from trainables.report import TrialResult, read_result

TEST_KEYS = ("test_accuracy", "test_macro_f1", "test_macro_silhouette")  # what a cell's test summary holds


@dataclass(frozen=True)
class BestTrial:
    """A cell's best search trial: its full training options, its score, its id."""

    config: dict
    value: float
    trial_id: str


@dataclass
class SearchOutcome:
    best: dict[str, BestTrial]  # cell -> best trial; cells where no trial has a score are absent
    optuna: dict[str, dict[str, int]]  # cell -> Optuna trial states and their counts
    repeats: dict[str, dict[str, int]] = field(default_factory=dict)  # cell -> suggestions, trained, skipped repeats

    def merge(self, other: "SearchOutcome") -> None:
        """Take in another cell group's outcome (`sweeps.cell_groups`; no cell is in two)."""
        self.best.update(other.best)
        self.optuna.update(other.optuna)
        self.repeats.update(other.repeats)


@dataclass
class ReplicateOutcome:
    finals: dict[str, list[TrialResult]]  # cell -> the closing test report of each replicate seed that finished

    def merge(self, other: "ReplicateOutcome") -> None:
        self.finals.update(other.finals)


@dataclass
class SensitivityOutcome:
    points: list[Point]  # every perturbed config that ran
    skipped: dict[str, list[str]]  # cell -> why a perturbation was not run (out of range, not numeric, ...)
    finals: dict[str, list[TrialResult]]  # point name -> the closing test report of each seed that finished

    def merge(self, other: "SensitivityOutcome") -> None:
        self.points.extend(other.points)
        self.skipped.update(other.skipped)
        self.finals.update(other.finals)


def best_trials(results: tune.ResultGrid, plan: PhasePlan, mode: str) -> dict[str, BestTrial]:
    """Per cell, the trial with the best score (the selection metric at its best epoch, the value
    Optuna was told); failed trials and trials without a score are left out. Of trials with the
    same score the one with the smallest trial id wins: a fixed order (a restore keeps the ids;
    not the earliest trial, since a searcher's ids are random), whatever order a restored
    `ResultGrid` lists them in, so a resume chooses what the run before it chose."""
    best: dict[str, BestTrial] = {}
    reads = sorted(((result, read_result(result.metrics)) for result in results),
                   key=lambda pair: pair[1].trial_id or "")
    for result, read in reads:
        if result.error is not None or read.score != read.score:
            continue
        cell = result.config.get(CELL)
        current = best.get(cell)
        if better(read.score, None if current is None else current.value, mode):
            best[cell] = BestTrial(plan.values(result.config), read.score, read.trial_id)
    return best


def closing_reports(results: tune.ResultGrid) -> dict[str, list[TrialResult]]:
    """Per cell (or sensitivity point), the closing test report of each trial that sent one."""
    finals: dict[str, list[TrialResult]] = {}
    for result in results:
        read = read_result(result.metrics)
        if result.error is None and read.closing:
            finals.setdefault(result.config[CELL], []).append(read)
    return finals


def replicates_finished(results: tune.ResultGrid) -> bool:
    """Every replicate trial failed or sent its closing test report."""
    return all(result.error is not None or read_result(result.metrics).closing for result in results)


def trial_ids(results: tune.ResultGrid) -> set[str]:
    return {read_result(r.metrics).trial_id for r in results}


def by_seed(finals: list[TrialResult], key: str) -> dict[int, float]:
    """Training seed -> test metric `key` of closing reports (pairs a point with its centre)."""
    return {r.seed: r.test(key) for r in finals if r.test(key) is not None and r.seed is not None}
