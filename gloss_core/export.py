"""A trained model as a folder anyone can load: the best epoch's encoder as a standard Hugging Face
folder (safetensors weights, `config.json` with the label names, the tokenizer), the classification
head beside it, and `gloss_card.json` (the TrainConfig, metrics, seeds, package versions).

`gloss train --save-model DIR` writes one; a sweep's replicate trials write one each and the sweep
logs it to MLflow. `load_model(DIR)` gives it back, and `SavedModel.predict_proba` reproduces the
run's test predictions (same batches, same weights).

Example:
    saved = load_model("mr-model/")
    probabilities = saved.predict_proba(["a fine film", "a dull film"])
    [saved.labels[i] for i in probabilities.argmax(dim=1)]
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

from gloss_core.data.batching import Batches
from gloss_core.data.splits import Split
from gloss_core.models import TextClassifier, load_encoder

CARD = "gloss_card.json"
HEAD = "classifier_head.safetensors"
FORMAT = 1


def save_model(folder: str | Path, model: TextClassifier, head: torch.nn.Linear, tokenizer, labels: list[str],
               card: dict) -> Path:
    """Write the model folder. `head` maps pooled embeddings to class scores: the model's own head
    (integrated protocol) or the linear probe (standalone)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    encoder = model.encoder
    encoder.config.id2label = dict(enumerate(labels))
    encoder.config.label2id = {label: i for i, label in enumerate(labels)}
    encoder.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    save_file({"weight": head.weight.detach().cpu().contiguous(), "bias": head.bias.detach().cpu().contiguous()},
              folder / HEAD)
    (folder / CARD).write_text(json.dumps({"format": FORMAT, "labels": labels, "pooling": model.pooling, **card},
                                          indent=2, default=str), encoding="utf-8")
    return folder


@dataclass
class SavedModel:
    """A loaded model folder: the encoder with its head, the tokenizer, the label names, the card."""

    model: TextClassifier
    tokenizer: object
    labels: list[str]
    card: dict
    folder: Path

    @property
    def pair(self) -> bool:
        """Whether the model was trained on sentence pairs (it then needs `text_pair`)."""
        return bool(self.card.get("text_pair"))

    def predict_proba(self, texts: list[str], pairs: list[str] | None = None, batch_size: int | None = None,
                      on_batch: Callable[[int], None] | None = None) -> torch.Tensor:
        """Class probabilities `[n, C]` (float32) in input order, batches padded to their longest text.
        `on_batch(rows)` is called after each batch (progress bars)."""
        config = self.card.get("config", {})
        split = Split(list(texts), torch.zeros(len(texts), dtype=torch.long), None if pairs is None else list(pairs))
        batches = Batches(split, self.tokenizer, batch_size or config.get("batch_size", 32),
                          config.get("max_length", 128), use_cache=False)
        self.model.eval()
        out = []
        with torch.no_grad():
            for inputs, _ in batches:
                logits, _ = self.model(**inputs)
                out.append(logits.float().softmax(dim=1))
                if on_batch is not None:
                    on_batch(len(logits))
        return torch.cat(out) if out else torch.zeros((0, len(self.labels)))


def load_model(folder: str | Path) -> SavedModel:
    """Load a folder written by `save_model` (on the CPU)."""
    folder = Path(folder)
    card_path = folder / CARD
    if not card_path.is_file():
        raise FileNotFoundError(f"{folder}: not a gloss model folder (no {CARD}); write one with "
                                "`gloss train --save-model DIR`")
    card = json.loads(card_path.read_text(encoding="utf-8"))
    labels = list(card["labels"])
    encoder = load_encoder(str(folder))
    model = TextClassifier(encoder, len(labels), card.get("pooling", "cls"))
    model.head.load_state_dict(load_file(folder / HEAD))
    return SavedModel(model, AutoTokenizer.from_pretrained(folder), labels, card, folder)
