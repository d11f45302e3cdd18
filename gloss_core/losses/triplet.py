"""Batch-all triplet loss (Hermans et al. 2017; sentence-transformers `BatchAllTripletLoss`)."""

from __future__ import annotations

import torch

from gloss_core.losses.base import EmbeddingLoss, check_at_least


def euclidean_distances(x: torch.Tensor) -> torch.Tensor:
    """Pairwise Euclidean distances with a finite gradient at 0 (duplicate embeddings)."""
    sq = (x * x).sum(dim=1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * x @ x.T).clamp_min(0.0)
    positive = d2 > 0
    return torch.where(positive, torch.where(positive, d2, 1.0).sqrt(), 0.0)


class BatchAllTripletLoss(EmbeddingLoss):
    """Mean of `max(d(a,p) - d(a,n) + margin, 0)` over the valid triplets whose loss is positive.

    Valid: `a != p`, `y_a == y_p`, `y_n != y_a`. Euclidean distance on the raw embeddings.
    0 (attached) when no triplet has a positive loss. Memory is O(n^3 / C) for C balanced classes.

    Args:
        margin: m (the reference uses 5); a finite number >= 0, checked here, once.

    References:
        Hermans, Beyer & Leibe (2017), In Defense of the Triplet Loss for Person Re-Identification.

    Example (classes farther apart than the margin give no positive triplet, so 0):
        >>> import torch
        >>> emb = torch.tensor([[0.0, 0.0], [0.0, 0.1], [10.0, 0.0], [10.0, 0.1]])
        >>> BatchAllTripletLoss(margin=1.0)(emb, torch.tensor([0, 0, 1, 1])).item()
        0.0
    """

    def __init__(self, margin: float = 5.0):
        super().__init__()
        self.margin = check_at_least("margin", margin, 0.0)

    def compute(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
        d = euclidean_distances(embeddings)
        same = labels[:, None] == labels[None, :]
        eye = torch.eye(labels.shape[0], dtype=torch.bool, device=labels.device)
        anchor, positive = (same & ~eye).nonzero(as_tuple=True)  # only (a, p) pairs: O(n^3 / C) memory
        losses = (d[anchor, positive][:, None] - d[anchor] + self.margin).clamp_min(0.0) * ~same[anchor]
        n_positive = (losses > 1e-16).sum()
        if not bool(n_positive > 0):
            return None
        return losses.sum() / n_positive

    def get_config_dict(self) -> dict:
        return {"margin": self.margin}


def batch_all_triplet_loss(embeddings: torch.Tensor, labels: torch.Tensor, margin: float = 5.0) -> torch.Tensor:
    """Functional form of `BatchAllTripletLoss`."""
    return BatchAllTripletLoss(margin)(embeddings, labels)
