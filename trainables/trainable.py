"""The Ray Tune function trainable: one `gloss_core.train.train` run, reporting through `tune.report`.

`gloss_trainable(config, plan)`: the trial's config (its cell and varied values) plus the phase's
`PhasePlan` (`tune.with_parameters`). Each epoch's `EpochReport` goes to Tune as a result dict
(`trainables/report.py` writes it), with a checkpoint; `tune.get_checkpoint()` resumes a retried or
restored trial from the last one. A trial trains on the GPUs Ray assigned it and on none other
(`trainables/devices.py`: none assigned, the CPU), and its process's CUDA memory is released before
and after it (a reused actor starts clean). Each report says which Ray node ran the trial, the GPUs
Ray assigned it, its peak GPU memory, and whether this attempt resumed from a checkpoint. A
replicate trial closes with one report of its test metrics, whose checkpoint holds what the plan
asks for: `artifacts/` (the test embeddings and one batch's adjacency per epoch) and `model/` (the
best epoch's model as a complete MLflow model folder, checked here on its input example). Each
trial keeps its best epoch's weights, once behind, in one file on the sweep's storage
(`PhasePlan.best_weights_dir`), so its checkpoints hold one copy of the weights. NaN metrics
(silhouettes aside) and `NonFiniteEmbeddingsError` end the trial as failed.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from contextlib import nullcontext
from dataclasses import replace

import ray
import torch
from ray import tune

from gloss_core.config import Report, TrainConfig
from gloss_core.errors import NonFiniteEmbeddingsError
from gloss_core.report import EpochReport, RunResult
from gloss_core.train import train
from gloss_core.training.checkpoint import BestWeights
from gloss_core.training.gpu import release_gpu_memory
from trainables.devices import trial_device
from trainables.plan import CELL, PhasePlan
from trainables.report import closing_result, epoch_result


class TrialFailed(RuntimeError):
    """A trial that cannot go on (NaN metric, non-finite embeddings); the message is the reason."""


def nan_failures(metrics: dict[str, float]) -> list[str]:
    """Metrics whose NaN means the run broke. Silhouettes are exempt: they are NaN by definition
    when fewer than two classes have two samples, for the macro and micro forms alike."""
    return [k for k, v in metrics.items()
            if isinstance(v, float) and math.isnan(v) and not k.endswith("_silhouette")]


def run_trial(config: TrainConfig, plan: PhasePlan, report: Report, resume_from: str | None = None,
              best_weights: BestWeights | None = None, close=None) -> RunResult:
    """One trial without Ray: train, reporting each epoch to `report(epoch_report, folder)`; then,
    for the replicate phase, `close(result, folder)` once with the run's result, its folder holding
    the artifacts (`artifacts/`) and the model (`model/`: a complete MLflow model folder, loaded
    and checked on its input example here, so the driver only uploads it). The scratch folder
    they are written to is removed however the run ends."""
    keeps = plan.artifacts or plan.export
    with tempfile.TemporaryDirectory(prefix="gloss-trial-") if keeps else nullcontext() as scratch:
        if plan.artifacts:
            config = replace(config, artifacts_dir=os.path.join(scratch, "artifacts"))
        if plan.export:
            config = replace(config, save_model=os.path.join(scratch, "exported"))
        try:
            result = train(config, report, resume_from, best_weights)
        except NonFiniteEmbeddingsError as err:
            raise TrialFailed(f"NonFiniteEmbeddingsError: {err}") from err
        if plan.export:
            mlflow_model_folder(config.save_model, os.path.join(scratch, "model"))
        if plan.report_test and close is not None:
            close(result, scratch)
        return result


def mlflow_model_folder(exported: str, target: str) -> None:
    """The exported model as a complete MLflow model folder at `target`, checked by loading it and
    predicting its input example; the exported folder (now copied inside) goes."""
    from serving.model_folder import ModelFolderInvalid, check_model_folder, write_model_folder

    write_model_folder(exported, target)
    shutil.rmtree(exported)
    try:
        check_model_folder(target)
    except ModelFolderInvalid as err:
        raise TrialFailed(str(err)) from err


def gloss_trainable(config: dict, plan: PhasePlan) -> None:
    release_gpu_memory()  # a reused actor: the previous trial's cached memory and peak go
    try:
        _trial(config, plan)
    finally:
        release_gpu_memory()


def _trial(config: dict, plan: PhasePlan) -> None:
    torch.set_num_threads(plan.threads.get(config.get(CELL, ""), 1))  # the trial's CPU share
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None and not checkpoint.filesystem.get_file_info(checkpoint.path).type:
        checkpoint = None  # deleted as its trial finished, then the driver died before saving that
    where = {"node_id": ray.get_runtime_context().get_node_id(), "gpu_ids": tuple(str(g) for g in ray.get_gpu_ids()),
             "resumed": checkpoint is not None}
    persisted = {"s": 0.0}  # how long Tune took to copy the previous report's checkpoint to storage

    def send(result: dict, checkpoint_dir: str | None) -> None:
        saved = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        started = time.perf_counter()
        tune.report(result, checkpoint=saved)
        persisted["s"] = time.perf_counter() - started if saved is not None else 0.0

    def report(epoch: EpochReport, checkpoint_dir: str | None) -> None:
        bad = nan_failures(epoch.metrics)
        if bad:
            raise TrialFailed(f"NaN metric(s) {bad} at epoch {epoch.epoch}")
        send(epoch_result(replace(epoch, **where, checkpoint_persist_s=persisted["s"])), checkpoint_dir)

    def close(result: RunResult, folder: str) -> None:
        bad = nan_failures({**result.validation, **result.test, **result.probe})
        if bad:
            raise TrialFailed(f"NaN metric(s) {bad} in the test evaluation")
        send(closing_result(result, **where, checkpoint_persist_s=persisted["s"]), folder)

    run_config = plan.train_config(config)
    run_config = replace(run_config, device=trial_device(run_config.device, where["gpu_ids"], torch.cuda.is_available))
    location = plan.best_weights_location(tune.get_context().get_trial_id())
    best_weights = BestWeights(location) if location else None
    if checkpoint is None:
        run_trial(run_config, plan, report, best_weights=best_weights, close=close)
    else:
        with checkpoint.as_directory() as folder:
            run_trial(run_config, plan, report, folder, best_weights, close=close)
