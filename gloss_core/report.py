"""What a training run reports, typed: one `EpochReport` per epoch and one `RunResult` at the end.

A run's score is defined here once: the selection metric (`TrainConfig.selection()`, by default
validation macro-F1, or validation macro-silhouette in the standalone protocol) at the run's best
epoch so far. The best epoch is the one that maximises (or, with `selection_mode="min"`,
minimises) that metric; early stopping counts epochs since it. Whatever ranks runs (the search,
ASHA, the progress lines, `gloss sweep status`, hyperparameter importance, the choice of a G-Loss
variant) ranks by this score, so a run that peaks at epoch 2 and falls afterwards scores its
epoch-2 value everywhere.

This module knows nothing of Ray or MLflow and imports no torch; `trainables/report.py` writes
these records as Ray Tune's result dict and reads them back.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from gloss_core.errors import UserError

SCORE = "score"  # the name a run's score travels under (Tune's metric, an MLflow metric)
BEST_EPOCH, EPOCHS_RUN = "best_epoch", "epochs_run"  # names of a finished run's numbers (`RunResult.metrics`)
SELECTION_METRICS = {  # what each protocol measures on the validation split after every epoch
    "integrated": ("val_macro_f1", "val_accuracy", "val_macro_silhouette", "val_micro_silhouette"),
    "standalone": ("val_macro_silhouette", "val_micro_silhouette"),
}


class StateFormatError(UserError, ValueError):
    """A checkpoint another version of gloss wrote, which this version cannot resume."""


def better(value: float, than: float | None, mode: str) -> bool:
    """Whether `value` improves on `than` (None: nothing yet) under `mode`; NaN never does."""
    if math.isnan(value):
        return False
    return than is None or (value > than if mode == "max" else value < than)


@dataclass(frozen=True)
class EpochReport:
    """One epoch of one run.

    Args:
        epoch: 1-based.
        metrics: what the epoch measured: `train_loss`, `epoch_time_s`, `lr`, every `val_*`, the
            per-phase `time_*_s` and, for G-Loss, `gloss_zero_batches`.
        best_epoch: the best epoch so far (0 while no epoch had a finite selection value).
        score: the selection metric at `best_epoch` (NaN while there is none).
        last: this epoch ends the run's training.
        stop: why it is the last: "budget" (all epochs ran) or "early_stop" (patience ran out);
            None while training goes on.
        checkpoint_write_s: seconds spent writing the checkpoint handed on with this report (0: none).
        device: where the run trained ("cpu", "cuda:0").
        peak_gpu_memory_mb: the most CUDA memory its tensors held so far (MiB); None on the CPU.
        node_id, gpu_ids, resumed, checkpoint_persist_s: filled in by the trial that runs it (the
            Ray node, the GPUs Ray assigned, whether this attempt resumed from a checkpoint, how
            long the previous report's checkpoint took to reach storage).
    """

    epoch: int
    metrics: dict[str, float]
    best_epoch: int
    score: float
    last: bool = False
    stop: str | None = None
    checkpoint_write_s: float = 0.0
    device: str = "cpu"
    peak_gpu_memory_mb: float | None = None
    node_id: str | None = None
    gpu_ids: tuple[str, ...] = ()
    resumed: bool = False
    checkpoint_persist_s: float = 0.0

    def state(self) -> dict:
        """Plain values (a checkpoint is loaded with `weights_only=True`)."""
        return {**asdict(self), "gpu_ids": list(self.gpu_ids)}

    @classmethod
    def from_state(cls, state: dict) -> "EpochReport":
        if "metrics" not in state or SCORE not in state:
            raise StateFormatError("the checkpoint was written by an earlier version of gloss (its history holds no "
                                   "typed epoch reports); resume it with that version, or train again")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in state.items() if k in known}
        return cls(**{**values, "gpu_ids": tuple(values.get("gpu_ids", ()))})


@dataclass
class RunResult:
    """A finished run: its best epoch's validation metrics and the test metrics of its weights.

    Args:
        best_epoch, score: as in `EpochReport`, at the end of training.
        epochs_run: epochs trained.
        stop: "budget" or "early_stop".
        validation: `val_*` at the best epoch (standalone: the probe's accuracy and macro-F1
            replace the head's, which the protocol has none of).
        test: `test_*` from the best epoch's weights (standalone: the probe's classification).
        probe: standalone only: `probe_epochs`, `probe_best_epoch`, `probe_val_macro_f1`.
        time_per_epoch_s: mean seconds per epoch; `timing_per_epoch_s` the mean per phase.
        sigma: G-Loss's fixed kernel width (scaled), or None.
        history: every epoch's report.
        device: where it trained (set by the engine).
        total_time_s, majority_val_accuracy, data_notes, seeds, config: filled in by
            `gloss_core.train.train`.
    """

    best_epoch: int
    score: float
    epochs_run: int
    stop: str
    validation: dict[str, float]
    test: dict[str, float]
    probe: dict[str, float] = field(default_factory=dict)
    time_per_epoch_s: float = 0.0
    timing_per_epoch_s: dict[str, float] = field(default_factory=dict)
    sigma: float | None = None
    history: list[EpochReport] = field(default_factory=list)
    total_time_s: float = 0.0
    majority_val_accuracy: float | None = None
    data_notes: list[str] = field(default_factory=list)
    seeds: dict[str, int] = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    device: str = "cpu"

    def metrics(self) -> dict[str, float]:
        """The run's numbers, flat: what `gloss train` prints, a model card and a closing report hold."""
        out = {BEST_EPOCH: self.best_epoch, EPOCHS_RUN: self.epochs_run, SCORE: self.score,
               **self.validation, **self.test, **self.probe, "time_per_epoch_s": self.time_per_epoch_s,
               "total_time_s": self.total_time_s}
        if self.sigma is not None:
            out["sigma"] = self.sigma
        if self.majority_val_accuracy is not None:
            out["majority_val_accuracy"] = self.majority_val_accuracy
        return out

    def to_json(self) -> dict:
        """Everything, as plain values (`gloss train --output`)."""
        return {**self.metrics(), "stop": self.stop, "timing_per_epoch_s": self.timing_per_epoch_s,
                "history": [{"epoch": r.epoch, **r.metrics, BEST_EPOCH: r.best_epoch, SCORE: r.score}
                            for r in self.history],
                "data_notes": self.data_notes, "seeds": self.seeds, "config": self.config, "device": self.device}
