"""Per-phase wall-clock timing of a training epoch (the paper's Appendix H breakdown).

Phases: data, forward, graph (affinity + transition matrix), propagation (label-propagation
solve), loss (the rest of the loss), backward, optimizer. On CUDA each phase boundary
synchronises the device, so the breakdown costs a little speed; switch it off for sweeps.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict

import torch

PHASES = ("data", "forward", "graph", "propagation", "loss", "backward", "optimizer")


class PhaseTimer:
    """`with timer("forward"): ...` adds the block's time to that phase; nested phases are
    subtracted from their parent, so the phases add up to the measured total."""

    def __init__(self, device: torch.device | None = None, enabled: bool = True):
        self.sync = device is not None and device.type == "cuda"
        self.enabled = enabled
        self.seconds: dict[str, float] = defaultdict(float)
        self._stack: list[list[float]] = []

    @contextlib.contextmanager
    def __call__(self, phase: str):
        if not self.enabled:
            yield
            return
        if self.sync:
            torch.cuda.synchronize()
        start = time.perf_counter()
        self._stack.append([0.0])
        try:
            yield
        finally:
            if self.sync:
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - start
            inner = self._stack.pop()[0]
            self.seconds[phase] += elapsed - inner
            if self._stack:
                self._stack[-1][0] += elapsed

    def reset(self) -> dict[str, float]:
        """Return the totals per phase (all PHASES present) and start again."""
        out = {phase: self.seconds.get(phase, 0.0) for phase in PHASES}
        out.update({k: v for k, v in self.seconds.items() if k not in out})
        self.seconds = defaultdict(float)
        return out


def no_timer(phase: str):
    """The timer used when none is given: times nothing."""
    return contextlib.nullcontext()
