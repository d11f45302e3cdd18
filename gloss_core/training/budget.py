"""When a run checkpoints, and where it writes the checkpoint first.

`CheckpointBudget`: every `checkpoint_every` epochs; with a `checkpoint_budget` b, a due checkpoint
is made only while the time spent on checkpoints stays within b of the training time (it waits
until the unsaved work is worth (1 - b) / b times its cost), and never at the last epoch, after
which the run ends and nothing is left to resume. The cost is the last checkpoint's in this process
(a trial process serves many trials), per model byte; before any, a state of 3x the model written
and copied once each at 1 GB/s.
"""

from __future__ import annotations

import os
import shutil
import time

SHM = "/dev/shm"
# seconds a checkpoint takes per byte of model weights: measured at each checkpoint of this process
CHECKPOINT_COST = {"s_per_model_byte": 3 * 2 / 1e9}


def checkpoint_scratch(weight_bytes: int) -> str | None:
    """Where each epoch's checkpoint is written before `report` hands it on (Ray Tune copies it to
    storage): memory (`/dev/shm`) when it has room for four checkpoints, so only that copy touches
    the disk; else the default temporary folder. `GLOSS_CHECKPOINT_SCRATCH` overrides both."""
    chosen = os.environ.get("GLOSS_CHECKPOINT_SCRATCH")
    if chosen:
        return chosen
    try:
        if shutil.disk_usage(SHM).free > 4 * 3.2 * weight_bytes:
            return SHM
    except OSError:
        pass
    return None


class CheckpointBudget:
    """Args:
        every: epochs between due checkpoints (0: never).
        budget: the share of training time checkpoints may take (None: every due epoch).
        model_bytes: the model's weights, in bytes (what a checkpoint's cost scales with).
    """

    def __init__(self, every: int, budget: float | None, model_bytes: int):
        self.every, self.budget, self.model_bytes = every, budget, model_bytes
        self.unsaved_since = time.perf_counter()  # when the work a crash would lose began
        self.cost_s = CHECKPOINT_COST["s_per_model_byte"] * model_bytes  # what the next checkpoint will take

    def due(self, epoch: int, last: bool) -> bool:
        if not self.every or epoch % self.every:
            return False
        if self.budget is None:
            return True
        if last:
            return False
        unsaved = time.perf_counter() - self.unsaved_since
        return unsaved * self.budget >= self.cost_s * (1 - self.budget)

    def spent(self, started: float, done: float) -> None:
        """A checkpoint took from `started` to `done` (its write and its hand-over)."""
        self.cost_s = done - started
        CHECKPOINT_COST["s_per_model_byte"] = self.cost_s / max(self.model_bytes, 1)
        self.unsaved_since = done
