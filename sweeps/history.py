"""One sweep, one history: a sweep's storage folder and its MLflow record belong together, and a
resumed sweep runs the spec it started with.

- The folder's marker carries an id; the sweep's summary run carries it as the tag `storage_id`
  (with `storage`, where the folder is). A start whose folder holds no run, against a store that
  already holds the sweep, is refused: it would mix two sweeps in one experiment.
- `--resume` compares the spec with the one the sweep runs (kept in the marker). A change to a
  phase that has started is refused with the difference printed; a change to a phase not started
  yet, or to `resources` (what a trial holds, not what it computes), is accepted and recorded in
  the marker and in the summary run.
- A resumed sweep records to the tracking URI it started with, unless `--tracking-uri` moves it;
  a move is accepted only to a store that holds this very sweep (the same store at a new address).
"""

from __future__ import annotations

import dataclasses
import json

from gloss_core.errors import UserError
from gloss_core.provenance import redact, sqlite_database
from sweeps.cell_groups import PHASES, started_phases
from sweeps.spec import SweepSpec
from sweeps.storage import SweepStorage

STORAGE_ID, STORAGE = "storage_id", "storage"


class HistoryMismatch(UserError):
    """The storage folder and the MLflow store hold different sweeps of one name."""


class SpecChanged(UserError):
    """--resume with a spec that changes a phase that has started."""


def summary_of(client, sweep: str):
    """The sweep's summary run in the store, or None (no experiment, or no summary yet)."""
    experiment = client.get_experiment_by_name(sweep)
    if experiment is None or experiment.lifecycle_stage != "active":
        return None
    found = client.search_runs([experiment.experiment_id], f"tags.sweep = '{sweep}' and tags.kind = 'summary'",
                               max_results=1)
    return found[0] if found else None


def check_history(client, storage: SweepStorage, uri: str, resume: bool, restart: bool) -> None:
    """Refuse, before anything is written, a start or resume that would mix two sweeps' records."""
    if restart:
        return  # the user named the earlier record to discard
    summary = summary_of(client, storage.name)
    recorded_id = summary.data.tags.get(STORAGE_ID) if summary is not None else None
    recorded_at = summary.data.tags.get(STORAGE, "an unrecorded storage path") if summary is not None else None
    marker = storage.marker() if storage.holds_run() else None
    ways = (f"pass --restart to discard the earlier record (its MLflow runs and registered models) and start "
            f"again, or resume the earlier sweep with --storage-path set to where it ran ({recorded_at}) and --resume")
    if marker is None:
        if resume:
            where = f"; the store at {redact(uri)} says it ran with storage {recorded_at}" if summary is not None else ""
            raise HistoryMismatch(f"nothing to resume: {storage} holds no run of sweep {storage.name!r}{where}")
        if summary is not None:
            raise HistoryMismatch(
                f"the MLflow store at {redact(uri)} already holds sweep {storage.name!r} (its storage: {recorded_at}), but "
                f"{storage} holds no run of it; starting here would mix two sweeps in one experiment. Either "
                f"{ways}, or give this sweep another name")
        return
    if resume and summary is None:
        raise HistoryMismatch(
            f"the MLflow store at {redact(uri)} holds no record of sweep {storage.name!r}, which {storage} holds "
            f"(it started recording to {marker.get('tracking_uri')}); a resumed sweep keeps its store: drop "
            "--tracking-uri, or point it at that store")
    if summary is not None and recorded_id and marker.get("id") and recorded_id != marker["id"]:
        raise HistoryMismatch(
            f"{storage} and the MLflow store at {redact(uri)} hold different sweeps named {storage.name!r} (the store's "
            f"ran with storage {recorded_at}, id {recorded_id[:12]}; this folder's id is {marker['id'][:12]}). "
            f"Either {ways}, or point --tracking-uri at the store this folder's sweep records to")


# ---- the tracking URI of a resumed sweep --------------------------------------------------------
REDACTED = "***"


def kept_uri(uri: str) -> str:
    """The tracking URI as the folder's marker keeps it: a SQLite file by its absolute path (a
    resume from another folder finds the same store), a password redacted."""
    database = sqlite_database(uri)
    if database is not None and not database.is_absolute():
        return f"sqlite:///{database.resolve()}"
    return redact(uri)


def resumed_uri(storage: SweepStorage, given: str | None, default: str) -> str:
    """The tracking URI a resume records to: `given` (an explicit move) or the one it started with."""
    if given is not None:
        return given
    started = (storage.marker() or {}).get("tracking_uri") if storage.holds_run() else None
    if started is None:
        return default
    if REDACTED in started:
        raise HistoryMismatch(f"sweep {storage.name!r} started with a tracking URI that holds a password "
                              f"({started}), which its folder does not keep: pass --tracking-uri again to resume")
    return started


# ---- an edited spec on resume ---------------------------------------------------------------------
def _phases_of(path: str) -> tuple[str, ...]:
    """The phases whose trials a spec field changes."""
    head = path.split(".", 1)[0]
    if head == "sensitivity":
        return ("sensitivity",)
    if head == "replicate":
        return ("replicate", "sensitivity")  # sensitivity's centre and default seeds are the replicate's
    return PHASES


@dataclasses.dataclass(frozen=True)
class SpecChange:
    path: str
    before: object
    after: object

    def __str__(self) -> str:
        return f"{self.path}: {json.dumps(self.before, default=str)} -> {json.dumps(self.after, default=str)}"


SAFE_ANYWHERE = ("tracking_uri", "storage_path")  # where it records and keeps state: checked on their own


def spec_changes(before, after, path: str = "") -> list[SpecChange]:
    """The differences, at the deepest mapping key both sides have (an entry added or removed is
    one change, with its whole value)."""
    if isinstance(before, dict) and isinstance(after, dict):
        changes = []
        for key in sorted(set(before) | set(after), key=str):
            where = f"{path}.{key}" if path else str(key)
            if key in before and key in after:
                changes += spec_changes(before[key], after[key], where)
            else:
                changes.append(SpecChange(where, before.get(key), after.get(key)))
        return changes
    return [] if before == after else [SpecChange(path, before, after)]


def recorded_spec(spec: SweepSpec) -> dict:
    """The spec as the sweep's folder keeps it (JSON; a password in its tracking URI redacted)."""
    data = spec.model_dump(mode="json")
    if data.get("tracking_uri"):
        data["tracking_uri"] = redact(data["tracking_uri"])
    return data


def check_resumed_spec(storage: SweepStorage, spec: SweepSpec, client=None) -> list[SpecChange]:
    """The changes a resume of `spec` accepts (see `check_spec_changes`), against the spec the
    folder's marker keeps, or (a folder from before it kept one) the summary run's `spec.json`."""
    before = (storage.marker() or {}).get("spec")
    if before is None and client is not None:
        from sweeps.record import read_record
        found = summary_of(client, storage.name)
        record = read_record(client, found.info.experiment_id, storage.name) if found is not None else None
        before = recorded_spec(record.spec) if record is not None and record.spec is not None else None
    if before is None:
        return []
    return check_spec_changes(before, spec, started_phases(storage, [cell.name for cell in spec.cells()]))


def check_spec_changes(before: dict, spec: SweepSpec, started: set[str]) -> list[SpecChange]:
    """The changes from the spec the sweep runs (`before`) to `spec` that a resume may accept;
    raises `SpecChanged` listing those it may not. `started`: the phases with Tune state."""
    accepted, refused = [], []
    for change in spec_changes(before, recorded_spec(spec)):
        parts = change.path.split(".")
        safe = (parts[0] in SAFE_ANYWHERE or "resources" in parts
                or not started.intersection(_phases_of(change.path)))
        (accepted if safe else refused).append(change)
    if refused:
        lines = "\n".join(f"  {change}" for change in refused)
        phases = ", ".join(p for p in PHASES if p in started)
        raise SpecChanged(
            f"sweep {spec.name!r} cannot resume with this spec: it changes what phases that have already run "
            f"({phases}) compute:\n{lines}\nResume with the spec it started with, or start the edited spec as a new "
            "sweep (another name, or --restart to discard this one). Changes to a phase that has not started, "
            "and to `resources`, are accepted on resume")
    return accepted
