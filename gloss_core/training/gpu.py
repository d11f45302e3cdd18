"""CUDA memory, counted per run and released between runs, without ever touching CUDA on a run
that trains on the CPU (no call here initialises CUDA: each asks first whether it is)."""

from __future__ import annotations

import torch

MIB = 2 ** 20


def peak_gpu_memory_mb(device: torch.device) -> float | None:
    """The most memory tensors held on `device` since the last reset, in MiB; None off CUDA."""
    if device.type != "cuda" or not torch.cuda.is_initialized():
        return None
    return torch.cuda.max_memory_allocated(device) / MIB


def release_gpu_memory() -> None:
    """Hand this process's cached CUDA memory back and restart its peak count, so the next run in
    the same process (a reused trial actor) starts from nothing; a no-op where CUDA never started."""
    if not torch.cuda.is_initialized():
        return
    torch.cuda.empty_cache()
    for index in range(torch.cuda.device_count()):
        torch.cuda.reset_peak_memory_stats(index)
