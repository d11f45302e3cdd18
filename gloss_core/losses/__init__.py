"""Losses on embeddings (never the model), so one forward pass feeds every term.

| loss | function | module |
| --- | --- | --- |
| G-Loss (paper eq. 1) | `g_loss` | `GLoss` |
| supervised contrastive | `supcon_loss` | `SupConLoss` |
| batch-all triplet | `batch_all_triplet_loss` | `BatchAllTripletLoss` |
| cosine similarity | `cosine_similarity_loss` | `CosineSimilarityLoss` |
| (1 - lam) CE + lam aux | `combined_loss` | `CombinedLoss` |
"""

from gloss_core.errors import NonFiniteEmbeddingsError
from gloss_core.losses.combined import CombinedLoss, combined_loss
from gloss_core.losses.cosine import CosineSimilarityLoss, cosine_similarity_loss
from gloss_core.losses.gloss import GLoss, g_loss
from gloss_core.losses.supcon import SupConLoss, supcon_loss
from gloss_core.losses.triplet import BatchAllTripletLoss, batch_all_triplet_loss

__all__ = [
    "BatchAllTripletLoss",
    "CombinedLoss",
    "CosineSimilarityLoss",
    "GLoss",
    "NonFiniteEmbeddingsError",
    "SupConLoss",
    "batch_all_triplet_loss",
    "combined_loss",
    "cosine_similarity_loss",
    "g_loss",
    "supcon_loss",
]
