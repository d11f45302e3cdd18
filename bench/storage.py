"""Storage of a sweep, measured on the demo spec (sweeps/specs/demo.yaml), all in one run:

1. The demo sweep into a fresh folder, with the bytes under its storage path sampled every 0.25 s:
   the peak during the sweep, what is left after it, and what the MLflow store holds (the exported
   replicate models).
2. One demo trial's checkpoints, in this process: bytes written per epoch's checkpoint as a
   multiple of the model's fp32 size, the best-weights file, and the time to write a checkpoint
   (`state.pt`, then copied to a storage folder as Ray Tune persists it) as a share of the epoch's
   time (train + validation), with one torch thread as each demo trial has.

The table of docs/benchmarks.md is printed at the end.

Usage:
    .venv/bin/python bench/storage.py                   # about 4 minutes on 2 cores
    .venv/bin/python bench/storage.py --json out.json
    .venv/bin/python bench/storage.py --smoke           # seconds: the tests' tiny encoder, 1 trial per cell, 2 epochs
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

from benchkit import SMOKE_HELP, markdown_table, smoke_demo, tiny_model_folder

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
MB = 1e6


def demo_spec(smoke_model: str | None = None) -> dict:
    """demo.yaml as shipped, or (--smoke, a tiny encoder's folder) shrunk to one trial per cell, 2
    epochs, one replicate seed and no sensitivity phase, on 32 synthetic texts."""
    raw = yaml.safe_load((REPO / "sweeps/specs/demo.yaml").read_text())
    if smoke_model:
        smoke_demo(raw, smoke_model).update(replicate={"seeds": [1]}, sensitivity=None)
    return raw


def folder_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass  # deleted while walking
    return total


class Sampler(threading.Thread):
    def __init__(self, path: Path, every_s: float = 0.25):
        super().__init__(daemon=True)
        self.path, self.every_s, self.peak, self.stopped = path, every_s, 0, threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            self.peak = max(self.peak, folder_bytes(self.path))
            self.stopped.wait(self.every_s)


def sweep(tmp: Path, smoke_model: str | None = None) -> dict:
    from sweeps.runner import run_sweep
    from sweeps.spec import load_spec
    from trainables.report import read_result

    spec_text = demo_spec(smoke_model)
    spec_text.update({"tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}", "storage_path": str(tmp / "ray_results")})
    (tmp / "demo.yaml").write_text(yaml.safe_dump(spec_text))
    spec = load_spec(tmp / "demo.yaml")
    storage = tmp / "ray_results"
    storage.mkdir()
    sampler = Sampler(storage)
    sampler.start()
    os.chdir(tmp)  # MLflow's default artifact root for a SQLite store is relative to the working folder
    started = time.perf_counter()
    run_sweep(spec)
    seconds = time.perf_counter() - started
    sampler.stopped.set()
    sampler.join()
    write_s = persist_s = iteration_s = 0.0
    for results in storage.glob("*/*/*/result.json"):  # Tune's per-trial results stay; checkpoints go
        for line in results.read_text().splitlines():
            row = read_result(json.loads(line))
            write_s += row.checkpoint_write_s
            persist_s += row.checkpoint_persist_s
            iteration_s += row.iteration_s
    checkpoint_s = write_s + persist_s
    return {"cells": len(spec.cells()), "concurrent_trials": spec.search.max_concurrent * len(spec.cells()),
            "peak_storage_bytes": sampler.peak, "left_storage_bytes": folder_bytes(storage),
            "left_checkpoints": len(list(storage.glob("*/*/*/checkpoint_*"))),
            "mlflow_bytes": sum(folder_bytes(p) for p in tmp.iterdir() if p.is_dir() and p != storage),
            "checkpoint_share_in_sweep": checkpoint_s / iteration_s if iteration_s else float("nan"),
            "write_share_in_sweep": write_s / iteration_s if iteration_s else float("nan"),
            "sweep_s": seconds}


def checkpoints(tmp: Path, epochs: int = 3, smoke_model: str | None = None) -> dict:
    """One demo trial (the gloss_o cell, mid-range hyperparameters), checkpointing every epoch as a
    sweep trial does; each checkpoint folder is then copied to a storage folder as Tune copies it."""
    import pyarrow.fs
    import torch

    import gloss_core.training.engine as engine
    from gloss_core.config import TrainConfig
    from gloss_core.training.build import build_run
    from gloss_core.training.checkpoint import BestWeights
    from sweeps.spec import load_spec

    torch.set_num_threads(1)
    (tmp / "demo.yaml").write_text(yaml.safe_dump(demo_spec(smoke_model)))
    spec = load_spec(tmp / "demo.yaml")
    cell = next(c for c in spec.cells() if c.loss == "gloss_o")
    values = {**cell.constants, "lr": 5e-5, "sigma": 1.0, "lam": 0.7, "gamma": 0.6, "epochs": epochs}

    def measure(budget: float | None, name: str):
        run = build_run(TrainConfig.from_dict({**values, "checkpoint_budget": budget}),
                        best_weights=BestWeights(tmp / "best" / f"{name}.safetensors"))
        saves, rows, mark = [], [], [time.perf_counter()]
        save = engine.save_checkpoint

        def timed_save(folder, state):
            started = time.perf_counter()
            path = save(folder, state)
            saves.append(time.perf_counter() - started)
            return path

        def report(epoch, folder: str | None) -> None:
            reported = time.perf_counter()
            row = {"epoch": epoch.epoch, "checkpoint_s": 0.0, "state_bytes": 0}
            if folder is not None:  # copied to a storage folder as Tune copies it
                destination = tmp / "storage" / f"{name}_{epoch.epoch:06d}"
                destination.mkdir(parents=True)
                pyarrow.fs.copy_files(folder, str(destination), source_filesystem=pyarrow.fs.LocalFileSystem(),
                                      destination_filesystem=pyarrow.fs.LocalFileSystem())
                row.update(checkpoint_s=saves[-1] + time.perf_counter() - reported,
                           state_bytes=os.path.getsize(Path(folder) / "state.pt"))
                shutil.rmtree(destination)
            row["epoch_s"] = reported - mark[0] - (saves[-1] if folder is not None else 0.0)
            rows.append(row)
            mark[0] = time.perf_counter()

        engine.save_checkpoint = timed_save
        try:
            run.fit(report)
        finally:
            engine.save_checkpoint = save
        return rows, run

    every, run = measure(None, "every")  # a checkpoint every epoch: the cost of one
    budgeted, _ = measure(spec.cells()[0].constants["checkpoint_budget"], "budgeted")  # as a sweep trial runs
    fp32 = sum(t.numel() * 4 for t in run.model.state_dict().values())
    BestWeights(tmp / "best" / "measured.safetensors").save(run.model.state_dict(), 1)
    best_bytes = (tmp / "best" / "measured.epoch0001.safetensors").stat().st_size  # one file per best epoch

    def share(rows):
        return sum(r["checkpoint_s"] for r in rows) / sum(r["epoch_s"] for r in rows)

    return {"model_fp32_bytes": fp32, "epochs": every, "budgeted_epochs": budgeted,
            "state_over_fp32": max(r["state_bytes"] for r in every) / fp32,
            "best_file_over_fp32": best_bytes / fp32,
            "checkpoint_share_median": statistics.median(r["checkpoint_s"] / r["epoch_s"] for r in every),
            "checkpoint_share_budgeted": share(budgeted),
            "budgeted_checkpoints": sum(r["checkpoint_s"] > 0 for r in budgeted)}


def table_rows(report: dict) -> list[list[str]]:
    """The rows of docs/benchmarks.md: measurement, figure, target."""
    c, s = report["checkpoints"], report["sweep"]
    model_mb = c["model_fp32_bytes"] / MB
    state_mb = c["state_over_fp32"] * model_mb
    alone = [r for r in c["epochs"] if r["checkpoint_s"] > 0]
    checkpoint_s = statistics.median(r["checkpoint_s"] for r in alone) if alone else float("nan")
    epoch_s = statistics.median(r["epoch_s"] for r in alone) if alone else float("nan")
    left = "no checkpoint" if not s["left_checkpoints"] else f"{s['left_checkpoints']} checkpoint(s)"
    return [["`state.pt` per checkpoint", f"{c['state_over_fp32']:.2f} x the model ({state_mb:.1f} MB)", "at most 3.1 x"],
            ["best-epoch weights file", f"{c['best_file_over_fp32']:.2f} x the model, written when the best epoch "
             "falls behind", "one copy per running trial"],
            ["left under the storage path after the sweep", f"{s['left_storage_bytes'] / MB:.1f} MB, {left}",
             f"at most 1.5 x {s['cells']} cells x model + 50 MB = {1.5 * s['cells'] * model_mb + 50:.0f} MB"],
            ["MLflow store after the sweep (the exported replicate models)", f"{s['mlflow_bytes'] / MB:.0f} MB", ""],
            ["peak under the storage path during the sweep (sampled every 0.25 s)",
             f"{s['peak_storage_bytes'] / MB:.0f} MB",
             f"({s['concurrent_trials']} + 1) x {state_mb:.1f} MB = {(s['concurrent_trials'] + 1) * state_mb:,.0f} MB"],
            ["one checkpoint (write + Tune's copy to storage), one trial alone",
             f"{100 * c['checkpoint_share_median']:.1f}% of a demo epoch ({checkpoint_s:.2f} s of {epoch_s:.1f} s)", ""],
            [f"checkpoints in the sweep, {s['concurrent_trials']} trials on {os.cpu_count()} cores, with the checkpoint "
             "budget", f"{100 * s['checkpoint_share_in_sweep']:.1f}% of the trials' epoch time", "at most 5%"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    json_path = args.json.resolve() if args.json else None  # the sweep changes the working folder
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        smoke_model = tiny_model_folder(tmp / "tiny") if args.smoke else None
        (tmp / "ckpt").mkdir()
        report = {"checkpoints": checkpoints(tmp / "ckpt", 2 if args.smoke else 3, smoke_model)}
        (tmp / "sweep").mkdir()
        report["sweep"] = sweep(tmp / "sweep", smoke_model)
    if json_path:
        json_path.write_text(json.dumps(report, indent=2))
    c, s = report["checkpoints"], report["sweep"]
    model_mb = c["model_fp32_bytes"] / MB
    print(f"model (fp32): {model_mb:.1f} MB")
    print(f"state.pt per epoch: {c['state_over_fp32']:.2f} x the model; best-weights file: "
          f"{c['best_file_over_fp32']:.2f} x, written only when the best epoch falls behind")
    for row in c["epochs"]:
        print(f"  epoch {row['epoch']}: epoch {row['epoch_s']:.2f} s, checkpoint write + copy {row['checkpoint_s']:.3f} s")
    print(f"checkpoint write + copy as a share of an epoch, one trial alone, one every epoch (median): "
          f"{100 * c['checkpoint_share_median']:.1f}%")
    print(f"the same trial as a sweep runs it (checkpoint budget 5%): {c['budgeted_checkpoints']} checkpoint(s) in "
          f"{len(c['budgeted_epochs'])} epochs, {100 * c['checkpoint_share_budgeted']:.1f}% of its time")
    print(f"demo sweep ({s['sweep_s']:.0f} s): peak {s['peak_storage_bytes'] / MB:.0f} MB under the storage path, "
          f"{s['left_storage_bytes'] / MB:.1f} MB and {s['left_checkpoints']} checkpoints left after it; "
          f"MLflow store {s['mlflow_bytes'] / MB:.0f} MB (the exported models)")
    print(f"checkpoint write + copy as a share of the sweep's epochs (4 trials at once): "
          f"{100 * s['checkpoint_share_in_sweep']:.1f}% (the write alone {100 * s['write_share_in_sweep']:.1f}%, "
          "the rest Tune's copy to storage)")
    print(f"targets: left <= 1.5 x cells x model + 50 MB = {1.5 * s['cells'] * model_mb + 50:.0f} MB; "
          f"peak <= (concurrent + 1) x checkpoint = {(s['concurrent_trials'] + 1) * c['state_over_fp32'] * model_mb:.0f} MB")
    print()
    print(markdown_table(["measurement", "figure", "target"], table_rows(report), numeric={1}))


if __name__ == "__main__":
    main()
