"""One Tuner, many grid cells: a searcher and a scheduler that keep cells apart.

Each cell (dataset x model x loss x seed) gets its own Optuna study (`CellSearcher`) and its own
ASHA brackets (`CellASHA`), so trials of different cells never compete, while every cell runs
concurrently in one Tune experiment that saves, interrupts and restores as one unit. A trial's
config carries its cell's name under `trainables.plan.CELL` and the values its study suggested;
the cell's constants reach the trainable through its `PhasePlan`.
"""

from __future__ import annotations

import itertools
import json
import math
import pickle
from typing import Callable

import optuna
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from trainables.plan import CELL
from trainables.report import read_result

optuna.logging.set_verbosity(optuna.logging.WARNING)  # one "study created" line per cell is noise


class PruneAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that records scheduler-stopped trials as PRUNED, not COMPLETE.

    A trial is complete only if its last result says it ran to its end (all epochs, or its own
    early stopping); anything else that ends without an error was stopped by ASHA and is told to
    Optuna as pruned, with its intermediate values kept. Its metric is the trial's score (the
    selection metric at its best epoch so far, `trainables.report`), so a completed trial is told
    its best epoch's value, the value the sweep selects on, not its last epoch's.
    """

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if (not error and result is not None and not read_result(result).last
                and trial_id in self._ot_trials and trial_id not in self._completed_trials):
            ot_trial = self._ot_trials[trial_id]
            read = read_result(result)
            if read.epochs and read.score == read.score:
                ot_trial.report(read.score, read.epochs)
            self._ot_study.tell(ot_trial, None, state=optuna.trial.TrialState.PRUNED)
            self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result=result, error=error)


def finite_points(space: dict, limit: int) -> list[dict] | None:
    """Every point of a space whose entries are all `choice` or `int`, if there are at most `limit`;
    None for a space with a continuous entry or more points."""
    if not space or any(d.choice is None and d.integer is None for d in space.values()):
        return None
    axes = [(k, list(d.choice) if d.choice is not None else list(range(d.integer[0], d.integer[1] + 1)))
            for k, d in space.items()]
    if math.prod(len(values) for _, values in axes) > limit:
        return None
    return [dict(zip([k for k, _ in axes], combo)) for combo in itertools.product(*(v for _, v in axes))]


def config_key(config: dict) -> str:
    """What makes two suggestions of one cell the same training run (the cell's constants, seed
    included, are the same for all its trials)."""
    return json.dumps(config, sort_keys=True, default=str)


class CellSearcher(Searcher):
    """Routes each suggestion to one cell's own study, and never trains one config twice in a cell.

    A finite space (only `choice` and `int` entries) with no more points than `num_samples` is
    enumerated: every point once, and no more trials. Otherwise, when a cell's study suggests a
    config the cell has already trained (or is training), no trial starts: the study is told the
    earlier trial's outcome (its score, or pruned, or failed; when that trial ends, if it still
    runs) and asked again. `repeats()` says per cell how many suggestions were skipped.

    Args:
        spaces: cell name -> its define-by-run space (a `SpaceSampler`; its `space` says whether
            it is finite).
        num_samples: trials per cell.
        max_concurrent: running trials per cell.
        metric, mode: what every study optimises (the trials' score).
        seed: seed of every cell's TPE sampler (the same suggestion sequence per cell, which suits
            paired comparisons of losses).
    """

    def __init__(self, spaces: dict[str, Callable], num_samples: int, max_concurrent: int,
                 metric: str, mode: str, seed: int = 0):
        super().__init__(metric=metric, mode=mode)
        self.num_samples, self.max_concurrent = num_samples, max_concurrent
        self.searchers = {
            name: PruneAwareOptunaSearch(space=space, metric=metric, mode=mode,
                                         sampler=optuna.samplers.TPESampler(seed=seed))
            for name, space in spaces.items()
        }
        self.quota: dict[str, int] = {}  # suggestions per cell: num_samples, or the points of a small finite space
        self.enumerated: dict[str, int] = {}  # cell -> points of its enumerated space
        for name, space in spaces.items():
            points = finite_points(getattr(space, "space", {}), num_samples)
            self.quota[name] = num_samples if points is None else len(points)
            if points is not None:
                self.enumerated[name] = len(points)
                for point in points:
                    self.searchers[name]._ot_study.enqueue_trial(point)
        self.started = {name: 0 for name in spaces}  # suggestions made, skipped repeats included
        self.skipped = {name: 0 for name in spaces}  # repeats answered with an earlier outcome
        self.live: dict[str, str] = {}  # trial id -> cell
        self.keys: dict[str, str] = {}  # trial id -> its config's key
        self.running: dict[str, dict[str, str]] = {name: {} for name in spaces}  # cell -> key -> running trial id
        self.outcomes: dict[str, dict[str, tuple]] = {name: {} for name in spaces}  # cell -> key -> (state, value)
        self.waiting: dict[str, list] = {}  # trial id -> the Optuna trials of repeats waiting for its outcome

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # set per cell at construction

    def expected_trials(self) -> int:
        """The Tune trials this search runs when it is complete: every suggestion but the skipped."""
        return sum(self.quota[c] - self.skipped[c] for c in self.searchers)

    def suggest(self, trial_id: str):
        while True:
            open_cells = [c for c in self.searchers if self.started[c] < self.quota[c]]
            if not open_cells:
                return Searcher.FINISHED
            running = {c: sum(1 for cell in self.live.values() if cell == c) for c in open_cells}
            ready = [c for c in open_cells if running[c] < self.max_concurrent]
            if not ready:
                return None
            cell = min(ready, key=lambda c: (self.started[c], running[c]))
            searcher = self.searchers[cell]
            config = searcher.suggest(trial_id)
            if config is None or config == Searcher.FINISHED:
                return None
            self.started[cell] += 1
            key = config_key(config)
            if key in self.outcomes[cell] or key in self.running[cell]:
                repeat = searcher._ot_trials.pop(trial_id)  # this id goes to the next suggestion
                self.skipped[cell] += 1
                if key in self.outcomes[cell]:
                    self._tell(cell, repeat, *self.outcomes[cell][key])
                else:
                    self.waiting.setdefault(self.running[cell][key], []).append(repeat)
                continue
            self.live[trial_id], self.keys[trial_id] = cell, key
            self.running[cell][key] = trial_id
            return {CELL: cell, **config}

    def _tell(self, cell: str, ot_trial, state, value) -> None:
        study = self.searchers[cell]._ot_study
        if state == optuna.trial.TrialState.COMPLETE:
            study.tell(ot_trial, value)
        else:
            study.tell(ot_trial, None, state=state)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        cell = self.live.get(trial_id)
        if cell is not None:
            self.searchers[cell].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        cell = self.live.pop(trial_id, None)
        if cell is None:
            return
        self.searchers[cell].on_trial_complete(trial_id, result=result, error=error)
        read = read_result(result)
        if error or result is None or (read.last and read.score != read.score):
            outcome = (optuna.trial.TrialState.FAIL, None)
        elif not read.last:
            outcome = (optuna.trial.TrialState.PRUNED, None)
        else:
            outcome = (optuna.trial.TrialState.COMPLETE, read.score)
        key = self.keys.pop(trial_id, None)
        if key is not None:
            self.running[cell].pop(key, None)
            self.outcomes[cell][key] = outcome
        for repeat in self.waiting.pop(trial_id, []):
            self._tell(cell, repeat, *outcome)

    def study(self, cell: str) -> optuna.Study:
        return self.searchers[cell]._ot_study

    def trial_states(self) -> dict[str, dict[str, int]]:
        """Per cell, how many Optuna trials ended COMPLETE, PRUNED or FAIL, or are RUNNING (skipped
        repeats included: the study was told their earlier outcome)."""
        out = {}
        for cell in self.searchers:
            states = [t.state.name for t in self.study(cell).trials]
            out[cell] = {state: states.count(state) for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
        return out

    def repeats(self) -> dict[str, dict[str, int]]:
        """Per cell: suggestions, trials trained, repeats skipped, and the points of an enumerated space."""
        return {cell: {"suggestions": self.started[cell], "trained": self.started[cell] - self.skipped[cell],
                       "skipped_repeats": self.skipped[cell], "enumerated_points": self.enumerated.get(cell, 0)}
                for cell in self.searchers}

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__.copy(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))
        # trials that were running when the state was saved are re-run by Tune under the same
        # ids and report again; their cells still count them as started


class CellASHA(FIFOScheduler):
    """One ASHAScheduler per cell; a trial's results only meet those of its own cell. Its metric is
    the trials' score, so a rung compares each trial's best epoch so far."""

    def __init__(self, metric: str, mode: str, max_t: int, grace_period: int, reduction_factor: float):
        super().__init__()
        self._metric, self._mode = metric, mode
        self.options = {"max_t": max_t, "grace_period": grace_period, "reduction_factor": reduction_factor}
        self.brackets: dict[str, ASHAScheduler] = {}

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True

    def _of(self, trial) -> ASHAScheduler:
        cell = trial.config.get(CELL, "")
        if cell not in self.brackets:
            self.brackets[cell] = ASHAScheduler(time_attr="training_iteration", metric=self._metric,
                                               mode=self._mode, **self.options)
        return self.brackets[cell]

    def on_trial_add(self, tune_controller, trial) -> None:
        self._of(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        return self._of(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        self._of(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._of(trial).on_trial_remove(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial) -> None:
        self._of(trial).on_trial_error(tune_controller, trial)

    def debug_string(self) -> str:
        return "CellASHA: " + "; ".join(f"{cell}: {s.debug_string()}" for cell, s in self.brackets.items())
