"""Losses on embeddings (never the model), so one forward pass feeds every term.

| loss | module | function | file |
| --- | --- | --- | --- |
| G-Loss (paper eq. 1) | `GLoss` | `g_loss` | `gloss.py` |
| supervised contrastive | `SupConLoss` | `supcon_loss` | `supcon.py` |
| batch-all triplet | `BatchAllTripletLoss` | `batch_all_triplet_loss` | `triplet.py` |
| cosine similarity | `CosineSimilarityLoss` | `cosine_similarity_loss` | `cosine.py` |
| (1 - lam) CE + lam aux | `CombinedLoss` | `combined_loss` | `combined.py` |

`base.py` holds what they share (`EmbeddingLoss`); `registry.py` the names a `TrainConfig` uses,
their protocols, and `build_loss`. The names below load on first use, so importing the registry
(as the config and the spec validator do) does not import torch.
"""

import importlib

_EXPORTS = {
    "BatchAllTripletLoss": "triplet", "batch_all_triplet_loss": "triplet",
    "CombinedLoss": "combined", "combined_loss": "combined",
    "CosineSimilarityLoss": "cosine", "cosine_similarity_loss": "cosine",
    "EmbeddingLoss": "base",
    "GLoss": "gloss", "g_loss": "gloss",
    "SupConLoss": "supcon", "supcon_loss": "supcon",
    "LOSSES": "registry", "PROTOCOL_LOSSES": "registry", "build_loss": "registry",
}
__all__ = sorted([*_EXPORTS, "NonFiniteEmbeddingsError"])


def __getattr__(name: str):
    if name == "NonFiniteEmbeddingsError":
        from gloss_core.errors import NonFiniteEmbeddingsError

        return NonFiniteEmbeddingsError
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"gloss_core.losses.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'gloss_core.losses' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
