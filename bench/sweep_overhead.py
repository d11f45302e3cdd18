"""What the sweep service costs per trial, and what ASHA saves on the demo sweep.

Usage:
    .venv/bin/python bench/sweep_overhead.py                 # overhead: 8 short trials
    .venv/bin/python bench/sweep_overhead.py --asha          # also: demo.yaml with and without ASHA
    .venv/bin/python bench/sweep_overhead.py --smoke --asha  # seconds: 1 and 2 trials; a 2-trial, 2-epoch demo

Overhead: N and 2N short trials (a tiny random-initialised BERT, 1 epoch on 48 synthetic texts)
run (a) through `run_sweep` (local Ray, OptunaSearch, ASHA, MLflow logging, checkpoints), one at
a time, and (b) as the same `train()` calls in a plain loop. The per-trial overhead is the slope of
(sweep - loop) between N and 2N trials; the fixed cost of a sweep (Tune start-up, MLflow set-up,
summary) is reported apart. Ray itself is started once, outside both.

ASHA saving: demo.yaml's search phase as shipped, and the same search with ASHA's grace period set
to max_t (every trial runs the full budget), on the same TPE seed: epochs spent and best validation
macro-F1 found. The table of docs/benchmarks.md is printed at the end.

--smoke: the overhead with 1 and 2 trials, and (with --asha) demo.yaml with the tests' tiny encoder,
one trial per cell and 2 epochs (max_t), on 32 synthetic texts.
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

from benchkit import SMOKE_HELP, markdown_table, smoke_demo, tiny_model_folder
from gloss_core.config import TrainConfig
from gloss_core.train import train
from sweeps.runner import run_sweep
from sweeps.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
TRAIN = {"batch_size": 16, "max_length": 16, "patience": 0, "timing": False, "epochs": 1}


def overhead(n: int, folder: Path) -> dict:
    """Per-trial overhead as a slope: (sweep - loop) at 2N trials minus the same at N trials, over N,
    so the fixed costs of a sweep (Ray and Tune start-up, MLflow set-up, the summary) cancel out."""
    model = Path(tiny_model_folder(folder / "tiny"))
    ray.init(include_dashboard=False, num_cpus=2, log_to_driver=False)
    small, large = one_size(n, folder, model, "a"), one_size(2 * n, folder, model, "b")
    ray.shutdown()
    extra_small = small["sweep_s"] - small["plain_loop_s"]
    extra_large = large["sweep_s"] - large["plain_loop_s"]
    return {"runs": [small, large], "fixed_s": 2 * extra_small - extra_large,
            "overhead_per_trial_s": (extra_large - extra_small) / n}


def one_size(n: int, folder: Path, model: Path, tag: str) -> dict:
    data = {"data": "synthetic", "synthetic_size": 48}
    configs = [TrainConfig(model=str(model), loss="ce", lr=10 ** (-4 + i / n), seed=0, **data, **TRAIN) for i in range(n)]
    start = time.perf_counter()
    for config in configs:
        train(config)
    loop_s = time.perf_counter() - start

    spec_path = folder / f"overhead-{tag}.yaml"
    spec_path.write_text(yaml.safe_dump({
        "name": f"overhead-{tag}", "datasets": {"synth": data}, "models": {"tiny": {"model": str(model)}},
        "losses": {"ce": {"loss": "ce", "space": {"lr": {"loguniform": [1e-4, 1e-3]}}}},
        "train": {k: v for k, v in TRAIN.items() if k != "epochs"},
        "search": {"num_samples": n, "max_concurrent": 1}, "asha": {"max_t": 1, "grace_period": 1},
        "resources": {"cpu": 2}, "replicate": None,
        "tracking_uri": f"sqlite:///{folder / 'mlflow.db'}", "storage_path": str(folder / "rr"),
    }))
    spec = load_spec(spec_path)
    start = time.perf_counter()
    run_sweep(spec)
    return {"trials": n, "plain_loop_s": loop_s, "sweep_s": time.perf_counter() - start}


def asha_saving(folder: Path, smoke: bool = False) -> dict:
    out = {}
    tiny = tiny_model_folder(folder / "tiny-asha") if smoke else None
    for label, grace in (("asha", None), ("full budget", "max_t")):
        raw = yaml.safe_load((REPO / "sweeps" / "specs" / "demo.yaml").read_text())
        raw.update({"name": f"demo-{label.replace(' ', '-')}", "replicate": None, "sensitivity": None,
                    "tracking_uri": f"sqlite:///{folder / 'asha.db'}", "storage_path": str(folder / "rr-asha")})
        if smoke:  # the tests' tiny encoder, one trial per cell, 2 epochs, 32 texts
            smoke_demo(raw, tiny)
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
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.smoke:
        args.trials = 1
    with tempfile.TemporaryDirectory() as tmp:
        report = {"overhead": overhead(args.trials, Path(tmp))}
        o = report["overhead"]
        for r in o["runs"]:
            print(f"{r['trials']:3d} trials: plain loop {r['plain_loop_s']:6.1f} s, sweep {r['sweep_s']:6.1f} s")
        print(f"overhead {o['overhead_per_trial_s']:.2f} s per trial (slope), fixed cost of a sweep {o['fixed_s']:.1f} s")
        if args.asha:
            report["asha"] = asha_saving(Path(tmp), args.smoke)
            for label, r in report["asha"].items():
                print(f"demo search, {label}: {r['epochs']} epochs, best val macro-F1 {r['best_val_macro_f1']}, "
                      f"{r['wall_s']:.0f} s")
    print()
    print(markdown_table(["measurement", "figure"], table_rows(report), numeric={1}))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


def table_rows(report: dict) -> list[list[str]]:
    """The rows of docs/benchmarks.md: both sizes, the slope, the fixed cost and (with --asha) what ASHA saves."""
    small, large = report["overhead"]["runs"]
    rows = [[f"{small['trials']} short trial{'s' if small['trials'] > 1 else ''} (tiny BERT, 1 epoch): plain loop / "
             "through the sweep",
             f"{small['plain_loop_s']:.1f} s / {small['sweep_s']:.1f} s"],
            [f"{large['trials']} short trials: plain loop / through the sweep",
             f"{large['plain_loop_s']:.1f} s / {large['sweep_s']:.1f} s"],
            [f"marginal overhead per trial (slope between {small['trials']} and {large['trials']})",
             f"{report['overhead']['overhead_per_trial_s']:.1f} s"],
            ["fixed cost of a sweep (Tune start-up, first trial process, MLflow set-up, summary)",
             f"{report['overhead']['fixed_s']:.1f} s"]]
    if "asha" in report:
        asha, full = report["asha"]["asha"], report["asha"]["full budget"]
        best = "; ".join(f"{label}: " + ", ".join(f"{cell} {value:.3f}" for cell, value in r["best_val_macro_f1"].items())
                         for label, r in report["asha"].items())
        rows.append(["demo.yaml search with ASHA / full budget (grace period = max_t)",
                     f"{asha['epochs']} / {full['epochs']} epochs ({asha['wall_s']:.0f} s / {full['wall_s']:.0f} s); "
                     f"best val macro-F1 per cell, {best}"])
    return rows


if __name__ == "__main__":
    main()
