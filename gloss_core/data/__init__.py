"""Data: where it comes from (`sources`: CSV folders, Hugging Face datasets, the `synthetic`
corpus), the cleaned splits with one label map (`splits`), and dynamically padded batches of
tokens cached on disk (`batching`)."""

from gloss_core.data.sources import load_csv_splits, load_hf_splits, load_splits
from gloss_core.data.splits import DataError, DatasetSplits, Split, build_splits

__all__ = ["DataError", "DatasetSplits", "Split", "build_splits", "load_csv_splits", "load_hf_splits", "load_splits"]
