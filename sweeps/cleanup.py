"""Finished trials leave nothing behind on the sweep's storage.

Tune never reruns a trial in a terminal state (completed, stopped by ASHA, failed), so once a
trial is terminal its last checkpoint and its best-epoch weights file only take space. They go,
with two guards:

- The trial logger hands a trial over only after its closing MLflow writes, which read the last
  checkpoint (artifacts, the exported model), are done. A trial whose writes were lost (MLflow
  unreachable to the end) keeps its files: they are what is left of its results.
- If the driver dies, Tune restores its last saved experiment state, and a trial that ended after
  that save is rerun from its checkpoint. So a trial's files go only once a save of the state (it
  calls the logger's `get_state`; Tune saves after every trial checkpoint) has recorded it
  terminal, or after Tune's final save at the experiment's end. Should the driver die in the
  instant between that save and its copy to storage, the trial finds no checkpoint and trains
  again from its start, to the same result.

Running, paused and pending trials keep their latest checkpoint: every resume still works.
"""

from __future__ import annotations

import threading

from gloss_core.training.checkpoint import BestWeights
from trainables.plan import PhasePlan

class TrialCleanup:
    def __init__(self, plan: PhasePlan):
        self.plan = plan
        self.saves = 0  # experiment-state saves seen (get_state calls)
        self.waiting: dict[str, tuple[object, int]] = {}  # trial id -> (its last checkpoint, saves when handed over)
        self.deleted: set[str] = set()
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:  # Tune pickles callbacks: what waits is decided again at the end
        return {"plan": self.plan, "saves": 0, "waiting": {}, "deleted": set()}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def hand_over(self, trial_id: str, checkpoint) -> None:
        """The trial is terminal and its closing writes are done."""
        with self._lock:
            self.waiting[trial_id] = (checkpoint, self.saves)

    def saved(self) -> None:
        """Tune is saving the experiment state."""
        with self._lock:
            self.saves += 1

    def sweep(self) -> None:
        """Delete the files of trials that a save has recorded terminal."""
        with self._lock:
            due = [(tid, ckpt) for tid, (ckpt, at) in self.waiting.items() if self.saves > at]
            for tid, _ in due:
                del self.waiting[tid]
        for trial_id, checkpoint in due:
            self.delete(trial_id, checkpoint)

    def finish(self, trials, done: set[str]) -> None:
        """At the experiment's end, after Tune's final save: the files of every trial in `done`
        (those whose closing writes the logger made, this session or before a restore) go. Tune's
        own statuses are not trusted here: on SIGINT it marks the trials it stops TERMINATED,
        though its saved state has them running, to be resumed from their checkpoints."""
        with self._lock:
            self.waiting.clear()
        for trial in trials:
            if trial.trial_id in done:
                self.delete(trial.trial_id, trial.checkpoint)

    def delete(self, trial_id: str, checkpoint) -> None:
        if trial_id in self.deleted:
            return
        if checkpoint is not None:
            try:
                checkpoint.filesystem.delete_dir(checkpoint.path)
            except (FileNotFoundError, OSError):
                pass  # already gone
        location = self.plan.best_weights_location(trial_id)
        if location:
            BestWeights(location).delete()
        self.deleted.add(trial_id)
