"""The flat, typed configuration of one training run; `asdict(config)` is what a sweep logs.

Each field carries its `gloss train --help` text in `metadata["help"]`.
"""

from __future__ import annotations

import functools
import math
import reprlib
import types
import typing
from dataclasses import dataclass, field, fields
from typing import Callable

from gloss_core.losses.registry import PROTOCOL_LOSSES
from gloss_core.report import SELECTION_METRICS, EpochReport

Report = Callable[[EpochReport, "str | None"], None]  # report(epoch_report, checkpoint_dir)
CHOICES = {
    "protocol": tuple(PROTOCOL_LOSSES), "empty_text": ("drop", "error"), "pooling": ("cls", "mean"),
    "class_weights": ("none", "balanced"), "optimizer": ("adam", "adamw"),
    "scheduler": ("constant", "multistep", "linear"), "precision": ("auto", "fp32", "bf16"),
    "gloss_formulation": ("paper", "reference"), "selection_mode": ("max", "min"),
    "batching": ("stratified", "grouped", "random"),
}
AT_LEAST_ONE = ("epochs", "batch_size", "max_length", "probe_epochs", "probe_patience")
# (low, high, low inclusive) of every other bounded number; None values (unset) are not checked
BOUNDS = {
    "limit": (1, None, True), "synthetic_classes": (2, None, True), "synthetic_size": (1, None, True),
    "synthetic_noise": (0, 1, True), "synthetic_distractors": (0, None, True), "lam": (0, 1, True),
    "gamma": (0, 1, True), "sigma_scale": (0, None, False), "temperature": (0, None, False), "margin": (0, None, True),
    "lr": (0, None, True), "weight_decay": (0, None, True), "lr_milestone": (1, None, True), "lr_decay": (0, None, False),
    "warmup_ratio": (0, 1, True), "grad_clip": (0, None, False), "patience": (0, None, True), "probe_lr": (0, None, False),
    "checkpoint_every": (0, None, True), "checkpoint_budget": (0, 1, False),
}


def _fits(value, hint) -> bool:
    """Whether `value` has the type `hint` names (int for float is fine; bool is not a number)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return any(_fits(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return True


def _type_name(hint) -> str:
    args = typing.get_args(hint)
    if args:
        return " or ".join(_type_name(a) for a in args)
    return {float: "a number", int: "an integer", str: "a string", bool: "true/false", type(None): "null"}.get(hint, str(hint))


def gloss_batch_problem(batch_size: int, gamma: float) -> str | None:
    """Why G-Loss has nothing to propagate in a batch of `batch_size` with `gamma` (None if it has):
    it needs a labeled node (b·γ >= 1) and a hidden one (ceil(b·γ) < b)."""
    labeled = math.ceil(batch_size * gamma)
    if batch_size * gamma >= 1 and labeled < batch_size:
        return None
    smallest = next(b for b in range(2, 1_000_000) if b * gamma >= 1 and math.ceil(b * gamma) < b) \
        if 0 < gamma < 1 else None
    fix = (f"use batch_size >= {smallest}" if smallest else "use gamma in (0, 1)")
    if labeled >= batch_size:
        why = f"all {batch_size} nodes keep their label (ceil({batch_size} x {gamma}) = {labeled}): no node is hidden"
    else:
        why = f"{batch_size} x {gamma} = {batch_size * gamma:g} < 1: less than one labeled node per batch"
    return f"batch_size {batch_size} with gamma {gamma}: {why}, so the G-Loss term is 0 on every batch; {fix}"


def option(default, help: str):  # noqa: A002 - the word typer uses
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    # data
    data: str = option("synthetic", "'synthetic', a CSV folder (train/val/test.csv) or 'hf:NAME[:CONFIG]'")
    limit: int | None = option(None, "rows per split: a random subset drawn with --subset-seed")
    subset_seed: int = option(0, "seed of the --limit subsets; fixed across run seeds, so seeds vary training only")
    empty_text: str = option("drop", "rows with empty text: drop (counted) | error")
    hf_splits: str = option("train,validation,test", "Hugging Face split expressions used as train,val,test")
    text_column: str = option("text", "Hugging Face: the text column")
    text_pair_column: str | None = option(None, "Hugging Face: the second text of pair tasks")
    label_column: str = option("label", "Hugging Face: the label column")
    synthetic_classes: int = option(2, "synthetic corpus: classes")
    synthetic_size: int = option(256, "synthetic corpus: train rows (val and test get half each)")
    synthetic_noise: float = option(0.05, "synthetic corpus: fraction of flipped labels")
    synthetic_distractors: int = option(0, "synthetic corpus: up to this many topic words of another class per text")
    synthetic_seed: int = option(0, "synthetic corpus: its seed, fixed across run seeds")
    # model
    model: str = option("minilm", "'minilm' (bundled, offline), a Hub name or a local folder")
    pooling: str = option("cls", "cls (first token, as the paper) | mean")
    # objective
    protocol: str = option("integrated", "integrated (CE + aux, head) | standalone (aux alone, then a linear probe)")
    loss: str = option("gloss", "integrated: ce | gloss | scl; standalone: gloss | scl | triplet | cosine")
    lam: float = option(0.9, "integrated: weight of the auxiliary loss, (1 - lam) CE + lam aux")
    gamma: float = option(0.7, "G-Loss: fraction of the batch that keeps its label")
    sigma: float | str = option(1.0, "G-Loss kernel width: a number, 'sqrt', 'batch_sqrt' or 'dicm'")
    sigma_scale: float = option(1.0, "G-Loss: multiplies the sigma (the paper's sigma-multiplier ablation)")
    stratified_mask: bool = option(False, "G-Loss: keep a labeled node in every class with >= 2 members")
    gloss_formulation: str = option("paper", "G-Loss: paper (eq. 1) | reference (the reference code's CE over F)")
    temperature: float = option(0.1, "SCL: temperature")
    margin: float = option(5.0, "triplet: margin")
    class_weights: str = option("none", "none | balanced (CE and G-Loss)")
    # optimisation
    optimizer: str = option("adamw", "adam | adamw")
    lr: float = option(5e-5, "learning rate")
    weight_decay: float = option(0.0, "weight decay")
    scheduler: str = option("constant", "constant | multistep (x lr_decay at lr_milestone) | linear (warm-up, decay)")
    lr_milestone: int = option(30, "multistep: the epoch of the decay")
    lr_decay: float = option(0.1, "multistep: the decay factor")
    warmup_ratio: float = option(0.0, "linear: fraction of the steps spent warming up")
    grad_clip: float | None = option(None, "gradient-norm clip (default: 1.0 integrated, 5.0 standalone)")
    epochs: int = option(2, "maximum epochs")
    patience: int | None = option(10, "early-stopping patience in epochs (0: off)")
    selection_metric: str | None = option(None, "validation metric that picks the best epoch and early-stops "
                                                "(default: val_macro_f1; standalone: val_macro_silhouette)")
    selection_mode: str = option("max", "max | min: whether a higher selection metric is better")
    batch_size: int = option(32, "rows per batch")
    max_length: int = option(128, "truncation length in tokens")
    batching: str = option("stratified", "training batches: stratified (every class in proportion, length-bucketed) "
                                         "| grouped (length-sorted, pads least) | random (a plain shuffle)")
    # standalone linear probe
    probe_epochs: int = option(200, "standalone: maximum epochs of the linear probe")
    probe_patience: int = option(10, "standalone: the probe's early-stopping patience")
    probe_lr: float = option(1e-2, "standalone: the probe's learning rate")
    # reproducibility (None: derived from seed)
    seed: int = option(0, "the run's seed; the four below derive from it unless given")
    data_seed: int | None = option(None, "seed of the training data order")
    init_seed: int | None = option(None, "seed of the head's initialisation")
    dropout_seed: int | None = option(None, "seed of dropout")
    mask_seed: int | None = option(None, "seed of G-Loss's label mask")
    # system
    device: str = option("auto", "auto | cpu | cuda | cuda:N")
    precision: str = option("auto", "auto (bf16 autocast on CUDA) | fp32 | bf16")
    timing: bool = option(True, "per-phase timing breakdown (syncs CUDA at phase boundaries)")
    checkpoint_every: int = option(1, "epochs between checkpoints handed to report (0: never)")
    checkpoint_budget: float | None = option(None, "at most this share of training time on checkpoints: a due one "
                                                   "is skipped while too little work is unsaved, and none is made "
                                                   "at the last epoch (sweep trials: 0.05; None: every due epoch)")
    artifacts_dir: str | None = option(None, "write the test embeddings and one batch's adjacency per epoch here")
    save_model: str | None = option(None, "write the best epoch's model here: a Hugging Face folder with its head, "
                                          "label names and gloss_card.json")

    def __post_init__(self):
        hints = _hints()
        for f in fields(self):
            value = getattr(self, f.name)
            if not _fits(value, hints[f.name]):
                raise ValueError(f"{f.name} must be {_type_name(hints[f.name])}, got {reprlib.repr(value)}")
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{f.name} must be a finite number, got {value}")
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.loss not in PROTOCOL_LOSSES[self.protocol]:
            raise ValueError(f"loss {self.loss!r} is not a loss of the {self.protocol} protocol; use one of {PROTOCOL_LOSSES[self.protocol]}")
        if self.selection_metric is not None and self.selection_metric not in SELECTION_METRICS[self.protocol]:
            raise ValueError(f"selection_metric {self.selection_metric!r} is not measured on validation in the "
                             f"{self.protocol} protocol; use one of {SELECTION_METRICS[self.protocol]}")
        for name in AT_LEAST_ONE:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name, (low, high, inclusive) in BOUNDS.items():
            value = getattr(self, name)
            if value is None:
                continue
            if (value < low if inclusive else value <= low) or (high is not None and value > high):
                shown = f"in [{low}, {high}]" if high is not None else f"{'>=' if inclusive else '>'} {low}"
                raise ValueError(f"{name} must be {shown}, got {value}")
        if isinstance(self.sigma, (int, float)) and not self.sigma > 0:
            raise ValueError(f"sigma must be positive, got {self.sigma}")
        if self.loss == "gloss" and 0 <= self.gamma <= 1:
            problem = gloss_batch_problem(self.batch_size, self.gamma)
            if problem:
                raise ValueError(problem)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown}")
        return cls(**values)

    def seeds(self) -> dict[str, int]:
        """The seed of each source of training randomness (recorded with every run). The data's own
        seeds, `subset_seed` and `synthetic_seed`, stay fixed across run seeds; the config records them."""
        derived = {"data_order": self.seed, "init": self.seed + 1, "dropout": self.seed + 2, "mask": self.seed + 3}
        given = {"data_order": self.data_seed, "init": self.init_seed, "dropout": self.dropout_seed, "mask": self.mask_seed}
        return {k: derived[k] if given[k] is None else given[k] for k in derived}

    def selection(self) -> str:
        """The validation metric that picks the best epoch (and so defines the run's score)."""
        return self.selection_metric or SELECTION_METRICS[self.protocol][0]

    def clip(self) -> float:
        return self.grad_clip if self.grad_clip is not None else (1.0 if self.protocol == "integrated" else 5.0)


@functools.cache
def _hints() -> dict:
    """TrainConfig's resolved field types (evaluating them is most of a construction's cost)."""
    return typing.get_type_hints(TrainConfig)
