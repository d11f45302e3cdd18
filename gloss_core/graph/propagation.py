"""The batch graph and closed-form label propagation behind G-Loss (docs/method.md, section 1).

Every function here takes embeddings of any floating dtype (fp32, bf16, fp64) on any device and
builds the graph in float64 with autocast switched off: at batch sizes of a few hundred the
float64 n x n work is cheap, and it keeps the linear solve well conditioned.

Example:
    >>> import torch
    >>> from gloss_core.graph import propagate_labels
    >>> emb = torch.randn(8, 16, requires_grad=True)
    >>> labels = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    >>> labeled = torch.tensor([True, True, True, True, False, False, False, False])
    >>> F_u = propagate_labels(emb, labels, labeled, sigma=1.0, num_classes=2)
    >>> F_u.shape
    torch.Size([4, 2])
"""

from __future__ import annotations

import contextlib

import torch

from gloss_core.timing import no_timer

# Probability, per step, that a random walk from a hidden node is absorbed by a virtual node that
# carries the uniform label distribution. It makes (I - T_UU) non-singular for every batch, so a
# hidden node with no path to the labeled set falls back to a uniform row instead of crashing the
# solve. On a connected graph it moves F by about LEAK x (expected walk length): invisible in float64.
LEAK = 1e-10

Sigma = float | torch.Tensor


def float64_graph_context(device: torch.device):
    """A context in which autocast cannot lower the precision of the graph computations."""
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except RuntimeError:  # a device type without autocast support
        return contextlib.nullcontext()


def unit_rows(embeddings: torch.Tensor) -> torch.Tensor:
    """L2-normalise each row, in float64 (a zero row stays zero instead of becoming NaN)."""
    return torch.nn.functional.normalize(embeddings.to(torch.float64), p=2.0, dim=1, eps=1e-12)


def squared_distances(unit: torch.Tensor) -> torch.Tensor:
    """`||e_i - e_j||^2 = 2 - 2 e_i.e_j` for unit rows, clamped at 0, with an exact zero diagonal."""
    d2 = (2.0 - 2.0 * unit @ unit.T).clamp_min(0.0)
    return d2 * (1.0 - torch.eye(d2.shape[0], dtype=d2.dtype, device=d2.device))


def gaussian_affinity(embeddings: torch.Tensor, sigma: Sigma, *, rescale: bool = False) -> torch.Tensor:
    """Gaussian affinity `W_ij = exp(-||e_i - e_j||^2 / (2 sigma^2))` on L2-normalised rows, `W_ii = 0`.

    Args:
        embeddings: `[n, d]` embeddings (normalised here).
        sigma: kernel width, a float or a 0-d tensor (treated as a constant).
        rescale: multiply W by `exp(min_{i!=j} d_ij^2 / (2 sigma^2))`, so that the closest pair has
            weight 1. The transition matrix is invariant to a global scale of W, and the rescaling
            keeps small sigmas from underflowing every weight to zero.
    """
    with float64_graph_context(embeddings.device):
        d2 = squared_distances(unit_rows(embeddings))
        n = d2.shape[0]
        eye = torch.eye(n, dtype=torch.bool, device=d2.device)
        if rescale and n > 1:
            d2 = d2 - d2.detach().masked_fill(eye, float("inf")).min()
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=d2.device).detach()
        log_w = (-d2 / (2.0 * sigma * sigma)).masked_fill(eye, float("-inf"))
        return log_w.exp()


def _divide_nonzero(x: torch.Tensor, denom: torch.Tensor) -> torch.Tensor:
    """`x / denom` where `denom > 0`, 0 elsewhere, with finite gradients everywhere."""
    positive = denom > 0
    return torch.where(positive, x / torch.where(positive, denom, torch.ones_like(denom)), 0.0)


def transition_matrix(W: torch.Tensor) -> torch.Tensor:
    """Row-stochastic transition matrix from an affinity matrix, as the reference code builds it.

    `A = D^{-1/2} W D^{-1/2}`, then columns of A normalised to sum to 1, then rows. A node with no
    edge (all its weights underflowed) gets an all-zero row and column instead of NaN.
    """
    degree = W.sum(dim=1)
    positive = degree > 0
    inv_sqrt = torch.where(positive, torch.where(positive, degree, 1.0).rsqrt(), 0.0)
    A = inv_sqrt[:, None] * W * inv_sqrt[None, :]
    A = _divide_nonzero(A, A.sum(dim=0, keepdim=True))
    return _divide_nonzero(A, A.sum(dim=1, keepdim=True))


def check_labels(labels: torch.Tensor, labeled: torch.Tensor, n: int, num_classes: int) -> None:
    """Validate shapes and the label range; errors name the offending value."""
    if labels.shape != (n,) or labeled.shape != (n,):
        raise ValueError(
            f"labels {tuple(labels.shape)} and labeled {tuple(labeled.shape)} must both have shape ({n},)"
        )
    if labeled.dtype != torch.bool:
        raise ValueError(f"labeled must be a bool mask, got dtype {labeled.dtype}")
    if n and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}); got min {int(labels.min())}, max {int(labels.max())}"
        )


def propagate_labels(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    labeled: torch.Tensor,
    sigma: Sigma,
    num_classes: int,
    *,
    timer=None,
) -> torch.Tensor:
    """Closed-form label propagation `F_U = (I - T_UU)^{-1} T_UL Y_L` (Zhu et al. 2003).

    Args:
        embeddings: `[n, d]` float embeddings of the batch; gradients flow back to them.
        labels: `[n]` integer class ids in `[0, num_classes)`; only the labeled ones are read
            for propagation.
        labeled: `[n]` bool mask, True for the nodes that keep their label (the set L).
        sigma: Gaussian kernel width (float or 0-d tensor, not differentiated).
        num_classes: number of classes C.
        timer: optional `gloss_core.timing.PhaseTimer`; times the "graph" and "propagation" phases.

    Returns:
        `[n_hidden, C]` float64 tensor: the propagated label distribution of the hidden nodes
        (`~labeled`), in index order. Each row sums to 1. A hidden node with no path to the
        labeled set (tiny sigma), or every node when no node is labeled, gets the uniform row.

    The embeddings must be finite: the losses check them (`gloss_core.losses.base.check_finite`)
    before anything is solved. Sigma must be positive: `FixedSigma` and `g_loss` check it.

    The system is solved with `torch.linalg.solve` in float64; no inverse is formed.

    References:
        Zhu & Ghahramani (2002), Learning from labeled and unlabeled data with label propagation.
        Zhu, Ghahramani & Lafferty (2003), Semi-supervised learning using Gaussian fields.
    """
    if embeddings.dim() != 2:
        raise ValueError(f"embeddings must be [n, d], got shape {tuple(embeddings.shape)}")
    n = embeddings.shape[0]
    labels = labels.to(embeddings.device)
    labeled = labeled.to(embeddings.device)
    check_labels(labels, labeled, n, num_classes)
    hidden = ~labeled
    timer = timer or no_timer
    with float64_graph_context(embeddings.device):
        with timer("graph"):
            P = (1.0 - LEAK) * transition_matrix(gaussian_affinity(embeddings, sigma, rescale=True))
        with timer("propagation"):
            P_hidden = P[hidden]
            P_uu, P_ul = P_hidden[:, hidden], P_hidden[:, labeled]
            Y_l = torch.nn.functional.one_hot(labels[labeled], num_classes).to(torch.float64)
            absorbed = (1.0 - P_uu.sum(dim=1) - P_ul.sum(dim=1)).clamp_min(0.0)
            rhs = P_ul @ Y_l + absorbed[:, None] / num_classes
            system = torch.eye(P_uu.shape[0], dtype=torch.float64, device=P.device) - P_uu
            F_u = torch.linalg.solve(system, rhs)
            # Rows sum to 1 exactly in exact arithmetic; dividing by the computed sum removes the
            # rounding that a nearly singular block (a component with no label) leaves along them.
            return F_u / F_u.sum(dim=1, keepdim=True)
