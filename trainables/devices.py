"""Which device a trial trains on: only the GPUs Ray assigned it, whatever the node's environment.

Ray 2.x no longer clears `CUDA_VISIBLE_DEVICES` for a trial given 0 GPUs (unless the driver sets
`RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=1`, as `sweeps/ray_session.py` does), so a `gpu: 0` trial on a
GPU node would see the node's GPUs and `device: auto` would put it on `cuda:0`, outside Ray's
accounting. Here a trial with no assigned GPU trains on the CPU and never asks CUDA anything; a
trial with GPUs uses the first one Ray made visible to it.
"""

from __future__ import annotations

from typing import Callable, Sequence

from gloss_core.errors import UserError


class TrialDeviceError(UserError, ValueError):
    """A trial asked for a CUDA device, and Ray assigned it no GPU."""


def trial_device(requested: str, gpu_ids: Sequence[str], cuda_available: Callable[[], bool]) -> str:
    """The device a trial trains on.

    Args:
        requested: the trial's `TrainConfig.device` ("auto", "cpu", "cuda", "cuda:N").
        gpu_ids: the GPU ids Ray assigned the trial (`ray.get_gpu_ids()`).
        cuda_available: asked only when the trial has GPUs (`torch.cuda.is_available`); a node
            whose GPUs are logical (`ray.init(num_gpus=...)` on a CPU host) says no, and the
            trial trains on the CPU.
    """
    if requested == "cpu":
        return "cpu"
    if not gpu_ids:
        if requested == "auto":
            return "cpu"
        raise TrialDeviceError(f"device {requested!r}: Ray assigned this trial no GPU (its resources give gpu 0); "
                               "give the cell resources.gpu > 0, or use device auto")
    if requested == "auto":
        return "cuda:0" if cuda_available() else "cpu"  # Ray makes the assigned GPUs the only visible ones
    return requested
