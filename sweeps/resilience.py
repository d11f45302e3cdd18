"""Surviving an unreachable MLflow: transient errors are retried, nothing crashes the sweep.

- `RetryingClient` wraps an MlflowClient for the driver's phase-boundary calls (parent runs,
  summaries): a transient error (connection refused, timeout, 5xx, "database is locked") is retried
  with backoff for up to `timeout_s`; an error the server answered (a bad value) is raised at once.
- `WriteQueue` holds the trial logger's writes in order. A write that fails transiently stays at
  the head of the queue and is retried every few seconds, while trials keep training; at the end
  of a phase what still could not be written is recorded in a JSON file and reported.
"""

from __future__ import annotations

import json
import sys
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


class WriteQueue:
    """Ordered writes to MLflow that never raise: failures wait and are retried."""

    def __init__(self, retry_every_s: float = 5.0):
        self.jobs: deque[tuple[str, str, Callable[[], None]]] = deque()
        self.lost: list[dict] = []
        self.retry_every_s = retry_every_s
        self._next_try = 0.0
        self._down_since: float | None = None

    def __len__(self) -> int:
        return len(self.jobs)

    def submit(self, key: str, what: str, job: Callable[[], None]) -> None:
        self.jobs.append((key, what, job))
        self.drain()

    def drain(self, force: bool = False) -> bool:
        """Run queued writes in order; False if MLflow is (still) unreachable."""
        if self._down_since is not None and not force and time.monotonic() < self._next_try:
            return False
        while self.jobs:
            key, what, job = self.jobs[0]
            try:
                job()
            except Exception as err:  # noqa: BLE001 - never let logging fail the sweep
                if is_transient(err):
                    self._next_try = time.monotonic() + self.retry_every_s
                    if self._down_since is None:
                        self._down_since = time.monotonic()
                        warn(f"MLflow unreachable ({redact(str(err))[:200]}); {len(self.jobs)} write(s) queued, "
                             f"retrying every {self.retry_every_s:.0f} s; trials keep training")
                    return False
                self.lost.append({"trial_id": key, "write": what, "error": redact(str(err))[:1000]})
                warn(f"MLflow refused a write ({what}, trial {key}): {redact(str(err))[:200]}")
            self.jobs.popleft()
        if self._down_since is not None:
            warn(f"MLflow reachable again after {time.monotonic() - self._down_since:.0f} s; queued writes done")
            self._down_since = None
        return True

    def flush(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.drain(force=True) and time.monotonic() < deadline:
            time.sleep(min(self.retry_every_s, max(0.0, deadline - time.monotonic())))
        for key, what, _ in self.jobs:
            self.lost.append({"trial_id": key, "write": what, "error": "MLflow unreachable until the phase ended"})
        self.jobs.clear()

    def record_lost(self, path: Path) -> None:
        """Write what could not be logged to `path` (JSON) and say so."""
        if not self.lost:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        previous = json.loads(path.read_text()) if path.is_file() else []
        path.write_text(json.dumps(previous + self.lost, indent=2))
        warn(f"{len(self.lost)} MLflow write(s) could not be made; listed in {path}")
        self.lost = []
