"""G-Loss: the graph-guided loss of paper eq. (1) (docs/method.md, section 1)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from gloss_core.graph.masking import LabelMask
from gloss_core.graph.propagation import Sigma, propagate_labels
from gloss_core.graph.sigma import FixedSigma, SigmaStrategy, make_sigma
from gloss_core.losses.base import EmbeddingLoss, check_finite, loss_dtype, zero_loss

Formulation = Literal["paper", "reference"]
FORMULATIONS = ("paper", "reference")

# F is clamped here before the log. It sits far above the LEAK-sized mass that a class with no
# labeled node receives, so such nodes add a constant term with no (spurious) gradient.
LOG_FLOOR = 1e-8


def check_formulation(formulation: str) -> str:
    if formulation not in FORMULATIONS:
        raise ValueError(f"formulation must be 'paper' or 'reference', got {formulation!r}")
    return formulation


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
    check_formulation(formulation)
    if isinstance(sigma, (int, float)):
        sigma = FixedSigma(float(sigma)).value  # checks it is a positive finite number
    check_finite(embeddings)
    loss = propagation_nll(embeddings, labels, labeled, sigma, num_classes, class_weights, formulation, timer)
    return zero_loss(embeddings) if loss is None else loss.to(loss_dtype(embeddings))


def propagation_nll(embeddings: torch.Tensor, labels: torch.Tensor, labeled: torch.Tensor, sigma: Sigma,
                    num_classes: int, class_weights: torch.Tensor | None, formulation: Formulation,
                    timer=None) -> torch.Tensor | None:
    """The loss of `g_loss` on checked inputs, in float64; None when no node is hidden or none is labeled."""
    F_u = propagate_labels(embeddings, labels, labeled, sigma, num_classes, timer=timer)
    labeled = labeled.to(embeddings.device)
    n_hidden = F_u.shape[0]
    if n_hidden == 0 or n_hidden == labeled.shape[0]:
        return None
    y_u = labels.to(embeddings.device)[~labeled]
    weights = None if class_weights is None else class_weights.to(F_u.device, torch.float64)
    if formulation == "reference":
        return nn.functional.cross_entropy(F_u, y_u, weight=weights) / n_hidden
    nll = -F_u.gather(1, y_u[:, None]).squeeze(1).clamp_min(LOG_FLOOR).log()
    if weights is None:
        return nll.mean()
    w = weights[y_u]
    return (w * nll).sum() / w.sum()


class GLoss(EmbeddingLoss):
    """G-Loss as a module: draws the label mask, picks sigma, and scores the hidden nodes.

    Args:
        num_classes: C.
        gamma: fraction of the batch that KEEPS its label (paper's ablation favours 0.5-0.7).
        sigma: a float (G-Loss-O), or a strategy from `gloss_core.graph.sigma` (`FixedSigma` holding
            the SQRT-rule value, `BatchSqrtSigma`, ...), or "batch_sqrt".
        class_weights: optional `[C]` tensor of per-class weights.
        seed: seed of the mask generator (a CPU `torch.Generator`), recorded with the run.
        stratified: every class with >= 2 members in the batch keeps a labeled node.
        formulation: "paper" (default) or "reference" (see `g_loss`).

    gamma, sigma and the formulation are checked here, once.

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
        self.num_classes = num_classes
        self.mask = LabelMask(gamma, seed, stratified)
        self.sigma = make_sigma(sigma)
        self.formulation = check_formulation(formulation)
        self.timer = None  # a PhaseTimer, set by the training loop to time graph and propagation
        self.register_buffer("class_weights", class_weights, persistent=False)

    def compute(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
        return propagation_nll(embeddings, labels, self.mask(labels), self.sigma(embeddings), self.num_classes,
                               self.class_weights, self.formulation, self.timer)

    def get_extra_state(self) -> dict:
        """The mask generator's state travels in `state_dict()`, so a resumed run draws the same masks."""
        return {"generator": self.mask.get_state()}

    def set_extra_state(self, state: dict) -> None:
        self.mask.set_state(state["generator"])

    def get_config_dict(self) -> dict:
        sigma = self.sigma.value if isinstance(self.sigma, FixedSigma) else type(self.sigma).__name__
        return {"gamma": self.mask.gamma, "sigma": sigma, "seed": self.mask.seed, "stratified": self.mask.stratified,
                "formulation": self.formulation}
