"""`gloss train`: one training run from the shell, with a summary table and optional JSON output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def _sigma(value: str) -> float | str:
    try:
        return float(value)
    except ValueError:
        return value


def train(
    data: str = typer.Option("synthetic", help="'synthetic' or a CSV folder with train/val/test.csv"),
    limit: Optional[int] = typer.Option(None, help="rows per split (seeded subset)"),
    model: str = typer.Option("minilm", help="'minilm' (bundled), a Hub name or a local folder"),
    pooling: str = typer.Option("cls", help="cls | mean"),
    loss: str = typer.Option("gloss", help="ce | gloss | scl (integrated with CE)"),
    lam: float = typer.Option(0.9, help="weight of the auxiliary loss"),
    gamma: float = typer.Option(0.7, help="G-Loss: fraction of the batch that keeps its label"),
    sigma: str = typer.Option("1.0", help="G-Loss: a number, 'sqrt', 'batch_sqrt' or 'dicm'"),
    temperature: float = typer.Option(0.1, help="SCL temperature"),
    lr: float = typer.Option(5e-5),
    epochs: int = typer.Option(2),
    patience: Optional[int] = typer.Option(None, help="early-stopping patience on val macro-F1 (epochs)"),
    batch_size: int = typer.Option(32),
    max_length: int = typer.Option(128),
    class_weights: str = typer.Option("none", help="none | balanced"),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
    output: Optional[Path] = typer.Option(None, help="write the metrics as JSON here"),
):
    """Fine-tune one encoder and report validation and test metrics."""
    from gloss_core.train import TrainConfig, train as run

    try:
        config = TrainConfig(
            data=data, limit=limit, model=model, pooling=pooling, loss=loss, lam=lam, gamma=gamma,
            sigma=_sigma(sigma), temperature=temperature, lr=lr, epochs=epochs, patience=patience, batch_size=batch_size,
            max_length=max_length, class_weights=class_weights, seed=seed, device=device,
        )
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err

    def report(metrics: dict) -> None:
        console.print(
            f"epoch {metrics['epoch']}: train loss {metrics['train_loss']:.4f}  "
            f"val macro-F1 {metrics['val_macro_f1']:.4f}  ({metrics['epoch_time_s']:.1f} s)"
        )

    result = run(config, report=report)
    table = Table(title=f"{loss} on {data} with {model}")
    for column in ("metric", "value"):
        table.add_column(column)
    for key in ("best_epoch", "val_accuracy", "val_macro_f1", "test_accuracy", "test_macro_f1",
                "majority_val_accuracy", "total_time_s"):
        value = result[key]
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)
    if output is not None:
        output.write_text(json.dumps(result, indent=2))
        console.print(f"metrics written to {output}")
