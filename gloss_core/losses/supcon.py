"""Supervised contrastive loss (Khosla et al. 2020) on L2-normalised embeddings."""

from __future__ import annotations

import torch
from torch import nn

from gloss_core.losses.base import EmbeddingLoss, check_at_least


class SupConLoss(EmbeddingLoss):
    """SupCon "L_out": for each anchor i with at least one positive,
    `-1/|P(i)| sum_{p in P(i)} log( exp(z_i.z_p/t) / sum_{a != i} exp(z_i.z_a/t) )`, averaged over
    those anchors. 0 (attached) when no anchor has a positive.

    Args:
        temperature: tau (the reference searches {0.1, 0.3, 0.5, 0.7}); checked here, once.

    References:
        Khosla et al. (2020), Supervised Contrastive Learning, eq. (2).

    Example:
        >>> import torch
        >>> SupConLoss(temperature=0.1)(torch.randn(8, 4), torch.arange(8) % 2).shape
        torch.Size([])
    """

    def __init__(self, temperature: float = 0.1):
        super().__init__()
        self.temperature = check_at_least("temperature", temperature, 0.0, strict=True)

    def compute(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
        n = embeddings.shape[0]
        z = nn.functional.normalize(embeddings, dim=1)
        self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
        logits = (z @ z.T / self.temperature).masked_fill(self_mask, float("-inf"))
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        positives = (labels[:, None] == labels[None, :]) & ~self_mask
        n_pos = positives.sum(dim=1)
        has_pos = n_pos > 0
        if n < 2 or not bool(has_pos.any()):
            return None
        per_anchor = -log_prob.masked_fill(~positives, 0.0).sum(dim=1) / n_pos.clamp_min(1)
        return per_anchor[has_pos].mean()

    def get_config_dict(self) -> dict:
        return {"temperature": self.temperature}


def supcon_loss(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Functional form of `SupConLoss` (embeddings `[n, d]`, normalised inside; labels `[n]`)."""
    return SupConLoss(temperature)(embeddings, labels)
