"""`gloss analyze report`: tables, significance tests and figures of sweeps, from MLflow."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

app = typer.Typer(no_args_is_help=True, help="Paper tables, significance tests and figures from MLflow runs.")
console = Console(width=None if sys.stdout.isatty() else 160)


@app.command("report")
def report(
    experiment: list[str] = typer.Option(..., "--experiment", "-e", help="a sweep name (MLflow experiment); repeat for several"),
    out: Path = typer.Option(..., help="output folder (tables/, figures/, report.md)"),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI (default: sqlite file ./mlflow.db)"),
    fmt: str = typer.Option("md", "--format", help="report format: md or html"),
    gloss: Optional[str] = typer.Option(None, help="the G-Loss method to compare (default: the best G-Loss variant)"),
    baseline: str = typer.Option("ce", help="Table 2's baseline for the † marks"),
    metric: str = typer.Option("test_accuracy", help="metric of Table 9, the ranks and the CD diagram"),
):
    """Write every table (Markdown, LaTeX, CSV), figure (PNG, PDF) and one report for the sweeps."""
    from analysis.report import write_report
    from gloss_core.provenance import default_tracking_uri, quiet_mlflow

    quiet_mlflow()

    if fmt not in ("md", "html"):
        console.print(f"[red]--format must be md or html, got {fmt!r}[/red]")
        raise typer.Exit(2)
    from gloss_core.paths import writable_folder
    from sweeps.preflight import check_tracking_uri

    writable_folder(out, "--out")
    check_tracking_uri(tracking_uri or default_tracking_uri())
    try:
        path = write_report(experiment, tracking_uri or default_tracking_uri(), out, fmt, gloss=gloss,
                            baseline=baseline, metric=metric)
    except (LookupError, ValueError) as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(2) from err
    console.print(f"report: {path}")
