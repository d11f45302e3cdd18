"""Bad inputs of one sweep's history (docs/bad-inputs.md, run by tests/test_bad_inputs.py): a
second driver, a folder and a store that hold different sweeps, an edited spec on resume, stores
that cannot be used, files cut short, places that cannot be written, clocks that disagree. Each
case builds the state an earlier run (or a crash) would leave, then calls the real `gloss`
command; none starts Ray, since each is refused before it."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from sweeps.cell_groups import LEDGER
from sweeps.history import STORAGE, STORAGE_ID, recorded_spec
from sweeps.lock import STALE_AFTER_S, _process_start
from sweeps.record import summary_run
from sweeps.spec import load_spec
from sweeps.storage import LOCK, MARKER, SweepStorage


def earlier_sweep(tmp: Path, sweep_spec, root: str = "rr", **changes) -> tuple[MlflowClient, Path]:
    """A sweep `demo` that ran its search with storage `tmp/root` and recorded to `tmp/mlflow.db`
    (the spec `sweep_spec(tmp, **changes)` wrote). Returns the store's client and the folder."""
    spec = load_spec(sweep_spec(tmp, **changes))
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    experiment = client.create_experiment("demo", artifact_location=str(tmp / "mlartifacts"))
    storage = SweepStorage(str(tmp / root), "demo")
    marker = storage.mark("h", recorded_spec(spec), f"sqlite:///{tmp / 'mlflow.db'}")
    (tmp / root / "demo" / "search").mkdir()
    summary_run(client, experiment, spec, {STORAGE_ID: marker["id"], STORAGE: str(storage)})
    return client, tmp / root / "demo"


@contextlib.contextmanager
def live_driver(folder: Path, action: str = "run", host: str | None = None, heartbeat: float | None = None):
    """A lock in `folder` held by a live process (this host's unless `host`)."""
    import socket

    proc = subprocess.Popen(["sleep", "300"])
    try:
        holder = {"token": "held", "host": host or socket.gethostname(), "pid": proc.pid,
                  "process_start": _process_start(proc.pid), "started": "2026-12-02T00:00:00+00:00",
                  "action": action, "heartbeat": time.time() if heartbeat is None else heartbeat}
        folder.mkdir(parents=True, exist_ok=True)
        (folder / LOCK).write_text(json.dumps(holder))
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def gone_driver(folder: Path, host: str | None = None) -> None:
    """A lock left by a driver that is gone: a process that ended (this host), or a host silent for long."""
    import socket

    proc = subprocess.Popen(["true"])
    proc.wait()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK).write_text(json.dumps({"token": "gone", "host": host or socket.gethostname(), "pid": proc.pid,
                                           "started": "2026-12-01T00:00:00+00:00", "action": "run",
                                           "heartbeat": time.time() - STALE_AFTER_S - 60}))


def cases(cli, sweep_cli, sweep_spec, spec_error, good: dict) -> dict:
    """name -> case (tmp folder -> the message), given test_bad_inputs' helpers and its GOOD spec."""

    def fresh_storage_same_name(t: Path) -> str:
        client, _ = earlier_sweep(t, sweep_spec, root="elsewhere")
        message = sweep_cli(t)
        assert len(client.search_runs([client.get_experiment_by_name("demo").experiment_id], "")) == 1  # kept
        return message

    def resume_without_run(t: Path) -> str:
        earlier_sweep(t, sweep_spec, root="elsewhere")
        return sweep_cli(t, "--resume")

    def while_a_driver_runs(t: Path, flag: str, action: str = "run", **where) -> str:
        client, folder = earlier_sweep(t, sweep_spec)
        with live_driver(folder, action, **where) as pid:
            message = sweep_cli(t, flag)
        assert (folder / "search").is_dir() and (folder / MARKER).is_file()  # nothing deleted
        assert client.search_runs([client.get_experiment_by_name("demo").experiment_id], "")  # nor any run
        return message.replace(str(pid), "PID")

    def took_over(t: Path, host: str | None = None) -> str:
        earlier_sweep(t, sweep_spec, root="elsewhere")
        gone_driver(t / "rr" / "demo", host)
        return sweep_cli(t)  # the lock is taken, then the store's other sweep refuses the start

    def resumed_with(t: Path, before: dict, after: dict, *args: str) -> str:
        _, folder = earlier_sweep(t, sweep_spec, **before)
        message = sweep_cli(t, "--resume", *args, **after)
        assert json.loads((folder / MARKER).read_text())["spec"]["name"] == "demo"  # the marker kept
        return message

    two_losses = {"losses": {**good["losses"], "gl": {"loss": "gloss", "space": {"lr": {"loguniform": [1e-5, 1e-3]}}}}}

    def cut_short_marker(t: Path) -> str:
        folder = t / "rr" / "demo"
        (folder / "search").mkdir(parents=True)
        (folder / MARKER).write_text('{"sweep": "demo", "id": "ab')
        message = sweep_cli(t, "--resume")
        assert (folder / "search").is_dir()
        return message

    def cut_short_ledger(t: Path) -> str:
        _, folder = earlier_sweep(t, sweep_spec)
        (folder / LEDGER).write_text('{"groups": [{"name": "g1", "cel')
        message = sweep_cli(t, "--resume", "--cells", "*")
        assert (folder / "search").is_dir() and (folder / LEDGER).read_text().endswith('"cel')  # nothing rewritten
        return message

    def store_of(t: Path, content: bytes) -> str:
        (t / "store.db").write_bytes(content)
        return sweep_cli(t, "--tracking-uri", f"sqlite:///{t / 'store.db'}")

    def cut_short_store(t: Path) -> str:
        client = MlflowClient(f"sqlite:///{t / 'whole.db'}")
        client.create_experiment("demo", artifact_location=str(t / "art"))
        data = (t / "whole.db").read_bytes()
        return store_of(t, data[: len(data) // 3])

    def deleted_experiment(t: Path, *command: str) -> str:
        client = MlflowClient(f"sqlite:///{t / 'mlflow.db'}")
        client.delete_experiment(client.create_experiment("demo", artifact_location=str(t / "art")))
        if command:
            return cli(*command, "--tracking-uri", f"sqlite:///{t / 'mlflow.db'}", cwd=t)
        return sweep_cli(t)

    def too_many(t: Path, **changes) -> str:
        return spec_error(t, **changes)

    return {
        # the probe's findings
        "sweep-name-in-store-fresh-storage": fresh_storage_same_name,
        "resume-folder-without-run": resume_without_run,
        "resume-while-a-driver-runs": lambda t: while_a_driver_runs(t, "--resume"),
        "restart-while-a-driver-runs": lambda t: while_a_driver_runs(t, "--restart"),
        "resume-edited-search-space": lambda t: resumed_with(
            t, {}, {"losses": {"ce": {"loss": "ce", "space": {"lr": {"loguniform": [1e-4, 1e-2]}}}}}),
        "resume-loss-variant-removed": lambda t: resumed_with(t, two_losses, {}),
        "resume-moved-to-another-store": lambda t: resumed_with(t, {}, {}, "--tracking-uri",
                                                                f"sqlite:///{t / 'other.db'}"),
        "spec-grace-over-max-t": lambda t: spec_error(t, asha={"max_t": 3, "grace_period": 5}),
        "spec-name-too-long": lambda t: spec_error(t, name="s" * 300),
        "tracking-uri-file-store": lambda t: sweep_cli(t, "--tracking-uri", f"file://{t / 'mlruns'}"),
        "tracking-store-corrupt": lambda t: store_of(t, b"\x00not a database\xff" * 64),
        "tracking-experiment-deleted": lambda t: deleted_experiment(t),
        # concurrency
        "resume-during-a-restart": lambda t: while_a_driver_runs(t, "--resume", action="restart"),
        "lock-held-on-another-host": lambda t: while_a_driver_runs(t, "--resume", host="node-7"),
        "lock-of-a-gone-driver": took_over,
        # clocks
        "lock-clock-ahead": lambda t: while_a_driver_runs(t, "--resume", host="node-7",
                                                          heartbeat=time.time() + 3600),
        "lock-of-a-silent-host": lambda t: took_over(t, host="node-7"),
        # edited specs
        "resume-more-search-trials": lambda t: resumed_with(t, {}, {"search": {"num_samples": 8}}),
        "resume-more-grid-seeds": lambda t: resumed_with(t, {}, {"seeds": [0, 1]}),
        # partial writes
        "marker-cut-short": cut_short_marker,
        "cell-ledger-cut-short": cut_short_ledger,
        "tracking-db-cut-short": cut_short_store,
        # resource exhaustion
        "spec-too-many-search-trials": lambda t: too_many(t, search={"num_samples": 60_000}),
        "spec-too-many-replicate-trials": lambda t: too_many(t, replicate={"seeds": list(range(1, 50_002))}),
        "cli-num-cpus-huge": lambda t: sweep_cli(t, "--num-cpus", "100000"),
        # places that cannot be written
        "storage-path-not-writable": lambda t: sweep_cli(t, "--storage-path", "/proc/gloss-results"),
        "tracking-sqlite-not-writable": lambda t: sweep_cli(t, "--tracking-uri", "sqlite:////proc/gloss/mlflow.db"),
        "train-output-not-writable": lambda t: cli("train", "--output", "/proc/gloss/metrics.json", cwd=t),
        "train-checkpoint-dir-not-writable": lambda t: cli("train", "--checkpoint-dir", "/proc/gloss", cwd=t),
        "analyze-out-not-writable": lambda t: cli("analyze", "report", "-e", "x", "--out", "/proc/gloss/r", cwd=t),
        "status-deleted-sweep": lambda t: deleted_experiment(t, "sweep", "status", "demo"),
    }
