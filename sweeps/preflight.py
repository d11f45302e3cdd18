"""Checks made before anything starts: the Ray address answers, the MLflow store and the storage
path are usable, and a trial's resources fit some node of the cluster (or one its autoscaler can
add, or one that joins within `--wait-for-resources`; `sweeps/autoscaling.py`). Each failure is a
`PreflightError` whose message names the value and what to do."""

from __future__ import annotations

import os
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

from gloss_core.errors import UserError
from gloss_core.paths import writable_folder
from gloss_core.provenance import redact, sqlite_database
from sweeps.autoscaling import fits, live_resources, scaling_or_wait


class PreflightError(UserError):
    """The sweep cannot start: an unreachable address, an unusable store or path, no node big enough."""


def check_address(address: str, timeout_s: float = 5.0) -> None:
    """A Ray address other than "local"/"auto" must accept a TCP connection within `timeout_s`."""
    if address in ("local", "auto"):
        return
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise PreflightError(f"--address {address!r}: give HOST:PORT (the head's GCS port, e.g. 127.0.0.1:6380), "
                             "or ray://HOST:PORT")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as err:
        raise PreflightError(f"no Ray cluster answers at {address} ({err.strerror or err}); start one with "
                             f"`ray start --head --port {port}`, or run without --address (and RAY_ADDRESS unset) "
                             "for a local cluster") from None


def check_tracking_uri(uri: str, timeout_s: float = 10.0) -> None:
    """SQLite: its folder writable; http(s): the server answers /health; a local path: writable."""
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if scheme == "sqlite":
        db = sqlite_database(uri)
        if db is None or not str(db):
            raise PreflightError(f"tracking URI {uri!r}: give sqlite:///relative/path.db or sqlite:////abs/path.db")
        if db.is_dir():
            raise PreflightError(f"tracking URI {uri!r}: {db} is a folder, not a database file")
        writable_folder(db.parent, f"tracking URI {uri!r}: the database folder")
    elif scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as answer:
                answer.read(64)
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise PreflightError(f"no MLflow server answers at {redact(uri)} ({getattr(err, 'reason', err)}); start it "
                                 "(`mlflow server ...`) or pass another --tracking-uri") from None
    elif scheme in ("", "file"):
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("1", "true"):
            raise PreflightError(f"tracking URI {uri!r}: a folder (MLflow's file store) is refused by MLflow 3; use "
                                 "sqlite:///FILE.db (the default is sqlite:///mlflow.db), an mlflow server, or "
                                 "postgresql://...")
        writable_folder(Path(parsed.path if scheme == "file" else uri), f"tracking URI {uri!r}")
    elif scheme.split("+")[0] not in ("postgresql", "mysql", "mssql", "databricks"):
        raise PreflightError(f"tracking URI {redact(uri)!r}: unknown scheme {scheme!r}; use sqlite:///FILE.db, "
                             "http(s)://HOST:PORT (an mlflow server), postgresql://..., or a folder")


def check_experiment(uri: str, sweep: str) -> None:
    """The store can be read, and the sweep's experiment, if it exists, is not deleted."""
    from mlflow.tracking import MlflowClient

    try:
        found = MlflowClient(uri).get_experiment_by_name(sweep)
    except Exception as err:  # noqa: BLE001 - whatever the store's driver raises: one line naming the store
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise PreflightError(f"the MLflow store at {redact(uri)} cannot be read ({type(err).__name__}: {first}); "
                             "check that it is an MLflow database (or server), or pass another --tracking-uri") from None
    if found is not None and found.lifecycle_stage != "active":
        raise PreflightError(
            f"the MLflow store at {redact(uri)} holds experiment {sweep!r} (id {found.experiment_id}) as deleted: "
            f"restore it (`mlflow experiments restore --experiment-id {found.experiment_id}`), remove it for good "
            "(`mlflow gc`), or give the sweep another name")


def check_storage(location: str) -> None:
    """A local storage path must be (or become) a writable folder; a filesystem URI must open."""
    if "://" not in location:
        writable_folder(Path(location), "storage_path")
        return
    import pyarrow.fs

    try:
        fs, path = pyarrow.fs.FileSystem.from_uri(location)
        fs.get_file_info(path)
    except Exception as err:  # noqa: BLE001 - pyarrow raises several kinds; the message says which
        raise PreflightError(f"storage_path {location!r} cannot be opened: {err}") from None


def check_resources(cpu: float, gpu: float, nodes: list[dict], wait_s: float = 0.0,
                    refresh: Callable[[], list[dict]] | None = None, say: Callable[[str], None] = print) -> None:
    """Some alive node must hold one trial's `cpu` and `gpu`, or the cluster's autoscaler must be
    able to add one, or one must join within `wait_s` seconds (`refresh` lists the nodes again;
    default `ray.nodes`); otherwise no trial could ever start."""
    if any(fits(r, cpu, gpu) for r in live_resources(nodes)):
        return
    import ray

    answer, waited = scaling_or_wait(cpu, gpu, wait_s, refresh or ray.nodes, say)
    if answer.verdict == "can":
        say(f"resources: {answer.detail}; the sweep starts and its trials wait for that node")
        return
    alive = live_resources((refresh or ray.nodes)() if waited else nodes)
    largest = max(alive, key=lambda r: (r.get("GPU", 0), r.get("CPU", 0)), default={})
    after = f" after waiting {waited:.0f} s" if waited else ""
    raise PreflightError(f"resources: a trial asks for cpu {cpu:g}, gpu {gpu:g}, but no node of this cluster has that "
                         f"much (largest: cpu {largest.get('CPU', 0):g}, gpu {largest.get('GPU', 0):g}) among its "
                         f"{len(alive)} live node(s){after}, and {answer.detail}; lower `resources` in the spec, add "
                         "a bigger node or a node type the autoscaler can add, or give nodes time to join with "
                         "--wait-for-resources SECONDS")
