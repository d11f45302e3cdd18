"""A trial's reports as Ray Tune's result dict, and back: the one module that knows its keys.

A trial reports once per epoch (`epoch_result`, from the engine's `EpochReport`) and a replicate
or sensitivity trial closes with one more report of its test metrics (`closing_result`, from the
run's `RunResult`). The driver reads any result with `read_result`, which gives a `TrialResult`:
the searcher, the MLflow logger, the progress lines and the runner read that, never a key. Tune
adds its own keys (`trial_id`, `node_ip`, `timestamp`, `training_iteration`); they are read here
too. Tune's own ASHA and OptunaSearch read the two keys they are given by name: `SCORE` and
`training_iteration`.

Every result carries `SCORE`, the trial's score so far (`gloss_core.report`): the metric Tune,
Optuna and ASHA are given, so all three rank trials by the selection metric at their best epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from gloss_core.report import BEST_EPOCH, EPOCHS_RUN, SCORE, EpochReport, RunResult

EPOCH, LAST, STOP, CLOSING, RUN_SEED = "epoch", "last_epoch", "stop", "final", "run_seed"
NODE_ID, GPU_IDS, DEVICE, RESUMED = "node_id", "gpu_ids", "device", "resumed_from_checkpoint"
CHECKPOINT_WRITE, CHECKPOINT_PERSIST = "checkpoint_write_s", "checkpoint_persist_s"
PEAK_GPU_MEMORY = "peak_gpu_memory_mb"  # a number (an MLflow metric per epoch), absent on the CPU
TUNE_KEYS = {"training_iteration", "time_this_iter_s", "time_total_s", "timestamp", "time_since_restore",
             "iterations_since_restore", "pid", "done", "episodes_total", "timesteps_total", "trial_id", "node_ip",
             "hostname", "date", "experiment_id", "experiment_tag", "should_checkpoint", "checkpoint_dir_name"}
TEXT_KEYS = {STOP, NODE_ID, GPU_IDS, DEVICE}  # what a result holds besides numbers (no MLflow metric)
BOOKKEEPING = {LAST, CLOSING, RUN_SEED}  # flags and ids: read back, never logged as metrics


def epoch_result(report: EpochReport) -> dict:
    """One epoch as Tune's flat result dict."""
    return {
        **report.metrics, EPOCH: report.epoch, BEST_EPOCH: report.best_epoch, SCORE: report.score,
        LAST: report.last, STOP: report.stop or "", CHECKPOINT_WRITE: report.checkpoint_write_s,
        CHECKPOINT_PERSIST: report.checkpoint_persist_s, RESUMED: 1.0 if report.resumed else 0.0,
        NODE_ID: report.node_id or "", GPU_IDS: ",".join(report.gpu_ids), DEVICE: report.device,
        **({PEAK_GPU_MEMORY: report.peak_gpu_memory_mb} if report.peak_gpu_memory_mb is not None else {}),
    }


def closing_result(result: RunResult, node_id: str | None = None, gpu_ids: tuple[str, ...] = (),
                   resumed: bool = False, checkpoint_persist_s: float = 0.0) -> dict:
    """A finished run's test metrics as the closing report of its trial (with where it ran, as an
    epoch's report says it). Its `val_*` are the best epoch's; its step in MLflow is the number of
    epochs trained (it is no epoch of its own)."""
    numbers = {k: v for k, v in result.metrics().items() if _is_number(v)}
    peaks = [r.peak_gpu_memory_mb for r in result.history if r.peak_gpu_memory_mb is not None]
    return {**numbers, LAST: True, CLOSING: True, STOP: result.stop, RUN_SEED: result.config.get("seed"),
            DEVICE: result.device, NODE_ID: node_id or "", GPU_IDS: ",".join(gpu_ids),
            RESUMED: 1.0 if resumed else 0.0, CHECKPOINT_PERSIST: checkpoint_persist_s,
            **({PEAK_GPU_MEMORY: max(peaks)} if peaks else {})}


@dataclass(frozen=True)
class TrialResult:
    """What the driver knows from one Tune result of a trial.

    Args:
        trial_id: Tune's id of the trial (None outside Tune).
        closing: the closing report of a replicate or sensitivity trial (test metrics).
        epochs: epochs trained so far (the closing report: all of them).
        score: the selection metric at the trial's best epoch so far.
        best_epoch: that epoch.
        last: training ran to its end (every epoch, or early stopping): the trial completed
            rather than being stopped by the scheduler.
        stop: why it ended ("budget", "early_stop"), or "" while it runs.
        seed: the closing report's training seed.
        metrics: the numbers as MLflow records them (in a closing report `val_*` are named
            `final_val_*`: they are the best epoch's, already logged at that step).
        curve: an epoch's `epoch` and `val_*` (the validation curve); empty in a closing report.
        node_id, node_ip, gpu_ids, device: where it ran (`gpu_ids`: the GPUs Ray assigned, comma-joined).
        peak_gpu_memory_mb: the most CUDA memory the trial's tensors held so far (MiB); None on the CPU.
        timestamp: when the trial reported (seconds since the epoch), if Tune said.
        checkpoint_write_s: seconds the trial spent writing this report's checkpoint;
            `checkpoint_persist_s` how long Tune took to copy the previous one to storage.
        iteration_s: Tune's seconds since the previous report.
    """

    trial_id: str | None
    closing: bool
    epochs: int
    score: float
    best_epoch: int
    last: bool
    stop: str
    seed: int | None
    metrics: dict[str, float] = field(default_factory=dict)
    curve: dict[str, float] = field(default_factory=dict)
    node_id: str | None = None
    node_ip: str | None = None
    gpu_ids: str = ""
    device: str = ""
    peak_gpu_memory_mb: float | None = None
    timestamp: float | None = None
    checkpoint_write_s: float = 0.0
    checkpoint_persist_s: float = 0.0
    iteration_s: float = 0.0

    def test(self, name: str) -> float | None:
        """A closing report's test metric (`test_accuracy`, `test_macro_f1`, ...), if it has it."""
        return self.metrics.get(name)


def read_result(result: dict | None) -> TrialResult:
    """A Tune result (a trial's last result may be None or empty: it never reported)."""
    result = result or {}
    closing = bool(result.get(CLOSING))
    numbers = {k: float(v) for k, v in result.items()
               if k not in TUNE_KEYS | TEXT_KEYS | BOOKKEEPING and _is_number(v) and math.isfinite(float(v))}
    if closing:
        numbers = {("final_" + k if k.startswith("val_") else k): v for k, v in numbers.items()}
        epochs = int(result.get(EPOCHS_RUN, 0))
    else:
        epochs = int(result.get(EPOCH, result.get("training_iteration", 0)))
    curve = {} if closing or EPOCH not in result else {
        k: v for k, v in numbers.items() if k == EPOCH or k.startswith("val_")}
    score = result.get(SCORE)
    seed = result.get(RUN_SEED)
    return TrialResult(
        trial_id=result.get("trial_id"), closing=closing, epochs=epochs,
        score=float(score) if _is_number(score) else math.nan, best_epoch=int(result.get(BEST_EPOCH, 0)),
        last=bool(result.get(LAST)), stop=str(result.get(STOP) or ""), seed=int(seed) if _is_number(seed) else None,
        metrics=numbers, curve=curve, node_id=result.get(NODE_ID) or None, node_ip=result.get("node_ip") or None,
        gpu_ids=str(result.get(GPU_IDS) or ""), device=str(result.get(DEVICE) or ""),
        peak_gpu_memory_mb=float(result[PEAK_GPU_MEMORY]) if _is_number(result.get(PEAK_GPU_MEMORY)) else None,
        timestamp=float(result["timestamp"]) if _is_number(result.get("timestamp")) else None,
        checkpoint_write_s=float(result.get(CHECKPOINT_WRITE, 0.0)),
        checkpoint_persist_s=float(result.get(CHECKPOINT_PERSIST, 0.0)),
        iteration_s=0.0 if closing else float(result.get("time_this_iter_s", 0.0) or 0.0),
    )


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value is not None
