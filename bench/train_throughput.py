"""Training throughput on MR (or another CSV folder): gloss's loops against a reference-style loop, side by side.

Usage:
    .venv/bin/python bench/train_throughput.py                  # 512 MR texts, batch 128, 2 rounds
    .venv/bin/python bench/train_throughput.py --samples 256 --rounds 1
    .venv/bin/python bench/train_throughput.py --data ../shared/data/R8 --rounds 3
    .venv/bin/python bench/train_throughput.py --smoke          # seconds: 16 synthetic texts, tiny encoder

Loops timed (one epoch each, interleaved over the rounds, the bundled MiniLM on CPU or CUDA):
- `ce`: gloss, CE only: length-grouped batches (`--batching grouped`) padded to their longest text.
- `gloss+ce`: gloss, (1 - lam) CE + lam G-Loss on the same forward pass, the same batches.
- `gloss+ce`, default batching: the same loss on the default `stratified` batches (every class in
  proportion, from one length quantile of each; docs/method.md, "Batching"), as `gloss train` runs it.
- `reference gloss+ce`: the reference code's way: every text padded to 128 tokens, random
  batches, and a second encoder forward pass for the G-Loss term.
One untimed batch of each loop warms up first. Targets: gloss+ce >= 2x the reference's samples/s
(>= 8x with the default batching on MR and R8); a gloss+ce epoch <= 1.05x a ce epoch.
The table of docs/benchmarks.md is printed at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchkit import SMOKE_HELP, markdown_table, tiny_model_folder
from gloss_core.data.batching import Batches
from gloss_core.data import load_csv_splits
from gloss_core.losses import GLoss
from gloss_core.models import TextClassifier, load_tokenizer

MR = Path(__file__).resolve().parents[2] / "shared" / "data" / "MR"
LOOPS = {"ce": "length-grouped batches, dynamic padding",
         "gloss+ce": "the same, plus G-Loss on the same forward pass",
         "gloss+ce, default batching": "class-stratified length buckets (`stratified`), dynamic padding, "
                                       "G-Loss on the same forward pass",
         "reference gloss+ce": "every text padded to 128 tokens, second forward pass for G-Loss"}


def smoke_data(folder: Path) -> Path:
    """The synthetic corpus as a CSV folder, so that --smoke reads it the way the full run reads MR."""
    import pandas as pd

    from gloss_core.data.synthetic import synthetic_splits

    splits = synthetic_splits(num_classes=2, train_size=32, val_size=8, test_size=8)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("train", "val", "test"):
        split = getattr(splits, name)
        labels = [splits.label_names[i] for i in split.labels.tolist()]
        pd.DataFrame({"text": split.texts, "label": labels}).to_csv(folder / f"{name}.csv", index=False)
    return folder


def run_epoch(model, optimizer, batches, device, mode: str, gloss: GLoss, lam: float = 0.9) -> float:
    """One epoch of `mode`: ce, gloss+ce or reference gloss+ce; its seconds."""
    model.train()
    start = time.perf_counter()
    for inputs, labels in batches:
        inputs, labels = {k: v.to(device) for k, v in inputs.items()}, labels.to(device)
        logits, emb = model(**inputs)
        loss = torch.nn.functional.cross_entropy(logits, labels)
        if mode == "gloss+ce":
            loss = (1 - lam) * loss + lam * gloss(emb, labels)
        elif mode == "reference gloss+ce":
            _, emb_again = model(**inputs)  # the reference's second forward pass
            loss = (1 - lam) * loss + lam * gloss(emb_again, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=MR, help="a CSV folder (train/val/test.csv); default: MR")
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.smoke:  # 16 synthetic texts from a CSV folder, batch 8, one round, the tests' tiny encoder
            args.samples, args.batch_size, args.rounds = 16, 8, 1
            data, encoder, label = smoke_data(Path(tmp) / "data"), tiny_model_folder(Path(tmp) / "tiny"), "synthetic"
        else:
            data, encoder, label = args.data, "minilm", args.data.resolve().name
        summary = measure(args, data, encoder, label)
    print(f"gloss+ce vs reference-style: {summary['speedup_vs_reference']:.2f}x samples/s (target >= 2x)")
    print(f"gloss+ce, default batching vs reference-style: {summary['default_speedup_vs_reference']:.2f}x "
          "samples/s (target >= 8x)")
    print(f"gloss+ce epoch / ce epoch:   {summary['gloss_ce_epoch_over_ce_epoch']:.3f} (target <= 1.05)")
    print()
    print(markdown_table(["loop", "samples/s"], [[f"`{name}`: {LOOPS[name]}", f"{rate:.1f}"]
                                                 for name, rate in summary["samples_per_s"].items()], numeric={1}))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


def measure(args, data: Path, encoder: str, label: str) -> dict:
    """The four loops, one epoch each per round, interleaved; medians over the rounds."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    splits = load_csv_splits(data, limit=args.samples, subset_seed=0)
    tokenizer = load_tokenizer(encoder)
    grouped = Batches(splits.train, tokenizer, args.batch_size, 128, shuffle_seed=0, batching="grouped")
    loops = {  # name -> (what run_epoch computes, batches)
        "ce": ("ce", grouped),
        "gloss+ce": ("gloss+ce", grouped),
        "gloss+ce, default batching": ("gloss+ce", Batches(splits.train, tokenizer, args.batch_size, 128, shuffle_seed=0)),
        "reference gloss+ce": ("reference gloss+ce",
                               Batches(splits.train, tokenizer, args.batch_size, 128, shuffle_seed=None, pad_to=128)),
    }
    torch.manual_seed(0)
    model = TextClassifier.from_pretrained(encoder, splits.num_classes).to(device)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    times = {name: [] for name in loops}
    print(f"{device.type}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.samples} {label} texts, batch {args.batch_size}")
    for mode, batches in loops.values():  # warm-up: one batch of each loop, untimed
        first = next(iter(batches))
        run_epoch(model, torch.optim.AdamW(model.parameters(), lr=0.0), [first], device, mode,
                  GLoss(splits.num_classes, seed=0))
    for round_ in range(args.rounds):
        for name, (mode, batches) in loops.items():
            model.load_state_dict(initial)
            optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5)
            gloss = GLoss(splits.num_classes, gamma=0.7, sigma=1.0, seed=0,
                          formulation="reference" if name.startswith("reference") else "paper")
            seconds = run_epoch(model, optimizer, batches, device, mode, gloss)
            times[name].append(seconds)
            print(f"round {round_ + 1}: {name:26s} {seconds:7.1f} s  {args.samples / seconds:6.1f} samples/s", flush=True)
    med = {name: statistics.median(t) for name, t in times.items()}
    return {
        "samples_per_s": {name: args.samples / s for name, s in med.items()},
        "speedup_vs_reference": med["reference gloss+ce"] / med["gloss+ce"],
        "default_speedup_vs_reference": med["reference gloss+ce"] / med["gloss+ce, default batching"],
        "gloss_ce_epoch_over_ce_epoch": med["gloss+ce"] / med["ce"],
        "data": label,
        "device": device.type,
        "samples": args.samples,
        "batch_size": args.batch_size,
    }


if __name__ == "__main__":
    main()
