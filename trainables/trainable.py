"""The Ray Tune function trainable: one `gloss_core.train.train` run, reporting through `tune.report`.

The trial config is a flat `TrainConfig` dict plus bookkeeping keys that start with "_" (cell,
phase, ...), which the trainable drops. Each epoch reports its metrics with a checkpoint;
`tune.get_checkpoint()` resumes a retried or restored trial from the last one. A run that ends
normally marks its last report `last_epoch=True`, so the sweep can tell "completed" from
"stopped early by ASHA". Each report also says which Ray node ran the trial (`node_id`) and
whether this attempt resumed from a checkpoint (`resumed_from_checkpoint`, after a retry or
restore). With `_artifacts`, the replicate trial's final report carries a checkpoint whose
`artifacts/` folder holds the test embeddings and one batch's adjacency per epoch. NaN metrics
and `NonFiniteEmbeddingsError` end the trial as failed.
"""

from __future__ import annotations

import math
import os
import tempfile

import ray
import torch
from ray import tune

from gloss_core.config import TrainConfig
from gloss_core.errors import NonFiniteEmbeddingsError
from gloss_core.train import train


class TrialFailed(RuntimeError):
    """A trial that cannot go on (NaN metric, non-finite embeddings); the message is the reason."""


def flat_config(config: dict) -> dict:
    """The trial's values: a replicate trial carries its whole config under `_replica`."""
    return {**config, **config.get("_replica", {})}


def train_config(config: dict) -> TrainConfig:
    return TrainConfig.from_dict({k: v for k, v in flat_config(config).items() if not k.startswith("_")})


def gloss_trainable(config: dict) -> None:
    config = flat_config(config)
    threads = config.get("_threads")
    if threads:
        torch.set_num_threads(int(threads))
    run_config = train_config(config)
    final_report = bool(config.get("_report_test", False))
    artifacts = tempfile.TemporaryDirectory() if config.get("_artifacts") else None
    if artifacts is not None:  # test embeddings and adjacency, handed over in the final checkpoint
        run_config.artifacts_dir = os.path.join(artifacts.name, "artifacts")

    checkpoint = tune.get_checkpoint()
    where = {"node_id": ray.get_runtime_context().get_node_id(),  # which node ran it (a tag in MLflow)
             "resumed_from_checkpoint": 1.0 if checkpoint is not None else 0.0}

    def report(metrics: dict, checkpoint_dir: str | None) -> None:
        metrics = {k: v for k, v in metrics.items() if isinstance(v, (int, float, bool))}
        bad = [k for k, v in metrics.items() if isinstance(v, float) and math.isnan(v) and k != "val_macro_silhouette"]
        if bad:
            raise TrialFailed(f"NaN metric(s) {bad} at epoch {metrics.get('epoch')}")
        checkpoint = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        tune.report({**metrics, **where}, checkpoint=checkpoint)

    try:
        if checkpoint is not None:
            with checkpoint.as_directory() as folder:
                result = train(run_config, report=report, resume_from=folder)
        else:
            result = train(run_config, report=report)
    except NonFiniteEmbeddingsError as err:
        raise TrialFailed(f"NonFiniteEmbeddingsError: {err}") from err
    if final_report:  # replicate phase (no scheduler): one last report with the test metrics
        summary = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        checkpoint = tune.Checkpoint.from_directory(artifacts.name) if artifacts is not None else None
        tune.report({**summary, "last_epoch": True, "final": True}, checkpoint=checkpoint)
    if artifacts is not None:
        artifacts.cleanup()
