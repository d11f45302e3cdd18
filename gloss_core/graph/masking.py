"""The G-Loss label mask: which nodes of a batch keep their label (docs/method.md, section 1).

The randomness comes from a caller-owned `torch.Generator` on the CPU, so the mask sequence is a
function of its seed alone, whatever device trains; the mask is moved to the labels' device.
"""

from __future__ import annotations

import torch

from gloss_core.losses.base import check_fraction


def sample_labeled_mask(
    labels: torch.Tensor,
    gamma: float,
    generator: torch.Generator | None = None,
    *,
    stratified: bool = False,
) -> torch.Tensor:
    """Draw the bool mask of labeled nodes; `gamma` is the fraction that KEEPS its label.

    Plain mode matches the reference, `labeled = randperm(n) < n * gamma`, so exactly
    `ceil(n * gamma)` nodes are labeled.

    Stratified mode: every class with at least 2 members in the batch keeps at least one labeled
    node (its member with the lowest random priority); the remaining places go by priority. If
    there are more such classes than places, each still gets its one labeled node.

    Args:
        labels: `[n]` integer labels.
        gamma: fraction of labeled nodes, in [0, 1].
        generator: CPU generator (seeded by the caller) for the random priorities.
        stratified: guarantee a labeled node per class with >= 2 members.
    """
    check_gamma(gamma)
    return draw_labeled_mask(labels, gamma, generator, stratified)


def check_gamma(gamma: float) -> float:
    return check_fraction("gamma", gamma, "fraction of labels kept")


def draw_labeled_mask(labels: torch.Tensor, gamma: float, generator: torch.Generator | None,
                      stratified: bool) -> torch.Tensor:
    """`sample_labeled_mask` without the range check (for callers that checked gamma once)."""
    n = labels.shape[0]
    labels_cpu = labels.detach().to("cpu", torch.int64)
    priority = torch.rand(n, generator=generator)
    if stratified and n:
        counts = torch.bincount(labels_cpu)
        class_min = torch.full((int(labels_cpu.max()) + 1,), 2.0).scatter_reduce(
            0, labels_cpu, priority, reduce="amin"
        )
        forced = (priority == class_min[labels_cpu]) & (counts[labels_cpu] >= 2)
        priority = priority - 2.0 * forced  # forced nodes sort first
    rank = torch.empty(n, dtype=torch.int64)
    rank[priority.argsort()] = torch.arange(n)
    labeled = rank < n * gamma
    if stratified and n:
        labeled |= forced
    return labeled.to(labels.device, non_blocking=True)


class LabelMask:
    """The mask of one G-Loss: `gamma` checked once, its own seeded CPU generator, whose state
    travels in checkpoints (`get_state` / `set_state`) so a resumed run draws the same masks."""

    def __init__(self, gamma: float, seed: int = 0, stratified: bool = False):
        self.gamma = check_gamma(gamma)
        self.seed, self.stratified = seed, stratified
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, labels: torch.Tensor) -> torch.Tensor:
        return draw_labeled_mask(labels, self.gamma, self.generator, self.stratified)

    def get_state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)
