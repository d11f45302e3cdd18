"""Cosine-similarity loss (sentence-transformers style) on all pairs of a labelled batch."""

from __future__ import annotations

import torch
from torch import nn

from gloss_core.losses.base import EmbeddingLoss


class CosineSimilarityLoss(EmbeddingLoss):
    """Mean over pairs i<j of `(cos(e_i, e_j) - 1[y_i == y_j])^2`; 0 (attached) for n < 2.

    References:
        Reimers & Gurevych (2019), Sentence-BERT; sentence-transformers `CosineSimilarityLoss`.

    Example:
        >>> import torch
        >>> CosineSimilarityLoss()(torch.randn(8, 4), torch.arange(8) % 2).shape
        torch.Size([])
    """

    def compute(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
        n = embeddings.shape[0]
        if n < 2:
            return None
        z = nn.functional.normalize(embeddings, dim=1)
        rows, cols = torch.triu_indices(n, n, offset=1, device=z.device)
        cos = (z @ z.T)[rows, cols]
        target = (labels[rows] == labels[cols]).to(cos.dtype)
        return ((cos - target) ** 2).mean()


def cosine_similarity_loss(embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Functional form of `CosineSimilarityLoss`."""
    return CosineSimilarityLoss()(embeddings, labels)
