"""`gloss sweep run SPEC` and `gloss sweep status NAME`."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(no_args_is_help=True, help="Sweeps: dataset x model x loss x seed grids on Ray Tune.")
console = Console(width=None if sys.stdout.isatty() else 160)


@app.command("run")
def run(
    spec: Path = typer.Argument(..., help="a sweep spec (YAML), e.g. sweeps/specs/demo.yaml"),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI (default: sqlite file ./mlflow.db)"),
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted sweep"),
    restart: bool = typer.Option(False, "--restart", help="discard an earlier run of this sweep (Tune state and MLflow runs)"),
    storage_path: Optional[str] = typer.Option(None, help="Tune state: a folder or a URI such as s3://bucket/prefix "
                                                            "(default ./ray_results)"),
    address: Optional[str] = typer.Option(None, help="Ray cluster to join (default: RAY_ADDRESS or a local one)"),
    num_cpus: Optional[int] = typer.Option(None, min=1, max=4096, help="CPUs of a local Ray cluster (default: all)"),
    wait_for_resources: float = typer.Option(0.0, "--wait-for-resources", min=0, max=86400, metavar="SECONDS",
                                             help="when no node fits a trial, wait up to this long for one to join "
                                                  "or the autoscaler to launch one (default: fail at once; 30 s with "
                                                  "an autoscaler)"),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="with --resume: run each failed trial again from "
                                                                    "the start (search's only until replicate has "
                                                                    "started)"),
    cells: Optional[str] = typer.Option(None, "--cells", metavar="PATTERN",
                                        help="run only the cells whose names match (shell patterns, comma-separated, "
                                             "e.g. 'R8__*,MR__bert__*'); the others are left as they are for a later "
                                             "--resume"),
):
    """Validate SPEC, then search, replicate and summarise; every trial goes to MLflow.

    Exit status: 0 done, 2 a bad input (nothing started), 3 every trial of a phase failed,
    130 interrupted (state saved for --resume)."""
    from sweeps.spec import SpecError, load_spec

    if resume and restart:
        raise typer.BadParameter("--resume and --restart exclude each other")
    if retry_failed and not resume:
        raise typer.BadParameter("--retry-failed goes with --resume (it retries the failed trials of a sweep that ran)")
    try:
        parsed = load_spec(spec)
    except SpecError as err:
        console.print(f"[red]{escape(str(err))}[/red]")
        raise typer.Exit(2) from err
    from sweeps.startup import PhaseFailed, SweepInterrupted, started

    try:
        with started(parsed, tracking_uri, resume, restart, storage_path, console.print, cells) as start:  # refused in seconds, before Ray
            from sweeps.runner import run_started

            run_started(start, address, num_cpus, wait_for_resources, retry_failed)
    except PhaseFailed as err:
        console.print(f"[red]sweep {parsed.name!r}: {escape(str(err))}[/red]")
        raise typer.Exit(3) from err
    except SweepInterrupted as err:
        console.print(f"[yellow]sweep {parsed.name!r} interrupted during the {err} phase; its state is saved. "
                      f"Continue with: gloss sweep run {spec} --resume{_cells_flag(cells)}[/yellow]")
        raise typer.Exit(130) from err


def _cells_flag(cells: str | None) -> str:
    return "" if cells is None else f" --cells {escape(shlex.quote(cells))}"


@app.command("status")
def status(
    name: str = typer.Argument(..., help="the sweep's name (its MLflow experiment)"),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI (default: sqlite file ./mlflow.db)"),
):
    """Per cell and phase: trials completed, running, stopped early, failed; best so far."""
    from gloss_core.provenance import default_tracking_uri
    from sweeps.preflight import check_tracking_uri
    from sweeps.status import sweep_status

    uri = tracking_uri or default_tracking_uri()
    check_tracking_uri(uri)
    try:
        rows = sweep_status(name, uri)
    except LookupError as err:
        console.print(f"[red]{escape(str(err))}[/red]")
        raise typer.Exit(2) from err
    table = Table(title=f"sweep {name}")
    for column in ("phase", "cell", "completed", "running", "stopped early", "failed", "interrupted", "best"):
        table.add_column(column)
    for row in rows:
        best = "-" if row["best"] is None else f"{row['best']:.4f} ({row['metric']})"
        table.add_row(row["phase"], row["cell"], *(str(row[k]) for k in ("completed", "running", "stopped_early",
                                                                       "failed", "interrupted")), best)
    console.print(table)


@app.command("plan")
def plan(
    spec: Path = typer.Argument(..., help="a sweep spec (YAML), e.g. sweeps/specs/table2.yaml"),
    epoch_seconds: list[str] = typer.Option([], "--epoch-seconds", metavar="MODEL=S",
                                            help="seconds one epoch of MODEL (a name under `models`) takes; give "
                                                 "one per model for GPU-hours and wall time"),
    gpus: int = typer.Option(1, "--gpus", help="GPUs of the cluster, for the wall time"),
    cells: Optional[str] = typer.Option(None, "--cells", metavar="PATTERN",
                                        help="only the cells PATTERN selects (a resume of a sweep also continues the rest of each "
                                             "cell group holding one)"),
):
    """Before anything starts (no Ray): the cells, the trials of each phase, the most epochs of a
    trial and, with --epoch-seconds, GPU-hours and wall time (upper bounds)."""
    from sweeps.costing import CostingError, estimate, parse_epoch_seconds, plan_sweep
    from sweeps.spec import SpecError, load_spec

    try:
        parsed = load_spec(spec)
        counted = plan_sweep(parsed, cells)
        seconds = parse_epoch_seconds(epoch_seconds, parsed)
        costs = {c.phase: c for c in estimate(counted, seconds, gpus)} if seconds else {}
    except (SpecError, CostingError) as err:
        console.print(f"[red]{escape(str(err))}[/red]")
        raise typer.Exit(2) from err
    cells = Table(title=f"sweep {parsed.name}: {len(counted.phases['search'])} cells")
    for column in ("cell", "cpu", "gpu", *counted.phases):
        cells.add_column(column)
    by_phase = {phase: {row.cell.name: row for row in rows} for phase, rows in counted.phases.items()}
    for row in counted.phases["search"]:
        name = row.cell.name
        cells.add_row(name, f"{row.cell.resources.cpu:g}", f"{row.cell.resources.gpu:g}",
                      *(_count(by_phase[phase].get(name)) for phase in counted.phases))
    console.print(cells)
    phases = Table(title="phases (epochs: the most one trial trains; ASHA and early stopping stop trials sooner)")
    for column in ("phase", "trials", "most epochs", "trial-epochs", *(("GPU-hours", f"wall h on {gpus} GPU(s)")
                                                                         if costs else ())):
        phases.add_column(column)
    for phase in counted.phases:
        bound = "" if counted.exact(phase) else "at most "
        cost = costs.get(phase)
        phases.add_row(phase, f"{bound}{counted.trials(phase)}", str(counted.max_epochs(phase)),
                       f"{bound}{counted.trial_epochs(phase)}",
                       *((f"at most {cost.gpu_hours:.1f}", f"at most {cost.wall_hours:.1f}") if cost else ()))
    console.print(phases)
    if costs:
        console.print(f"total: at most {sum(c.gpu_hours for c in costs.values()):.1f} GPU-hours, "
                      f"{sum(c.wall_hours for c in costs.values()):.1f} h on {gpus} GPU(s)")


def _count(row) -> str:
    return "-" if row is None else f"{'' if row.exact else '<= '}{row.trials}"
