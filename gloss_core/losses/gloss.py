"""G-Loss: the graph-guided loss of paper eq. (1) (method.md, section 1)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from gloss_core.graph import Sigma, propagate_labels
from gloss_core.masking import sample_labeled_mask
from gloss_core.sigma import FixedSigma, SigmaStrategy, make_sigma

Formulation = Literal["paper", "reference"]

# F is clamped here before the log. It sits far above the LEAK-sized mass that a class with no
# labeled node receives, so such nodes add a constant term with no (spurious) gradient.
LOG_FLOOR = 1e-8


def loss_dtype(embeddings: torch.Tensor) -> torch.dtype:
    """Losses come back in the embeddings' dtype, promoted to at least float32."""
    return torch.promote_types(embeddings.dtype, torch.float32)


def zero_loss(embeddings: torch.Tensor) -> torch.Tensor:
    """A scalar 0 that is still attached to the graph, so `backward()` works and gives zeros."""
    return (embeddings.sum() * 0.0).to(loss_dtype(embeddings))


def g_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    labeled: torch.Tensor,
    sigma: Sigma,
    num_classes: int,
    class_weights: torch.Tensor | None = None,
    *,
    formulation: Formulation = "paper",
    timer=None,
) -> torch.Tensor:
    """G-Loss on one batch: the NLL of the true labels of the hidden nodes under label propagation.

    `L_G = -(1/|U|) sum_{i in U} log F_{i, y_i}`; with `class_weights` w, the weighted mean
    `sum_i w_{y_i} (-log F_{i, y_i}) / sum_i w_{y_i}`. F is clamped at 1e-8 before the log.

    Args:
        embeddings: `[n, d]` embeddings from the same forward pass as the classifier head.
        labels: `[n]` class ids.
        labeled: `[n]` bool mask of the nodes that keep their label (L); the rest (U) are scored.
        sigma: Gaussian kernel width.
        num_classes: C.
        class_weights: optional `[C]` per-class weights (sklearn "balanced" in the reference).
        formulation: "paper" (default) is eq. (1). "reference" reproduces the reference code:
            `cross_entropy(F_U, y_U, weight=w) / |U|`, i.e. the probabilities F_U used as logits
            and the mean divided by |U| a second time. Only for comparisons with the reference.
        timer: optional `gloss_core.timing.PhaseTimer` for the graph / propagation phases.

    Returns:
        A scalar in the embeddings' dtype (at least float32). 0, still attached to the graph,
        when no node is hidden or none is labeled.

    Raises:
        NonFiniteEmbeddingsError: NaN or inf embeddings, before any solve.

    References:
        G-Loss: Graph-Guided Fine-Tuning of Language Models (LoG 2025), eq. (1).

    Example:
        >>> import torch
        >>> emb = torch.randn(6, 4, requires_grad=True)
        >>> y = torch.tensor([0, 0, 0, 1, 1, 1])
        >>> labeled = torch.tensor([True, True, False, True, True, False])
        >>> g_loss(emb, y, labeled, sigma=0.5, num_classes=2).backward()
    """
    if formulation not in ("paper", "reference"):
        raise ValueError(f"formulation must be 'paper' or 'reference', got {formulation!r}")
    F_u = propagate_labels(embeddings, labels, labeled, sigma, num_classes, timer=timer)
    labeled = labeled.to(embeddings.device)
    n_hidden = F_u.shape[0]
    if n_hidden == 0 or n_hidden == labeled.shape[0]:
        return zero_loss(embeddings)
    y_u = labels.to(embeddings.device)[~labeled]
    weights = None if class_weights is None else class_weights.to(F_u.device, torch.float64)
    if formulation == "reference":
        loss = nn.functional.cross_entropy(F_u, y_u, weight=weights) / n_hidden
    else:
        nll = -F_u.gather(1, y_u[:, None]).squeeze(1).clamp_min(LOG_FLOOR).log()
        if weights is None:
            loss = nll.mean()
        else:
            w = weights[y_u]
            loss = (w * nll).sum() / w.sum()
    return loss.to(loss_dtype(embeddings))


class GLoss(nn.Module):
    """G-Loss as a module: draws the label mask, picks sigma, and calls `g_loss`.

    Args:
        num_classes: C.
        gamma: fraction of the batch that KEEPS its label (paper's ablation favours 0.5-0.7).
        sigma: a float (G-Loss-O), or a strategy from `gloss_core.sigma` (`FixedSigma` holding the
            SQRT-rule value, `BatchSqrtSigma`, ...), or "batch_sqrt".
        class_weights: optional `[C]` tensor of per-class weights.
        seed: seed of the mask generator (a CPU `torch.Generator`), recorded with the run.
        stratified: every class with >= 2 members in the batch keeps a labeled node.
        formulation: "paper" (default) or "reference" (see `g_loss`).

    References:
        G-Loss: Graph-Guided Fine-Tuning of Language Models (LoG 2025).

    Example:
        >>> import torch
        >>> loss_fn = GLoss(num_classes=2, gamma=0.7, sigma=1.0, seed=0)
        >>> emb = torch.randn(16, 8, requires_grad=True)
        >>> loss = loss_fn(emb, torch.arange(16) % 2)
        >>> loss.backward()
    """

    def __init__(
        self,
        num_classes: int,
        gamma: float = 0.7,
        sigma: float | str | SigmaStrategy = 1.0,
        class_weights: torch.Tensor | None = None,
        seed: int = 0,
        stratified: bool = False,
        formulation: Formulation = "paper",
    ):
        super().__init__()
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must lie in [0, 1], got {gamma}")
        self.num_classes = num_classes
        self.gamma = gamma
        self.sigma = make_sigma(sigma)
        self.stratified = stratified
        self.formulation = formulation
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.timer = None  # a PhaseTimer, set by the training loop to time graph and propagation
        self.register_buffer("class_weights", class_weights, persistent=False)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        labeled = sample_labeled_mask(labels, self.gamma, self.generator, stratified=self.stratified)
        return g_loss(
            embeddings,
            labels,
            labeled,
            self.sigma(embeddings),
            self.num_classes,
            self.class_weights,
            formulation=self.formulation,
            timer=self.timer,
        )

    def get_extra_state(self) -> dict:
        """The mask generator's state travels in `state_dict()`, so a resumed run draws the same masks."""
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

    def get_config_dict(self) -> dict:
        sigma = self.sigma.value if isinstance(self.sigma, FixedSigma) else type(self.sigma).__name__
        return {
            "gamma": self.gamma,
            "sigma": sigma,
            "seed": self.seed,
            "stratified": self.stratified,
            "formulation": self.formulation,
        }
