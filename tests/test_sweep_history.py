"""One sweep, one history: the driver's lock, the folder's identity in the MLflow record, an edited
spec on resume, the tracking URI a resume keeps, and ASHA's rungs across a resume. Real SQLite
MLflow stores, real folders, real processes; the end-to-end path is at the bottom."""

import json
import os
import re
import pickle
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from sweeps.cells import CellASHA, SchedulerState
from sweeps.history import (STORAGE, STORAGE_ID, HistoryMismatch, SpecChanged, check_history, check_spec_changes,
                            recorded_spec, resumed_uri)
from sweeps.lock import STALE_AFTER_S, SweepLock, SweepLocked, _process_start
from sweeps.record import summary_run
from sweeps.spec import SweepSpec
from sweeps.storage import LOCK, MARKER, SweepStorage, check_folder
from trainables.plan import CELL

REPO = Path(__file__).resolve().parents[1]
GLOSS = str(Path(sys.executable).with_name("gloss"))


def spec_of(**changes) -> SweepSpec:
    data = {
        "name": "hist",
        "datasets": {"synth": {"data": "synthetic"}},
        "models": {"tiny": {"model": "tiny"}},
        "losses": {"ce": {"loss": "ce", "space": {"lr": {"loguniform": [1e-5, 1e-3]}}},
                   "gloss": {"loss": "gloss", "space": {"lr": {"loguniform": [1e-5, 1e-3]}}}},
        "search": {"num_samples": 4},
        "replicate": {"seeds": [1, 2]},
        "sensitivity": None,
    }
    data.update(changes)
    return SweepSpec.model_validate(data)


# ---- the lock ------------------------------------------------------------------------------------
def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_live_driver_holds_the_lock_and_a_gone_one_does_not(tmp_path):
    storage = SweepStorage(str(tmp_path), "s")
    with SweepLock(storage, "run"):
        held = json.loads((tmp_path / "s" / LOCK).read_text())
        assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
        with pytest.raises(SweepLocked, match=rf"another driver \(pid {os.getpid()} on .*run started"):
            SweepLock(storage, "resume").acquire()
        assert not storage.holds_run()  # a lock alone is no earlier run: check_folder lets a fresh start through
        check_folder(storage, resume=False, restart=False)
    assert not (tmp_path / "s").exists()  # released: the lock was all the folder held

    # a holder whose process is gone (same host), or whose heartbeat stopped long ago (another host)
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / LOCK).write_text(json.dumps({"token": "x", "host": socket.gethostname(), "pid": dead_pid(),
                                                   "heartbeat": time.time()}))
    with SweepLock(storage):
        pass
    gone = {"token": "y", "host": "elsewhere", "pid": 1, "heartbeat": time.time() - STALE_AFTER_S - 1}
    live = {**gone, "heartbeat": time.time()}
    assert SweepLock.is_stale(gone) and not SweepLock.is_stale(live)
    # the pid reused by a later process: not the holder
    assert SweepLock.is_stale({"host": socket.gethostname(), "pid": os.getpid(),
                               "process_start": _process_start(os.getpid()) - 1})


def test_restart_keeps_the_lock_and_removes_the_rest(tmp_path):
    storage = SweepStorage(str(tmp_path), "s")
    storage.mark("h")
    (tmp_path / "s" / "search").mkdir()
    with SweepLock(storage, "restart"):
        storage.remove()
        assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [LOCK]
    assert not (tmp_path / "s").exists()


# ---- the folder's identity in the store ---------------------------------------------------------
def store(tmp_path: Path, spec: SweepSpec, storage: SweepStorage | None) -> tuple[MlflowClient, str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment(spec.name)
    tags = {}
    if storage is not None:
        marker = storage.mark("h", recorded_spec(spec), uri)
        tags = {STORAGE_ID: marker["id"], STORAGE: str(storage)}
    summary_run(client, exp, spec, tags)
    return client, uri


def test_a_fresh_folder_against_a_store_holding_the_sweep_is_refused(tmp_path):
    spec = spec_of()
    first = SweepStorage(str(tmp_path / "first"), spec.name)
    client, uri = store(tmp_path, spec, first)
    (tmp_path / "first" / spec.name / "search").mkdir()
    fresh = SweepStorage(str(tmp_path / "fresh"), spec.name)
    with pytest.raises(HistoryMismatch) as err:
        check_history(client, fresh, uri, resume=False, restart=False)
    text = str(err.value)
    assert str(first) in text and "--restart" in text and "--storage-path" in text and "mlflow.db" in text
    with pytest.raises(HistoryMismatch, match=rf"nothing to resume: {fresh} .* ran with storage {first}"):
        check_history(client, fresh, uri, resume=True, restart=False)
    check_history(client, fresh, uri, resume=False, restart=True)  # --restart: the user names what goes
    check_history(client, first, uri, resume=True, restart=False)  # its own folder resumes

    # another folder of the same name with its own marker: a different sweep
    other = SweepStorage(str(tmp_path / "other"), spec.name)
    other.mark("h")
    with pytest.raises(HistoryMismatch, match="hold different sweeps named 'hist'"):
        check_history(client, other, uri, resume=True, restart=False)
    # a resume moved to a store that never heard of this sweep
    elsewhere = MlflowClient(f"sqlite:///{tmp_path / 'elsewhere.db'}")
    with pytest.raises(HistoryMismatch, match="holds no record of sweep 'hist'"):
        check_history(elsewhere, first, "sqlite:///elsewhere.db", resume=True, restart=False)


def test_a_resume_records_to_the_uri_it_started_with(tmp_path):
    storage = SweepStorage(str(tmp_path), "s")
    storage.mark("h", None, "sqlite:////data/started.db")
    (tmp_path / "s" / "search").mkdir()
    assert resumed_uri(storage, None, "sqlite:///default.db") == "sqlite:////data/started.db"
    assert resumed_uri(storage, "http://moved:5000", "sqlite:///default.db") == "http://moved:5000"
    storage.file(MARKER).write_text(json.dumps({**storage.marker(), "tracking_uri": "postgresql://u:***@db/m"}))
    with pytest.raises(HistoryMismatch, match="pass --tracking-uri again"):
        resumed_uri(storage, None, "sqlite:///default.db")


# ---- an edited spec on resume -------------------------------------------------------------------
def test_changes_to_a_phase_that_ran_are_refused_and_the_rest_accepted():
    before = recorded_spec(spec_of())
    edited = spec_of(losses={"ce": {"loss": "ce", "space": {"lr": {"loguniform": [1e-4, 1e-2]}}}})
    with pytest.raises(SpecChanged) as err:
        check_spec_changes(before, edited, {"search"})
    text = str(err.value)
    assert "losses.ce.space.lr.loguniform: [1e-05, 0.001] -> [0.0001, 0.01]" in text
    assert re.search(r'losses.gloss: \{"loss": "gloss", .*\} -> null', text)  # a variant removed: one change
    assert check_spec_changes(before, edited, set()) != []  # nothing ran yet: any change is a fresh start

    more_seeds = spec_of(replicate={"seeds": [1, 2, 3]}, resources={"cpu": 2})
    accepted = check_spec_changes(before, more_seeds, {"search"})
    assert sorted(str(c) for c in accepted) == ["replicate.seeds: [1, 2] -> [1, 2, 3]", "resources.cpu: 1.0 -> 2.0"]
    with pytest.raises(SpecChanged, match=r"replicate.seeds: \[1, 2\] -> \[1, 2, 3\]"):
        check_spec_changes(before, more_seeds, {"search", "replicate"})
    with pytest.raises(SpecChanged, match=r"search.num_samples: 4 -> 8"):
        check_spec_changes(before, spec_of(search={"num_samples": 8}), {"search"})
    assert check_spec_changes(before, spec_of(), {"search", "replicate"}) == []


# ---- ASHA's rungs across a resume -----------------------------------------------------------------
class FakeTrial:
    def __init__(self, trial_id: str, cell: str):
        self.trial_id, self.config = trial_id, {CELL: cell}


def results(seed: int):
    """A fixed sequence: trial k of each cell scores a fixed value at each of 4 epochs."""
    import random

    rng = random.Random(seed)
    return {(cell, k): [rng.random() for _ in range(4)] for cell in ("a", "b") for k in range(6)}


def drive(scheduler: CellASHA, trials, curves, decisions: dict) -> None:
    for trial in trials:
        scheduler.on_trial_add(None, trial)
        cell, k = trial.config[CELL], int(trial.trial_id.split("_")[1])
        best = float("-inf")
        for epoch, value in enumerate(curves[(cell, k)], start=1):
            best = max(best, value)
            decision = scheduler.on_trial_result(None, trial, {"training_iteration": epoch, "score": best})
            decisions[trial.trial_id] = (epoch, decision)
            if decision == "STOP":
                break
        scheduler.on_trial_complete(None, trial, {"training_iteration": epoch, "score": best})


def test_asha_stops_the_same_trials_after_a_resume():
    curves = results(3)
    trials = [FakeTrial(f"{cell}_{k}", cell) for k in range(6) for cell in ("a", "b")]
    options = ("score", "max", 4, 1, 2.0)

    straight: dict = {}
    drive(CellASHA(*options), trials, curves, straight)
    assert any(decision == "STOP" for _, decision in straight.values())

    first = CellASHA(*options)
    pickled_at_start = pickle.dumps(first)  # what Tune's tuner.pkl holds: the scheduler as built
    interrupted: dict = {}
    drive(first, trials[:5], curves, interrupted)
    saved = pickle.loads(pickle.dumps(SchedulerState(first).get_state()))  # Tune's callback checkpoint
    restored = pickle.loads(pickled_at_start)
    SchedulerState(restored).set_state(saved)
    drive(restored, trials[5:], curves, interrupted)
    assert interrupted == straight

    forgetful = pickle.loads(pickled_at_start)  # without the saved rungs, decisions differ
    forgot: dict = dict(list(straight.items())[:5])
    drive(forgetful, trials[5:], curves, forgot)
    assert forgot != straight


def test_tune_restores_the_rungs_into_the_scheduler_it_runs(tmp_path):
    """A real Tuner, stopped by SIGINT after five trials and restored: each trial trains as many
    epochs as in an uninterrupted run, because the restored CellASHA got its rungs back."""
    import ray
    from ray import tune

    curves = results(3)

    def trainable(config):
        best = float("-inf")
        for value in curves[(config[CELL], config["k"])]:
            best = max(best, value)
            tune.report({"score": best})

    class StopAfter(tune.Callback):  # once: the restored copy (from the Tuner's pickle) sees the flag
        def __init__(self, n, flag: Path):
            self.n, self.done, self.flag = n, 0, flag

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.done += 1
            if self.done == self.n and not self.flag.exists():
                self.flag.touch()
                signal.raise_signal(signal.SIGINT)

    def tuner(name, callbacks):
        scheduler = CellASHA("score", "max", 4, 1, 2.0)
        return tune.Tuner(
            trainable, param_space={"k": tune.grid_search(list(range(4))), CELL: tune.grid_search(["a", "b"])},
            tune_config=tune.TuneConfig(metric="score", mode="max", scheduler=scheduler, max_concurrent_trials=1,
                                        reuse_actors=True),
            run_config=tune.RunConfig(name=name, storage_path=str(tmp_path), verbose=0,
                                      callbacks=[SchedulerState(scheduler), *callbacks]))

    def epochs(grid) -> dict:
        return {(r.config[CELL], r.config["k"]): r.metrics["training_iteration"] for r in grid}

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        straight = epochs(tuner("straight", []).fit())
        assert min(straight.values()) < 4  # ASHA stopped some
        first = tuner("resumed", [StopAfter(4, tmp_path / "stopped")]).fit()
        assert len(epochs(r for r in first if r.metrics)) < 8  # stopped before every trial had reported
        restored = tune.Tuner.restore(str(tmp_path / "resumed"), trainable=trainable, resume_unfinished=True)
        assert epochs(restored.fit()) == straight
    finally:
        ray.shutdown()


# ---- end to end: one driver, SIGTERM, an edited spec, the URI it started with -----------------------
def test_one_driver_sigterm_an_edited_spec_and_the_store_it_started_with(tiny_model_dir, tmp_path):
    """A sweep started with --tracking-uri holds its folder's lock while it runs; SIGTERM saves it (exit 130, no signal dump); a resume with an edited search space is refused
    with the difference; one with more replicate seeds (before the replicate phase) is accepted,
    recorded, and records to the store the sweep started with; a resume of the finished sweep
    registers no second version of a model."""
    import threading

    from test_sweep import write_spec

    name = "history"
    spec_path = write_spec(tmp_path, tiny_model_dir, name, tracking_uri=None,
                           datasets={"synth": {"data": "synthetic", "synthetic_size": 200}},
                           search={"num_samples": 3, "max_concurrent": 1, "seed": 0},
                           asha={"max_t": 4, "grace_period": 4, "reduction_factor": 2}, replicate={"seeds": [1]})
    uri = f"sqlite:///{tmp_path / 'started.db'}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    run = [GLOSS, "sweep", "run", str(spec_path), "--num-cpus", "2"]
    proc = subprocess.Popen([*run, "--tracking-uri", uri], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True, text=True)
    lines: list[str] = []
    reached = threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line)
            if re.match(r"^\[search \d+/\d+\] .*: completed after ", line):
                reached.set()
        reached.set()

    threading.Thread(target=read, daemon=True).start()
    assert reached.wait(timeout=400) and proc.poll() is None, "".join(lines)[-3000:]
    folder = tmp_path / "ray_results" / name
    held = json.loads((folder / LOCK).read_text())
    assert (held["pid"], held["action"]) == (proc.pid, "run")  # a second driver is refused: tests/test_bad_inputs.py
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=180)
    output = "".join(lines)
    assert proc.returncode == 130, output[-3000:]
    assert "--resume" in output and "Traceback" not in output and "SIGTERM" not in output, output[-3000:]
    assert not (folder / LOCK).exists()  # released on the way out

    edited = yaml.safe_load(spec_path.read_text())
    edited["losses"]["ce"]["space"]["lr"] = {"loguniform": [1e-4, 1e-2]}
    spec_path.write_text(yaml.safe_dump(edited))
    refused = subprocess.run([*run, "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    text = refused.stdout + refused.stderr
    assert refused.returncode == 2 and "losses.ce.space.lr.loguniform: [1e-05, 0.03] -> [0.0001, 0.01]" in text, text

    edited["losses"]["ce"]["space"]["lr"] = {"loguniform": [1e-5, 3e-2]}
    edited["replicate"]["seeds"] = [1, 2]
    spec_path.write_text(yaml.safe_dump(edited))
    resumed = subprocess.run([*run, "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    text = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, text[-3000:]
    assert "resumed with 1 spec change(s), recorded in the summary run: replicate.seeds: [1] -> [1, 2]" in text
    assert not (tmp_path / "mlflow.db").exists()  # the store it started with, not the default
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    summary = client.search_runs([exp.experiment_id], "tags.kind = 'summary'")[0]
    assert summary.data.tags[STORAGE] == str(folder) and summary.data.tags[STORAGE_ID] == json.loads(
        (folder / MARKER).read_text())["id"]
    with open(client.download_artifacts(summary.info.run_id, "resume_changes.json")) as f:
        assert json.load(f) == {"accepted_changes": ["replicate.seeds: [1] -> [1, 2]"]}
    replicas = client.search_runs([exp.experiment_id], "tags.kind = 'trial' and tags.phase = 'replicate'")
    assert sorted((r.data.tags["cell"], r.data.tags["replicate_seed"]) for r in replicas) == sorted(
        (cell, seed) for cell in {r.data.tags["cell"] for r in replicas} for seed in ("1", "2"))
    versions = {m.name: len(client.search_model_versions(f"name = '{m.name}'")) for m in client.search_registered_models()}
    assert versions and set(versions.values()) == {1}, versions

    again = subprocess.run([*run, "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert {m.name: len(client.search_model_versions(f"name = '{m.name}'"))
            for m in client.search_registered_models()} == versions  # nothing registered twice
