"""`gloss sweep run SPEC` and `gloss sweep status NAME`."""

from __future__ import annotations

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
):
    """Validate SPEC, then search, replicate and summarise; every trial goes to MLflow.

    Exit status: 0 done, 2 a bad input (nothing started), 3 every trial of a phase failed,
    130 interrupted (state saved for --resume)."""
    from sweeps.spec import SpecError, load_spec

    if resume and restart:
        raise typer.BadParameter("--resume and --restart exclude each other")
    try:
        parsed = load_spec(spec)
    except SpecError as err:
        console.print(f"[red]{escape(str(err))}[/red]")
        raise typer.Exit(2) from err
    from sweeps.runner import PhaseFailed, SweepInterrupted, run_sweep

    try:
        run_sweep(parsed, tracking_uri=tracking_uri, resume=resume, restart=restart, storage_path=storage_path,
                  ray_address=address, num_cpus=num_cpus)
    except PhaseFailed as err:
        console.print(f"[red]sweep {parsed.name!r}: {escape(str(err))}[/red]")
        raise typer.Exit(3) from err
    except SweepInterrupted as err:
        console.print(f"[yellow]sweep {parsed.name!r} interrupted during the {err} phase; its state is saved. "
                      f"Continue with: gloss sweep run {spec} --resume[/yellow]")
        raise typer.Exit(130) from err


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
