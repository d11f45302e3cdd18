"""What the console shows of a phase while it runs.

Piped (a log file, CI): one line per finished trial, its cell, how it ended, its score, the
phase's count. On a terminal: one live line per phase (done / running / pending / failed,
elapsed, ETA), redrawn in place, and a line only for each failed trial, so a 2,000-trial grid
does not scroll 2,000 lines past. Either way the phase's trials are the same; only the console
differs.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from ray.tune import Callback
from ray.tune.experiment import Trial
from rich.live import Live
from rich.text import Text

from sweeps import console as sweep_console
from sweeps.failures import error_reason, error_text
from trainables.plan import CELL
from trainables.report import TrialResult, read_result

REDRAW_S = 0.5  # the live line is redrawn at most this often between trial events


@dataclass(frozen=True)
class PhaseCounts:
    """A phase's trials at one moment; `pending` includes those the searcher has not suggested yet."""

    done: int
    running: int
    pending: int
    failed: int

    @classmethod
    def of(cls, trials: list, total: int) -> PhaseCounts:
        status = [trial.status for trial in trials]
        done, failed = status.count(Trial.TERMINATED), status.count(Trial.ERROR)
        running = status.count(Trial.RUNNING)
        return cls(done, running, max(0, total - done - failed - running), failed)


def live_line(phase: str, counts: PhaseCounts, total: int, elapsed_s: float, ended_before: int = 0) -> str:
    """`search: 12/40 done · 4 running · 23 pending · 1 failed · 0:01:05 elapsed · ETA 0:02:40`.
    `elapsed_s` is this session's; the ETA is its time per trial ended in it (`ended_before`
    had ended when it began: a resume) times the trials still to end (none before one ends)."""
    ended = counts.done + counts.failed
    now_ended = ended - ended_before
    eta = (f"ETA {_clock(elapsed_s / now_ended * (total - ended))}" if 0 < now_ended and ended < total else
           "ETA -" if ended < total else "finished")
    return (f"{phase}: {counts.done}/{total} done · {counts.running} running · {counts.pending} pending · "
            f"{counts.failed} failed · {_clock(elapsed_s)} elapsed · {eta}")


def _clock(seconds: float) -> str:
    whole = int(round(seconds))
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


class ProgressPrinter(Callback):
    """The phase's console: one line per finished trial when piped, a live line and one line per
    failed trial on a terminal (`sweeps.console.console.is_terminal`, looked up when the phase
    starts, so a resumed sweep follows the console it runs on). `metric` names what the score is
    of (the spec's metric)."""

    # class defaults: a printer pickled by an earlier version (a resumed sweep's) lacks them
    _live: Live | None = None
    _started = _drawn = 0.0
    _ended_before: int | None = None  # trials that had ended when this session first looked

    def __init__(self, phase: str, metric: str, total: int):
        self.phase, self.metric, self.total = phase, metric, total
        self.done = 0

    def __getstate__(self) -> dict:  # Tune pickles callbacks; a live display holds a console and a lock
        return {key: value for key, value in self.__dict__.items() if key not in ("_live", "_console", "width")}

    @property
    def console(self):
        return sweep_console.console

    def setup(self, **info) -> None:
        self._started, self._ended_before = time.monotonic(), None
        if self.console.is_terminal:
            self._live = Live(Text(""), console=self.console, auto_refresh=False, transient=False)
            self._live.start()

    def _redraw(self, trials: list, force: bool = False) -> None:
        now = time.monotonic()
        if self._live is None or (not force and now - self._drawn < REDRAW_S):
            return
        self._drawn = now
        counts = PhaseCounts.of(trials, self.total)
        if self._ended_before is None:  # a resumed phase: what ended before does not time this session
            self._ended_before = counts.done + counts.failed
        line = live_line(self.phase, counts, self.total, now - self._started, self._ended_before)
        self._live.update(Text(line), refresh=True)

    def _line(self, trial, ended: str) -> None:
        self.done += 1
        line = progress_line(f"{self.phase} {self.done}/{self.total}", trial.config.get(CELL, "?"), trial.trial_id,
                             ended, read_result(trial.last_result), self.metric)
        self.console.print(line, markup=False, highlight=False)  # above the live line, if there is one

    def on_step_end(self, iteration, trials, **info) -> None:
        self._redraw(trials)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        if self._live is None:
            self._line(trial, "completed" if read_result(trial.last_result).last else "stopped early (ASHA)")
        else:
            self.done += 1
        self._drawn = 0.0  # Tune marks the trial ended after its callbacks: the next step redraws

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._line(trial, f"FAILED ({error_reason(error_text(trial))})")
        self._drawn = 0.0

    def on_experiment_end(self, trials, **info) -> None:
        if self._live is not None:
            self._redraw(trials, force=True)
            self._live.stop()
            self._live = None


def progress_line(where: str, cell: str, trial_id: str, ended: str, last: TrialResult, metric: str) -> str:
    """`[search 3/8] CELL ID: completed after 4 epoch(s) val_macro_f1=0.7037 (best, epoch 2)`: the
    score is the metric at the trial's best epoch, the value the search ranks it by."""
    shown = f" {metric}={last.score:.4f} (best, epoch {last.best_epoch})" if math.isfinite(last.score) else ""
    return f"[{where}] {cell} {trial_id}: {ended} after {last.epochs} epoch(s){shown}"
