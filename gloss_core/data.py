"""Text classification data: CSV folders (`train.csv`, `val.csv`, `test.csv`; columns `text,label`).

Batches are padded dynamically to their own longest text (truncated at `max_length`), not to a
fixed 128 tokens.

Example:
    >>> from gloss_core.data import load_csv_splits
    >>> splits = load_csv_splits("../shared/data/MR", limit=256)
    >>> splits.num_classes, len(splits.train.texts)
    (2, 256)
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import torch

SPLITS = ("train", "val", "test")


class DataError(ValueError):
    """Bad input data; the message names the file, row or column."""


@dataclass
class Split:
    texts: list[str]
    labels: torch.Tensor  # int64 class ids


@dataclass
class DatasetSplits:
    train: Split
    val: Split
    test: Split
    label_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.label_names)


def _read_csv(path: Path) -> tuple[list[str], list[str]]:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = {"text", "label"} - set(reader.fieldnames or [])
            if missing:
                raise DataError(f"{path}: missing column(s) {sorted(missing)}; found {reader.fieldnames}")
            texts, labels = [], []
            for row_number, row in enumerate(reader, start=2):
                text, label = row["text"], row["label"]
                if text is None or not text.strip():
                    raise DataError(f"{path}, row {row_number}, column 'text': empty text")
                if label is None or not label.strip():
                    raise DataError(f"{path}, row {row_number}, column 'label': empty label")
                texts.append(text)
                labels.append(label.strip())
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not valid UTF-8 ({err})") from err
    if not texts:
        raise DataError(f"{path}: the split is empty")
    return texts, labels


def _sort_key(label: str):
    return (0, int(label), "") if label.lstrip("-").isdigit() else (1, 0, label)


def load_csv_splits(folder: str | Path, *, limit: int | None = None, seed: int = 0) -> DatasetSplits:
    """Load a CSV folder; one label map (sorted label values) covers all splits.

    Args:
        folder: holds `train.csv`, `val.csv`, `test.csv`.
        limit: keep a seeded random subset of at most `limit` rows per split (quick runs).
        seed: seed of that subset.
    """
    folder = Path(folder)
    raw = {name: _read_csv(folder / f"{name}.csv") for name in SPLITS}
    label_names = sorted(set(raw["train"][1]), key=_sort_key)
    if len(label_names) < 2:
        raise DataError(f"{folder / 'train.csv'}: the train split has a single class {label_names}")
    index = {name: i for i, name in enumerate(label_names)}
    splits = {}
    for name, (texts, labels) in raw.items():
        unknown = sorted(set(labels) - set(index), key=_sort_key)
        if unknown:
            raise DataError(f"{folder / (name + '.csv')}, column 'label': label(s) {unknown[:5]} absent from train")
        ids = torch.tensor([index[label] for label in labels], dtype=torch.long)
        if limit is not None and len(texts) > limit:
            keep = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed))[:limit].sort().values
            texts, ids = [texts[i] for i in keep.tolist()], ids[keep]
        splits[name] = Split(texts, ids)
    return DatasetSplits(splits["train"], splits["val"], splits["test"], label_names)


class Batches:
    """Tokenises a split once and yields dynamically padded batches.

    Args:
        split: the texts and labels.
        tokenizer: a Hugging Face tokenizer.
        batch_size: rows per batch.
        max_length: truncation length in tokens.
        shuffle_seed: None keeps file order; an int shuffles each epoch from `shuffle_seed + epoch`.
    """

    def __init__(self, split: Split, tokenizer, batch_size: int, max_length: int = 128, shuffle_seed: int | None = None):
        encoded = tokenizer(split.texts, truncation=True, max_length=max_length)
        self.input_ids = [torch.tensor(ids) for ids in encoded["input_ids"]]
        self.labels = split.labels
        self.pad_id = tokenizer.pad_token_id or 0
        self.batch_size = batch_size
        self.shuffle_seed = shuffle_seed
        self.epoch = 0

    def __len__(self) -> int:
        return (len(self.input_ids) + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        n = len(self.input_ids)
        if self.shuffle_seed is None:
            order = torch.arange(n)
        else:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.shuffle_seed + self.epoch))
        self.epoch += 1
        for start in range(0, n, self.batch_size):
            rows = order[start : start + self.batch_size].tolist()
            seqs = [self.input_ids[i] for i in rows]
            width = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for r, s in enumerate(seqs):
                ids[r, : len(s)] = s
                mask[r, : len(s)] = 1
            yield {"input_ids": ids, "attention_mask": mask}, self.labels[rows]
