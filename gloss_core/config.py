"""The flat, typed configuration of one training run; `asdict(config)` is what a sweep logs."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable

PROTOCOL_LOSSES = {"integrated": ("ce", "gloss", "scl"), "standalone": ("gloss", "scl", "triplet", "cosine")}
Report = Callable[[dict, "str | None"], None]  # report(metrics, checkpoint_dir)


@dataclass
class TrainConfig:
    # data
    data: str = "synthetic"  # "synthetic", a CSV folder, or "hf:NAME" / "hf:NAME:CONFIG"
    limit: int | None = None  # rows per split, seeded subset
    empty_text: str = "drop"  # drop | error
    hf_splits: str = "train,validation,test"  # split expressions used as train,val,test
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    synthetic_classes: int = 2
    synthetic_size: int = 256  # train rows; val and test get half each
    synthetic_noise: float = 0.05
    synthetic_distractors: int = 0  # up to this many topic words of another class per text
    synthetic_seed: int = 0  # the corpus itself; fixed across run seeds, so replicates see the same data
    # model
    model: str = "minilm"  # alias, Hub name or local folder
    pooling: str = "cls"  # cls | mean
    # objective
    protocol: str = "integrated"  # integrated | standalone
    loss: str = "gloss"  # integrated: ce | gloss | scl; standalone: gloss | scl | triplet | cosine
    lam: float = 0.9  # integrated: (1 - lam) CE + lam aux
    gamma: float = 0.7  # G-Loss: fraction of the batch that keeps its label
    sigma: float | str = 1.0  # a number, "sqrt", "batch_sqrt" or "dicm"
    sigma_scale: float = 1.0  # multiplies the sigma (the paper's sigma-multiplier ablation)
    stratified_mask: bool = False
    gloss_formulation: str = "paper"  # paper | reference
    temperature: float = 0.1  # SCL
    margin: float = 5.0  # triplet
    class_weights: str = "none"  # none | balanced (CE and G-Loss)
    # optimisation
    optimizer: str = "adamw"  # adam | adamw
    lr: float = 5e-5
    weight_decay: float = 0.0
    scheduler: str = "constant"  # constant | multistep (x lr_decay at lr_milestone) | linear (warm-up, decay)
    lr_milestone: int = 30
    lr_decay: float = 0.1
    warmup_ratio: float = 0.0
    grad_clip: float | None = None  # None: 1.0 integrated, 5.0 standalone (reference)
    epochs: int = 2
    patience: int | None = 10  # early stopping: epochs without improvement (reference: 10); 0 or None: off
    batch_size: int = 32
    max_length: int = 128
    # standalone linear probe
    probe_epochs: int = 200
    probe_patience: int = 10
    probe_lr: float = 1e-2
    # reproducibility (None: derived from seed)
    seed: int = 0
    data_seed: int | None = None
    init_seed: int | None = None
    dropout_seed: int | None = None
    mask_seed: int | None = None
    # system
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 autocast on CUDA) | fp32 | bf16
    timing: bool = True  # per-phase timing breakdown (syncs CUDA at phase boundaries)
    checkpoint_every: int = 1  # epochs between checkpoints handed to report (0: never)
    artifacts_dir: str | None = None  # test embeddings and one batch's adjacency per epoch

    def __post_init__(self):
        choices = {
            "protocol": tuple(PROTOCOL_LOSSES), "empty_text": ("drop", "error"), "pooling": ("cls", "mean"),
            "class_weights": ("none", "balanced"), "optimizer": ("adam", "adamw"),
            "scheduler": ("constant", "multistep", "linear"), "precision": ("auto", "fp32", "bf16"),
            "gloss_formulation": ("paper", "reference"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.loss not in PROTOCOL_LOSSES[self.protocol]:
            raise ValueError(f"loss {self.loss!r} is not a loss of the {self.protocol} protocol; use one of {PROTOCOL_LOSSES[self.protocol]}")
        for name in ("epochs", "batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if isinstance(self.sigma, (int, float)) and not self.sigma > 0:
            raise ValueError(f"sigma must be positive, got {self.sigma}")

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown}")
        return cls(**values)

    def seeds(self) -> dict[str, int]:
        """The seed of each source of randomness (recorded with every run)."""
        derived = {"data_order": self.seed, "init": self.seed + 1, "dropout": self.seed + 2, "mask": self.seed + 3}
        given = {"data_order": self.data_seed, "init": self.init_seed, "dropout": self.dropout_seed, "mask": self.mask_seed}
        return {k: derived[k] if given[k] is None else given[k] for k in derived}

    def clip(self) -> float:
        return self.grad_clip if self.grad_clip is not None else (1.0 if self.protocol == "integrated" else 5.0)
