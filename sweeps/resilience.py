"""Surviving an unreachable MLflow: transient errors are retried, nothing crashes the sweep.

- `RetryingClient` wraps an MlflowClient for the driver's phase-boundary calls (parent runs,
  summaries): a transient error (connection refused, timeout, 5xx, "database is locked") is retried
  with backoff for up to `timeout_s`; an error the server answered (a bad value) is raised at once.
- `WriteQueue` holds the trial logger's writes, in order per trial, and makes them from a
  background thread, so Tune's event loop never waits on MLflow. A write that fails transiently
  stays at the head of its trial's writes and is retried every few seconds, while trials keep
  training; at the end of a phase what still could not be written is recorded in a JSON file and
  reported.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable

from gloss_core.provenance import redact

PERMANENT = {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST", "BAD_REQUEST",
             "PERMISSION_DENIED", "UNAUTHENTICATED", "INVALID_STATE"}


def is_transient(err: BaseException) -> bool:
    """True unless the store answered and refused (a bad value, a missing run, no permission)."""
    return getattr(err, "error_code", None) not in PERMANENT


def warn(message: str) -> None:
    print(f"[gloss] {message}", file=sys.stderr, flush=True)


class RetryingClient:
    """Every method of the wrapped client, retried on transient errors (backoff 1 s doubling to 30 s)."""

    def __init__(self, client, timeout_s: float = 600.0):
        self._client, self._timeout_s = client, timeout_s

    def __getattr__(self, name: str):
        method = getattr(self._client, name)
        if not callable(method):
            return method

        def call(*args, **kwargs):
            deadline, wait, warned = time.monotonic() + self._timeout_s, 1.0, False
            while True:
                try:
                    result = method(*args, **kwargs)
                    if warned:
                        warn(f"MLflow reachable again ({name})")
                    return result
                except Exception as err:  # noqa: BLE001 - classified below
                    if not is_transient(err) or time.monotonic() + wait > deadline:
                        raise
                    if not warned:
                        warn(f"MLflow unreachable ({name}: {redact(str(err))[:200]}); retrying for up to "
                             f"{self._timeout_s:.0f} s")
                        warned = True
                    time.sleep(wait)
                    wait = min(30.0, 2 * wait)

        return call


class MetricWrite:
    """A `log_batch` of one run's metrics. Those that queue up behind each other for one run merge
    into one call, within MLflow's limit of 1000 metrics per batch."""

    LIMIT = 1000

    def __init__(self, client_of: Callable[[], object], run_of: Callable[[], str], metrics: list):
        self.client_of, self.run_of, self.metrics = client_of, run_of, list(metrics)

    def merged(self, following: list["MetricWrite"]) -> "MetricWrite":
        return MetricWrite(self.client_of, self.run_of, [m for w in [self, *following] for m in w.metrics])

    def __call__(self) -> None:
        client, run_id = self.client_of(), self.run_of()
        for start in range(0, len(self.metrics), self.LIMIT):
            client.log_batch(run_id, metrics=self.metrics[start:start + self.LIMIT])


class WriteQueue:
    """Writes to MLflow that never raise: each key's writes (one trial's) run in the order given.

    A write that fails transiently waits at the head of its key and is retried every
    `retry_every_s` (meanwhile nothing else is tried: the store is down); a write the store refuses
    is dropped and listed in `lost`. `MetricWrite`s of one key that queue up behind each other go
    as one batch.

    In the foreground (the default) `submit` drains at once. After `start()` a daemon thread
    drains: `submit` only enqueues and returns, so Tune's event loop never waits on MLflow. The
    queue is bounded (`max_pending`): past `warn_pending` writes it says it is backing up, and at
    `max_pending` `submit` waits for room rather than drop a write.
    """

    def __init__(self, retry_every_s: float = 5.0, max_pending: int = 20000, warn_pending: int = 2000):
        self.pending: dict[str, deque[tuple[str, Callable[[], None]]]] = {}  # key -> its writes, in order
        self.count = 0
        self.lost: list[dict] = []
        self.retry_every_s, self.max_pending, self.warn_pending = retry_every_s, max_pending, warn_pending
        self._next_try = 0.0
        self._down_since: float | None = None
        self._backed_up = False
        self._busy = False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = False

    def __len__(self) -> int:
        return self.count

    # ---- enqueue -------------------------------------------------------------------------------
    def submit(self, key: str, what: str, job: Callable[[], None]) -> None:
        with self._cond:
            while self._thread is not None and self.count >= self.max_pending:
                self._cond.wait(1.0)  # back-pressure: never drop a write
            self.pending.setdefault(key, deque()).append((what, job))
            self.count += 1
            if self.count >= self.warn_pending and not self._backed_up:
                self._backed_up = True
                warn(f"MLflow writes are backing up: {self.count} queued (the store is slower than the trials "
                     "report); trials keep training")
            self._cond.notify_all()
        if self._thread is None:
            self.drain()

    # ---- drain -----------------------------------------------------------------------------------
    def _next(self):
        """The next key's head write (merged with the metric writes queued right behind it)."""
        with self._cond:
            if not self.pending:
                return None
            key = next(iter(self.pending))
            writes = self.pending.pop(key)
            self.pending[key] = writes  # round robin: this key goes to the back
            what, job = writes[0]
            taken = 1
            if isinstance(job, MetricWrite):
                following = []
                size = len(job.metrics)
                for _, other in list(writes)[1:]:
                    if not isinstance(other, MetricWrite) or size + len(other.metrics) > MetricWrite.LIMIT:
                        break
                    following.append(other)
                    size += len(other.metrics)
                if following:
                    job, taken = job.merged(following), 1 + len(following)
                    what = f"{what} .. {writes[taken - 1][0]}"
            self._busy = True
            return key, what, job, taken

    def _done(self, key: str, taken: int) -> None:
        with self._cond:
            writes = self.pending[key]
            for _ in range(taken):
                writes.popleft()
            if not writes:
                del self.pending[key]
            self.count -= taken
            if self.count < self.warn_pending // 2:
                self._backed_up = False
            self._busy = False
            self._cond.notify_all()

    def drain(self, force: bool = False) -> bool:
        """Run queued writes; False if MLflow is (still) unreachable."""
        if self._down_since is not None and not force and time.monotonic() < self._next_try:
            return False
        while (item := self._next()) is not None:
            key, what, job, taken = item
            try:
                job()
            except Exception as err:  # noqa: BLE001 - never let logging fail the sweep
                if is_transient(err):
                    with self._cond:
                        self._busy = False
                        self._cond.notify_all()
                    self._next_try = time.monotonic() + self.retry_every_s
                    if self._down_since is None:
                        self._down_since = time.monotonic()
                        warn(f"MLflow unreachable ({redact(str(err))[:200]}); {self.count} write(s) queued, "
                             f"retrying every {self.retry_every_s:.0f} s; trials keep training")
                    return False
                self.lost.append({"trial_id": key, "write": what, "error": redact(str(err))[:1000]})
                warn(f"MLflow refused a write ({what}, trial {key}): {redact(str(err))[:200]}")
            self._done(key, taken)
        if self._down_since is not None:
            warn(f"MLflow reachable again after {time.monotonic() - self._down_since:.0f} s; queued writes done")
            self._down_since = None
        return True

    # ---- the background thread -------------------------------------------------------------------
    def start(self) -> "WriteQueue":
        if self._thread is None:
            self._stop = False
            self._thread = threading.Thread(target=self._run, name="gloss-mlflow-writer", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stop and (not self.pending or (self._down_since is not None
                                                               and time.monotonic() < self._next_try)):
                    wait = None if not self.pending else max(0.0, self._next_try - time.monotonic())
                    self._cond.wait(wait)
                if self._stop:
                    return
            self.drain()

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until every queued write is made (True), or `timeout_s` passes (False). In an outage
        it returns at once: waiting would only stall the caller."""
        if self._thread is None:
            return self.drain()
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self.count or self._busy:
                left = deadline - time.monotonic()
                if left <= 0 or self._down_since is not None:
                    return False
                self._cond.wait(left)
        return True

    def flush(self, timeout_s: float) -> None:
        """Make what can be made within `timeout_s` (retrying through an outage), stop the thread, and
        list what is left as lost."""
        deadline = time.monotonic() + timeout_s
        if self._thread is not None:
            with self._cond:
                self._stop = True
                self._cond.notify_all()
            self._thread.join()
            self._thread = None
        while not self.drain(force=True) and time.monotonic() < deadline:
            time.sleep(min(self.retry_every_s, max(0.0, deadline - time.monotonic())))
        with self._cond:
            for key, writes in self.pending.items():
                for what, _ in writes:
                    self.lost.append({"trial_id": key, "write": what, "error": "MLflow unreachable until the phase ended"})
            self.pending.clear()
            self.count = 0

    def record_lost(self, path) -> None:
        """Write what could not be logged to `path` (JSON; a `Path` or a `sweeps.storage.StorageFile`)
        and say so."""
        if not self.lost:
            return
        if isinstance(path, Path):
            path.parent.mkdir(parents=True, exist_ok=True)
        previous = json.loads(path.read_text()) if path.exists() else []
        path.write_text(json.dumps(previous + self.lost, indent=2))
        warn(f"{len(self.lost)} MLflow write(s) could not be made; listed in {path}")
        self.lost = []
