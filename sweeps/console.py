"""What a sweep prints: what is about to run, what `--restart` deleted, and the closing tables of
each cell's best score and test metrics and of the sensitivity points."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table

from gloss_core.provenance import redact
from gloss_core.spread import mean_std
from sweeps.cell_groups import GroupPlan
from sweeps.outcomes import ReplicateOutcome, SearchOutcome, SensitivityOutcome, by_seed
from sweeps.sensitivity import describe
from sweeps.spec import SweepSpec

console = Console(width=None if sys.stdout.isatty() else 160)


def say(line: str) -> None:
    console.print(line, markup=False, highlight=False)


def announce(spec: SweepSpec, cells: int, uri: str, storage: str, resume: bool, of: int | None = None) -> None:
    """What is about to run and where its results go (`of`: the spec's cells, when `--cells` chose some)."""
    replicate = f", then each cell's best on seeds {spec.replicate.seeds}" if spec.replicate else ""
    chosen = f"{cells} of {of} cells (--cells)" if of is not None else f"{cells} cells"
    say(f"sweep {spec.name}{' (resumed)' if resume else ''}: {chosen}, up to {spec.search.num_samples} distinct "
        f"search trials each (ASHA up to {spec.asha.max_t} epochs){replicate}")
    say(f"a trial's score: {spec.metric} at its best epoch ({spec.mode}); the search, ASHA and the choice of each "
        "cell's best rank by it")
    if spec.sensitivity:
        say(f"then sensitivity of {', '.join(spec.sensitivity.losses)} around its best config: "
            f"{describe(spec.sensitivity.params)} on seeds {spec.sensitivity_seeds()}")
    say(f"MLflow: {redact(uri)} | Tune state: {storage}")


def groups(planned: GroupPlan, retry: bool = False, selected: int | None = None) -> None:
    """Which cell groups run, which are only read back, and the cells left as they are (`--cells`;
    `retry`: --retry-failed, which may train a finished group's failed trials again; `selected`:
    the cells `--cells` chose, None without it)."""
    whole = len(planned.train) == 1 and not planned.train[0].name and not planned.restore and not planned.left
    if whole and selected is None:
        return  # a sweep that never used --cells: nothing to say
    if selected is not None and selected < len(planned.training()):
        say(f"--cells selects {selected} cell(s); {len(planned.training())} run, since a cell group resumes whole "
            "(each phase of it is one Tune experiment)")
    for group in planned.train:
        if not group.done:
            say(f"runs {group.label()}: {', '.join(group.cells)}")
        else:
            say(f"reads back {group.label()} (finished; " + ("its failed trials, if any, are retried)" if retry else
                                                             "nothing trains) for the closing tables"))
    for group in planned.restore:
        say(f"reads back {group.label()} (finished; nothing trains) for the closing tables")
    if planned.left:
        shown = ", ".join(planned.left[:8]) + (f", ... ({len(planned.left)} in all)" if len(planned.left) > 8 else "")
        say(f"left as they are: {len(planned.left)} cell(s) not selected and not finished ({shown}); a later "
            "`--resume` (with or without --cells) runs them")


def repeats(repeats: dict[str, dict[str, int]], num_samples: int) -> None:
    """Per cell, the suggestions that trained nothing new (a config the cell had already trained)."""
    for cell, counts in repeats.items():
        if counts["enumerated_points"]:
            say(f"search {cell}: its finite space of {counts['enumerated_points']} points was enumerated "
                f"({counts['trained']} trials instead of {num_samples})")
        if counts["skipped_repeats"]:
            say(f"search {cell}: {counts['skipped_repeats']} of {counts['suggestions']} suggestions repeated a config "
                "already trained; no trial ran for them (the study was told the earlier outcome)")


def restarted(folder: str, runs: int, models: int, sweep: str) -> None:
    say(f"--restart: deleted {folder}, {runs} MLflow runs of sweep {sweep!r} and {models} registered models")


def superseded(phase: str, runs: int) -> None:
    if runs:
        say(f"{phase}: deleted {runs} MLflow run(s) of trials that ran again after a kill (each superseded by its "
            "retried trial's run)")


def results_table(spec: SweepSpec, cells: list[str], search: SearchOutcome,
                  replicate: ReplicateOutcome) -> tuple[Table, list[dict]]:
    """Per cell: the best search score and the test metrics' mean ± std over replicate seeds."""
    table = Table(title=f"sweep {spec.name}: best {spec.metric} (search) and test metrics (replicate seeds)")
    for column in ("cell", f"best {spec.metric}", "n", "test accuracy", "test macro-F1"):
        table.add_column(column)
    rows = []
    for name in cells:
        reps = replicate.finals.get(name, [])

        def fmt(key: str) -> str:
            spread = mean_std(r.test(key) for r in reps if r.test(key) is not None)
            return spread.format(scale=100) if spread.n else "-"

        best = search.best.get(name)
        row = {"cell": name, "best": best.value if best else None, "n": len(reps),
               "test_accuracy": fmt("test_accuracy"), "test_macro_f1": fmt("test_macro_f1")}
        rows.append(row)
        table.add_row(name, "-" if best is None else f"{best.value:.4f}", str(len(reps)), row["test_accuracy"],
                      row["test_macro_f1"])
    return table, rows


def sensitivity_table(replicate: ReplicateOutcome, sensitivity: SensitivityOutcome) -> tuple[Table | None, list[dict]]:
    """Each point's test macro-F1 beside its centre (the replicate runs), paired over seeds."""
    if not sensitivity.points:
        return None, []
    table = Table(title="sensitivity: test macro-F1 of each perturbation, paired with the centre (replicate) seeds")
    for column in ("cell", "param", "value", "n", "test macro-F1", "Δ vs centre"):
        table.add_column(column)
    rows = []
    for point in sensitivity.points:
        centre = by_seed(replicate.finals.get(point.cell, []), "test_macro_f1")
        mine = by_seed(sensitivity.finals.get(point.name, []), "test_macro_f1")
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
