"""The loss registry: every loss a `TrainConfig` can name, the protocols it serves, and how a
config builds it. `PROTOCOL_LOSSES` is derived from it.

Importing this module loads no torch: the config, the spec validator and the analysis need the
names alone, so each builder imports its loss class when it is called.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

PROTOCOLS = ("integrated", "standalone")


@dataclass(frozen=True)
class RegisteredLoss:
    """One loss: the protocols it serves and its builder, called as
    `build(config, num_classes, class_weights, sigma)`; no builder means plain cross-entropy."""

    protocols: tuple[str, ...]
    build: Callable | None = None


def _gloss(config, num_classes, class_weights, sigma):
    from gloss_core.losses.gloss import GLoss

    if sigma is None:
        raise ValueError("G-Loss needs the run's sigma: decide it once with gloss_core.graph.sigma.make_sigma "
                         "and pass it to build_loss")

    return GLoss(num_classes, config.gamma, sigma, class_weights, seed=config.seeds()["mask"],
                 stratified=config.stratified_mask, formulation=config.gloss_formulation)


def _supcon(config, num_classes, class_weights, sigma):
    from gloss_core.losses.supcon import SupConLoss

    return SupConLoss(config.temperature)


def _triplet(config, num_classes, class_weights, sigma):
    from gloss_core.losses.triplet import BatchAllTripletLoss

    return BatchAllTripletLoss(config.margin)


def _cosine(config, num_classes, class_weights, sigma):
    from gloss_core.losses.cosine import CosineSimilarityLoss

    return CosineSimilarityLoss()


LOSSES: dict[str, RegisteredLoss] = {
    "ce": RegisteredLoss(("integrated",)),
    "gloss": RegisteredLoss(PROTOCOLS, _gloss),
    "scl": RegisteredLoss(PROTOCOLS, _supcon),
    "triplet": RegisteredLoss(("standalone",), _triplet),
    "cosine": RegisteredLoss(("standalone",), _cosine),
}
PROTOCOL_LOSSES: dict[str, tuple[str, ...]] = {
    protocol: tuple(name for name, entry in LOSSES.items() if protocol in entry.protocols) for protocol in PROTOCOLS
}


def build_loss(config, num_classes: int, class_weights=None, sigma=None):
    """The training objective of `config`, called as `loss_fn(logits, embeddings, labels)`.

    Args:
        config: a `TrainConfig`.
        num_classes: C.
        class_weights: optional `[C]` weights (CE and G-Loss).
        sigma: G-Loss's kernel width, already decided by the run (`gloss_core.graph.sigma`); it is
            used as given, never rescaled here.

    Integrated: `(1 - lam) CE + lam aux` (`aux` None for plain CE). Standalone: the aux loss alone.
    """
    from gloss_core.losses.combined import CombinedLoss

    entry = LOSSES[config.loss]
    aux = entry.build(config, num_classes, class_weights, sigma) if entry.build else None
    lam = 1.0 if config.protocol == "standalone" else config.lam
    return CombinedLoss(aux, lam, class_weights)
