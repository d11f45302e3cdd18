"""Cluster deployment and faults, with real components: `mlflow server` on PostgreSQL, a simulated
two-node Ray cluster (ray.cluster_utils.Cluster), a worker node removed mid-sweep, and the MLflow
server down for a while mid-sweep. (Driver SIGKILL + resume and a raising trial: test_sweep.py.)"""

import os
import subprocess
import threading
import time
import uuid
from pathlib import Path

import psycopg
import pytest
import yaml
from mlflow.tracking import MlflowClient

from helpers import max_overlap
from servers import BIN, MlflowServer, free_port
from sweeps.spec import load_spec

PG = "host=127.0.0.1 port=5432 user=postgres dbname=test"


@pytest.fixture
def postgres_db():
    name = f"gloss_{uuid.uuid4().hex[:12]}"
    admin = psycopg.connect(PG, autocommit=True)
    admin.execute(f"CREATE DATABASE {name}")
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.close()


def spec_file(folder: Path, model: str, name: str, uri: str, **changes) -> Path:
    spec = {
        "name": name,
        "datasets": {"synth": {"data": "synthetic", "synthetic_size": 64, "synthetic_noise": 0.2}},
        "models": {"tiny": {"model": model}},
        "losses": {"ce": {"loss": "ce", "space": {"lr": {"loguniform": [1e-4, 1e-2]}}},
                   "gloss": {"loss": "gloss", "space": {"lr": {"loguniform": [1e-4, 1e-2]}}}},
        "train": {"batch_size": 16, "max_length": 16, "patience": 0, "timing": False},
        "search": {"num_samples": 4, "max_concurrent": 4, "seed": 0},
        "asha": {"max_t": 3, "grace_period": 3, "reduction_factor": 2},
        "resources": {"cpu": 0.25},
        "replicate": None,
        "tracking_uri": uri,
        "storage_path": str(folder / "ray_results"),
    }
    spec.update(changes)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def trial_runs(uri: str, name: str):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    return client, client.search_runs([exp.experiment_id], "tags.kind = 'trial'", max_results=1000)


def assert_every_metric_arrived(client, runs) -> None:
    """Per run: one val_macro_f1 point per epoch the trial reported, steps 1..n, and not RUNNING."""
    for run in runs:
        assert run.info.status == "FINISHED", (run.info.status, run.data.tags.get("ended"))
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_macro_f1")]
        assert sorted(steps) == list(range(1, int(run.data.metrics["epoch"]) + 1)), steps


def test_postgres_mlflow_server_with_8_concurrent_trials(tiny_model_dir, tmp_path, postgres_db):
    from sweeps.runner import run_sweep

    server = MlflowServer(postgres_db, tmp_path / "artifacts").start()
    try:
        # trials long enough to outlast the start-up of 8 trial processes on 2 cores
        spec = load_spec(spec_file(tmp_path, tiny_model_dir, "pg-sweep", server.uri,
                                   datasets={"synth": {"data": "synthetic", "synthetic_size": 384, "synthetic_noise": 0.2}}))
        run_sweep(spec, num_cpus=2)
        client, runs = trial_runs(server.uri, "pg-sweep")
        assert len(runs) == 8 and max_overlap(runs) == 8  # 2 cells x 4, all at once
        assert_every_metric_arrived(client, runs)
        exp = client.get_experiment_by_name("pg-sweep")
        assert not client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")
        assert all({"metrics.json", "validation_curve.csv"} <= {a.path for a in client.list_artifacts(r.info.run_id)}
                   for r in runs)
    finally:
        server.stop()


@pytest.fixture
def two_nodes(monkeypatch):
    import ray
    from ray.cluster_utils import Cluster

    from ray._raylet import Config

    # token auth, as Ray's own default for local clusters (a local sweep earlier in this process has
    # switched the process to it, and Ray caches the mode): make sure a token exists, then use it
    if not (Path.home() / ".ray" / "auth_token").is_file():
        subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], check=True, capture_output=True,
                       env={**os.environ, "RAY_AUTH_MODE": "token"})
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    Config.initialize("")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "gcs_server_port": free_port(),
                                                             "include_dashboard": False})
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster, worker
    ray.shutdown()
    cluster.shutdown()
    monkeypatch.undo()
    Config.initialize("")


def test_trials_run_on_both_nodes(tiny_model_dir, tmp_path, two_nodes):
    from sweeps.runner import run_sweep

    cluster, worker = two_nodes
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = load_spec(spec_file(tmp_path, tiny_model_dir, "two-nodes", uri, resources={"cpu": 1},
                               search={"num_samples": 2, "max_concurrent": 2, "seed": 0}))
    run_sweep(spec)
    client, runs = trial_runs(uri, "two-nodes")
    nodes = {r.data.tags.get("node_id") for r in runs}
    assert nodes == {cluster.head_node.node_id, worker.node_id}
    assert_every_metric_arrived(client, runs)


def test_worker_node_removed_mid_sweep(tiny_model_dir, tmp_path, two_nodes):
    """The worker node dies under a running trial: the trial is retried from its last checkpoint on
    the head node and the sweep completes."""
    from sweeps.runner import run_sweep

    cluster, worker = two_nodes
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = load_spec(spec_file(
        tmp_path, tiny_model_dir, "lose-node", uri, resources={"cpu": 1},
        train={"batch_size": 16, "max_length": 16, "patience": 0, "timing": False, "checkpoint_budget": None},
        datasets={"synth": {"data": "synthetic", "synthetic_size": 400, "synthetic_noise": 0.2}},
        losses={"ce": {"loss": "ce", "space": {"lr": {"loguniform": [1e-4, 1e-3]}}}},
        search={"num_samples": 2, "max_concurrent": 2, "seed": 0}, asha={"max_t": 6, "grace_period": 6}))
    removed = {}

    def remove_worker_after_first_epoch():
        client = MlflowClient(uri)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                exp = client.get_experiment_by_name("lose-node")
                runs = client.search_runs([exp.experiment_id], f"tags.node_id = '{worker.node_id}'") if exp else []
                if any(r.data.metrics.get("epoch", 0) >= 2 and r.info.status == "RUNNING" for r in runs):
                    removed["run_id"] = runs[0].info.run_id
                    cluster.remove_node(worker)
                    return
            except Exception:  # noqa: BLE001 - the store may be busy; poll again
                pass
            time.sleep(0.3)

    killer = threading.Thread(target=remove_worker_after_first_epoch, daemon=True)
    killer.start()
    run_sweep(spec)
    killer.join(timeout=5)
    assert "run_id" in removed, "no trial reached epoch 2 on the worker node"
    client, runs = trial_runs(uri, "lose-node")
    assert len(runs) == 2 and all(r.data.tags["ended"] == "completed" for r in runs)
    moved = client.get_run(removed["run_id"])
    resumed = client.get_metric_history(moved.info.run_id, "resumed_from_checkpoint")
    first_resumed = min(m.step for m in resumed if m.value == 1.0)
    assert first_resumed > 1, "the retried trial started over instead of resuming from its checkpoint"
    assert_every_metric_arrived(client, runs)


def test_mlflow_server_down_for_a_while(tiny_model_dir, tmp_path, capfd):
    """The server dies mid-sweep and comes back 10 s later: trials keep training, the queued
    writes arrive, nothing is lost, nothing crashes."""
    from sweeps.runner import run_sweep

    server = MlflowServer(f"sqlite:///{tmp_path / 'store.db'}", tmp_path / "artifacts").start()
    spec = load_spec(spec_file(
        tmp_path, tiny_model_dir, "outage", server.uri,
        datasets={"synth": {"data": "synthetic", "synthetic_size": 300, "synthetic_noise": 0.2}},
        search={"num_samples": 2, "max_concurrent": 2, "seed": 0}, asha={"max_t": 5, "grace_period": 5}))
    window = {}

    def outage():
        client = MlflowClient(server.uri)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                exp = client.get_experiment_by_name("outage")
                runs = client.search_runs([exp.experiment_id], "tags.kind = 'trial'") if exp else []
                if any(r.data.metrics.get("epoch", 0) >= 1 for r in runs):
                    break
            except Exception:  # noqa: BLE001
                pass
            time.sleep(0.3)
        window["down"] = time.time()
        server.stop()
        time.sleep(10)
        window["up"] = time.time()
        server.start()

    thread = threading.Thread(target=outage, daemon=True)
    thread.start()
    try:
        run_sweep(spec, num_cpus=2)
        thread.join(timeout=60)
        client, runs = trial_runs(server.uri, "outage")
        assert len(runs) == 4
        assert_every_metric_arrived(client, runs)
        # results reported while the server was down were kept and logged later, with their own time
        during = [m for r in runs for m in client.get_metric_history(r.info.run_id, "val_macro_f1")
                  if window["down"] * 1000 < m.timestamp < window["up"] * 1000]
        assert during, "no trial reported while MLflow was down"
        assert "MLflow unreachable" in capfd.readouterr().err
        assert not list(Path(spec.storage_path).rglob("mlflow_unlogged_*.json"))
    finally:
        server.stop()
