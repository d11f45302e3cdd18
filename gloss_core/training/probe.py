"""The standalone protocol's last step: a linear classifier on frozen embeddings (docs/method.md, section 4)."""

from __future__ import annotations

import torch

from gloss_core.training.metrics import classification_metrics


def train_linear_probe(
    train_emb: torch.Tensor,
    train_labels: torch.Tensor,
    val_emb: torch.Tensor,
    val_labels: torch.Tensor,
    num_classes: int,
    *,
    epochs: int = 200,
    patience: int = 10,
    lr: float = 1e-2,
    batch_size: int = 64,
    seed: int = 0,
    class_weights: torch.Tensor | None = None,
) -> tuple[torch.nn.Linear, dict]:
    """Train `Linear(d, C)` with Adam on the train embeddings, early-stopped on val macro-F1.

    Features are standardised with the train mean and std, folded into the returned layer (an
    affine change that a linear classifier can represent; it only fixes the conditioning, e.g. of
    CLS vectors that differ in the third decimal).

    Returns the best-epoch classifier (weights restored, applied to raw embeddings) and
    `{"probe_epochs", "probe_best_epoch", "probe_val_macro_f1"}`. Deterministic given `seed`.
    """
    g = torch.Generator().manual_seed(seed)
    train_emb, val_emb = train_emb.float().cpu(), val_emb.float().cpu()
    mean, std = train_emb.mean(dim=0), train_emb.std(dim=0).clamp_min(1e-6)
    train_emb, val_emb = (train_emb - mean) / std, (val_emb - mean) / std
    head = torch.nn.Linear(train_emb.shape[1], num_classes)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=g) * 0.01)
        head.bias.zero_()
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    weights = None if class_weights is None else class_weights.float().cpu()
    best_f1, best_epoch, best_state, epoch = -1.0, 0, None, 0
    for epoch in range(1, epochs + 1):
        perm = torch.randperm(train_emb.shape[0], generator=g)
        for start in range(0, len(perm), batch_size):
            rows = perm[start : start + batch_size]
            loss = torch.nn.functional.cross_entropy(head(train_emb[rows]), train_labels[rows], weight=weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            f1 = classification_metrics(head(val_emb), val_labels)["macro_f1"]
        if f1 > best_f1:
            best_f1, best_epoch = f1, epoch
            best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
        elif epoch - best_epoch >= patience:
            break
    head.load_state_dict(best_state)
    with torch.no_grad():  # fold the standardisation in: W((x - m) / s) + b = (W / s) x + (b - W m / s)
        scaled = head.weight / std
        head.bias.sub_(scaled @ mean)
        head.weight.copy_(scaled)
    return head, {"probe_epochs": epoch, "probe_best_epoch": best_epoch, "probe_val_macro_f1": best_f1}
