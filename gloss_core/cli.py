"""`gloss train`: one training run from the shell.

Every `TrainConfig` field is an option (`--sigma sqrt`, `--protocol standalone`, ...), plus
`--output metrics.json`, `--checkpoint-dir DIR` (the latest epoch's checkpoint is kept there, and
the best epoch's weights in `DIR/best.epochNNNN.safetensors` once they are not the latest) and
`--resume DIR`. Each checkpoint replaces DIR whole: it is copied to `DIR.tmp-X` (with the best
weights' files, linked), DIR is renamed `DIR.old-X`, `DIR.tmp-X` becomes DIR and `DIR.old-X` goes;
a kill at any point leaves one good checkpoint, and the next `gloss train` puts it back in place.
`--save-model DIR` writes the best epoch's model as a Hugging Face folder (`gloss predict` reads it).
A progress bar follows the epochs; a summary table ends the run.
"""

from __future__ import annotations

import inspect
import json
import os
import secrets
import shutil
import sys
from dataclasses import fields
from pathlib import Path
from typing import Optional, get_args, get_type_hints

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from gloss_core.config import TrainConfig

console = Console(width=None if sys.stdout.isatty() else 160)


def _option_type(hint):
    """A typer-friendly type for a field's type hint: `int | None` -> Optional[int]; a union of
    several types (sigma's `float | str`) is read as a string and parsed after."""
    args = get_args(hint)
    kinds = [a for a in args if a is not type(None)]
    base = hint if not args else (kinds[0] if len(kinds) == 1 else str)
    return Optional[base] if type(None) in args else base


def _parse_sigma(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def _check_outputs(output: Path | None, checkpoint_dir: Path | None, save_model: str | None, resume: Path | None) -> None:
    """Every place the run will write is writable now, not after hours of training."""
    from gloss_core.errors import UserError
    from gloss_core.paths import writable_file, writable_folder

    if output is not None:
        writable_file(output, "--output")
    if checkpoint_dir is not None:
        writable_folder(checkpoint_dir, "--checkpoint-dir")
    if save_model:
        writable_folder(save_model, "--save-model")
    if resume is not None and not resume.is_dir():
        raise UserError(f"--resume {resume}: no such checkpoint folder")


def _summary(result, title: str, timing: bool = True) -> Table:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    keys = ["best_epoch", "epochs_run", "val_accuracy", "val_macro_f1", "val_macro_silhouette", "test_accuracy",
            "test_macro_f1", "test_macro_silhouette", "test_micro_silhouette", "sigma", "time_per_epoch_s",
            "total_time_s", "majority_val_accuracy"]
    metrics = result.metrics()
    for key in keys:
        if metrics.get(key) is not None:
            value = metrics[key]
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    table.add_row("stopped", {"budget": "all epochs ran", "early_stop": "early stopping"}[result.stop])
    phases = result.timing_per_epoch_s
    if timing and any(phases.values()):  # --no-timing records zeros: no table of them
        for phase, seconds in phases.items():
            table.add_row(f"time/epoch: {phase}", f"{seconds:.3f} s")
    return table


def train(
    output: Optional[Path] = typer.Option(None, help="write the metrics as JSON here"),
    checkpoint_dir: Optional[Path] = typer.Option(None, help="keep the latest checkpoint in this folder"),
    resume: Optional[Path] = typer.Option(None, help="resume from a checkpoint folder"),
    **options,
):
    """Fine-tune one encoder and report validation and test metrics."""
    from gloss_core.train import train as run

    if "sigma" in options:
        options["sigma"] = _parse_sigma(options["sigma"])
    try:
        config = TrainConfig(**options)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err
    for folder in {checkpoint_dir, resume} - {None}:
        _recover_checkpoint_dir(folder)
    _check_outputs(output, checkpoint_dir, config.save_model, resume)

    with Progress(TextColumn("[bold]epoch {task.completed}/{task.total}"), BarColumn(), TimeElapsedColumn(),
                  TextColumn("{task.description}"), console=console, transient=True) as progress:
        task = progress.add_task("", total=config.epochs)

        def report(epoch, folder: str | None) -> None:
            if folder is not None and checkpoint_dir is not None:
                _keep_checkpoint(Path(folder), checkpoint_dir)
            selected, metrics = config.selection(), epoch.metrics
            line = (f"epoch {epoch.epoch}: train loss {metrics['train_loss']:.4f}  {selected} {metrics[selected]:.4f}  "
                    f"(best: {epoch.score:.4f} at epoch {epoch.best_epoch}; {metrics['epoch_time_s']:.1f} s)")
            progress.console.print(line)
            progress.update(task, completed=epoch.epoch, description=line)

        try:
            result = run(config, report=report, resume_from=str(resume) if resume else None,
                         best_weights=_best_weights(checkpoint_dir, resume),
                         notice=lambda line: progress.console.print(f"data: {line}", markup=False, highlight=False))
        except (ValueError, FileNotFoundError) as err:
            console.print(f"[red]error:[/red] {err}")
            raise typer.Exit(2) from err
    console.print(_summary(result, f"{config.protocol} {config.loss} on {Path(config.data).name} with {Path(config.model).name}",
                           timing=config.timing))
    zero = sum(r.metrics.get("gloss_zero_batches", 0) for r in result.history)
    if zero:
        console.print(f"[yellow]note:[/yellow] {zero} batch(es) (an epoch's last, smaller one) were too small for "
                      f"G-Loss with gamma {config.gamma}: its term was 0 there")
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(result.to_json(), indent=2))
        console.print(f"metrics written to {output}")


def _best_weights(checkpoint_dir: Path | None, resume: Path | None):
    """The best epoch's weights live beside the kept checkpoint; resuming into another folder takes
    the resumed folder's files along (the epoch files, and the one `best.safetensors` of a
    checkpoint made before files were named by epoch)."""
    from gloss_core.training.checkpoint import BEST_FILE, BestWeights

    home = checkpoint_dir or resume
    if home is None:
        return None
    if resume is not None and checkpoint_dir is not None and resume.resolve() != checkpoint_dir.resolve():
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        for source in resume.glob(f"{Path(BEST_FILE).stem}*.safetensors"):
            shutil.copy2(source, checkpoint_dir / source.name)
    return BestWeights(home / BEST_FILE)


def _keep_checkpoint(folder: Path, target: Path) -> None:
    """`target` becomes a copy of the checkpoint `folder`, with what else `target` held (the best
    weights' files, hard-linked where the filesystem allows), replaced whole: never half a copy."""
    tag = secrets.token_hex(4)
    new, old = target.with_name(f"{target.name}.tmp-{tag}"), target.with_name(f"{target.name}.old-{tag}")
    shutil.copytree(folder, new)
    if target.is_dir():
        for entry in target.iterdir():
            if not (new / entry.name).exists():
                if entry.is_dir():
                    shutil.copytree(entry, new / entry.name, copy_function=_link)
                else:
                    _link(entry, new / entry.name)
        os.rename(target, old)  # from here to the next rename DIR is missing: `_recover_checkpoint_dir`
    os.rename(new, target)
    shutil.rmtree(old, ignore_errors=True)


def _link(source, destination) -> None:
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def _recover_checkpoint_dir(target: Path) -> None:
    """What a `gloss train` killed in `_keep_checkpoint` left: with `target` in place, a leftover
    `.tmp-X` (a copy not finished, or not needed) and `.old-X` (the one replaced) go; without it,
    the `.tmp-X` whose `.old-X` is there is whole (the old is renamed only once the copy is done)
    and takes its place, else the `.old-X` comes back."""
    leftovers = sorted(target.parent.glob(f"{target.name}.tmp-*")) + sorted(target.parent.glob(f"{target.name}.old-*"))
    if not target.exists():
        for old in sorted(target.parent.glob(f"{target.name}.old-*")):
            new = old.with_name(f"{target.name}.tmp-{old.name.rsplit('-', 1)[1]}")
            os.rename(new if new.is_dir() else old, target)
            break
    for leftover in leftovers:
        if leftover.exists():
            shutil.rmtree(leftover, ignore_errors=True)


def _config_parameters() -> list[inspect.Parameter]:
    hints = get_type_hints(TrainConfig)
    return [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY,
                              default=typer.Option(f.default, help=f.metadata.get("help")),
                              annotation=_option_type(hints[f.name]))
            for f in fields(TrainConfig)]


_own = [p for p in inspect.signature(train).parameters.values() if p.kind != inspect.Parameter.VAR_KEYWORD]
train.__signature__ = inspect.Signature(
    [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in _own] + _config_parameters()
)
