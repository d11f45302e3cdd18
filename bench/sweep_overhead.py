"""What the sweep service costs per trial, and what ASHA saves on the demo sweep.

Usage:
    .venv/bin/python bench/sweep_overhead.py                 # overhead: 8 short trials
    .venv/bin/python bench/sweep_overhead.py --asha          # also: demo.yaml with and without ASHA

Overhead: N short trials (a tiny random-initialised BERT, 1 epoch on 48 synthetic texts) run
(a) through `run_sweep` (local Ray, OptunaSearch, ASHA, MLflow logging, checkpoints), one at a
time, and (b) as the same N `train()` calls in a plain loop. The difference over N is the per-trial
overhead; Ray's start-up is measured and reported apart.

ASHA saving: demo.yaml's search phase as shipped, and the same search with ASHA's grace period set
to max_t (every trial runs the full budget), on the same TPE seed: epochs spent and best validation
macro-F1 found.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import ray
import yaml
from mlflow.tracking import MlflowClient

from gloss_core.config import TrainConfig
from gloss_core.models import load_tokenizer, tiny_bert
from gloss_core.train import train
from sweeps.runner import run_sweep
from sweeps.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
TRAIN = {"batch_size": 16, "max_length": 16, "patience": 0, "timing": False, "epochs": 1}


def overhead(n: int, folder: Path) -> dict:
    model = folder / "tiny"
    tiny_bert().save_pretrained(model)
    load_tokenizer("minilm").save_pretrained(model)
    data = {"data": "synthetic", "synthetic_size": 48}
    configs = [TrainConfig(model=str(model), loss="ce", lr=10 ** (-4 + i / n), seed=0, **data, **TRAIN) for i in range(n)]
    start = time.perf_counter()
    for config in configs:
        train(config)
    loop_s = time.perf_counter() - start

    spec_path = folder / "overhead.yaml"
    spec_path.write_text(yaml.safe_dump({
        "name": "overhead", "datasets": {"synth": data}, "models": {"tiny": {"model": str(model)}},
        "losses": {"ce": {"loss": "ce", "space": {"lr": {"loguniform": [1e-4, 1e-3]}}}},
        "train": {k: v for k, v in TRAIN.items() if k != "epochs"},
        "search": {"num_samples": n, "max_concurrent": 1}, "asha": {"max_t": 1, "grace_period": 1},
        "resources": {"cpu": 2}, "replicate": None,
        "tracking_uri": f"sqlite:///{folder / 'mlflow.db'}", "storage_path": str(folder / "rr"),
    }))
    spec = load_spec(spec_path)
    start = time.perf_counter()
    ray.init(include_dashboard=False, num_cpus=2, log_to_driver=False)
    ray_start_s = time.perf_counter() - start
    start = time.perf_counter()
    run_sweep(spec)
    sweep_s = time.perf_counter() - start
    ray.shutdown()
    return {"trials": n, "plain_loop_s": loop_s, "sweep_s": sweep_s, "ray_start_s": ray_start_s,
            "overhead_per_trial_s": (sweep_s - loop_s) / n}


def asha_saving(folder: Path) -> dict:
    out = {}
    for label, grace in (("asha", None), ("full budget", "max_t")):
        raw = yaml.safe_load((REPO / "sweeps" / "specs" / "demo.yaml").read_text())
        raw.update({"name": f"demo-{label.replace(' ', '-')}", "replicate": None,
                    "tracking_uri": f"sqlite:///{folder / 'asha.db'}", "storage_path": str(folder / "rr-asha")})
        if grace:
            raw["asha"]["grace_period"] = raw["asha"]["max_t"]
        path = folder / f"{raw['name']}.yaml"
        path.write_text(yaml.safe_dump(raw))
        start = time.perf_counter()
        summary = run_sweep(load_spec(path), num_cpus=2)
        client = MlflowClient(raw["tracking_uri"])
        exp = client.get_experiment_by_name(raw["name"])
        runs = client.search_runs([exp.experiment_id], "tags.kind = 'trial'", max_results=1000)
        epochs = sum(int(r.data.metrics.get("epoch", 0)) for r in runs)
        best = {cell: info["value"] for cell, info in summary["best"].items()}
        out[label] = {"epochs": epochs, "best_val_macro_f1": best, "wall_s": time.perf_counter() - start}
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--asha", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = {"overhead": overhead(args.trials, Path(tmp))}
        o = report["overhead"]
        print(f"{o['trials']} trials: plain loop {o['plain_loop_s']:.1f} s, sweep {o['sweep_s']:.1f} s "
              f"(+ Ray start {o['ray_start_s']:.1f} s): overhead {o['overhead_per_trial_s']:.2f} s per trial")
        if args.asha:
            report["asha"] = asha_saving(Path(tmp))
            for label, r in report["asha"].items():
                print(f"demo search, {label}: {r['epochs']} epochs, best val macro-F1 {r['best_val_macro_f1']}, "
                      f"{r['wall_s']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
