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
from gloss_core.export import save_model
from gloss_core.provenance import git_commit, package_versions
from gloss_core.report import RunResult
from gloss_core.training.build import build_run
from gloss_core.training.checkpoint import BestWeights, load_checkpoint
from gloss_core.training.engine import Run


def train(config: TrainConfig, report: Report | None = None, resume_from: str | None = None,
          best_weights: BestWeights | None = None, notice=None) -> RunResult:
    """Run one configuration to the end and return its result (`gloss_core.report.RunResult`).

    Args:
        config: the run.
        report: called once per epoch as `report(epoch_report, checkpoint_dir)` with the epoch's
            `EpochReport`; `checkpoint_dir` is a folder holding that epoch's checkpoint (valid only
            during the call), or None.
        resume_from: a checkpoint folder; the run continues after its epoch and ends with the
            same metrics as an uninterrupted run (on CPU).
        best_weights: where the best epoch's weights wait once it is behind (one file, written
            when it changes), so checkpoints hold one copy of the weights; None keeps them inside
            each checkpoint. A resumed run needs the same location.
        notice: called with each line a user should read before training starts (the data's
            notes: class counts, dropped rows and their column).
    """
    started = time.perf_counter()
    state = load_checkpoint(resume_from) if resume_from is not None else None
    run = build_run(config, state, best_weights)
    for line in run.data.splits.notes if notice is not None else []:
        notice(line)
    run.fit(report)
    result = run.result()
    splits = run.data.splits
    result.total_time_s = time.perf_counter() - started
    result.majority_val_accuracy = float(np.bincount(splits.val.labels.numpy()).max() / len(splits.val.labels))
    result.data_notes, result.seeds, result.config = list(splits.notes), config.seeds(), asdict(config)
    if config.save_model:
        export(run, result, config.save_model)
    return result


def export(run: Run, result: RunResult, folder: str) -> None:
    """The best epoch's model as a Hugging Face folder with its head, labels and card."""
    splits = run.data.splits
    head = run.probe_head if run.probe_head is not None else run.model.head
    test = splits.test
    examples = {"text": test.texts[:2], **({"text_pair": test.text_pairs[:2]} if test.text_pairs is not None else {})}
    card = {
        "text_pair": splits.train.text_pairs is not None, "protocol": run.config.protocol, "loss": run.config.loss,
        "config": result.config, "seeds": result.seeds, "examples": examples, "metrics": result.metrics(),
        "git_commit": git_commit(), "package_versions": package_versions(),
    }
    save_model(folder, run.model, head, run.data.tokenizer, splits.label_names, card)
