"""Choosing the Gaussian kernel width sigma (docs/method.md, section 2).

- `FixedSigma(value)`: G-Loss-O, sigma searched by the optimiser (log scale, 0.1-10).
- `sqrt_rule_sigma(train_embeddings)`: G-Loss-SQRT, `sqrt(median ||e_i - e_j|| / 3)` over the
  L2-normalised training-set embeddings of the encoder before fine-tuning, computed once.
- `BatchSqrtSigma()`: the same rule recomputed on every batch (detached), beyond the paper.
- `dicm_sigma(train_embeddings, labels)`: minimum inter-class distance / 3 (the reference's "mst").

`sqrt_rule_sigma` and `dicm_sigma` stream over row chunks, so N = 20,000 embeddings need about
`chunk_size x N x 8` bytes at a time, never the N x N matrix.

Example:
    >>> import torch
    >>> from gloss_core.graph.sigma import sqrt_rule_sigma, FixedSigma
    >>> emb = torch.randn(100, 32)
    >>> sigma = FixedSigma(sqrt_rule_sigma(emb))
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch

from gloss_core.graph.propagation import squared_distances, unit_rows

# Distances between unit vectors lie in [0, 2]; the first pass of the exact median histograms them.
_HISTOGRAM_BINS = 1 << 16
_MIN_SIGMA = 1e-3


class SigmaStrategy(Protocol):
    """Anything that gives the kernel width for a batch of embeddings."""

    def __call__(self, embeddings: torch.Tensor) -> float | torch.Tensor: ...


@dataclass(frozen=True)
class FixedSigma:
    """A constant sigma (searched, or computed once from the training set)."""

    value: float

    def __post_init__(self):
        if not (math.isfinite(self.value) and self.value > 0):
            raise ValueError(f"sigma must be a positive finite number, got {self.value!r}")

    def __call__(self, embeddings: torch.Tensor) -> float:
        return self.value


@dataclass(frozen=True)
class BatchSqrtSigma:
    """The SQRT rule recomputed on each batch's (detached) embeddings."""

    include_diagonal: bool = False

    def __call__(self, embeddings: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            d = squared_distances(unit_rows(embeddings.detach())).sqrt()
            if self.include_diagonal:
                values = d.flatten()
            else:
                rows, cols = torch.triu_indices(d.shape[0], d.shape[0], offset=1, device=d.device)
                values = d[rows, cols]
            if values.numel() == 0:
                return torch.tensor(1.0, dtype=torch.float64, device=d.device)
            return (_median(values) / 3.0).sqrt().clamp_min(_MIN_SIGMA)


def _median(values: torch.Tensor) -> torch.Tensor:
    """NumPy's median: the mean of the two middle values when the count is even."""
    ordered = values.sort().values
    m = ordered.numel()
    return (ordered[(m - 1) // 2] + ordered[m // 2]) / 2.0


def _distance_chunks(unit: torch.Tensor, chunk_size: int, include_diagonal: bool):
    """Yield the distances of each block of rows, upper triangle only (i<j, or i<=j with the diagonal)."""
    n = unit.shape[0]
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        d = (2.0 - 2.0 * unit[start:stop] @ unit[start:].T).clamp_min(0.0).sqrt()
        rows = torch.arange(stop - start, device=unit.device)[:, None]
        cols = torch.arange(n - start, device=unit.device)[None, :]
        if include_diagonal:  # the diagonal is an exact zero, whatever rounding says
            yield d.masked_fill(cols == rows, 0.0)[cols >= rows]
        else:
            yield d[cols > rows]


def _bin_of(d: torch.Tensor) -> torch.Tensor:
    """Histogram bin of each distance in [0, 2]: bin k covers [2k/B, 2(k+1)/B)."""
    return (d * (_HISTOGRAM_BINS / 2.0)).long().clamp_(0, _HISTOGRAM_BINS - 1)


def _kth_smallest_pairwise(unit: torch.Tensor, ks: list[int], chunk_size: int, include_diagonal: bool):
    """Exact order statistics of the pairwise distances in two streaming passes.

    Pass 1 counts the distances per histogram bin; pass 2 keeps only the values in the bins that
    hold the wanted ranks and selects them exactly. Memory: one chunk plus that window.
    """
    counts = torch.zeros(_HISTOGRAM_BINS, dtype=torch.int64, device=unit.device)
    for d in _distance_chunks(unit, chunk_size, include_diagonal):
        counts += torch.bincount(_bin_of(d), minlength=_HISTOGRAM_BINS)
    cumulative = counts.cumsum(0)
    wanted = [int(torch.searchsorted(cumulative, k, right=True)) for k in ks]
    first, last = min(wanted), max(wanted)
    below = int(cumulative[first - 1]) if first > 0 else 0
    kept = []
    for d in _distance_chunks(unit, chunk_size, include_diagonal):
        bins = _bin_of(d)
        kept.append(d[(bins >= first) & (bins <= last)])
    window = torch.cat(kept).sort().values
    return [window[k - below] for k in ks]


def sqrt_rule_sigma(
    embeddings: torch.Tensor, *, chunk_size: int = 1024, include_diagonal: bool = False
) -> float:
    """G-Loss-SQRT: `sigma = sqrt(median_{i<j} ||e_i - e_j|| / 3)` over L2-normalised rows.

    Args:
        embeddings: `[N, d]` embeddings of the training set from the encoder before fine-tuning.
        chunk_size: rows per block; memory is about `chunk_size x N x 8` bytes.
        include_diagonal: take the median over the full N x N matrix, diagonal zeros included,
            as the reference code does (it lowers the median slightly for small N).

    Returns:
        The exact median-based sigma as a Python float (floored at 1e-3).
    """
    n = embeddings.shape[0]
    if n < 2:
        raise ValueError(f"the SQRT rule needs at least 2 embeddings, got {n}")
    unit = unit_rows(embeddings.detach())
    if include_diagonal:
        # Full matrix = each off-diagonal pair twice plus n zeros: same order statistics as the
        # upper triangle with the diagonal, once the ranks are doubled.
        total = n * n
        zeros = n
        ranks = [(total - 1) // 2, total // 2]
        # rank r in the full matrix -> rank in (zeros + one copy of each pair)
        ks = [r if r < zeros else zeros + (r - zeros) // 2 for r in ranks]
    else:
        total = n * (n - 1) // 2
        ks = [(total - 1) // 2, total // 2]
    a, b = _kth_smallest_pairwise(unit, ks, chunk_size, include_diagonal)
    median = float((a + b) / 2.0)
    return max(math.sqrt(median / 3.0), _MIN_SIGMA)


def dicm_sigma(
    embeddings: torch.Tensor, labels: torch.Tensor, *, chunk_size: int = 1024
) -> float:
    """DICM: the minimum distance between two L2-normalised embeddings of different classes, / 3.

    Floored at 1e-3: duplicate texts with different labels would otherwise give sigma = 0.
    """
    labels = labels.to(embeddings.device)
    if labels.unique().numel() < 2:
        raise ValueError("DICM needs at least two classes among the labels")
    unit = unit_rows(embeddings.detach())
    best = torch.tensor(float("inf"), dtype=torch.float64, device=unit.device)
    for start in range(0, unit.shape[0], chunk_size):
        block = slice(start, start + chunk_size)
        d2 = (2.0 - 2.0 * unit[block] @ unit.T).clamp_min(0.0)
        other_class = labels[block][:, None] != labels[None, :]
        best = torch.minimum(best, d2.masked_fill(~other_class, float("inf")).min())
    return max(float(best.sqrt()) / 3.0, _MIN_SIGMA)


@dataclass(frozen=True)
class ScaledSigma:
    """Another strategy's sigma times a constant factor."""

    base: SigmaStrategy
    scale: float

    def __call__(self, embeddings: torch.Tensor) -> float | torch.Tensor:
        return self.base(embeddings) * self.scale


def scaled_sigma(sigma: SigmaStrategy, scale: float) -> SigmaStrategy:
    """`sigma x scale`; a FixedSigma stays fixed (so its value is recorded and checkpointed)."""
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"sigma_scale must be a positive finite number, got {scale!r}")
    if isinstance(sigma, FixedSigma):
        return FixedSigma(sigma.value * scale)
    return ScaledSigma(sigma, scale)


def make_sigma(spec: float | str | SigmaStrategy, embeddings=None, labels=None, scale: float = 1.0) -> SigmaStrategy:
    """Build a strategy from a config value: a number, "sqrt", "batch_sqrt" or "dicm", times `scale`.

    "sqrt" and "dicm" need the training-set `embeddings` (and `labels` for "dicm"). A fixed
    result stays a `FixedSigma` holding the scaled value, which is what a checkpoint records.
    """
    if callable(spec):
        base = spec
    elif isinstance(spec, (int, float)):
        base = FixedSigma(float(spec))
    elif spec == "batch_sqrt":
        base = BatchSqrtSigma()
    elif spec in ("sqrt", "dicm"):
        if embeddings is None or (spec == "dicm" and labels is None):
            raise ValueError(f"sigma {spec!r} needs the training-set embeddings" + (" and labels" if spec == "dicm" else ""))
        base = FixedSigma(sqrt_rule_sigma(embeddings) if spec == "sqrt" else dicm_sigma(embeddings, labels))
    else:
        raise ValueError(f"unknown sigma {spec!r}: use a positive number, 'sqrt', 'batch_sqrt' or 'dicm'")
    return base if scale == 1.0 else scaled_sigma(base, scale)
