"""What logging costs the Tune driver: a stream of synthetic trial results replayed through the
sweep's MLflow trial logger and through Ray's `MLflowLoggerCallback`, against (a) a SQLite store
and (b) an `mlflow server` on PostgreSQL, all in one run.

The stream: `--trials` trials (default 200) of `--epochs` epochs (default 50), `--concurrent` (16)
of them reporting at once, each result a realistic dict (the metrics a gloss trial reports, plus
the fields Tune fills in). Each callback hook is timed as Tune's event loop would feel it; the
end-to-end rate runs until every metric is in the store (the sweep's logger drains its writer at
the experiment's end); the metric rows in the store are counted. Ray's callback makes one
`log_metric` call per metric, so it replays the first `--ray-trials` trials (default 4)
and its rate is measured on those. The table of docs/benchmarks.md is printed at the end.

Usage:
    .venv/bin/python bench/driver_overhead.py                    # about 10 minutes on 2 cores
    .venv/bin/python bench/driver_overhead.py --trials 40 --epochs 10 --json out.json
    .venv/bin/python bench/driver_overhead.py --smoke            # seconds: 4 trials x 2 epochs, SQLite only
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from benchkit import markdown_table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
PG = "host=127.0.0.1 port=5432 user=postgres dbname=test"
STORES = {"sqlite": "SQLite", "postgres": "`mlflow server` on PostgreSQL"}
LOGGERS = {"gloss": ("the sweep's (background writer)", "the sweep's"),
           "ray": ("Ray's `MLflowLoggerCallback`", "Ray's `MLflowLoggerCallback`")}


class Trial:
    """What the callbacks read of a Tune trial."""

    def __init__(self, trial_id: str, config: dict):
        self.trial_id, self.config = trial_id, config
        self.last_result: dict = {}
        self.checkpoint = None
        self.status = "RUNNING"
        self.error_file = None

    def __str__(self) -> str:
        return f"gloss_trainable_{self.trial_id}"

    def __hash__(self) -> int:
        return hash(self.trial_id)


def result(trial: Trial, epoch: int, epochs: int, rng: random.Random) -> dict:
    """A result as a gloss search trial reports it (`trainables.report.epoch_result`), with Tune's own fields."""
    from gloss_core.report import EpochReport
    from trainables.report import epoch_result

    val = {f"val_{k}": rng.random() for k in ("accuracy", "macro_f1", "macro_silhouette", "micro_silhouette")}
    timing = {f"time_{k}_s": rng.random() for k in ("data", "forward", "graph", "propagation", "loss", "backward",
                                                    "optimizer")}
    report = EpochReport(epoch, {"train_loss": rng.random(), "epoch_time_s": 10 * rng.random(), **timing, **val,
                                 "lr": 5e-5}, epoch, val["val_macro_f1"], last=epoch == epochs,
                         stop="budget" if epoch == epochs else None, checkpoint_write_s=0.1, node_id="f" * 56,
                         checkpoint_persist_s=0.1)
    return {**epoch_result(report), "training_iteration": epoch, "time_this_iter_s": 10.0, "time_total_s": 10.0 * epoch,
            "timestamp": int(time.time()), "trial_id": trial.trial_id, "done": False, "pid": 1234,
            "config": dict(trial.config), "iterations_since_restore": epoch, "time_since_restore": 10.0 * epoch}


def replay(callback, trials: list[Trial], epochs: int, concurrent: int, seed: int = 0) -> dict:
    """Feed the stream through the callback's hooks; latency per hook call, rate until drained."""
    rng = random.Random(seed)
    latencies = []

    def timed(hook, *args):
        started = time.perf_counter()
        hook(*args)
        latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    for first in range(0, len(trials), concurrent):
        wave = trials[first:first + concurrent]
        for trial in wave:
            timed(callback.on_trial_start, 0, trials, trial)
        for epoch in range(1, epochs + 1):
            for trial in wave:
                trial.last_result = result(trial, epoch, epochs, rng)
                timed(callback.on_trial_result, 0, trials, trial, trial.last_result)
        for trial in wave:
            trial.status = "TERMINATED"
            timed(callback.on_trial_complete, 0, trials, trial)
    callback.on_experiment_end(trials)  # the sweep's logger drains its writer here
    seconds = time.perf_counter() - started
    ordered = sorted(latencies)
    return {"results": len(trials) * epochs, "seconds": seconds, "results_per_s": len(trials) * epochs / seconds,
            "p50_ms": 1000 * statistics.median(ordered), "p99_ms": 1000 * ordered[int(0.99 * (len(ordered) - 1))],
            "max_ms": 1000 * ordered[-1]}


def gloss_logger(uri: str, experiment: str, trials: list[Trial]):
    from mlflow.tracking import MlflowClient

    from sweeps.spec import Cell
    from sweeps.tracking import MLflowTrialLogger
    from trainables.plan import CELL, PhasePlan

    client = MlflowClient(uri)
    exp_id = client.create_experiment(experiment)
    cell = Cell("bench", "synth__m__gloss__s0", "synth", "m", "gloss", 0, "integrated",
                {"loss": "gloss", "epochs": 50, "seed": 0}, {})
    parent = client.create_run(exp_id, tags={"kind": "cell"}).info.run_id
    for trial in trials:
        trial.config = {CELL: cell.name, "lr": 1e-4, "gamma": 0.7}
    plan = PhasePlan("search", {cell.name: cell.constants})
    return MLflowTrialLogger(uri, exp_id, {cell.name: parent}, {cell.name: cell}, plan), exp_id


def ray_logger(uri: str, experiment: str):
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    callback = MLflowLoggerCallback(tracking_uri=uri, experiment_name=experiment)
    callback.setup()
    return callback


def count_metrics(store: dict, experiment_ids: dict[str, str]) -> dict[str, int]:
    """Metric rows per experiment, counted in the database itself."""
    query = ("SELECT count(*) FROM metrics m JOIN runs r ON m.run_uuid = r.run_uuid "
             "WHERE r.experiment_id = {}")
    out = {}
    if store["kind"] == "sqlite":
        with sqlite3.connect(store["database"]) as db:
            for name, exp_id in experiment_ids.items():
                out[name] = db.execute(query.format("?"), (int(exp_id),)).fetchone()[0]
    else:
        import psycopg

        with psycopg.connect(store["database"]) as db:
            for name, exp_id in experiment_ids.items():
                out[name] = db.execute(query.format("%s"), (int(exp_id),)).fetchone()[0]
    return out


def expected_metrics(trials: int, epochs: int) -> int:
    """Metric rows the sweep's logger writes for the stream (Tune's own fields are left out)."""
    from trainables.report import read_result

    sample = result(Trial("t", {}), 1, epochs, random.Random(0))
    return trials * epochs * len(read_result(sample).metrics)


def run_store(store: dict, args) -> dict:
    from mlflow.tracking import MlflowClient

    tag = uuid.uuid4().hex[:8]
    trials = [Trial(f"{i:05d}", {}) for i in range(args.trials)]
    ours, ours_exp = gloss_logger(store["uri"], f"gloss-{tag}", trials)
    gloss = replay(ours, trials, args.epochs, args.concurrent)
    ray_trials = [Trial(f"r{i:04d}", dict(t.config)) for i, t in enumerate(trials[:args.ray_trials])]
    ray_cb = ray_logger(store["uri"], f"ray-{tag}")
    ray = replay(ray_cb, ray_trials, args.epochs, args.concurrent)
    ray_exp = MlflowClient(store["uri"]).get_experiment_by_name(f"ray-{tag}").experiment_id
    counts = count_metrics(store, {"gloss": ours_exp, "ray": ray_exp})
    gloss["metrics_in_store"], ray["metrics_in_store"] = counts["gloss"], counts["ray"]
    gloss["metrics_expected"] = expected_metrics(args.trials, args.epochs)
    return {"gloss": gloss, "ray": ray}


def run_postgres(tmp: Path, args) -> dict:
    """The stream against an `mlflow server` on a fresh PostgreSQL database, dropped afterwards."""
    import psycopg
    from servers import MlflowServer

    name = f"gloss_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    server = MlflowServer(f"postgresql://postgres@127.0.0.1:5432/{name}", tmp / "artifacts").start()
    try:
        return run_store({"kind": "postgres", "uri": server.uri,
                          "database": f"host=127.0.0.1 port=5432 user=postgres dbname={name}"}, args)
    finally:
        server.stop()
        with psycopg.connect(PG, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def table_rows(report: dict) -> list[list[str]]:
    """The rows of docs/benchmarks.md: per store, the sweep's logger and Ray's callback."""
    def latency(value: float) -> str:
        return f"{value:.2f} ms" if value < 10 else f"{value:.0f} ms"

    rows = []
    for store, loggers in report.items():
        for name, r in loggers.items():
            stored = (f"{r['metrics_in_store']:,} of {r['metrics_expected']:,}" if "metrics_expected" in r
                      else f"{r['metrics_in_store']:,} (its {r['results']:,} results)")
            rows.append([STORES[store], LOGGERS[name][store != "sqlite"], latency(r["p50_ms"]), latency(r["p99_ms"]),
                         f"{r['results_per_s']:.1f}", stored])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--concurrent", type=int, default=16)
    parser.add_argument("--ray-trials", type=int, default=4)
    parser.add_argument("--smoke", action="store_true",
                        help="seconds: 4 trials x 2 epochs, 2 at once, Ray's callback on 1, the SQLite store only")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.smoke:
        args.trials, args.epochs, args.concurrent, args.ray_trials = 4, 2, 2, 1
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # Ray's callback ends runs through the fluent API
    import logging

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    report = {}
    json_path = args.json.resolve() if args.json else None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.chdir(tmp)  # a SQLite store's default artifact root (the runs' metrics.json) is relative to the working folder
        database = tmp / "mlflow.db"
        report["sqlite"] = run_store({"kind": "sqlite", "uri": f"sqlite:///{database}", "database": str(database)},
                                     args)
        if not args.smoke:
            report["postgres"] = run_postgres(tmp, args)
    if json_path:
        json_path.write_text(json.dumps(report, indent=2))
    print(f"stream: {args.trials} trials x {args.epochs} epochs, {args.concurrent} reporting at once "
          f"(Ray's callback: the first {args.ray_trials} trials)")
    for store, rows in report.items():
        for name, r in rows.items():
            print(f"{store:8s} {name:5s}: callback p50 {r['p50_ms']:7.3f} ms, p99 {r['p99_ms']:8.3f} ms, "
                  f"max {r['max_ms']:9.1f} ms; {r['results_per_s']:7.1f} results/s end to end; "
                  f"{r['metrics_in_store']} metric rows in the store"
                  + (f" (expected {r['metrics_expected']})" if "metrics_expected" in r else ""))
        print(f"{store:8s} throughput, gloss / Ray: {rows['gloss']['results_per_s'] / rows['ray']['results_per_s']:.1f}x")
    print()
    print(markdown_table(["store", "logger", "callback p50", "callback p99", "results/s end to end",
                          "metric rows in the store"], table_rows(report), numeric={2, 3, 4, 5}))


if __name__ == "__main__":
    main()
