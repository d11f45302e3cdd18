"""The phase's console: the live line's counts and ETA, and what a terminal and a pipe each show
of the same trials (the callback driven with Tune's trial statuses and a real error file)."""

import io
import re
from dataclasses import dataclass, field

from ray.tune.experiment import Trial
from rich.console import Console

from sweeps import console as sweep_console
from sweeps.progress import REDRAW_S, PhaseCounts, ProgressPrinter, live_line
from trainables.plan import CELL
from trainables.report import EPOCH, LAST


@dataclass
class FakeTrial:  # the attributes the callback reads of a Tune trial
    trial_id: str
    status: str = Trial.PENDING
    config: dict = field(default_factory=lambda: {CELL: "mr__m__ce__s0"})
    last_result: dict = field(default_factory=dict)
    error_file: str | None = None


def test_counts_and_eta_of_the_live_line():
    trials = [FakeTrial(str(i), status) for i, status in enumerate(
        [Trial.TERMINATED] * 3 + [Trial.ERROR] + [Trial.RUNNING] * 2 + [Trial.PENDING, Trial.PAUSED])]
    counts = PhaseCounts.of(trials, total=10)
    assert counts == PhaseCounts(done=3, running=2, pending=4, failed=1)  # 2 not suggested yet count as pending
    # 4 ended in 100 s: 25 s each, 6 to go
    assert live_line("search", counts, 10, 100.0) == ("search: 3/10 done · 2 running · 4 pending · 1 failed · "
                                                      "0:01:40 elapsed · ETA 0:02:30")
    assert live_line("search", PhaseCounts(0, 2, 8, 0), 10, 5.0).endswith("0:00:05 elapsed · ETA -")
    assert live_line("replicate", PhaseCounts(9, 0, 0, 1), 10, 3725.0).endswith("1:02:05 elapsed · finished")


def _drive(printer: ProgressPrinter, tmp_path, monkeypatch) -> None:
    """Four trials: two complete, one fails, one is stopped early, with a redraw between events."""
    clock = iter(range(0, 1000, 7))
    monkeypatch.setattr("sweeps.progress.time.monotonic", lambda: float(next(clock)))
    trace = tmp_path / "error.txt"
    trace.write_text("Traceback (most recent call last):\nNonFiniteEmbeddingsError: embeddings are not finite\n")
    trials = [FakeTrial(f"t{i}") for i in range(4)]
    printer.setup()
    for trial in trials:
        trial.status = Trial.RUNNING
    printer.on_step_end(0, trials)
    ends = [(Trial.TERMINATED, {EPOCH: 2, LAST: True}), (Trial.ERROR, {}),
            (Trial.TERMINATED, {EPOCH: 1}), (Trial.TERMINATED, {EPOCH: 2, LAST: True})]
    for trial, (status, result) in zip(trials, ends):
        trial.status, trial.last_result = status, result
        if status == Trial.ERROR:
            trial.error_file = str(trace)
            printer.on_trial_error(1, trials, trial)
        else:
            printer.on_trial_complete(1, trials, trial)
        printer.on_step_end(1, trials)
    printer.on_experiment_end(trials)


def test_a_terminal_shows_one_live_line_and_a_line_per_failed_trial(tmp_path, monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(sweep_console, "console", Console(file=out, force_terminal=True, width=160))
    printer = ProgressPrinter("search", "val_macro_f1", 4)
    _drive(printer, tmp_path, monkeypatch)
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())  # the cursor moves of the redraws
    assert shown.count("FAILED") == 1 and "[search 2/4] mr__m__ce__s0 t1: FAILED (NonFiniteEmbeddingsError" in shown
    assert "completed after" not in shown and "stopped early" not in shown  # no line per finished trial
    assert "search: 0/4 done · 4 running · 0 pending · 0 failed" in shown
    last = [line for line in shown.splitlines() if line.startswith("search: ")][-1]
    assert last.startswith("search: 3/4 done · 0 running · 0 pending · 1 failed · ") and last.endswith("finished")
    assert printer._live is None  # stopped: the terminal gets its cursor back


def test_a_pipe_keeps_the_line_per_trial(tmp_path, monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(sweep_console, "console", Console(file=out, force_terminal=False, width=160))
    _drive(ProgressPrinter("search", "val_macro_f1", 4), tmp_path, monkeypatch)
    lines = out.getvalue().splitlines()
    assert [line.split(": ", 1)[1].split(" after")[0].split(" (")[0] for line in lines] == [
        "completed", "FAILED", "stopped early", "completed"]
    assert [line.split("]")[0] for line in lines] == ["[search 1/4", "[search 2/4", "[search 3/4", "[search 4/4"]
    assert not any(line.startswith("search: ") for line in lines)  # no live line in a log


def test_redraws_between_events_are_throttled(tmp_path, monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(sweep_console, "console", Console(file=out, force_terminal=True, width=160))
    now = [0.0]
    monkeypatch.setattr("sweeps.progress.time.monotonic", lambda: now[0])
    printer = ProgressPrinter("search", "val_macro_f1", 2)
    printer.setup()
    trials = [FakeTrial("a", Trial.RUNNING)]
    drawn = []
    monkeypatch.setattr(printer._live, "update", lambda text, refresh: drawn.append(str(text)))
    for step in range(10):  # ten loop steps within one redraw interval
        now[0] = REDRAW_S + step * REDRAW_S / 20
        printer.on_step_end(step, trials)
    assert len(drawn) == 1
    printer.on_experiment_end(trials)
    assert len(drawn) == 2  # the end always draws


def test_a_pickled_printer_carries_no_display(monkeypatch):
    import pickle

    monkeypatch.setattr(sweep_console, "console", Console(file=io.StringIO(), force_terminal=True))
    printer = ProgressPrinter("search", "val_macro_f1", 2)
    printer.setup()
    restored = pickle.loads(pickle.dumps(printer))
    assert restored._live is None and restored.total == 2
    printer.on_experiment_end([])



def test_a_resumed_phase_times_only_the_trials_ended_since_it_resumed():
    # 30 of 40 had ended before the resume; 2 more in 60 s: 30 s each for the 8 left
    line = live_line("search", PhaseCounts(32, 2, 6, 0), 40, 60.0, ended_before=30)
    assert line.endswith("0:01:00 elapsed · ETA 0:04:00"), line
    assert live_line("search", PhaseCounts(30, 2, 8, 0), 40, 60.0, ended_before=30).endswith("ETA -")


def test_a_printer_pickled_by_an_earlier_version_still_runs(monkeypatch):
    """A resumed sweep's Tuner brings back the printer it pickled, perhaps with fewer fields."""
    monkeypatch.setattr(sweep_console, "console", Console(file=io.StringIO(), force_terminal=False))
    old = ProgressPrinter.__new__(ProgressPrinter)
    old.__dict__.update({"phase": "search", "metric": "val_macro_f1", "total": 2, "width": 160, "done": 1,
                         "_console": None})
    old.setup()
    old.on_step_end(0, [FakeTrial("a", Trial.RUNNING)])
    old.on_trial_complete(0, [FakeTrial("a", Trial.TERMINATED)], FakeTrial("a", Trial.TERMINATED, last_result={LAST: True}))
    assert "[search 2/2] mr__m__ce__s0 a: completed" in sweep_console.console.file.getvalue()
    old.on_experiment_end([])
