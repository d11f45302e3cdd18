"""A paper-shaped grid through the whole sweep on this machine: does the service hold up at the
paper's scale (table2.yaml: 60 cells, about 2,000 trials)?

The grid has table2.yaml's shape on tiny random encoders: 5 synthetic datasets x 3 encoders (tiny
BERT, RoBERTa and DistilBERT) x table2's 4 losses = 60 cells; 24 search trials per cell (ASHA up to
2 epochs), except the spaces of fewer points, enumerated: CE's 5 and SupCon+CE's 20 (720 + 75 +
300); each cell's best on 3 replicate seeds (180); and G-Loss-O+CE's best perturbed one parameter
at a time (up to 6 points; a perturbation outside its range is skipped) on those seeds (at most
270; 258 when last measured): 1,275 trials before sensitivity, 1,533 as measured. A trial trains on 16 texts of 8 tokens, so its
training takes well under 0.2 s and what is measured is the service, not the model.

`gloss sweep run` runs as its own process (the driver), as a user runs it, its console piped.
Measured: wall time and trials/s per phase (first trial's start to last trial's end, from the
trials' MLflow runs), the driver's peak RSS (sampled every 0.2 s), the rows of the MLflow store,
Tune's "operation took" warnings on the driver's console, and the time of `gloss analyze
report` on the result. The table of docs/benchmarks.md is printed at the end.

Usage:
    .venv/bin/python bench/scale.py            # about 6 minutes on 2 cores
    .venv/bin/python bench/scale.py --smoke    # a 4-cell grid of 16 trials: the code path in a minute
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

from benchkit import SMOKE_HELP, markdown_table, tiny_model_folder

REPO = Path(__file__).resolve().parents[1]
GLOSS = str(Path(sys.executable).with_name("gloss"))
LR = {"choice": [1.0e-5, 2.0e-5, 3.0e-5, 4.0e-5, 5.0e-5]}
LOSSES = {  # table2.yaml's
    "ce": {"loss": "ce", "space": {"lr": LR}},
    "scl_ce": {"loss": "scl", "fixed": {"lam": 0.9}, "space": {"lr": LR, "temperature": {"choice": [0.1, 0.3, 0.5, 0.7]}}},
    "gloss_o_ce": {"loss": "gloss", "space": {"lr": LR, "sigma": {"loguniform": [0.1, 10.0]},
                                              "lam": {"choice": [0.5, 0.6, 0.7, 0.8, 0.9]},
                                              "gamma": {"choice": [0.5, 0.6, 0.7, 0.8, 0.9]}}},
    "gloss_sqrt_ce": {"loss": "gloss", "fixed": {"sigma": "sqrt"},
                      "space": {"lr": LR, "lam": {"choice": [0.5, 0.6, 0.7, 0.8, 0.9]},
                                "gamma": {"choice": [0.5, 0.6, 0.7, 0.8, 0.9]}}},
}
TARGETS = {"search_trials_per_s": 3.0, "warnings": 0, "driver_peak_rss_mb": 1024.0, "report_s": 30.0}


def grid(folder: Path, smoke: bool) -> dict:
    """The spec: table2.yaml's shape on tiny encoders and synthetic data (smoke: 2 datasets x 1
    encoder x 2 losses, 2 search trials each, 1 replicate seed, 2 sensitivity points)."""
    architectures = ["bert"] if smoke else ["bert", "roberta", "distilbert"]
    models = {f"tiny-{a}": {"model": tiny_model_folder(folder / f"tiny-{a}", a)} for a in architectures}
    datasets = {f"synth{i}": {"data": "synthetic", "synthetic_size": 16, "synthetic_classes": 2 + i % 3,
                              "synthetic_seed": i} for i in range(2 if smoke else 5)}
    losses = {k: LOSSES[k] for k in (["ce", "gloss_o_ce"] if smoke else LOSSES)}
    return {
        "name": "scale", "protocol": "integrated", "datasets": datasets, "models": models, "losses": losses,
        "seeds": [0], "train": {"batch_size": 16, "max_length": 8, "patience": 0, "timing": False},
        "metric": "val_macro_f1", "mode": "max",
        "search": {"num_samples": 2 if smoke else 24, "max_concurrent": 4, "seed": 0},
        "asha": {"max_t": 2, "grace_period": 1, "reduction_factor": 2},
        "resources": {"cpu": 0.5},
        "replicate": {"seeds": [1] if smoke else [1, 2, 3]},
        "sensitivity": {"losses": ["gloss_o_ce"], "params": {"lam": [-0.1, 0.1]} if smoke else
                        {"sigma_scale": [0.5, 1.5], "lam": [-0.1, 0.1], "gamma": [-0.1, 0.1]}, "seeds": "replicate"},
        "tracking_uri": f"sqlite:///{folder / 'mlflow.db'}", "storage_path": str(folder / "ray_results"),
    }


def peak_rss(pid: int, stop: threading.Event, out: dict) -> None:
    """The largest resident set of process `pid` while it runs (psutil, every 0.2 s)."""
    import psutil

    process = psutil.Process(pid)
    while not stop.is_set():
        try:
            out["peak"] = max(out.get("peak", 0), process.memory_info().rss)
        except psutil.Error:
            return
        stop.wait(0.2)


def run_driver(spec_path: Path, folder: Path) -> dict:
    """`gloss sweep run SPEC` as a process of its own; its wall time, peak RSS and console."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    log = folder / "driver.log"
    start = time.perf_counter()
    with log.open("w") as out:
        driver = subprocess.Popen([GLOSS, "sweep", "run", str(spec_path), "--num-cpus", "2"], cwd=folder, env=env,
                                  stdout=out, stderr=subprocess.STDOUT)
        stop, rss = threading.Event(), {}
        sampler = threading.Thread(target=peak_rss, args=(driver.pid, stop, rss), daemon=True)
        sampler.start()
        code = driver.wait()
        stop.set()
        sampler.join()
    console = log.read_text()
    if code != 0:
        raise SystemExit(f"gloss sweep run exited {code}:\n{console[-4000:]}")
    return {"wall_s": time.perf_counter() - start, "driver_peak_rss_mb": rss.get("peak", 0) / 2**20,
            "warnings": sum("operation took" in line for line in console.splitlines()),
            "console_lines": len(console.splitlines())}


def phases(db: Path) -> dict:
    """Per phase: trials (MLflow trial runs) and the span from the first start to the last end."""
    with sqlite3.connect(db) as con:
        rows = con.execute(
            "SELECT t.value, COUNT(*), MIN(r.start_time), MAX(r.end_time) FROM runs r JOIN tags t ON "
            "t.run_uuid = r.run_uuid AND t.key = 'phase' JOIN tags k ON k.run_uuid = r.run_uuid AND "
            "k.key = 'kind' AND k.value = 'trial' WHERE r.lifecycle_stage = 'active' GROUP BY t.value").fetchall()
    return {phase: {"trials": n, "span_s": (end - start) / 1000, "trials_per_s": n / max((end - start) / 1000, 1e-9)}
            for phase, n, start, end in rows}


def store_rows(db: Path) -> dict:
    with sqlite3.connect(db) as con:
        return {table: con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]  # noqa: S608 - fixed names
                for table in ("runs", "metrics", "params", "tags")}


def analyze(folder: Path, uri: str) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    done = subprocess.run([GLOSS, "analyze", "report", "--experiment", "scale", "--tracking-uri", uri,
                           "--out", str(folder / "report")], cwd=folder, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"gloss analyze report exited {done.returncode}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return time.perf_counter() - start


def table_rows(report: dict) -> list[list[str]]:
    rows = [["cells / trials (search, replicate, sensitivity)",
             f"{report['cells']} / {report['trials']} ({', '.join(str(report['phases'].get(p, {}).get('trials', 0)) for p in ('search', 'replicate', 'sensitivity'))})",
             "at least 60 / 1,500"]]
    for phase in ("search", "replicate", "sensitivity"):
        if phase in report["phases"]:
            p = report["phases"][phase]
            target = f"at least {TARGETS['search_trials_per_s']:g} trials/s" if phase == "search" else ""
            rows.append([f"{phase}: trials/s (span)", f"{p['trials_per_s']:.2f} ({p['span_s']:.0f} s)", target])
    rows += [["whole sweep, driver process start to exit", f"{report['wall_s']:.0f} s", ""],
             ["driver peak RSS", f"{report['driver_peak_rss_mb']:.0f} MB", f"at most {TARGETS['driver_peak_rss_mb']:g} MB"],
             ["\"operation took\" warnings on the driver's console", f"{report['warnings']}", "none"],
             ["driver console lines (piped: one per trial)", f"{report['console_lines']}", ""],
             ["MLflow rows: runs / metrics / params / tags",
              " / ".join(f"{report['store'][t]:,}" for t in ("runs", "metrics", "params", "tags")), ""],
             ["`gloss analyze report` on the sweep", f"{report['report_s']:.1f} s", f"at most {TARGETS['report_s']:g} s"]]
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--keep", type=Path, default=None, help="run in this folder and keep it (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        spec = grid(folder, args.smoke)
        spec_path = folder / "scale.yaml"
        spec_path.write_text(yaml.safe_dump(json.loads(json.dumps(spec))))  # shared entries written out, no aliases
        report = run_driver(spec_path, folder)
        db = folder / "mlflow.db"
        report["phases"] = phases(db)
        report["store"] = store_rows(db)
        report["cells"] = len(spec["datasets"]) * len(spec["models"]) * len(spec["losses"]) * len(spec["seeds"])
        report["trials"] = sum(p["trials"] for p in report["phases"].values())
        report["report_s"] = analyze(folder, spec["tracking_uri"])
    print(markdown_table(["measurement", "figure", "target"], table_rows(report), numeric={1}))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
