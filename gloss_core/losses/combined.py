"""The integrated objective `(1 - lam) * CE + lam * aux` on one forward pass (docs/method.md, section 1.7)."""

from __future__ import annotations

import torch
from torch import nn

from gloss_core.losses.base import check_fraction


def check_lam(lam: float) -> float:
    return check_fraction("lambda", lam, "weight of the auxiliary loss")


def combined_loss(ce: torch.Tensor, aux: torch.Tensor, lam: float) -> torch.Tensor:
    """`(1 - lam) * ce + lam * aux`; `lam` in [0, 1]."""
    check_lam(lam)
    return (1.0 - lam) * ce + lam * aux


class CombinedLoss(nn.Module):
    """Cross-entropy of the linear head plus an auxiliary embedding loss, weighted by `lam`.

    Both terms read the same forward pass: `forward(logits, embeddings, labels)`.

    Args:
        aux_loss: a module called as `aux_loss(embeddings, labels)` (GLoss, SupConLoss, ...), or
            None for plain CE.
        lam: weight of the auxiliary loss (reference: 0.9 for SCL; G-Loss searches 0.5-0.9);
            checked here, once.
        class_weights: optional `[C]` weights for the cross-entropy.

    Example:
        >>> import torch
        >>> from gloss_core.losses import GLoss
        >>> loss_fn = CombinedLoss(GLoss(num_classes=2, seed=0), lam=0.9)
        >>> emb = torch.randn(16, 8, requires_grad=True)
        >>> head = torch.nn.Linear(8, 2)
        >>> loss = loss_fn(head(emb), emb, torch.arange(16) % 2)
    """

    def __init__(self, aux_loss: nn.Module | None = None, lam: float = 0.9, class_weights: torch.Tensor | None = None):
        super().__init__()
        check_lam(lam)
        self.aux_loss = aux_loss
        self.lam = lam if aux_loss is not None else 0.0
        self.register_buffer("class_weights", class_weights, persistent=False)

    def forward(self, logits: torch.Tensor, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 logits: CE in fp32
        weights = None if self.class_weights is None else self.class_weights.to(logits.dtype)
        ce = nn.functional.cross_entropy(logits, labels, weight=weights)
        if self.aux_loss is None:
            return ce
        return (1.0 - self.lam) * ce + self.lam * self.aux_loss(embeddings, labels)
