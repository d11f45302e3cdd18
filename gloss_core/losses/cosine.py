"""Cosine-similarity loss (sentence-transformers style) on all pairs of a labelled batch."""

from __future__ import annotations

import torch
from torch import nn

from gloss_core.graph import check_finite
from gloss_core.losses.gloss import loss_dtype, zero_loss


def cosine_similarity_loss(embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over pairs i<j of `(cos(e_i, e_j) - 1[y_i == y_j])^2`; 0 (attached) for n < 2.

    References:
        Reimers & Gurevych (2019), Sentence-BERT; sentence-transformers `CosineSimilarityLoss`.
    """
    check_finite(embeddings)
    n = embeddings.shape[0]
    if n < 2:
        return zero_loss(embeddings)
    z = nn.functional.normalize(embeddings.to(loss_dtype(embeddings)), dim=1)
    rows, cols = torch.triu_indices(n, n, offset=1, device=z.device)
    cos = (z @ z.T)[rows, cols]
    target = (labels[rows] == labels[cols]).to(cos.dtype)
    return ((cos - target) ** 2).mean().to(loss_dtype(embeddings))


class CosineSimilarityLoss(nn.Module):
    """Module form of `cosine_similarity_loss`.

    Example:
        >>> import torch
        >>> CosineSimilarityLoss()(torch.randn(8, 4), torch.arange(8) % 2).shape
        torch.Size([])
    """

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return cosine_similarity_loss(embeddings, labels)

    def get_config_dict(self) -> dict:
        return {}
