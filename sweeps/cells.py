"""One Tuner, many grid cells: a searcher and a scheduler that keep cells apart.

Each cell (dataset x model x loss x seed) gets its own Optuna study (`CellSearcher`) and its own
ASHA brackets (`CellASHA`), so trials of different cells never compete, while every cell runs
concurrently in one Tune experiment that saves, interrupts and restores as one unit. A trial's
config carries its cell's name under `trainables.plan.CELL` and the values its study suggested;
the cell's constants reach the trainable through its `PhasePlan`.
"""

from __future__ import annotations

import pickle
from typing import Callable

import optuna
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from trainables.plan import CELL

optuna.logging.set_verbosity(optuna.logging.WARNING)  # one "study created" line per cell is noise


class PruneAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that records scheduler-stopped trials as PRUNED, not COMPLETE.

    A trial is complete only if its last result says `last_epoch=True` (the training loop ran to
    its end: all epochs, or its own early stopping); anything else that ends without an error
    was stopped by ASHA and is told to Optuna as pruned, with its intermediate values kept.
    """

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if (not error and result is not None and not result.get("last_epoch")
                and trial_id in self._ot_trials and trial_id not in self._completed_trials):
            ot_trial = self._ot_trials[trial_id]
            value = result.get(self.metric)
            if value is not None and "training_iteration" in result:
                ot_trial.report(value, result["training_iteration"])
            self._ot_study.tell(ot_trial, None, state=optuna.trial.TrialState.PRUNED)
            self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result=result, error=error)


class CellSearcher(Searcher):
    """Routes each suggestion to one cell's own study.

    Args:
        spaces: cell name -> its define-by-run space function.
        num_samples: trials per cell.
        max_concurrent: running trials per cell.
        metric, mode: what every study optimises.
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
        self.started = {name: 0 for name in spaces}
        self.live: dict[str, str] = {}  # trial id -> cell

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # set per cell at construction

    def suggest(self, trial_id: str):
        open_cells = [c for c in self.searchers if self.started[c] < self.num_samples]
        if not open_cells:
            return Searcher.FINISHED
        running = {c: sum(1 for cell in self.live.values() if cell == c) for c in open_cells}
        ready = [c for c in open_cells if running[c] < self.max_concurrent]
        if not ready:
            return None
        cell = min(ready, key=lambda c: (self.started[c], running[c]))
        config = self.searchers[cell].suggest(trial_id)
        if config is None or config == Searcher.FINISHED:
            return None
        self.started[cell] += 1
        self.live[trial_id] = cell
        return {CELL: cell, **config}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        cell = self.live.get(trial_id)
        if cell is not None:
            self.searchers[cell].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        cell = self.live.pop(trial_id, None)
        if cell is not None:
            self.searchers[cell].on_trial_complete(trial_id, result=result, error=error)

    def study(self, cell: str) -> optuna.Study:
        return self.searchers[cell]._ot_study

    def trial_states(self) -> dict[str, dict[str, int]]:
        """Per cell, how many Optuna trials ended COMPLETE, PRUNED or FAIL, or are RUNNING."""
        out = {}
        for cell in self.searchers:
            states = [t.state.name for t in self.study(cell).trials]
            out[cell] = {state: states.count(state) for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
        return out

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__.copy(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))
        # trials that were running when the state was saved are re-run by Tune under the same
        # ids and report again; their cells still count them as started


class CellASHA(FIFOScheduler):
    """One ASHAScheduler per cell; a trial's results only meet those of its own cell."""

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
