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
import random
from typing import Callable

import optuna
from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from trainables.plan import CELL
from trainables.report import read_result

optuna.logging.set_verbosity(optuna.logging.WARNING)  # one "study created" line per cell is noise


def outcome(result: dict | None, error: bool) -> tuple[optuna.trial.TrialState, float | None]:
    """How a trial ended, for its study: COMPLETE with its score when its training ran to its end
    (all epochs, or its own early stopping) with a finite score; PRUNED when it ended early
    without an error (ASHA stopped it); FAIL otherwise (an error, or no finite score)."""
    read = read_result(result)
    if error or result is None:
        return (optuna.trial.TrialState.FAIL if error else optuna.trial.TrialState.PRUNED), None
    if not read.last:
        return optuna.trial.TrialState.PRUNED, None
    if read.score != read.score:
        return optuna.trial.TrialState.FAIL, None
    return optuna.trial.TrialState.COMPLETE, read.score


def tell(study: optuna.Study, ot_trial, state: optuna.trial.TrialState, value: float | None) -> None:
    if state == optuna.trial.TrialState.COMPLETE:
        study.tell(ot_trial, value)
    else:
        study.tell(ot_trial, None, state=state)


class PruneAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that tells each trial's study how it ended (`outcome`): a trial ASHA stopped
    is PRUNED, with its intermediate values kept, not COMPLETE. Its metric is the trial's score
    (the selection metric at its best epoch so far, `trainables.report`), so a completed trial is
    told its best epoch's value, the value the sweep selects on, not its last epoch's.
    """

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self._ot_trials or trial_id in self._completed_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        state, value = outcome(result, error)
        read = read_result(result)
        if state == optuna.trial.TrialState.PRUNED and read.epochs and read.score == read.score:
            ot_trial.report(read.score, read.epochs)
        tell(self._ot_study, ot_trial, state, value)
        self._completed_trials.add(trial_id)


def space_size(space: dict) -> int | None:
    """The number of points of a space whose entries are all `choice` or `int` (an empty space has
    one: the cell's constants); None otherwise."""
    if any(d.choice is None and d.integer is None for d in space.values()):
        return None
    return math.prod(len(d.choice) if d.choice is not None else d.integer[1] - d.integer[0] + 1
                     for d in space.values())


def _values(dist) -> list:
    return list(dist.choice) if dist.choice is not None else list(range(dist.integer[0], dist.integer[1] + 1))


def finite_points(space: dict, limit: int) -> list[dict] | None:
    """Every point of a finite space (`space_size`) of at most `limit` points, else None."""
    size = space_size(space)
    if size is None or size > limit:
        return None
    return [dict(zip(space, combo)) for combo in itertools.product(*(_values(d) for d in space.values()))]


def trial_config(result: dict | None) -> dict:
    """The trial's config in a result as Tune hands it to a searcher (flattened: `config/<key>`)."""
    result = result or {}
    if isinstance(result.get("config"), dict):
        return result["config"]
    return {key[len("config/"):]: value for key, value in result.items() if key.startswith("config/")}


def config_key(config: dict) -> str:
    """What makes two suggestions of one cell the same training run (the cell's constants, seed
    included, are the same for all its trials)."""
    return json.dumps(config, sort_keys=True, default=str)


class CellSearcher(Searcher):
    """Routes each suggestion to one cell's own study, and never trains one config twice in a cell.

    Each cell trains `num_samples` distinct configs, or every point once when its space is finite
    (only `choice` and `int` entries) with fewer points: such a space is enumerated. When a cell's
    study suggests a config the cell has already trained (or is training), no trial starts: the
    study is told the earlier trial's outcome (at once, or when that trial ends) and asked again,
    so a repeat costs no trial and no budget. After `REPEAT_STREAK` repeats in a row the study is
    handed a random untried point (a finite space TPE keeps proposing the same region of).
    `repeats()` says per cell how many suggestions were skipped.

    Args:
        spaces: cell name -> its define-by-run space (a `SpaceSampler`; its `space` says whether
            it is finite).
        num_samples: distinct trials per cell.
        max_concurrent: running trials per cell.
        metric, mode: what every study optimises (the trials' score).
        seed: seed of every cell's TPE sampler (the same suggestion sequence per cell, which suits
            paired comparisons of losses) and of the untried points.
    """

    REPEAT_STREAK = 20
    GIVE_UP = 1000  # repeats in a row after which one is trained after all (a guard: never reached in practice)

    def __init__(self, spaces: dict[str, Callable], num_samples: int, max_concurrent: int,
                 metric: str, mode: str, seed: int = 0):
        super().__init__(metric=metric, mode=mode)
        self.num_samples, self.max_concurrent = num_samples, max_concurrent
        self.searchers = {
            name: PruneAwareOptunaSearch(space=space, metric=metric, mode=mode,
                                         sampler=optuna.samplers.TPESampler(seed=seed))
            for name, space in spaces.items()
        }
        self.spaces = {name: getattr(space, "space", {}) for name, space in spaces.items()}
        self.quota: dict[str, int] = {}  # distinct trials per cell: num_samples, or a smaller finite space's points
        self.enumerated: dict[str, int] = {}  # cell -> points of its enumerated space
        for name, space in self.spaces.items():
            size = space_size(space)
            self.quota[name] = num_samples if size is None else min(num_samples, size)
            if size is not None and size <= num_samples:
                self.enumerated[name] = size
                for point in finite_points(space, num_samples):
                    self.searchers[name]._ot_study.enqueue_trial(point)
        self.rng = random.Random(seed)  # the untried points handed to a study stuck on repeats
        self.started = {name: 0 for name in spaces}  # trials started (distinct configs)
        self.skipped = {name: 0 for name in spaces}  # repeats answered with an earlier outcome
        self.streak = {name: 0 for name in spaces}  # repeats in a row
        self.live: dict[str, str] = {}  # trial id -> cell
        self.keys: dict[str, str] = {}  # trial id -> its config's key
        self.running: dict[str, dict[str, str]] = {name: {} for name in spaces}  # cell -> key -> running trial id
        self.outcomes: dict[str, dict[str, tuple]] = {name: {} for name in spaces}  # cell -> key -> (state, value)
        self.waiting: dict[str, list] = {}  # trial id -> the Optuna trials of repeats waiting for its outcome
        self.ended: set[str] = set()  # trial ids whose outcome the studies have heard

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # set per cell at construction

    def total_trials(self) -> int:
        """The Tune trials the search runs: each cell's quota of distinct configs."""
        return sum(self.quota.values())

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
            key = config_key(config)
            repeat = key in self.outcomes[cell] or key in self.running[cell]
            if repeat and self.streak[cell] < self.GIVE_UP:
                self._repeat(cell, key, searcher._ot_trials.pop(trial_id))  # this id goes to the next suggestion
                continue
            self.streak[cell] = 0
            self.started[cell] += 1
            self.live[trial_id], self.keys[trial_id] = cell, key
            self.running[cell][key] = trial_id
            return {CELL: cell, **config}

    def _repeat(self, cell: str, key: str, ot_trial) -> None:
        """A suggestion the cell has trained or is training: its study hears that trial's outcome."""
        self.skipped[cell] += 1
        self.streak[cell] += 1
        if key in self.outcomes[cell]:
            tell(self.study(cell), ot_trial, *self.outcomes[cell][key])
        else:
            self.waiting.setdefault(self.running[cell][key], []).append(ot_trial)
        if self.streak[cell] % self.REPEAT_STREAK == 0:
            untried = self._untried(cell)
            if untried is not None:
                self.study(cell).enqueue_trial(untried)

    def _untried(self, cell: str) -> dict | None:
        """A random point of the cell's finite space that it has neither trained nor is training."""
        space, tried = self.spaces[cell], set(self.outcomes[cell]) | set(self.running[cell])
        if space_size(space) is None:
            return None
        for _ in range(1000):
            point = {k: self.rng.choice(_values(d)) for k, d in space.items()}
            if config_key(point) not in tried:
                return point
        return next((p for p in finite_points(space, space_size(space)) if config_key(p) not in tried), None)

    def adopt(self, trial_id: str, config: dict) -> str | None:
        """A trial this searcher never suggested: a failed trial Tune restarted under a new id
        (`--resume --retry-failed`), seen at its first result. Its cell's study gets a new Optuna
        trial with the same values, so the study keeps the FAIL and records the retry's outcome
        beside it; the cell's count of distinct configs is unchanged. A retry that fails before its
        first result carries no config and is not recorded again. Returns its cell, or None if it
        is no retry of this searcher's."""
        cell = config.get(CELL)
        if cell not in self.searchers:
            return None
        params = {k: v for k, v in config.items() if k != CELL}
        study = self.study(cell)
        earlier = next((t for t in reversed(study.trials) if t.params == params), None)
        if earlier is None:  # not a config this study suggested: nothing to record it against
            return None
        # created directly, not queued: `ask` would hand out the oldest queued point (an enumerated
        # space's, an untried one), not this trial's values
        frozen = optuna.trial.create_trial(params=params, distributions=earlier.distributions,
                                           state=optuna.trial.TrialState.RUNNING)
        ot_trial = optuna.Trial(study, study._storage.create_new_trial(study._study_id, template_trial=frozen))
        self.searchers[cell]._ot_trials[trial_id] = ot_trial
        key = config_key(params)
        self.live[trial_id], self.keys[trial_id] = cell, key
        self.running[cell][key] = trial_id
        self.outcomes[cell].pop(key, None)  # a repeat of it now waits for the retry's outcome, not the FAIL
        return cell

    def _cell_of(self, trial_id: str, result: dict | None) -> str | None:
        cell = self.live.get(trial_id)
        if cell is None and trial_id not in self.ended:  # only then read the config: every result passes here
            config = trial_config(result)
            cell = self.adopt(trial_id, config) if config else None
        return cell

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        cell = self._cell_of(trial_id, result)
        if cell is not None:
            self.searchers[cell].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self._cell_of(trial_id, result)
        cell = self.live.pop(trial_id, None)
        if cell is None:
            return
        self.ended.add(trial_id)
        self.searchers[cell].on_trial_complete(trial_id, result=result, error=error)
        ended = outcome(result, error)
        key = self.keys.pop(trial_id, None)
        if key is not None:
            self.running[cell].pop(key, None)
            self.outcomes[cell][key] = ended
        for repeat in self.waiting.pop(trial_id, []):
            tell(self.study(cell), repeat, *ended)

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
        return {cell: {"suggestions": self.started[cell] + self.skipped[cell], "trained": self.started[cell],
                       "skipped_repeats": self.skipped[cell], "enumerated_points": self.enumerated.get(cell, 0)}
                for cell in self.searchers}

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__.copy(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))
        self.__dict__.setdefault("ended", set())  # a state saved before retries existed
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

    def _new(self) -> ASHAScheduler:
        return ASHAScheduler(time_attr="training_iteration", metric=self._metric, mode=self._mode, **self.options)

    def _of(self, trial) -> ASHAScheduler:
        cell = trial.config.get(CELL, "")
        if cell not in self.brackets:
            self.brackets[cell] = self._new()
        return self.brackets[cell]

    def state(self) -> bytes:
        """Every cell's rungs (the values recorded at each milestone) and trial -> bracket map, as
        ASHAScheduler.save keeps them; one pickle, so the map still points into the rungs."""
        return pickle.dumps({cell: scheduler.__dict__ for cell, scheduler in self.brackets.items()})

    def load(self, state: bytes) -> None:
        """Back to what `state` held (Tune restores a scheduler as it was built, with no rungs)."""
        self.brackets = {}
        for cell, saved in pickle.loads(state).items():
            scheduler = self._new()
            scheduler.__dict__.update(saved)
            self.brackets[cell] = scheduler

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


class SchedulerState(Callback):
    """Keeps `CellASHA`'s rungs in Tune's experiment state, saved and restored with the callbacks'
    state at every experiment checkpoint, so a resumed search stops the trials an uninterrupted
    one would (Tune saves a searcher's state but not a scheduler's)."""

    def __init__(self, scheduler: CellASHA):
        self.scheduler = scheduler

    def get_state(self) -> dict:
        return {"cell_asha": self.scheduler.state()}

    def set_state(self, state: dict) -> None:
        self.scheduler.load(state["cell_asha"])
