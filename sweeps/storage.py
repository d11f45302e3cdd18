"""A sweep's folder on any storage Ray Tune writes to: a local path, an NFS mount, or a pyarrow
filesystem URI (`s3://bucket/prefix`, `gs://...`). Every path the runner touches goes through
here: whether an earlier run exists, `--restart`'s removal, Tune's restore, the searcher state,
the best-epoch weights and the unlogged-writes file.

S3 credentials and endpoints come from the usual environment (`AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL` for an S3-compatible server),
on the driver and on every node.
"""

from __future__ import annotations

import contextlib
import datetime
import fnmatch
import json
import tempfile
import uuid
from pathlib import Path

import pyarrow.fs

from gloss_core.errors import UserError

MARKER = "gloss-sweep.json"  # written when a sweep starts: nothing without it is ever deleted
LOCK = "gloss-sweep.lock"  # held by the one driver running the sweep (sweeps/lock.py); never removed with the rest
# what the Tune state in a sweep folder holds (the searcher, the trial logger, trial checkpoints);
# 2: typed trial reports and scores. A folder of another format is never resumed.
STATE_FORMAT = 2


class NotOurFolder(UserError):
    """A folder the runner would delete or reuse does not carry this sweep's marker."""


def is_uri(location: str) -> bool:
    return "://" in location


class StorageFile:
    """One file of the sweep's storage, with the few methods of `pathlib.Path` the runner uses."""

    def __init__(self, storage: "SweepStorage", *parts: str):
        self.storage, self.parts = storage, parts

    def __str__(self) -> str:
        return self.storage.uri_of(*self.parts)

    def exists(self) -> bool:
        return self.storage.exists(*self.parts)

    def read_text(self) -> str:
        with self.storage.fs.open_input_stream(self.storage.path_of(*self.parts)) as f:
            return f.read().decode("utf-8")

    def write_text(self, text: str) -> None:
        path = self.storage.path_of(*self.parts)
        self.storage.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with self.storage.fs.open_output_stream(path) as f:
            f.write(text.encode("utf-8"))


class SweepStorage:
    """`root/name`, where root is a local path or a filesystem URI.

    Args:
        root: the storage path (`storage_path` of the spec or `--storage-path`).
        name: the sweep's name.
    """

    def __init__(self, root: str, name: str):
        self.name = name
        self.root = root.rstrip("/") if is_uri(root) else str(Path(root).resolve())
        self.fs, root_path = pyarrow.fs.FileSystem.from_uri(self.root if is_uri(self.root) else Path(self.root).as_uri())
        self.path = f"{root_path.rstrip('/')}/{name}"
        self.uri = f"{self.root}/{name}"
        self.local = isinstance(self.fs, pyarrow.fs.LocalFileSystem)

    def __str__(self) -> str:
        return self.uri

    def uri_of(self, *parts: str) -> str:
        """A location Ray Tune and `BestWeights` take: a local path, or a URI."""
        return "/".join([self.uri, *parts])

    def path_of(self, *parts: str) -> str:
        return "/".join([self.path, *parts])

    def file(self, *parts: str) -> StorageFile:
        return StorageFile(self, *parts)

    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.path_of(*parts)).type != pyarrow.fs.FileType.NotFound

    def entries(self) -> set[str]:
        """The names directly in the sweep folder, the lock left out (it is the driver's, not a run's)."""
        selector = pyarrow.fs.FileSelector(self.path, allow_not_found=True)
        return {info.base_name for info in self.fs.get_file_info(selector)} - {LOCK}

    def holds_run(self) -> bool:
        """The folder holds something of an earlier run (a lock alone is only a driver starting)."""
        return bool(self.entries())

    def folders(self, *parts: str) -> list[str]:
        """The names of the folders directly in `parts` (none if it does not exist)."""
        selector = pyarrow.fs.FileSelector(self.path_of(*parts), allow_not_found=True)
        return [info.base_name for info in self.fs.get_file_info(selector) if info.type == pyarrow.fs.FileType.Directory]

    # ---- the marker: what may be deleted ---------------------------------------------------------
    def marker(self) -> dict | None:
        """The sweep folder's marker (sweep name, its id, the spec it runs, the tracking URI it
        started with, when it started), or None."""
        try:
            data = json.loads(self.file(MARKER).read_text()) if self.exists(MARKER) else None
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def ours(self) -> bool:
        found = self.marker()
        if found is not None:
            return found.get("sweep") == self.name
        return self.earlier_version_sweep()

    def earlier_version_sweep(self) -> bool:
        """A sweep folder written before markers existed: only phase folders and the unlogged-writes
        files, and a Tune experiment state in `search/` that names this sweep's trainable."""
        names = self.entries()
        allowed = {"search", "replicate", "sensitivity", "best_weights"}
        if "search" not in names or not all(n in allowed or fnmatch.fnmatch(n, "mlflow_unlogged_*.json") for n in names):
            return False
        search = pyarrow.fs.FileSelector(self.path_of("search"), allow_not_found=True)
        files = {info.base_name for info in self.fs.get_file_info(search)}
        return "tuner.pkl" in files or any(fnmatch.fnmatch(name, "experiment_state-*.json") for name in files)

    def mark(self, spec_hash: str, spec: dict | None = None, tracking_uri: str | None = None,
             changes: list[str] | None = None) -> dict:
        """Claim the folder for this sweep. The id, start time and tracking URI of the first start are
        kept on resume; `spec` (the spec as JSON) is the one the sweep now runs, `changes` the spec
        changes a resume accepted, appended. Returns the marker."""
        previous = self.marker() or {}
        marker = {
            "sweep": self.name, "id": previous.get("id") or uuid.uuid4().hex, "spec_sha256": spec_hash,
            "state_format": STATE_FORMAT,
            "created": previous.get("created") or datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "tracking_uri": tracking_uri if tracking_uri is not None else previous.get("tracking_uri"),
            "spec": spec if spec is not None else previous.get("spec"),
            "accepted_changes": previous.get("accepted_changes", []) + list(changes or []),
        }
        self.file(MARKER).write_text(json.dumps(marker, indent=2))
        return marker

    def refuse_unless_ours(self, action: str) -> None:
        if self.holds_run() and not self.ours():
            found = self.marker()
            whose = f"the marker of sweep {found.get('sweep')!r}" if found else f"no {MARKER} marker"
            if found is None and self.exists(MARKER):
                whose = f"a {MARKER} marker that cannot be read (cut short, or not JSON)"
            raise NotOurFolder(f"refusing to {action} {self.uri}: it holds {whose}, so it is not the folder of sweep "
                               f"{self.name!r}; nothing was deleted. Move it away, or choose another storage_path "
                               "(--storage-path) or sweep name")

    def remove(self, *parts: str) -> None:
        """Delete the folder `parts` (the whole sweep when none: everything but the driver's lock)
        with everything in it, only if the sweep folder carries this sweep's marker."""
        if not self.exists(*parts):
            return
        self.refuse_unless_ours("delete" if not parts else f"delete {'/'.join(parts)} in")
        if parts:
            self.fs.delete_dir(self.path_of(*parts))
            return
        for name in self.entries():
            info = self.fs.get_file_info(self.path_of(name))
            if info.type == pyarrow.fs.FileType.Directory:
                self.fs.delete_dir(info.path)
            else:
                self.fs.delete_file(info.path)
        if not self.exists(LOCK):
            self.fs.delete_dir(self.path)

    @contextlib.contextmanager
    def local_copy(self, folder: str, pattern: str = "*"):
        """A local folder holding the files of `folder` that match `pattern` (the folder itself
        when the storage is local)."""
        if self.local:
            yield self.path_of(folder)
            return
        with tempfile.TemporaryDirectory(prefix="gloss-storage-") as tmp:
            selector = pyarrow.fs.FileSelector(self.path_of(folder), allow_not_found=True)
            for info in self.fs.get_file_info(selector):
                if info.type == pyarrow.fs.FileType.File and fnmatch.fnmatch(info.base_name, pattern):
                    pyarrow.fs.copy_files(info.path, str(Path(tmp) / info.base_name), source_filesystem=self.fs,
                                          destination_filesystem=pyarrow.fs.LocalFileSystem())
            yield tmp


class SweepExists(UserError, FileExistsError):
    """The sweep's folder holds an earlier run, and neither --resume nor --restart was given."""


class StateFormatMismatch(UserError):
    """--resume of a sweep folder whose Tune state another version of gloss wrote."""


def check_folder(storage: SweepStorage, resume: bool, restart: bool) -> None:
    """The sweep's folder may be used: absent, or carrying this sweep's marker, with --resume or
    --restart when it holds an earlier run."""
    if storage.holds_run():
        storage.refuse_unless_ours("delete" if restart else "write into")  # a folder another sweep (or none) owns
        if not resume and not restart:
            raise SweepExists(f"{storage} holds an earlier run of sweep {storage.name!r}: pass --resume to continue it, "
                              "or --restart to discard it and start again")
        found = (storage.marker() or {}).get("state_format", 1)
        if resume and found != STATE_FORMAT:
            raise StateFormatMismatch(
                f"{storage} holds sweep {storage.name!r} as an earlier version of gloss wrote it (state format {found}; "
                f"this version reads {STATE_FORMAT}), which this version cannot resume: resume it with the version "
                "that started it, or pass --restart to discard it and start again")
