"""Classification and embedding-quality metrics (docs/method.md, section 4).

Written with NumPy and torch alone: a trial's process starts without importing scikit-learn
(about 2 s of CPU per process), and the tests check every value against scikit-learn and a loop
oracle.
"""

from __future__ import annotations

import numpy as np
import torch

SILHOUETTE_ROWS = 1024  # rows of the distance matrix held at once: 1024 x n float64


def accuracy_and_macro_f1(y_true, y_pred) -> dict[str, float]:
    """Accuracy and macro-F1 of any labels (ints or names), as scikit-learn computes them.

    Macro-F1 averages `2 tp / (2 tp + fp + fn)` over every label found in either array, so a class
    never predicted counts with F1 = 0.
    """
    y, pred = np.asarray(y_true), np.asarray(y_pred)
    if y.shape != pred.shape or y.ndim != 1 or len(y) == 0:
        raise ValueError(f"labels and predictions must be two non-empty 1-d arrays of one length, "
                         f"got shapes {y.shape} and {pred.shape}")
    labels = np.union1d(y, pred)
    true_index, pred_index = np.searchsorted(labels, y), np.searchsorted(labels, pred)
    hit = true_index == pred_index
    tp = np.bincount(true_index[hit], minlength=len(labels))
    support = np.bincount(true_index, minlength=len(labels))
    predicted = np.bincount(pred_index, minlength=len(labels))
    f1 = 2 * tp / (support + predicted)  # 2tp + fp + fn = support + predicted > 0 for every label
    return {"accuracy": float(hit.mean()), "macro_f1": float(f1.mean())}


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    return accuracy_and_macro_f1(labels.cpu().numpy(), logits.argmax(dim=1).cpu().numpy())


def silhouette_samples(points: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """`s_i = (b_i - a_i) / max(a_i, b_i)` with Euclidean distances, in float64.

    `a_i`: mean distance to the other members of i's class; `b_i`: the smallest mean distance to
    another class. Members of a singleton class get 0, as in scikit-learn. The distance matrix is
    built `SILHOUETTE_ROWS` rows at a time, each row's distance to itself set to exactly 0.
    """
    _, inverse, counts = torch.unique(labels.cpu(), return_inverse=True, return_counts=True)
    return _silhouette_samples(points.detach().to(device="cpu", dtype=torch.float64), inverse, counts)


def _silhouette_samples(x: torch.Tensor, inverse: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """`silhouette_samples` on float64 CPU points, given each point's class index and the class sizes."""
    members = torch.nn.functional.one_hot(inverse, len(counts)).double()  # n x C
    s = torch.empty(len(x), dtype=torch.float64)
    for start in range(0, len(x), SILHOUETTE_ROWS):
        rows = x[start:start + SILHOUETTE_ROWS]
        distances = torch.cdist(rows, x)
        distances[torch.arange(len(rows)), torch.arange(start, start + len(rows))] = 0.0
        sums = distances @ members  # each row's summed distance to every class
        own = inverse[start:start + len(rows)]
        own_count = counts[own].double()
        a = sums.gather(1, own[:, None]).squeeze(1) / (own_count - 1).clamp(min=1)
        means = (sums / counts.double()).scatter(1, own[:, None], torch.inf)
        b = means.min(dim=1).values
        value = (b - a) / torch.maximum(a, b)
        s[start:start + len(rows)] = torch.where((own_count > 1) & torch.isfinite(value), value, 0.0)
    return s


def silhouettes(embeddings: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Macro- and micro-silhouette on L2-normalised embeddings with the true labels.

    Micro: the mean of `s_i` (see `silhouette_samples`) over all samples. Macro: the mean within
    each class, then the mean of the class means; classes with fewer than 2 samples are skipped.
    Both are NaN when fewer than 2 classes have 2 samples.
    """
    y = labels.cpu()
    classes, inverse, counts = torch.unique(y, return_inverse=True, return_counts=True)
    if len(classes) < 2 or int((counts >= 2).sum()) < 2:
        return {"macro_silhouette": float("nan"), "micro_silhouette": float("nan")}
    unit = torch.nn.functional.normalize(embeddings.detach().double().cpu(), dim=1)
    s = _silhouette_samples(unit, inverse, counts)
    class_means = torch.zeros(len(classes), dtype=torch.float64).index_add_(0, inverse, s) / counts
    return {"macro_silhouette": float(class_means[counts >= 2].mean()), "micro_silhouette": float(s.mean())}
