"""The pieces a run is built from: device, precision, data, class weights, loss and LR schedule."""

from __future__ import annotations

import torch

from gloss_core.config import TrainConfig
from gloss_core.data import DatasetSplits, load_csv_splits, load_hf_splits
from gloss_core.losses import BatchAllTripletLoss, CombinedLoss, CosineSimilarityLoss, GLoss, SupConLoss
from gloss_core.sigma import make_sigma, scaled_sigma
from gloss_core.synthetic import synthetic_splits


def pick_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    if config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda"
                                      and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return None


def load_splits(config: TrainConfig) -> DatasetSplits:
    if config.data == "synthetic":
        half = max(config.synthetic_size // 2, config.synthetic_classes)
        return synthetic_splits(config.synthetic_classes, config.synthetic_size, half, half,
                                config.synthetic_noise, seed=config.synthetic_seed,
                                distractors=config.synthetic_distractors)
    if config.data.startswith("hf:"):
        name, _, hf_config = config.data[3:].partition(":")
        splits = tuple(s.strip() for s in config.hf_splits.split(","))
        if len(splits) != 3:
            raise ValueError(f"hf_splits must name 3 splits (train,val,test), got {config.hf_splits!r}")
        return load_hf_splits(name, config=hf_config or None, splits=splits, text_column=config.text_column,
                              label_column=config.label_column, text_pair_column=config.text_pair_column,
                              limit=config.limit, seed=config.seed, empty_text=config.empty_text)
    return load_csv_splits(config.data, limit=config.limit, seed=config.seed, empty_text=config.empty_text)


def balanced_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """sklearn's "balanced": n / (C * count_c); classes absent from train get weight 0."""
    counts = torch.bincount(labels, minlength=num_classes).double()
    return torch.where(counts > 0, labels.numel() / (num_classes * counts.clamp_min(1)), 0.0).float()


def build_loss(config: TrainConfig, num_classes: int, weights=None, train_embeddings=None, train_labels=None):
    """The training objective, called as `loss_fn(logits, embeddings, labels)`."""
    if config.loss == "gloss":
        sigma = make_sigma(config.sigma, train_embeddings, train_labels)
        if config.sigma_scale != 1.0:
            sigma = scaled_sigma(sigma, config.sigma_scale)
        aux = GLoss(num_classes, config.gamma, sigma, weights, seed=config.seeds()["mask"],
                    stratified=config.stratified_mask, formulation=config.gloss_formulation)
    else:
        aux = {"ce": None, "scl": SupConLoss(config.temperature), "triplet": BatchAllTripletLoss(config.margin),
               "cosine": CosineSimilarityLoss()}[config.loss]
    lam = 1.0 if config.protocol == "standalone" else config.lam
    return CombinedLoss(aux, lam, weights)


def make_scheduler(config: TrainConfig, optimizer, steps_per_epoch: int):
    total = config.epochs * steps_per_epoch
    warmup = int(config.warmup_ratio * total)

    def factor(step: int) -> float:
        if config.scheduler == "multistep":
            return config.lr_decay if step >= config.lr_milestone * steps_per_epoch else 1.0
        if config.scheduler == "linear":
            if step < warmup:
                return (step + 1) / warmup
            return max(0.0, (total - step) / max(1, total - warmup))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
