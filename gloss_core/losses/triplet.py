"""Batch-all triplet loss (Hermans et al. 2017; sentence-transformers `BatchAllTripletLoss`)."""

from __future__ import annotations

import torch
from torch import nn

from gloss_core.graph import check_finite
from gloss_core.losses.gloss import loss_dtype, zero_loss


def euclidean_distances(x: torch.Tensor) -> torch.Tensor:
    """Pairwise Euclidean distances with a finite gradient at 0 (duplicate embeddings)."""
    sq = (x * x).sum(dim=1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * x @ x.T).clamp_min(0.0)
    positive = d2 > 0
    return torch.where(positive, torch.where(positive, d2, 1.0).sqrt(), 0.0)


def batch_all_triplet_loss(embeddings: torch.Tensor, labels: torch.Tensor, margin: float = 5.0) -> torch.Tensor:
    """Mean of `max(d(a,p) - d(a,n) + margin, 0)` over the valid triplets whose loss is positive.

    Valid: `a != p`, `y_a == y_p`, `y_n != y_a`. Euclidean distance on the raw embeddings.
    0 (attached) when no triplet has a positive loss. Memory is O(n^3 / C) for C balanced classes.

    Args:
        embeddings: `[n, d]`.
        labels: `[n]`.
        margin: m (the reference uses 5).

    References:
        Hermans, Beyer & Leibe (2017), In Defense of the Triplet Loss for Person Re-Identification.
    """
    check_finite(embeddings)
    x = embeddings.to(loss_dtype(embeddings))
    d = euclidean_distances(x)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(labels.shape[0], dtype=torch.bool, device=labels.device)
    anchor, positive = (same & ~eye).nonzero(as_tuple=True)  # only (a, p) pairs: O(n^3 / C) memory
    losses = (d[anchor, positive][:, None] - d[anchor] + margin).clamp_min(0.0) * ~same[anchor]
    n_positive = (losses > 1e-16).sum()
    if not bool(n_positive > 0):
        return zero_loss(embeddings)
    return (losses.sum() / n_positive).to(loss_dtype(embeddings))


class BatchAllTripletLoss(nn.Module):
    """Module form of `batch_all_triplet_loss`.

    Example:
        >>> import torch
        >>> BatchAllTripletLoss(margin=5.0)(torch.randn(8, 4), torch.arange(8) % 2).shape
        torch.Size([])
    """

    def __init__(self, margin: float = 5.0):
        super().__init__()
        self.margin = margin

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return batch_all_triplet_loss(embeddings, labels, self.margin)

    def get_config_dict(self) -> dict:
        return {"margin": self.margin}
