"""The sweep's console line per finished trial: its cell, how it ended, its score, the phase's count."""

from __future__ import annotations

import math

from ray.tune import Callback
from rich.console import Console

from sweeps.failures import error_reason, error_text
from trainables.plan import CELL
from trainables.report import TrialResult, read_result


class ProgressPrinter(Callback):
    """One line per finished trial. `metric` names what the score is of (the spec's metric)."""

    def __init__(self, phase: str, metric: str, total: int, width: int | None = None):
        self.phase, self.metric, self.total, self.width = phase, metric, total, width
        self.done = 0
        self._console = None

    def __getstate__(self) -> dict:  # Tune pickles callbacks; a Console holds a lock
        return {**self.__dict__, "_console": None}

    @property
    def console(self) -> Console:
        if self._console is None:
            self._console = Console(width=self.width)
        return self._console

    def _line(self, trial, ended: str) -> None:
        self.done += 1
        line = progress_line(f"{self.phase} {self.done}/{self.total}", trial.config.get(CELL, "?"), trial.trial_id,
                             ended, read_result(trial.last_result), self.metric)
        self.console.print(line, markup=False, highlight=False)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._line(trial, "completed" if read_result(trial.last_result).last else "stopped early (ASHA)")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._line(trial, f"FAILED ({error_reason(error_text(trial))})")


def progress_line(where: str, cell: str, trial_id: str, ended: str, last: TrialResult, metric: str) -> str:
    """`[search 3/8] CELL ID: completed after 4 epoch(s) val_macro_f1=0.7037 (best, epoch 2)`: the
    score is the metric at the trial's best epoch, the value the search ranks it by."""
    shown = f" {metric}={last.score:.4f} (best, epoch {last.best_epoch})" if math.isfinite(last.score) else ""
    return f"[{where}] {cell} {trial_id}: {ended} after {last.epochs} epoch(s){shown}"
