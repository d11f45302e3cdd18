"""The `gloss` command: `gloss train` (gloss_core), `gloss predict` (serving), `gloss sweep
run|status` (sweeps) and `gloss analyze report` (analysis).

One error path: a bad input (`UserError`, or a value a config or a path refuses) ends in one red
line and exit status 2; anything else in one line with exit status 1 and a hint. `--debug`
(anywhere on the command line) shows the traceback instead. Exit codes are listed in
docs/bad-inputs.md.
"""

import sys

import typer
from rich.console import Console
from rich.markup import escape

from analysis.cli import app as analyze_app
from gloss_core.cli import train
from gloss_core.errors import UserError
from serving.predict import predict
from sweeps.cli import app as sweep_app

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="G-Loss fine-tuning and sweeps. Add --debug to see a traceback on error.")
app.command("train")(train)
app.command("predict")(predict)
app.add_typer(sweep_app, name="sweep")
app.add_typer(analyze_app, name="analyze")

KNOWN = (UserError, ValueError, LookupError, FileNotFoundError, FileExistsError, NotADirectoryError,
         IsADirectoryError, PermissionError)


@app.callback()
def _main() -> None:
    """G-Loss fine-tuning, sweeps and analysis."""


def main(argv: list[str] | None = None) -> None:
    """The console entry point: run the command, turn errors into one line and an exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
    try:  # usage errors, typer.Exit and Ctrl-C end inside typer with their own status
        app(args=args, prog_name="gloss")
    except Exception as err:  # noqa: BLE001 - the one place errors become messages
        if debug:
            raise
        text = " ".join(str(err).split()) if not str(err).count("\n") else str(err).strip()
        if isinstance(err, KNOWN):
            console.print(f"[red]error:[/red] {escape(text)}", highlight=False, soft_wrap=True)
            sys.exit(2)
        console.print(f"[red]error ({type(err).__name__}):[/red] {escape(text)}\n"
                      "This is not an input error we know; rerun with --debug for the traceback and report it.",
                      highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
