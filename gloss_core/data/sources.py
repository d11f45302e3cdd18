"""Where text-classification data comes from, read into `DatasetSplits` with one label map:

- a CSV folder: `train.csv`, `val.csv`, `test.csv`, columns `text,label` and optionally
  `text_pair` (sentence-pair tasks such as QNLI), the format of ../shared/data;
- a Hugging Face dataset by name (`hf:NAME` or `hf:NAME:CONFIG`) with a column mapping;
- the deterministic synthetic corpus (`synthetic`, see `gloss_core.data.synthetic`).

`load_splits(config)` picks the source a `TrainConfig` names.

Example:
    >>> from gloss_core.data import load_csv_splits
    >>> splits = load_csv_splits("../shared/data/MR", limit=256)
    >>> splits.num_classes, len(splits.train.texts)
    (2, 256)
"""

from __future__ import annotations

import csv
from pathlib import Path

from gloss_core.config import TrainConfig
from gloss_core.data.splits import SPLITS, DataError, DatasetSplits, EmptyText, RawSplit, build_splits
from gloss_core.data.synthetic import synthetic_splits


def load_splits(config: TrainConfig) -> DatasetSplits:
    """The train, val and test splits that `config.data` names."""
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
                              limit=config.limit, subset_seed=config.subset_seed, empty_text=config.empty_text)
    return load_csv_splits(config.data, limit=config.limit, subset_seed=config.subset_seed,
                           empty_text=config.empty_text)


CHUNK_ROWS = 50_000  # rows parsed at a time: a large file streams instead of being read whole


def _header(path: Path) -> list[str]:
    """The first line's column names (utf-8-sig: a BOM is no part of the first name)."""
    with open(path, encoding="utf-8-sig", newline="", errors="strict") as f:
        try:
            first = next(csv.reader(f), [])
        except csv.Error as err:
            raise DataError(f"{path}, line 1: not a CSV header ({err})") from None
    repeated = sorted({name for name in first if first.count(name) > 1})
    if repeated:
        raise DataError(f"{path}: column(s) {repeated} appear more than once in the header; name each column once")
    return first


def _not_utf8(path: Path) -> DataError:
    """The error naming the first line of `path` that is not UTF-8."""
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as err:
                return DataError(f"{path}, line {number}: undecodable bytes, the file is not valid UTF-8 ({err.reason})")
    return DataError(f"{path}: undecodable bytes, the file is not valid UTF-8")


def _read_csv(path: Path) -> RawSplit:
    """One split's rows, parsed by pandas in chunks (no field-size limit: long texts are cut by the
    tokenizer); `rows` counts the header as row 1."""
    import pandas as pd

    if not path.is_file():
        raise DataError(f"{path}: file not found" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        header = _header(path)
    except UnicodeDecodeError:
        raise _not_utf8(path) from None
    missing = {"text", "label"} - set(header)
    if missing:
        raise DataError(f"{path}: missing column(s) {sorted(missing)}; found {header}")
    has_pair = "text_pair" in header
    columns = ["text", "label"] + (["text_pair"] if has_pair else [])
    texts, labels, pairs = [], [], []
    try:
        for chunk in pd.read_csv(path, encoding="utf-8-sig", dtype=str, keep_default_na=False, na_filter=False,
                                 usecols=columns, chunksize=CHUNK_ROWS, engine="c"):
            texts += chunk["text"].tolist()
            labels += chunk["label"].tolist()
            if has_pair:
                pairs += chunk["text_pair"].tolist()
    except UnicodeDecodeError:
        raise _not_utf8(path) from None
    except (pd.errors.ParserError, ValueError) as err:
        raise DataError(f"{path}: not a valid CSV ({' '.join(str(err).split())[:300]})") from None
    return RawSplit(str(path), texts, labels, pairs if has_pair else None, list(range(2, len(texts) + 2)))


def load_csv_splits(folder: str | Path, *, limit: int | None = None, subset_seed: int = 0,
                    empty_text: EmptyText = "drop") -> DatasetSplits:
    """Load a CSV folder (`train.csv`, `val.csv`, `test.csv`).

    Args:
        folder: the folder.
        limit: keep a seeded random subset of at most `limit` rows per split (quick runs).
        subset_seed: seed of that subset.
        empty_text: "drop" rows with empty text (counted in `notes`) or raise an "error".
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: data folder not found")
    raw = {name: _read_csv(folder / f"{name}.csv") for name in SPLITS}
    pair_splits = {name for name, r in raw.items() if r.text_pairs is not None}
    if pair_splits and pair_splits != set(SPLITS):
        raise DataError(f"{folder}: column 'text_pair' is in {sorted(pair_splits)} but not in every split")
    return build_splits(raw, empty_text=empty_text, limit=limit, subset_seed=subset_seed, source=str(folder))


def load_hf_splits(name: str, *, config: str | None = None, splits: tuple[str, str, str] = ("train", "validation", "test"),
                   text_column: str = "text", label_column: str = "label", text_pair_column: str | None = None,
                   data_files=None, limit: int | None = None, subset_seed: int = 0,
                   empty_text: EmptyText = "drop") -> DatasetSplits:
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

    datasets.disable_progress_bars()  # a sweep loads in every trial: bars would fill the console
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
    return build_splits(raw, empty_text=empty_text, limit=limit, subset_seed=subset_seed, source=f"hf:{name}")
