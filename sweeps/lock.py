"""One driver per sweep: a lock file in the sweep's folder (`gloss-sweep.lock`) names the driver
that holds it (host, pid, when it started, a heartbeat it refreshes). A second `run`, `--resume`
or `--restart` of the same sweep is refused while the holder lives, with a message naming it.

A lock is stale, and taken over, when its holder is gone: on the same host, its process no longer
exists (or the pid now belongs to a process started later); on another host, its heartbeat is
older than `STALE_AFTER_S` (the holder refreshes it every `HEARTBEAT_S`). The lock works on every
storage the sweep folder can be on (local, NFS, S3): it is written, then read back, and the driver
whose token is there holds it.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import threading
import time
import uuid

from gloss_core.errors import UserError
from sweeps.storage import LOCK, SweepStorage

HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0


class SweepLocked(UserError):
    """Another driver runs this sweep."""


def _process_start(pid: int) -> float | None:
    """The process's start time in clock ticks since boot (Linux), or None where it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return float(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid: int, started: float | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, another user's
    now_started = _process_start(pid)
    return started is None or now_started is None or now_started == started


class SweepLock:
    """The sweep folder's lock, held for the life of a `with` block.

    Args:
        storage: the sweep's folder.
        action: what the driver is about to do (in the refusal message of a second driver).
    """

    def __init__(self, storage: SweepStorage, action: str = "run"):
        self.storage, self.action = storage, action
        self.file = storage.file(LOCK)
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def _holder(self) -> dict | None:
        try:
            found = json.loads(self.file.read_text()) if self.file.exists() else None
        except (OSError, ValueError):
            return None  # unreadable (a write cut short): nobody holds it
        return found if isinstance(found, dict) else None

    def _record(self, started: str) -> dict:
        return {"token": self.token, "host": socket.gethostname(), "pid": os.getpid(),
                "process_start": _process_start(os.getpid()), "started": started, "action": self.action,
                "heartbeat": time.time()}

    @staticmethod
    def is_stale(holder: dict, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        if holder.get("host") == socket.gethostname():
            return not _alive(int(holder.get("pid", -1)), holder.get("process_start"))
        return now - float(holder.get("heartbeat", 0)) > STALE_AFTER_S

    def acquire(self) -> None:
        """Take the lock, or raise `SweepLocked` naming its live holder; `took_over` is then the
        record of a gone holder whose lock this driver took, or None."""
        holder = self._holder()
        self.took_over = None
        if holder is not None and holder.get("token") != self.token:
            if not self.is_stale(holder):
                ahead = float(holder.get("heartbeat", 0)) - time.time()
                clock = (f" Its heartbeat is {ahead:.0f} s ahead of this host's clock: the two hosts' clocks disagree, "
                         "so whether it still runs cannot be told from here." if ahead > STALE_AFTER_S else "")
                raise SweepLocked(
                    f"sweep {self.storage.name!r} is being run by another driver (pid {holder.get('pid')} on "
                    f"{holder.get('host')}, {holder.get('action', 'run')} started {holder.get('started')}; lock "
                    f"{self.file}); refusing to {self.action} it at the same time.{clock} Wait for it to end or stop "
                    "it (Ctrl-C, or `ray job stop`), then --resume; if that driver is gone for good (its host lost), "
                    "delete the lock file")
            self.took_over = holder
        started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        self.file.write_text(json.dumps(self._record(started), indent=2))
        if (self._holder() or {}).get("token") != self.token:  # another driver wrote in between
            raise SweepLocked(f"sweep {self.storage.name!r}: another driver took its lock ({self.file}) at the "
                              "same moment; refusing to run it twice")
        self._started = started
        self._beat = threading.Thread(target=self._heartbeat, name="gloss-sweep-lock", daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                if (self._holder() or {}).get("token") == self.token:
                    self.file.write_text(json.dumps(self._record(self._started), indent=2))
            except OSError:
                pass  # storage briefly unreachable: the next beat tries again

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5.0)
        try:
            if (self._holder() or {}).get("token") == self.token:
                path = self.storage.path_of(LOCK)
                self.storage.fs.delete_file(path)
                if not self.storage.entries():
                    self.storage.fs.delete_dir(self.storage.path)  # a lock was all the folder held
        except OSError:
            pass  # left behind: stale once this process is gone

    def __enter__(self) -> "SweepLock":
        self.acquire()
        return self

    def note(self) -> str | None:
        """A line for the console when the lock of a gone driver was taken over."""
        gone = self.took_over
        if gone is None:
            return None
        return (f"took over the lock of a driver that is gone (pid {gone.get('pid')} on {gone.get('host')}, "
                f"{gone.get('action', 'run')} started {gone.get('started')})")

    def __exit__(self, *exc) -> None:
        self.release()
