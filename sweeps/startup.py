"""What a sweep checks and claims before Ray starts, in a module light enough that a refused
start answers in seconds: the storage path and the tracking URI (a resume keeps the one it started
with), the `--cells` pattern, the folder, the driver's lock, the store, that folder and store hold one sweep, and an
edited spec on resume. `sweeps.runner.run_started` then starts Ray and runs the phases."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable

from gloss_core.provenance import default_tracking_uri, quiet_mlflow
from sweeps import preflight
from sweeps.cell_groups import read_groups, select_cells
from sweeps.history import SpecChange, check_history, check_resumed_spec, resumed_uri
from sweeps.lock import SweepLock
from sweeps.spec import SweepSpec
from sweeps.storage import SweepStorage, check_folder


class SweepInterrupted(RuntimeError):
    """The sweep was stopped (Ctrl-C, SIGINT or SIGTERM from `ray job stop`); its state is saved for --resume."""


class PhaseFailed(RuntimeError):
    """Every trial of a phase failed: the sweep ends with exit status 3 (what ran is recorded)."""


@dataclasses.dataclass
class Start:
    """A sweep cleared to start, its lock held."""

    spec: SweepSpec
    uri: str  # the tracking URI it records to
    location: str  # its storage path
    resume: bool
    restart: bool
    accepted: list[SpecChange]  # the spec changes a resume accepted
    cells: str | None = None  # the `--cells` pattern (None: every cell)


@contextlib.contextmanager
def started(spec: SweepSpec, tracking_uri: str | None = None, resume: bool = False, restart: bool = False,
            storage_path: str | None = None, say: Callable[[str], None] = print, cells: str | None = None):
    """Every check that needs no Ray, then the sweep's lock for the `with` block (`say`: where a
    line goes when the lock of a gone driver is taken over; `cells`: the `--cells` pattern, which
    must select a cell)."""
    select_cells([cell.name for cell in spec.cells()], cells)
    location = storage_path or spec.storage_path or "ray_results"
    preflight.check_storage(location)
    storage = SweepStorage(location, spec.name)
    given = tracking_uri or spec.tracking_uri
    uri = resumed_uri(storage, given, default_tracking_uri()) if resume else given or default_tracking_uri()
    preflight.check_tracking_uri(uri)
    check_folder(storage, resume, restart)
    if resume:
        read_groups(storage, [cell.name for cell in spec.cells()])  # a ledger that cannot be read stops here
    quiet_mlflow()  # MLflow's INFO lines (a new SQLite store's migrations) stay off the console
    from mlflow.tracking import MlflowClient

    with SweepLock(storage, "restart" if restart else "resume" if resume else "run") as lock:
        if lock.note():
            say(lock.note())
        preflight.check_experiment(uri, spec.name)
        client = MlflowClient(uri)
        check_history(client, storage, uri, resume, restart)
        accepted = check_resumed_spec(storage, spec, client) if resume else []
        yield Start(spec, uri, location, resume, restart, accepted, cells)
