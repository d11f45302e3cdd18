"""What every embedding loss shares: the finite check, the output dtype, an attached zero for a
batch with nothing to score, and hyperparameter range checks made once, at construction.

A loss subclasses `EmbeddingLoss`, checks its hyperparameters in `__init__` and overrides
`compute(embeddings, labels)` alone (pytorch-metric-learning's pattern). Its functional form
builds the module and calls it, so both forms validate the same way.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gloss_core.errors import NonFiniteEmbeddingsError


def loss_dtype(embeddings: torch.Tensor) -> torch.dtype:
    """Losses come back in the embeddings' dtype, promoted to at least float32."""
    return torch.promote_types(embeddings.dtype, torch.float32)


def zero_loss(embeddings: torch.Tensor) -> torch.Tensor:
    """A scalar 0 that is still attached to the graph, so `backward()` works and gives zeros."""
    return (embeddings.sum() * 0.0).to(loss_dtype(embeddings))


def check_finite(embeddings: torch.Tensor) -> None:
    """Raise `NonFiniteEmbeddingsError` if `embeddings` holds NaN or inf (one host sync)."""
    if not bool(torch.isfinite(embeddings).all()):
        bad = int((~torch.isfinite(embeddings)).sum())
        raise NonFiniteEmbeddingsError(
            f"embeddings of shape {tuple(embeddings.shape)} hold {bad} NaN/inf values; "
            "the encoder diverged (learning rate too high?) or its input is corrupt"
        )


def check_fraction(name: str, value: float, meaning: str) -> float:
    """`value` if it lies in [0, 1], else a ValueError naming it (lambda, gamma)."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} ({meaning}) must lie in [0, 1], got {value}")
    return value


def check_at_least(name: str, value: float, low: float, *, strict: bool = False) -> float:
    """`value` if it is a finite number >= `low` (> `low` when `strict`), else a ValueError naming it."""
    if not (math.isfinite(value) and (value > low if strict else value >= low)):
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {low:g}, got {value}")
    return value


class EmbeddingLoss(nn.Module):
    """Base of the embedding losses: `forward(embeddings, labels)` checks the embeddings are finite,
    promotes them to at least float32, calls `compute` with autocast off, and turns a `None` from
    it (nothing to score in this batch) into a 0 still attached to the graph.

    Autocast off: the training step runs the loss inside the model's autocast region, where a bf16
    autocast would run every matmul of the loss in bf16 again, whatever dtype its inputs have. With
    it off, every embedding loss computes in float32 at least (G-Loss's graph in float64), on any
    device and precision, so losses are compared at the same precision."""

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        check_finite(embeddings)
        dtype = loss_dtype(embeddings)
        with torch.autocast(embeddings.device.type, enabled=False):
            value = self.compute(embeddings.to(dtype), labels)
        return zero_loss(embeddings) if value is None else value.to(dtype)

    def compute(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
        raise NotImplementedError

    def get_config_dict(self) -> dict:
        """The hyperparameters, as logged (sentence-transformers' convention)."""
        return {}
