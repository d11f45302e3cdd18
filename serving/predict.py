"""`gloss predict MODEL INPUT.csv --output OUT.csv`: a kept model's predictions on new texts.

MODEL is a `--save-model` folder, `runs:/RUN/model`, `models:/NAME/VERSION` (VERSION may be
`latest`) or `models:/NAME@ALIAS` (a sweep sets `@best`); the store comes from `--tracking-uri`
or `MLFLOW_TRACKING_URI`. INPUT has a `text` column (and `text_pair` for pair models). OUT is the input rows plus `prediction` (the label name)
and one probability column per class. With a `label` column, accuracy and macro-F1 are printed.
Everything is checked before anything is written; OUT appears only when the predictions are done.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from gloss_core.errors import UserError

console = Console(width=None if sys.stdout.isatty() else 160)


class InputError(UserError, ValueError):
    """An input file the model cannot take; the message names the file, column or labels."""


def read_input(path: Path, pair: bool, labels: list[str]):
    import pandas as pd

    if not path.is_file():
        raise InputError(f"{path}: input file not found")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (ValueError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not a readable UTF-8 CSV ({err})") from err
    if "text" not in frame.columns:
        raise InputError(f"{path}: no 'text' column; found {list(frame.columns)}")
    if pair and "text_pair" not in frame.columns:
        raise InputError(f"{path}: the model was trained on sentence pairs and needs a 'text_pair' column; "
                         f"found {list(frame.columns)}")
    if not pair and "text_pair" in frame.columns:
        raise InputError(f"{path}: has a 'text_pair' column, but the model was trained on single texts")
    if "label" in frame.columns:
        unknown = sorted(set(frame["label"]) - set(labels))
        if unknown:
            raise InputError(f"{path}, column 'label': label(s) {unknown[:5]} unknown to the model; it knows {labels}")
    return frame


def predict(
    model: str = typer.Argument(..., help="a --save-model folder, runs:/RUN/model, models:/NAME/VERSION|latest or "
                                          "models:/NAME@ALIAS"),
    input: Path = typer.Argument(..., help="CSV with a 'text' column ('text_pair' for pair models)"),  # noqa: A002
    output: Path = typer.Option(..., "--output", "-o", help="CSV to write: the input rows, prediction, probabilities"),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow store for runs:/ and models:/ (default: "
                                                           "MLFLOW_TRACKING_URI)"),
    batch_size: Optional[int] = typer.Option(None, min=1, help="rows per batch (default: the model's own)"),
):
    """Predict labels and class probabilities for every row of INPUT with a kept model."""
    from serving.pyfunc import predictions_frame
    from serving.registry import ModelNotFound, load_saved_model, quiet_mlflow

    quiet_mlflow()

    try:
        saved = load_saved_model(model, tracking_uri)
        frame = read_input(input, saved.pair, saved.labels)
    except (ModelNotFound, InputError, FileNotFoundError) as err:
        console.print(f"[red]error:[/red] {err}", markup=True, highlight=False)
        raise typer.Exit(2) from err
    with Progress(TextColumn("predicting"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("", total=len(frame))
        probabilities = saved.predict_proba(frame["text"].tolist(),
                                            frame["text_pair"].tolist() if saved.pair else None, batch_size,
                                            on_batch=lambda rows: progress.advance(task, rows))
    result = frame.reset_index(drop=True).join(predictions_frame(saved, probabilities))
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=output.parent, suffix=".tmp", delete=False, encoding="utf-8",
                                     newline="") as tmp:
        result.to_csv(tmp, index=False)
    os.replace(tmp.name, output)
    console.print(f"{len(result)} predictions written to {output}")
    if "label" in frame.columns:
        from gloss_core.training.metrics import accuracy_and_macro_f1

        scores = accuracy_and_macro_f1(frame["label"].to_numpy(), result["prediction"].to_numpy())
        console.print(f"accuracy {scores['accuracy']:.4f}  macro-F1 {scores['macro_f1']:.4f}  (n = {len(frame)})")
