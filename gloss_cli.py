"""The `gloss` command: `gloss train` (gloss_core). Sweep and analysis commands register here too."""

import typer

from gloss_core.cli import train

app = typer.Typer(no_args_is_help=True, add_completion=False, help="G-Loss fine-tuning and sweeps.")
app.command("train")(train)


@app.callback()
def main() -> None:
    """G-Loss fine-tuning, sweeps and analysis."""


if __name__ == "__main__":
    app()
