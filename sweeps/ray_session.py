"""Starting or joining Ray for a sweep, quietly: `--address`, else `RAY_ADDRESS` (as `ray job
submit` sets it), else a new local cluster; shut down at the end if this process started it.

While the session lasts, what the driver holds at its start (and at each phase's start,
`settle_heap`) is kept out of Python's cyclic garbage collector (`gc.freeze`). A driver holds
hundreds of thousands of objects from its imports alone (Ray, Tune, MLflow, SQLAlchemy, Optuna,
pandas), and every full (generation 2) collection walks all of them, holding the interpreter:
0.3-0.5 s at a 600-trial grid on 2 busy cores, up to 1 s at the paper's scale. Such a collection
falls on whatever thread allocates, often Tune's event loop inside a callback, where Ray reports it
as an "operation took" warning and the trials' results wait (issue 20). Frozen, those objects are
never walked; what the sweep creates after is collected as before. Nothing frozen is lost: the
session unfreezes everything at its end, and a later collection frees what has become garbage.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import threading

import ray

from sweeps import preflight


def resolve_address(given: str | None) -> str:
    """--address, else RAY_ADDRESS, else "local": a new local cluster, never the one a possibly
    stale `ray_current_cluster` file names."""
    return given or os.environ.get("RAY_ADDRESS") or "local"


def _quiet() -> None:
    """The driver's console carries the sweep's own lines, not Tune's."""
    # fail fast on an unreachable server: the sweep's own queue and retries take over (resilience.py)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's own reporter, silent at verbose=0: our lines instead
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # RAY_AUTH_MODE is left to the user: unset, a local cluster runs with Ray's default token auth
    # (token made in ~/.ray/auth_token), which matters because Ray binds the node's address, not
    # loopback (the docs say so, so Ray's notice of its default is not repeated on every run)
    logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(
        lambda record: "Token authentication is enabled" not in record.getMessage())
    # a failed trial: its reason is on its progress line and in its run's `error` tag, not a
    # traceback from Tune on the console
    logging.getLogger("ray.tune.execution.tune_controller").addFilter(
        lambda record: "Trial task failed" not in record.getMessage())
    # an interrupt: the sweep's own line says it is saved and how to go on (gloss ... --resume, not Tuner.restore)
    logging.getLogger("ray.tune.tune").addFilter(lambda record: not any(text in record.getMessage() for text in (
        "Trials did not complete", "Stop signal received", "Experiment has been interrupted")))


_FROZEN: list[bool] = []  # a session's heap is frozen (`frozen_heap`): `settle_heap` may freeze more


def settle_heap() -> None:
    """Inside a session, collect what is garbage now and freeze the rest (see the module's
    docstring): at the start, and at each phase's start (the trial logger's `setup`), when the
    previous phases' results are the long-lived part of the heap. Outside one it does nothing."""
    if _FROZEN:
        gc.collect()
        gc.freeze()


@contextlib.contextmanager
def frozen_heap():
    """The driver's start-up heap frozen while the block runs, unfrozen after it."""
    _FROZEN.append(True)
    try:
        settle_heap()
        yield
    finally:
        _FROZEN.pop()
        if not _FROZEN:
            gc.unfreeze()


@contextlib.contextmanager
def ray_session(address: str | None, num_cpus: int | None):
    """Ray for the sweep: already initialised (a caller's), joined, or started here; the driver's
    heap frozen from then on (`frozen_heap`)."""
    _quiet()
    if ray.is_initialized():
        with frozen_heap():
            yield
        return
    resolved = resolve_address(address)
    preflight.check_address(resolved)
    ray.init(address=resolved, include_dashboard=False, num_cpus=num_cpus, log_to_driver=False,
             logging_level=logging.WARNING,
             runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                                       # a trial given 0 GPUs sees none (Ray 2.x leaves the node's
                                       # CUDA_VISIBLE_DEVICES as it is otherwise; trainables/devices.py)
                                       "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "1"}})
    try:
        with frozen_heap():
            yield
    finally:
        ray.shutdown()


@contextlib.contextmanager
def sigterm_as_sigint():
    """SIGTERM (what `ray job stop` and most process managers send) does what SIGINT does: Tune
    saves the state and the sweep ends with exit status 130, ready for --resume. Installed after
    `ray.init`, whose own handler would exit at once."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers (a sweep run from a caller's thread)
        return
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda signum, frame: signal.raise_signal(signal.SIGINT))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
