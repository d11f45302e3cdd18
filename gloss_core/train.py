"""Train and evaluate one model, in either protocol of method.md section 4.

- integrated: encoder + linear head on CE, SCL+CE or G-Loss+CE; early stopping on validation
  macro-F1; test metrics from the best epoch's weights, restored.
- standalone: the encoder alone on G-Loss, SCL, triplet or cos-sim; early stopping on validation
  macro-silhouette; then a linear classifier on frozen embeddings, early-stopped on validation
  macro-F1, evaluated on test.

One flat `TrainConfig`; its `asdict()` is what a sweep logs. Progress leaves through an injected
`report(metrics, checkpoint_dir)` callable, so this module knows nothing of Ray or MLflow.

Usage:
    gloss train                                          # bundled MiniLM, synthetic corpus
    gloss train --data ../shared/data/MR --limit 512 --loss gloss --sigma sqrt --epochs 3
    gloss train --protocol standalone --loss triplet --margin 5
"""

from __future__ import annotations

import inspect
import time
from dataclasses import asdict

import numpy as np
import torch

from gloss_core.batching import Batches
from gloss_core.checkpoint import load_checkpoint
from gloss_core.components import balanced_weights, build_loss, load_splits, pick_device
from gloss_core.config import PROTOCOL_LOSSES, Report, TrainConfig
from gloss_core.loop import Run
from gloss_core.models import TextClassifier, load_tokenizer

__all__ = ["PROTOCOL_LOSSES", "Report", "TrainConfig", "balanced_weights", "build_loss", "train"]


def _accepts_checkpoint(report) -> bool:
    try:
        return len(inspect.signature(report).parameters) >= 2
    except (TypeError, ValueError):
        return True


def train(config: TrainConfig, report: Report | None = None, resume_from: str | None = None) -> dict:
    """Run one configuration to the end and return its metrics (see `gloss_core.loop.Run.result`).

    Args:
        config: the run.
        report: called once per epoch as `report(metrics, checkpoint_dir)`; `checkpoint_dir` is a
            folder holding that epoch's checkpoint (valid only during the call), or None.
        resume_from: a checkpoint folder; the run continues after its epoch and ends with the
            same metrics as an uninterrupted run (on CPU).
    """
    if report is not None and not _accepts_checkpoint(report):
        one_arg = report
        report = lambda metrics, checkpoint_dir: one_arg(metrics)  # noqa: E731
    started = time.perf_counter()
    seeds = config.seeds()
    device = pick_device(config.device)
    splits = load_splits(config)
    tokenizer = load_tokenizer(config.model)
    torch.manual_seed(seeds["init"])
    model = TextClassifier.from_pretrained(config.model, splits.num_classes, config.pooling).to(device)

    def batches(split, shuffle_seed=None):
        return Batches(split, tokenizer, config.batch_size, config.max_length, shuffle_seed)

    run = Run(config, model, splits, device, batches(splits.train, seeds["data_order"]),
              batches(splits.val), batches(splits.test), eval_train=lambda: batches(splits.train))
    state = load_checkpoint(resume_from) if resume_from is not None else None
    run.setup_loss(state)
    torch.manual_seed(seeds["dropout"])
    if state is not None:
        run.restore(state)
    run.fit(report)
    result = run.result()
    result.update({
        "total_time_s": time.perf_counter() - started,
        "majority_val_accuracy": float(np.bincount(splits.val.labels.numpy()).max() / len(splits.val.labels)),
        "data_notes": splits.notes,
        "seeds": seeds,
        "config": asdict(config),
        "device": str(device),
    })
    return result
