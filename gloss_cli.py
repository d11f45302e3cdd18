"""The `gloss` command: `gloss train` (gloss_core), `gloss predict` (serving), `gloss sweep
run|status` (sweeps) and `gloss analyze report` (analysis)."""

import typer

from gloss_core.cli import train
from analysis.cli import app as analyze_app
from serving.predict import predict
from sweeps.cli import app as sweep_app

app = typer.Typer(no_args_is_help=True, add_completion=False, help="G-Loss fine-tuning and sweeps.")
app.command("train")(train)
app.command("predict")(predict)
app.add_typer(sweep_app, name="sweep")
app.add_typer(analyze_app, name="analyze")


@app.callback()
def main() -> None:
    """G-Loss fine-tuning, sweeps and analysis."""


if __name__ == "__main__":
    app()
