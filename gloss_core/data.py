"""Text classification data from three sources, with one label map over all splits.

- a CSV folder: `train.csv`, `val.csv`, `test.csv`, columns `text,label` and optionally
  `text_pair` (sentence-pair tasks such as QNLI), the format of ../shared/data;
- a Hugging Face dataset by name (`hf:NAME` or `hf:NAME:CONFIG`) with a column mapping;
- the deterministic synthetic corpus (`synthetic`, see `gloss_core.synthetic`).

Labels may be strings or integers; ids follow the sorted train labels (numerically for integers).

Example:
    >>> from gloss_core.data import load_csv_splits
    >>> splits = load_csv_splits("../shared/data/MR", limit=256)
    >>> splits.num_classes, len(splits.train.texts)
    (2, 256)
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

SPLITS = ("train", "val", "test")
EmptyText = Literal["drop", "error"]


class DataError(ValueError):
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
                 seed: int = 0, source: str = "") -> DatasetSplits:
    """Clean each split, build one label map from train, and check every label against it."""
    cleaned = {name: _clean(raw[name], empty_text) for name in SPLITS}
    train_where = cleaned["train"][0].where
    label_names = sorted(set(cleaned["train"][0].labels), key=_sort_key)
    if len(label_names) < 2:
        raise DataError(f"{train_where}: the train split has a single class {label_names}")
    index = {name: i for i, name in enumerate(label_names)}
    splits, notes = {}, []
    for name, (rows, dropped) in cleaned.items():
        unknown = sorted(set(rows.labels) - set(index), key=_sort_key)
        if unknown:
            raise DataError(f"{rows.where}, column 'label': label(s) {unknown[:5]} absent from train")
        ids = torch.tensor([index[label] for label in rows.labels], dtype=torch.long)
        texts, pairs = rows.texts, rows.text_pairs
        if limit is not None and len(texts) > limit:
            keep = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed))[:limit].sort().values.tolist()
            texts, ids = [texts[i] for i in keep], ids[keep]
            pairs = None if pairs is None else [pairs[i] for i in keep]
        if dropped:
            notes.append(f"{rows.where}: dropped {dropped} rows with empty text")
        splits[name] = Split(texts, ids, pairs, dropped)
    return DatasetSplits(splits["train"], splits["val"], splits["test"], label_names, source, notes)


def _read_csv(path: Path) -> RawSplit:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    data = path.read_bytes()
    try:
        content = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(f"{path}, line {line}: undecodable bytes, the file is not valid UTF-8 ({err.reason})") from err
    reader = csv.DictReader(io.StringIO(content, newline=""))
    missing = {"text", "label"} - set(reader.fieldnames or [])
    if missing:
        raise DataError(f"{path}: missing column(s) {sorted(missing)}; found {reader.fieldnames}")
    has_pair = "text_pair" in reader.fieldnames
    texts, labels, pairs, rows = [], [], [], []
    for row in reader:
        texts.append(row["text"])
        labels.append(row["label"])
        rows.append(reader.line_num)
        if has_pair:
            pairs.append(row["text_pair"])
    return RawSplit(str(path), texts, labels, pairs if has_pair else None, rows)


def load_csv_splits(folder: str | Path, *, limit: int | None = None, seed: int = 0,
                    empty_text: EmptyText = "drop") -> DatasetSplits:
    """Load a CSV folder (`train.csv`, `val.csv`, `test.csv`).

    Args:
        folder: the folder.
        limit: keep a seeded random subset of at most `limit` rows per split (quick runs).
        seed: seed of that subset.
        empty_text: "drop" rows with empty text (counted in `notes`) or raise an "error".
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: data folder not found")
    raw = {name: _read_csv(folder / f"{name}.csv") for name in SPLITS}
    pair_splits = {name for name, r in raw.items() if r.text_pairs is not None}
    if pair_splits and pair_splits != set(SPLITS):
        raise DataError(f"{folder}: column 'text_pair' is in {sorted(pair_splits)} but not in every split")
    return build_splits(raw, empty_text=empty_text, limit=limit, seed=seed, source=str(folder))


def load_hf_splits(name: str, *, config: str | None = None, splits: tuple[str, str, str] = ("train", "validation", "test"),
                   text_column: str = "text", label_column: str = "label", text_pair_column: str | None = None,
                   data_files=None, limit: int | None = None, seed: int = 0, empty_text: EmptyText = "drop") -> DatasetSplits:
    """Load a Hugging Face dataset with `datasets.load_dataset(name, config, split=...)`.

    Args:
        name: a Hub name ("glue") or a builder with `data_files` ("csv").
        config: the dataset config ("sst2", "qnli").
        splits: the split expressions used as train / val / test (slicing works:
            `("train[:90%]", "train[90%:]", "validation")` when the test labels are hidden).
        text_column, label_column, text_pair_column: the column mapping.
        data_files: passed through to `load_dataset` (local files).
    """
    import datasets

    raw = {}
    for role, split in zip(SPLITS, splits):
        where = f"{name}{':' + config if config else ''}[{split}]"
        try:
            ds = datasets.load_dataset(name, config, split=split, data_files=data_files)
        except Exception as err:  # noqa: BLE001 - datasets raises many types; name the source
            raise DataError(f"{where}: could not load ({type(err).__name__}: {err})") from err
        for column in (text_column, label_column, text_pair_column):
            if column is not None and column not in ds.column_names:
                raise DataError(f"{where}: missing column '{column}'; found {ds.column_names}")
        labels = ds[label_column]
        if any(label == -1 for label in labels):
            raise DataError(f"{where}, column '{label_column}': labels are hidden (-1); use another split as test")
        label_feature = ds.features.get(label_column)
        if hasattr(label_feature, "names"):
            labels = [label_feature.names[label] for label in labels]
        raw[role] = RawSplit(where, ds[text_column], [str(label) for label in labels],
                             ds[text_pair_column] if text_pair_column else None, list(range(len(ds))))
    return build_splits(raw, empty_text=empty_text, limit=limit, seed=seed, source=f"hf:{name}")
