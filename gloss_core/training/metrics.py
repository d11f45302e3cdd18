"""Classification and embedding-quality metrics (docs/method.md, section 4)."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score, silhouette_samples


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    pred = logits.argmax(dim=1).cpu().numpy()
    y = labels.cpu().numpy()
    return {"accuracy": float(accuracy_score(y, pred)), "macro_f1": float(f1_score(y, pred, average="macro"))}


def silhouettes(embeddings: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Macro- and micro-silhouette on L2-normalised embeddings with the true labels.

    `s_i = (b_i - a_i) / max(a_i, b_i)` (Euclidean). Micro: the mean of `s_i` over all samples.
    Macro: the mean within each class, then the mean of the class means; classes with fewer than
    2 samples are skipped. Both are NaN when fewer than 2 classes have 2 samples.
    """
    y = labels.cpu().numpy()
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2 or (counts >= 2).sum() < 2:
        return {"macro_silhouette": float("nan"), "micro_silhouette": float("nan")}
    unit = torch.nn.functional.normalize(embeddings.double(), dim=1).cpu().numpy()
    s = silhouette_samples(unit, y, metric="euclidean")
    per_class = [s[y == c].mean() for c, count in zip(classes, counts) if count >= 2]
    return {"macro_silhouette": float(np.mean(per_class)), "micro_silhouette": float(s.mean())}
