"""One place builds a run: device, splits, tokenizer, model, batches, class weights, sigma, loss,
optimiser and scheduler, in that order, from a `TrainConfig` (and a checkpoint's state on resume).

The resulting `Run` (`gloss_core.training.engine`) fits, evaluates and reports.
"""

from __future__ import annotations

from functools import cached_property

import torch

from gloss_core.config import TrainConfig
from gloss_core.data.batching import Batches
from gloss_core.data.sources import load_splits
from gloss_core.data.splits import DatasetSplits
from gloss_core.graph.sigma import FixedSigma, SigmaStrategy, make_sigma
from gloss_core.losses.registry import build_loss
from gloss_core.models import TextClassifier, load_tokenizer
from gloss_core.training.checkpoint import BestWeights
from gloss_core.training.engine import Run, embed


def build_run(config: TrainConfig, state: dict | None = None, best_weights: BestWeights | None = None) -> Run:
    """Everything one training run needs, built in order; `state` (a checkpoint) restores it.
    `best_weights` is where the best epoch's weights wait between checkpoints (see
    `gloss_core.training.checkpoint`); None keeps them inside each checkpoint."""
    seeds = config.seeds()
    device = pick_device(config.device)
    splits = load_splits(config)
    tokenizer = load_tokenizer(config.model)
    torch.manual_seed(seeds["init"])
    model = TextClassifier.from_pretrained(config.model, splits.num_classes, config.pooling).to(device)
    data = RunData(splits, tokenizer, config.batch_size, config.max_length, seeds["data_order"], config.batching)
    weights = balanced_weights(splits.train.labels, splits.num_classes).to(device) if config.class_weights == "balanced" else None
    autocast = autocast_dtype(config, device)
    sigma = decide_sigma(config, state, lambda: embed(model, data.eval_train, device, autocast)[1],
                         splits.train.labels)
    loss_fn = build_loss(config, splits.num_classes, weights, sigma).to(device)
    standalone = config.protocol == "standalone"
    params = [p for n, p in model.named_parameters() if not (standalone and n.startswith("head."))]
    optimizer_cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    optimizer = optimizer_cls(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = make_scheduler(config, optimizer, len(data.train))
    run = Run(config, model, data, device, autocast, weights, loss_fn, optimizer, scheduler, best_weights)
    torch.manual_seed(seeds["dropout"])
    if state is not None:
        run.restore(state)
    return run


class RunData:
    """The splits and their batches: train (shuffled per epoch from the data-order seed, drawn the
    way `batching` says), val, test, and the unshuffled train batches (sigma rules, adjacency, the
    probe), built when first used; evaluation batches keep file order."""

    def __init__(self, splits: DatasetSplits, tokenizer, batch_size: int, max_length: int, order_seed: int,
                 batching: str = "stratified"):
        self.splits, self.tokenizer, self.batch_size, self.max_length = splits, tokenizer, batch_size, max_length
        self.train = self.batches(splits.train, order_seed, batching)
        self.val = self.batches(splits.val)
        self.test = self.batches(splits.test)

    def batches(self, split, shuffle_seed: int | None = None, batching: str = "stratified") -> Batches:
        return Batches(split, self.tokenizer, self.batch_size, self.max_length, shuffle_seed, batching=batching)

    @cached_property
    def eval_train(self) -> Batches:
        return self.batches(self.splits.train)


def decide_sigma(config: TrainConfig, state: dict | None, train_embeddings, train_labels) -> SigmaStrategy | None:
    """G-Loss's kernel width, decided once per run. A resumed run takes the checkpoint's value as
    it is (it was scaled when first decided); a new run applies the config's rule, times
    `sigma_scale`. `train_embeddings()` embeds the training set with the encoder before fine-tuning."""
    if config.loss != "gloss":
        return None
    if state is not None and state.get("sigma_value") is not None:
        return FixedSigma(float(state["sigma_value"]))
    embeddings = train_embeddings() if config.sigma in ("sqrt", "dicm") else None
    return make_sigma(config.sigma, embeddings, train_labels, scale=config.sigma_scale)


def pick_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    if config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda"
                                      and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return None


def balanced_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """sklearn's "balanced": n / (C * count_c); classes absent from train get weight 0."""
    counts = torch.bincount(labels, minlength=num_classes).double()
    return torch.where(counts > 0, labels.numel() / (num_classes * counts.clamp_min(1)), 0.0).float()


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
