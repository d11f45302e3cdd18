"""Train and evaluate one model (integrated protocol: CE, SCL+CE, G-Loss+CE).

One flat `TrainConfig`; its `asdict()` is what a sweep logs. Progress leaves through an injected
`report(metrics)` callable, so this module knows nothing of Ray or MLflow.

Usage:
    gloss train                                  # bundled MiniLM on the synthetic corpus
    gloss train --data ../shared/data/MR --limit 512 --loss gloss --epochs 2
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score

from gloss_core.data import Batches, DatasetSplits, load_csv_splits
from gloss_core.losses import CombinedLoss, GLoss, SupConLoss
from gloss_core.models import TextClassifier, load_tokenizer
from gloss_core.sigma import make_sigma
from gloss_core.synthetic import synthetic_splits

LOSSES = ("ce", "gloss", "scl")


@dataclass
class TrainConfig:
    data: str = "synthetic"  # "synthetic" or a CSV folder (train/val/test.csv)
    limit: int | None = None  # rows per split, seeded subset
    model: str = "minilm"  # alias, Hub name or local folder
    pooling: str = "cls"
    loss: str = "gloss"  # ce | gloss | scl  (integrated: (1 - lam) CE + lam aux)
    lam: float = 0.9
    gamma: float = 0.7
    sigma: float | str = 1.0  # a number, "sqrt", "batch_sqrt" or "dicm"
    temperature: float = 0.1
    lr: float = 5e-5
    epochs: int = 2
    patience: int | None = None  # stop after this many epochs without a better val macro-F1
    batch_size: int = 32
    max_length: int = 128
    grad_clip: float = 1.0
    class_weights: str = "none"  # none | balanced
    seed: int = 0
    device: str = "auto"

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.class_weights not in ("none", "balanced"):
            raise ValueError(f"class_weights must be 'none' or 'balanced', got {self.class_weights!r}")

    def seeds(self) -> dict[str, int]:
        """Separate, recorded seeds for each source of randomness."""
        return {"data_order": self.seed, "init": self.seed + 1, "dropout": self.seed + 2, "mask": self.seed + 3}


def pick_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_splits(config: TrainConfig) -> DatasetSplits:
    if config.data == "synthetic":
        return synthetic_splits(seed=config.seed)
    return load_csv_splits(config.data, limit=config.limit, seed=config.seed)


def balanced_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """sklearn's "balanced": n / (C * count_c); classes absent from train get weight 0."""
    counts = torch.bincount(labels, minlength=num_classes).double()
    return torch.where(counts > 0, labels.numel() / (num_classes * counts.clamp_min(1)), 0.0).float()


@torch.no_grad()
def embed_all(model: TextClassifier, batches: Batches, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    model.eval()
    logits, embeddings, labels = [], [], []
    for inputs, y in batches:
        out, emb = model(**{k: v.to(device) for k, v in inputs.items()})
        logits.append(out.float().cpu())
        embeddings.append(emb.float().cpu())
        labels.append(y)
    return torch.cat(logits), torch.cat(embeddings), torch.cat(labels)


def evaluate(model, batches, device) -> dict[str, float]:
    logits, _, labels = embed_all(model, batches, device)
    pred = logits.argmax(dim=1).numpy()
    return {
        "accuracy": float(accuracy_score(labels.numpy(), pred)),
        "macro_f1": float(f1_score(labels.numpy(), pred, average="macro")),
    }


def build_loss(config: TrainConfig, num_classes: int, weights, train_embeddings=None, train_labels=None):
    aux = None
    if config.loss == "gloss":
        sigma = make_sigma(config.sigma, train_embeddings, train_labels)
        aux = GLoss(num_classes, config.gamma, sigma, weights, seed=config.seeds()["mask"])
    elif config.loss == "scl":
        aux = SupConLoss(config.temperature)
    return CombinedLoss(aux, config.lam, weights)


def train(config: TrainConfig, report: Callable[[dict], None] | None = None) -> dict:
    """Fine-tune, early-select the best validation macro-F1 epoch, restore it, evaluate on test."""
    started = time.perf_counter()
    seeds = config.seeds()
    device = pick_device(config.device)
    splits = load_splits(config)
    tokenizer = load_tokenizer(config.model)
    torch.manual_seed(seeds["init"])
    model = TextClassifier.from_pretrained(config.model, splits.num_classes, config.pooling).to(device)

    def make(split, seed=None):
        return Batches(split, tokenizer, config.batch_size, config.max_length, seed)

    train_batches, val_batches, test_batches = make(splits.train, seeds["data_order"]), make(splits.val), make(splits.test)
    weights = balanced_weights(splits.train.labels, splits.num_classes).to(device) if config.class_weights == "balanced" else None
    train_emb = None
    if config.loss == "gloss" and config.sigma in ("sqrt", "dicm"):
        _, train_emb, _ = embed_all(model, make(splits.train), device)
    loss_fn = build_loss(config, splits.num_classes, weights, train_emb, splits.train.labels).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    torch.manual_seed(seeds["dropout"])

    best = {"val_macro_f1": -1.0}
    best_state = None
    history = []
    for epoch in range(1, config.epochs + 1):
        model.train()
        epoch_start = time.perf_counter()
        total = torch.zeros((), device=device)
        for inputs, labels in train_batches:
            inputs, labels = {k: v.to(device) for k, v in inputs.items()}, labels.to(device)
            logits, embeddings = model(**inputs)
            loss = loss_fn(logits, embeddings, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            total += loss.detach()
        val = evaluate(model, val_batches, device)
        metrics = {
            "epoch": epoch,
            "train_loss": float(total) / len(train_batches),  # log point: one sync per epoch
            "val_accuracy": val["accuracy"],
            "val_macro_f1": val["macro_f1"],
            "epoch_time_s": time.perf_counter() - epoch_start,
        }
        history.append(metrics)
        if val["macro_f1"] > best["val_macro_f1"]:
            best = {"val_macro_f1": val["macro_f1"], "val_accuracy": val["accuracy"], "best_epoch": epoch}
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if report is not None:
            report(metrics)
        if config.patience is not None and epoch - best["best_epoch"] >= config.patience:
            break
    model.load_state_dict(best_state)
    test = evaluate(model, test_batches, device)
    return {
        **best,
        "test_accuracy": test["accuracy"],
        "test_macro_f1": test["macro_f1"],
        "majority_val_accuracy": float(np.bincount(splits.val.labels.numpy()).max() / len(splits.val.labels)),
        "total_time_s": time.perf_counter() - started,
        "history": history,
        "seeds": seeds,
        "config": asdict(config),
        "device": str(device),
    }
