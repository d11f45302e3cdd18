"""Splits of a text-classification dataset: one label map over train, val and test, cleaned
rows, and seeded subsets.

Labels may be strings or integers; ids follow the sorted train labels (numerically for integers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from gloss_core.errors import UserError

SPLITS = ("train", "val", "test")
EmptyText = Literal["drop", "error"]


class DataError(UserError, ValueError):
    """Bad input data; the message names the file, row or column."""


@dataclass
class Split:
    texts: list[str]
    labels: torch.Tensor  # int64 class ids
    text_pairs: list[str] | None = None
    dropped_empty: int = 0


@dataclass
class DatasetSplits:
    train: Split
    val: Split
    test: Split
    label_names: list[str]
    source: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)


@dataclass
class RawSplit:
    """Rows as read, before the label map: `where` names the file or split for error messages."""

    where: str
    texts: list[str]
    labels: list[str]
    text_pairs: list[str] | None
    rows: list[int]  # row number in the source, for messages


def _clean(raw: RawSplit, empty_text: EmptyText) -> tuple[RawSplit, int]:
    keep, dropped = [], 0
    for k, text in enumerate(raw.texts):
        pair_empty = raw.text_pairs is not None and not (raw.text_pairs[k] or "").strip()
        if not (text or "").strip() or pair_empty:
            column = "text_pair" if pair_empty and (text or "").strip() else "text"
            if empty_text == "error":
                raise DataError(f"{raw.where}, row {raw.rows[k]}, column '{column}': empty text")
            dropped += 1
            continue
        if raw.labels[k] is None or not str(raw.labels[k]).strip():
            raise DataError(f"{raw.where}, row {raw.rows[k]}, column 'label': empty label")
        keep.append(k)
    if not keep:
        raise DataError(f"{raw.where}: the split is empty" + (f" after dropping {dropped} empty rows" if dropped else ""))
    pick = lambda values: None if values is None else [values[k] for k in keep]  # noqa: E731
    return RawSplit(raw.where, pick(raw.texts), [str(raw.labels[k]).strip() for k in keep], pick(raw.text_pairs), pick(raw.rows)), dropped


def _sort_key(label: str):
    return (0, int(label), "") if label.lstrip("-").isdigit() else (1, 0, label)


def build_splits(raw: dict[str, RawSplit], *, empty_text: EmptyText = "drop", limit: int | None = None,
                 subset_seed: int = 0, source: str = "") -> DatasetSplits:
    """Clean each split, build one label map from train, and check every label against it.

    With `limit`, each split keeps a random subset of at most `limit` rows drawn with
    `subset_seed` alone, so runs with other seeds see the same rows.
    """
    cleaned = {name: _clean(raw[name], empty_text) for name in SPLITS}
    train_where = cleaned["train"][0].where
    train_rows = cleaned["train"][0]
    label_names = sorted(set(train_rows.labels), key=_sort_key)
    if len(label_names) < 2:
        raise DataError(f"{train_where}: the train split has a single class {label_names}")
    check_label_set(train_rows)
    index = {name: i for i, name in enumerate(label_names)}
    splits, notes = {}, []
    for name, (rows, dropped) in cleaned.items():
        unknown = sorted(set(rows.labels) - set(index), key=_sort_key)
        if unknown:
            raise DataError(f"{rows.where}, column 'label': label(s) {unknown[:5]} absent from train")
        ids = torch.tensor([index[label] for label in rows.labels], dtype=torch.long)
        texts, pairs = rows.texts, rows.text_pairs
        if limit is not None and len(texts) > limit:
            keep = torch.randperm(len(texts), generator=torch.Generator().manual_seed(subset_seed))[:limit].sort().values.tolist()
            texts, ids = [texts[i] for i in keep], ids[keep]
            pairs = None if pairs is None else [pairs[i] for i in keep]
        if dropped:
            columns = "'text' or 'text_pair'" if rows.text_pairs is not None else "'text'"
            notes.append(f"{rows.where}: dropped {dropped} rows with an empty {columns} column")
        splits[name] = Split(texts, ids, pairs, dropped)
    counts = torch.bincount(splits["train"].labels, minlength=len(label_names)).tolist()
    shown = ", ".join(f"{name} {count:,}" for name, count in list(zip(label_names, counts))[:12])
    notes.append(f"{train_where}: {len(label_names)} classes ({shown}{', ...' if len(label_names) > 12 else ''})")
    return DatasetSplits(splits["train"], splits["val"], splits["test"], label_names, source, notes)


MAX_CLASS_SHARE = 0.5  # more distinct labels than half the rows: not a classification label column


def check_label_set(train: RawSplit) -> None:
    """Refuse a label column that cannot be class labels: nearly every row its own class (a text
    or an id column under the name 'label'), naming rows that show it."""
    labels = train.labels
    distinct = set(labels)
    if len(labels) >= 20 and len(distinct) > max(100, MAX_CLASS_SHARE * len(labels)):
        seen = {}
        for k, label in enumerate(labels):
            seen.setdefault(label, k)
        examples = ", ".join(f"row {train.rows[k]} {label[:30]!r}" for label, k in list(seen.items())[:3])
        raise DataError(f"{train.where}, column 'label': {len(distinct):,} distinct values in {len(labels):,} rows "
                        f"({examples}, ...): that is not a set of classes; is the label in another column?")
