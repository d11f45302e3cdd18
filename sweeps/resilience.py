"""Surviving an unreachable MLflow: transient errors are retried, a write that cannot be made is
dropped on its own, nothing crashes the sweep.

Transient or permanent is decided by the error's type (`is_transient`), walking the chain of
causes (MLflow wraps what `requests` raised in an `MlflowException`, SQLAlchemy wraps sqlite3):

- transient: network errors (`ConnectionError`, `TimeoutError` = `socket.timeout`, `socket.gaierror`,
  an `OSError` whose errno is a network one, `requests`' `ConnectionError`, `Timeout`, `RetryError`
  (too many 5xx/429 answers) and `ChunkedEncodingError`, `urllib3`'s timeout, protocol, connection
  and retry errors, pyarrow's S3 network errors); an HTTP status 408, 429, 500, 502, 503 or 504
  (`requests`' `HTTPError`, MLflow's "failed with error code NNN" for a non-JSON answer, or a
  numeric `error_code` in a `RestException`'s body); MLflow's error codes TEMPORARILY_UNAVAILABLE,
  DEADLINE_EXCEEDED, REQUEST_LIMIT_EXCEEDED and RESOURCE_EXHAUSTED (503, 504, 429); and a database
  that is locked or lost its connection (`sqlalchemy.exc.OperationalError` / `sqlite3.OperationalError`
  saying so; MLflow's SQL store raises it as TEMPORARILY_UNAVAILABLE, and its cause decides).
- permanent: everything else, at once. Among them a `KeyError` or any other bug, an `OSError`
  such as "no space left on device", and MLflow's INTERNAL_ERROR: it is the code MLflow gives any
  unexpected error (`get_http_status_code()` is derived from the code, so its 500 is no evidence of
  an HTTP answer); when it wraps a network failure the cause or the message ("API request to ...
  failed ... Connection refused") says so and decides.

- `RetryingClient` wraps an MlflowClient for the driver's phase-boundary calls (parent runs,
  summaries): a transient error is retried with backoff for up to `timeout_s`; any other error is
  raised at once.
- `WriteQueue` holds the trial logger's writes, in order per trial, and makes them from a
  background thread, so Tune's event loop never waits on MLflow. A write that fails transiently
  stays at the head of its trial's writes and is retried with backoff while the other trials'
  writes go on. Whether the store itself is down is asked of it (`probe`, a cheap read; the trial
  logger's reads the experiment): if it does not answer either, the queue says "MLflow
  unreachable" and tries one write every `retry_every_s` until one succeeds. A write that fails
  permanently is dropped at once: it is listed as lost, its trial's run gets the tag
  `unlogged_writes` (the `on_lost` hook), and the writes behind it go on.
- The cap on retries, per write: `max_attempts` (8) transient failures while the store answers
  (the error is the write's own: an upload that times out, a download that cannot connect), with
  a backoff of `retry_every_s` doubling to 60 s between them, so about 4 minutes at the default
  5 s; then the write is given up like a permanent one. Failures while the store is down do not
  count: an outage loses nothing before the phase ends. A write that keeps failing holds up only
  the writes of its own trial behind it (their order matters: a run's metrics after its creation).
- At the end of a phase what still could not be written is recorded in a JSON file (`record_lost`)
  and reported.
"""

from __future__ import annotations

import errno
import json
import re
import socket
import sqlite3
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable

import requests.exceptions
import sqlalchemy.exc
import urllib3.exceptions
from mlflow.exceptions import MlflowException, RestException

from gloss_core.provenance import redact

TRANSIENT_CODES = {"TEMPORARILY_UNAVAILABLE", "DEADLINE_EXCEEDED", "REQUEST_LIMIT_EXCEEDED", "RESOURCE_EXHAUSTED"}
TRANSIENT_HTTP = {408, 429, 500, 502, 503, 504}
NETWORK_ERRNOS = {errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EPIPE,
                  errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN, errno.EHOSTDOWN}
NETWORK_ERRORS = (ConnectionError, TimeoutError, socket.gaierror,
                  requests.exceptions.ConnectionError, requests.exceptions.Timeout, requests.exceptions.RetryError,
                  requests.exceptions.ChunkedEncodingError,
                  urllib3.exceptions.TimeoutError, urllib3.exceptions.ProtocolError, urllib3.exceptions.NewConnectionError,
                  urllib3.exceptions.MaxRetryError, urllib3.exceptions.ResponseError, urllib3.exceptions.ProxyError)
# a database that is busy or lost its connection (SQLite, PostgreSQL, MySQL)
DB_BUSY = re.compile(r"locked|SQLITE_BUSY|lock wait timeout|deadlock|could not obtain lock|could not connect|"
                     r"connection refused|server closed the connection|lost connection|connection reset|"
                     r"timeout expired|timed out", re.I)
# pyarrow's S3 filesystem raises a plain OSError that names AWS's error
AWS_NETWORK = re.compile(r"AWS Error (NETWORK_CONNECTION|SLOW_DOWN|SERVICE_UNAVAILABLE|INTERNAL_FAILURE|"
                         r"REQUEST_TIMEOUT|THROTTLING)|curlCode: (6|7|28|35|52|55|56)\b")
# MLflow's REST client: "API request to URL failed with exception ..." around a network failure
API_DOWN = re.compile(r"API request to \S+ failed.*(connect|refused|reset|timed? ?out|Max retries exceeded|"
                      r"error responses|Remote end closed|Broken pipe)", re.I | re.S)
HTTP_CODE = re.compile(r"failed with error code (\d{3}) ")


def is_transient(err: BaseException) -> bool:
    """True for an error worth retrying: the network, a busy store, an HTTP 5xx or 429 (the module's
    docstring lists them); False for anything else."""
    return bool(_verdict(err, 0))


def _verdict(err: BaseException | None, depth: int) -> bool | None:
    """True transient, False permanent, None: this error's type does not say (its cause may)."""
    if err is None or depth > 8:
        return None
    if isinstance(err, MlflowException):  # MLflow wraps without `from`: the context is the cause
        inner = err.__cause__ or (None if err.__suppress_context__ else err.__context__)
        found = _verdict(inner, depth + 1)
        return found if found is not None else _mlflow_verdict(err)
    if isinstance(err, NETWORK_ERRORS):
        return True
    if isinstance(err, requests.exceptions.HTTPError):
        return getattr(err.response, "status_code", None) in TRANSIENT_HTTP
    if isinstance(err, requests.exceptions.RequestException):  # a bad URL, a missing schema
        return False
    if isinstance(err, sqlalchemy.exc.OperationalError):
        return bool(err.connection_invalidated or DB_BUSY.search(str(err)))
    if isinstance(err, sqlite3.OperationalError):
        return bool(DB_BUSY.search(str(err)))
    if isinstance(err, OSError):
        return err.errno in NETWORK_ERRNOS or (err.errno is None and bool(AWS_NETWORK.search(str(err))))
    return _verdict(err.__cause__, depth + 1)


def _mlflow_verdict(err: MlflowException) -> bool:
    if err.error_code in TRANSIENT_CODES:
        return True
    status = HTTP_CODE.search(err.message)
    if status is None and isinstance(err, RestException) and str(err.json.get("error_code", "")).isdigit():
        status = re.match(r"(\d+)", str(err.json["error_code"]))  # a proxy's answer: the HTTP status as code
    if status is not None:
        return int(status.group(1)) in TRANSIENT_HTTP
    return err.error_code == "INTERNAL_ERROR" and bool(API_DOWN.search(err.message))


def error_text(err: BaseException) -> str:
    return f"{type(err).__name__}: {redact(str(err))}"


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


class _Attempts:
    """The transient failures of one key's head write."""

    def __init__(self, now: float):
        self.first, self.failures, self.strikes, self.not_before, self.error = now, 0, 0, now, ""


class WriteQueue:
    """Writes to MLflow that never raise: each key's writes (one trial's) run in the order given.

    A write that fails transiently waits at the head of its key, which is retried after
    `retry_every_s` (doubling, up to 60 s, with each failure that counts towards the cap), while
    the other keys' writes go on. A failure counts when the store answers `probe` (without a
    probe: when the attempt before succeeded); otherwise the store is down, and one write is tried
    every `retry_every_s` until one succeeds. A write that fails permanently, or transiently
    `max_attempts` times that count, is dropped: listed in `lost`, reported to `on_lost(key, tags)`
    (the trial logger tags the trial's run with them), and the writes behind it go on.
    `MetricWrite`s of one key that queue up behind each other go as one batch.

    In the foreground (the default) `submit` drains at once. After `start()` a daemon thread
    drains: `submit` only enqueues and returns, so Tune's event loop never waits on MLflow. The
    queue is bounded (`max_pending`): past `warn_pending` writes it says it is backing up, and at
    `max_pending` `submit` waits for room rather than drop a write.
    """

    MAX_BACKOFF_S = 60.0

    def __init__(self, retry_every_s: float = 5.0, max_pending: int = 20000, warn_pending: int = 2000,
                 max_attempts: int = 8, on_lost: Callable[[str, dict[str, str]], None] | None = None,
                 probe: Callable[[], object] | None = None):
        self.pending: dict[str, deque[tuple[str, Callable[[], None]]]] = {}  # key -> its writes, in order
        self.count = 0
        self.lost: list[dict] = []
        self.retry_every_s, self.max_pending, self.warn_pending = retry_every_s, max_pending, warn_pending
        self.max_attempts, self.on_lost, self.probe = max_attempts, on_lost, probe
        self._retry: dict[str, _Attempts] = {}  # key -> its head write's transient failures
        self._lost_of: dict[str, list[dict]] = {}  # key -> its dropped writes (the run's tag)
        self._last_ok = True  # the last attempt succeeded (or nothing failed yet)
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
    def _next(self, skip: set[str]):
        """The next key's head write (merged with the metric writes queued right behind it): the
        first key not in `skip` whose retry is due."""
        with self._cond:
            now = time.monotonic()
            key = next((k for k in self.pending
                        if k not in skip and (k not in self._retry or self._retry[k].not_before <= now)), None)
            if key is None:
                return None
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
            self._retry.pop(key, None)
            self.count -= taken
            if self.count < self.warn_pending // 2:
                self._backed_up = False
            self._busy = False
            self._cond.notify_all()

    def _failed(self, key: str, err: BaseException) -> bool | None:
        """A transient failure of `key`'s head write: None if it is given up (the cap), True if the
        store looks down, False if only this write failed: the store answers `probe` (without one:
        the attempt before this one succeeded)."""
        own = self._last_ok if self.probe is None else self._answers()
        now = time.monotonic()
        with self._cond:
            attempts = self._retry.setdefault(key, _Attempts(now))
            attempts.failures += 1
            attempts.error = error_text(err)[:1000]
            self._last_ok = False
            if own:  # the store answers: the error is this write's own
                attempts.strikes += 1
                if attempts.strikes >= self.max_attempts:
                    return None
            attempts.not_before = now + min(self.MAX_BACKOFF_S, self.retry_every_s * 2 ** max(0, attempts.strikes - 1))
            self._busy = False
            if not own:
                self._next_try = now + self.retry_every_s
                if self._down_since is None:
                    self._down_since = now
                    warn(f"MLflow unreachable ({attempts.error[:200]}); {self.count} write(s) queued, "
                         f"retrying every {self.retry_every_s:.0f} s; trials keep training")
            self._cond.notify_all()
            return not own

    def _answers(self) -> bool:
        try:
            self.probe()
        except Exception as err:  # noqa: BLE001 - an answer, even a refusal, is an answer
            return not is_transient(err)
        return True

    def _drop(self, key: str, what: str, taken: int, error: str) -> None:
        """A write that cannot be made: listed, its run tagged (where the store lets us), the rest go on."""
        entry = {"trial_id": key, "write": what, "error": error[:1000]}
        self.lost.append(entry)
        self._lost_of.setdefault(key, []).append(entry)
        warn(f"a write failed and is dropped ({what}, trial {key}): {error[:200]}; its trial's other writes go on")
        self._done(key, taken)
        if self.on_lost is not None:
            text = "; ".join(f"{e['write']}: {e['error'][:300]}" for e in self._lost_of[key])
            try:
                self.on_lost(key, {"unlogged_writes": text[:5000]})
            except Exception:  # noqa: BLE001 - the tag is best effort: the lost list has it
                pass

    def drain(self, force: bool = False) -> bool:
        """Make the queued writes that can be made now (`force`: even while the store is down and
        its next try is not due); True if none is left."""
        if self._down_since is not None and not force and time.monotonic() < self._next_try:
            return False
        failed: set[str] = set()  # keys whose head failed transiently since the last write made
        while (item := self._next(failed)) is not None:
            key, what, job, taken = item
            try:
                job()
            except Exception as err:  # noqa: BLE001 - never let logging fail the sweep
                if not is_transient(err):
                    self._drop(key, what, taken, error_text(err))
                    continue
                down = self._failed(key, err)
                if down is None:
                    attempts = self._retry[key]
                    self._drop(key, what, taken, f"gave up after {attempts.failures} transient failures over "
                                                 f"{time.monotonic() - attempts.first:.0f} s: {attempts.error}")
                    continue
                if down:
                    return False
                failed.add(key)
                continue
            self._last_ok = True
            failed.clear()  # the store answered: a failed write may be tried again, and it would count
            if self._down_since is not None:
                warn(f"MLflow reachable again after {time.monotonic() - self._down_since:.0f} s; "
                     "writing the queued writes")
                self._down_since = None
            self._done(key, taken)
        return not self.count

    # ---- the background thread -------------------------------------------------------------------
    def start(self) -> "WriteQueue":
        if self._thread is None:
            self._stop = False
            self._thread = threading.Thread(target=self._run, name="gloss-mlflow-writer", daemon=True)
            self._thread.start()
        return self

    def _due(self) -> float | None:
        """When the next write may be tried (monotonic time); None if nothing is queued."""
        if not self.pending:
            return None
        due = min(self._retry[k].not_before if k in self._retry else 0.0 for k in self.pending)
        return max(due, self._next_try) if self._down_since is not None else due

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stop and ((due := self._due()) is None or due > time.monotonic()):
                    self._cond.wait(None if due is None else due - time.monotonic())
                if self._stop:
                    return
            self.drain()

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until every queued write is made (True), or `timeout_s` passes (False). In an outage,
        or with only writes waiting for their retry left, it returns at once: waiting would only
        stall the caller."""
        if self._thread is None:
            return self.drain()
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self.count or self._busy:
                left = deadline - time.monotonic()
                waiting = not self._busy and (due := self._due()) is not None and due > time.monotonic()
                if left <= 0 or self._down_since is not None or waiting:
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
                attempts = self._retry.get(key)
                for n, (what, _) in enumerate(writes):
                    error = ("MLflow unreachable until the phase ended" if self._down_since is not None
                             else f"waiting behind '{writes[0][0]}' when the phase ended" if n
                             else f"still failing when the phase ended: {attempts.error}" if attempts
                             else "not tried before the phase ended")
                    self.lost.append({"trial_id": key, "write": what, "error": error})
            self.pending.clear()
            self._retry.clear()
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
