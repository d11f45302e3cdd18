"""Forward+backward time of every loss, and G-Loss's share of a MiniLM training step.

Usage:
    .venv/bin/python bench/losses.py                 # CPU (and CUDA when present), full grid
    .venv/bin/python bench/losses.py --quick         # n in {32, 128}, d = 384, fewer repeats
    .venv/bin/python bench/losses.py --smoke         # seconds: tiny sizes, tiny encoder, 1 repeat
    .venv/bin/python bench/losses.py --json out.json

Times are medians of `--repeats` runs after one warm-up. The MiniLM step (bundled
all-MiniLM-L6-v2, batch 128, every text padded to 128 tokens, CE head, AdamW) and the G-Loss
forward+backward on that step's embeddings are timed interleaved, in the same process, so the
ratio is measured side by side. The two tables of docs/benchmarks.md are printed at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchkit import SMOKE_HELP, markdown_table, ms, tiny_model_folder
from gloss_core.losses import (
    BatchAllTripletLoss,
    CombinedLoss,
    CosineSimilarityLoss,
    GLoss,
    SupConLoss,
)
from gloss_core.models import TextClassifier, load_tokenizer
from gloss_core.graph.sigma import BatchSqrtSigma

MR_TRAIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "MR" / "train.csv"


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn, device, repeats):
    fn()
    sync(device)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def loss_zoo(num_classes):
    """The losses to time; "ce" is the linear head's cross-entropy."""
    return {
        "ce": None,
        "gloss": GLoss(num_classes, gamma=0.7, sigma=1.0, seed=0),
        "gloss_batch_sqrt": GLoss(num_classes, gamma=0.7, sigma=BatchSqrtSigma(), seed=0),
        "scl": SupConLoss(0.1),
        "triplet": BatchAllTripletLoss(5.0),
        "cosine": CosineSimilarityLoss(),
    }


def bench_losses(device, sizes, dims, repeats, num_classes=4):
    rows = []
    for d in dims:
        head = torch.nn.Linear(d, num_classes).to(device)
        for n in sizes:
            g = torch.Generator().manual_seed(n + d)
            emb0 = torch.randn(n, d, generator=g).to(device)
            labels = (torch.arange(n) % num_classes).to(device)
            for name, aux in loss_zoo(num_classes).items():
                loss_fn = CombinedLoss(None) if aux is None else aux

                def step():
                    emb = emb0.clone().requires_grad_(True)
                    loss = loss_fn(head(emb), emb, labels) if aux is None else loss_fn(emb, labels)
                    loss.backward()

                seconds = time_call(step, device, repeats)
                rows.append({"device": device.type, "loss": name, "n": n, "d": d, "ms": 1e3 * seconds})
                print(f"{device.type:5s} {name:17s} n={n:4d} d={d:5d} {1e3 * seconds:9.2f} ms", flush=True)
    return rows


def mr_texts(count):
    import csv

    if MR_TRAIN.is_file():
        with MR_TRAIN.open(newline="", encoding="utf-8") as f:
            texts = [row["text"] for row in csv.DictReader(f)]
        return (texts * (count // len(texts) + 1))[:count]
    return [f"synthetic sentence number {i} about a film" for i in range(count)]


def bench_step_ratio(device, repeats, batch=128, max_length=128, encoder="minilm", label="MiniLM"):
    tokenizer = load_tokenizer(encoder)
    texts = mr_texts(batch)
    num_classes = 2
    torch.manual_seed(0)
    model = TextClassifier.from_pretrained(encoder, num_classes).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5)
    labels = (torch.arange(batch) % num_classes).to(device)
    ce = CombinedLoss(None)
    gloss = GLoss(num_classes, gamma=0.7, sigma=1.0, seed=0)
    results = {}
    for padding in ("max_length", "longest"):
        enc = tokenizer(texts, padding=padding, truncation=True, max_length=max_length, return_tensors="pt")
        inputs = {k: v.to(device) for k, v in enc.items()}
        holder = {}

        def train_step():
            model.train()
            logits, emb = model(**inputs)
            holder["emb"] = emb.detach()
            loss = ce(logits, emb, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        def gloss_step():
            emb = holder["emb"].clone().requires_grad_(True)
            gloss(emb, labels).backward()

        train_step()
        step_times, gloss_times = [], []
        for _ in range(repeats):  # interleaved: same machine state for both
            step_times.append(time_call(train_step, device, 1))
            gloss_times.append(time_call(gloss_step, device, 3))
        step, g = statistics.median(step_times), statistics.median(gloss_times)
        tokens = int(enc["attention_mask"].shape[1])
        results[padding] = {"tokens": tokens, "step_ms": 1e3 * step, "gloss_ms": 1e3 * g, "ratio": g / step}
        print(
            f"{device.type:5s} {label} step (batch {batch}, padded to {tokens} tokens): {1e3 * step:8.1f} ms; "
            f"G-Loss fwd+bwd {1e3 * g:6.2f} ms = {100 * g / step:.3f}% of the step",
            flush=True,
        )
    return results


def losses_table(rows: list[dict]) -> str:
    """The loss table of docs/benchmarks.md: a row per loss, a column per (d, n), forward+backward in ms."""
    shapes = list(dict.fromkeys((r["d"], r["n"]) for r in rows))
    cells = {(r["loss"], r["d"], r["n"]): r["ms"] for r in rows}
    losses = list(dict.fromkeys(r["loss"] for r in rows))
    return markdown_table(["loss", *[f"n={n}, d={d}" for d, n in shapes]],
                          [[loss, *[ms(cells[(loss, d, n)]) for d, n in shapes]] for loss in losses],
                          numeric=set(range(1, len(shapes) + 1)))


def step_table(results: dict, encoder_label: str) -> str:
    """The table of G-Loss's share (docs/benchmarks.md) of a training step, one row per padding."""
    labels = {"max_length": "every text to {} (as asked)", "longest": "to the batch's longest (MR texts)"}
    rows = [[labels[padding].format(r["tokens"]), str(r["tokens"]), f"{r['step_ms']:.0f}", f"{r['gloss_ms']:.2f}", f"{100 * r['ratio']:.3f}%"]
            for padding, r in results.items()]
    return markdown_table(["padding", "tokens", f"{encoder_label} step (ms)", "G-Loss fwd+bwd (ms)", "G-Loss / step"],
                          rows, numeric={1, 2, 3, 4})


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.smoke:
        sizes, dims, repeats = [8, 16], [16], 1
    else:
        sizes, dims = ([32, 128], [384]) if args.quick else ([32, 128, 512], [384, 768, 1024])
        repeats = args.repeats or (2 if args.quick else 5)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    report = {"losses": [], "step_ratio": {}}
    with tempfile.TemporaryDirectory() as tmp:
        # --smoke: the tests' tiny encoder, a batch of 8 texts of at most 16 tokens, one repeat
        encoder, label, step = ((tiny_model_folder(Path(tmp) / "tiny"), "tiny BERT", {"batch": 8, "max_length": 16})
                                if args.smoke else ("minilm", "MiniLM", {}))
        for device in devices:
            report["losses"] += bench_losses(device, sizes, dims, repeats)
            report["step_ratio"][device.type] = bench_step_ratio(device, repeats if args.smoke else max(3, repeats),
                                                                 encoder=encoder, label=label, **step)
    for device in devices:
        print(f"\n{device.type}: forward+backward (ms), median of {repeats}")
        print(losses_table([r for r in report["losses"] if r["device"] == device.type]))
        print(f"\n{device.type}: G-Loss's share of a training step ({label})")
        print(step_table(report["step_ratio"][device.type], label))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
