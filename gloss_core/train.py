"""Train and evaluate one model, in either protocol of docs/method.md section 4.

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

import time
from dataclasses import asdict

import numpy as np

from gloss_core.config import Report, TrainConfig
from gloss_core.training.build import build_run
from gloss_core.training.checkpoint import load_checkpoint


def train(config: TrainConfig, report: Report | None = None, resume_from: str | None = None) -> dict:
    """Run one configuration to the end and return its metrics (see `gloss_core.training.engine.Run.result`).

    Args:
        config: the run.
        report: called once per epoch as `report(metrics, checkpoint_dir)`; `checkpoint_dir` is a
            folder holding that epoch's checkpoint (valid only during the call), or None.
        resume_from: a checkpoint folder; the run continues after its epoch and ends with the
            same metrics as an uninterrupted run (on CPU).
    """
    started = time.perf_counter()
    state = load_checkpoint(resume_from) if resume_from is not None else None
    run = build_run(config, state)
    run.fit(report)
    result = run.result()
    splits = run.data.splits
    result.update({
        "total_time_s": time.perf_counter() - started,
        "majority_val_accuracy": float(np.bincount(splits.val.labels.numpy()).max() / len(splits.val.labels)),
        "data_notes": splits.notes,
        "seeds": config.seeds(),
        "config": asdict(config),
        "device": str(run.device),
    })
    return result
