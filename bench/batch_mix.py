"""The class mix and the padding of training batches, for each way of drawing them (`--batching`).

Usage:
    .venv/bin/python bench/batch_mix.py                 # every dataset of ../shared/data, batch 128, 3 epochs
    .venv/bin/python bench/batch_mix.py --epochs 5
    .venv/bin/python bench/batch_mix.py --smoke         # seconds: 400 MR texts, batch 32, 1 epoch

For each dataset folder (train.csv, read with the project's CSV loader; lengths from the bundled
MiniLM tokenizer, truncated at 128 tokens), the training batches of `random`, the default
(`stratified`) and `grouped` are drawn for a few epochs (seed 0). Printed per dataset:
- `DATASET random=X default=Y grouped=Z`: the mean total-variation distance between a batch's class
  mix and the training set's (0: every batch has the training mix), averaged over the epochs;
- `padded/real`: padded tokens per real token (each batch padded to its longest text; `to128`:
  every text padded to 128 tokens, as the reference does).
Target: the default's distance within 1.1x random's on every dataset. The table of
docs/benchmarks.md is printed at the end.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from benchkit import SMOKE_HELP, markdown_table
from gloss_core.data import load_csv_splits
from gloss_core.data.batching import Batches
from gloss_core.models import load_tokenizer

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MODES = {"random": "random", "default": "stratified", "grouped": "grouped"}


def mix_and_padding(batches: Batches, epochs: int) -> tuple[float, float]:
    """(mean TV distance of a batch's class mix to the split's, padded tokens per real token)."""
    labels, classes = batches.labels, int(batches.labels.max()) + 1
    overall = torch.bincount(labels, minlength=classes).double() / len(labels)
    tvs, padded = [], 0
    for epoch in range(epochs):
        for rows in batches.order(epoch):
            mix = torch.bincount(labels[rows], minlength=classes).double() / len(rows)
            tvs.append(0.5 * float((mix - overall).abs().sum()))
            padded += len(rows) * int(batches.lengths[rows].max())
    return sum(tvs) / len(tvs), padded / (epochs * int(batches.lengths.sum()))


def measure(folder: Path, tokenizer, batch_size: int, epochs: int, limit: int | None) -> dict:
    train = load_csv_splits(folder, limit=limit).train
    batches = Batches(train, tokenizer, batch_size, 128, shuffle_seed=0)
    out = {"rows": len(train.texts), "classes": int(train.labels.max()) + 1,
           "to128_padded_per_real": 128 * len(train.texts) / int(batches.lengths.sum())}
    for name, mode in MODES.items():
        batches.batching = mode
        out[name] = dict(zip(("tv", "padded_per_real"), mix_and_padding(batches, epochs)))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA, help="a folder of dataset folders (each with train.csv)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--limit", type=int, default=None, help="a random subset of this many training rows")
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    folders = sorted(f for f in args.data.iterdir() if (f / "train.csv").is_file())
    if args.smoke:
        folders, args.batch_size, args.epochs, args.limit = [args.data / "MR"], 32, 1, 400
    tokenizer = load_tokenizer("minilm")
    results = {}
    for folder in folders:
        r = results[folder.name] = measure(folder, tokenizer, args.batch_size, args.epochs, args.limit)
        print(folder.name, " ".join(f"{name}={r[name]['tv']:.3f}" for name in MODES),
              "  padded/real:", " ".join(f"{name}={r[name]['padded_per_real']:.2f}" for name in MODES),
              f"to128={r['to128_padded_per_real']:.2f}", flush=True)
    met = all(r["default"]["tv"] <= 1.1 * r["random"]["tv"] for r in results.values())
    print(f"default within 1.1x random's TV distance on every dataset: {'yes' if met else 'no'}")
    print()
    header = ["dataset", "train rows", "classes", "TV random", "TV default (stratified)", "TV grouped",
              "padded/real random", "padded/real default", "padded/real grouped", "padded/real, all to 128"]
    rows = [[name, f"{r['rows']:,}", r["classes"], *(f"{r[m]['tv']:.3f}" for m in MODES),
             *(f"{r[m]['padded_per_real']:.2f}" for m in MODES), f"{r['to128_padded_per_real']:.2f}"]
            for name, r in results.items()]
    print(markdown_table(header, rows, numeric=set(range(1, len(header)))))
    if args.json:
        args.json.write_text(json.dumps({"batch_size": args.batch_size, "epochs": args.epochs, "datasets": results},
                                        indent=2))


if __name__ == "__main__":
    main()
