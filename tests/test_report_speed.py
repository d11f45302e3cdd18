"""`gloss analyze report` reads a sweep's metric histories in bulk (issue 20: at paper scale the
run-by-run reads were most of the report's time), and the bulk read gives the frame the run-by-run
read gave."""

import pandas as pd
import pytest
from mlflow.entities import Metric, Param
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from mlflow.tracking import MlflowClient

from analysis import load
from analysis.load import load_runs
from analysis.report import _listed


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A sweep's replicate and search runs: per-epoch histories (one logged past `epochs_run`,
    which the loader drops; one metric re-logged at a step, both kept), a run without history."""
    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("speed", artifact_location=str(folder / "artifacts"))
    for i in range(7):
        phase = "replicate" if i < 5 else "search"
        tags = {"sweep": "speed", "kind": "trial", "phase": phase, "loss": "ce", "dataset": f"d{i % 2}",
                "model": "tiny", "seed": str(i), "cell": f"d{i % 2}__tiny__ce__s0", "trial_id": f"t{i}",
                "ended": "completed", "protocol": "integrated"}
        run_id = client.create_run(exp, tags=tags).info.run_id
        client.log_batch(run_id, params=[Param("loss", "ce"), Param("seed", str(i)), Param("lr", str(1e-5 * (i + 1)))])
        epochs = 3 + i % 2
        metrics = [Metric("test_accuracy", 0.5 + i / 100, 10, epochs), Metric("epochs_run", epochs, 10, epochs)]
        if i != 3:  # run 3: final values only
            for step in range(1, epochs + 2):  # one epoch past epochs_run: a restored trial's repeat
                metrics += [Metric("val_macro_f1", 0.4 + step / 10 + i / 1000, step, step),
                            Metric("train_loss", 1.0 / step, step, step),
                            Metric("time_forward_s", 0.1 * step, step, step)]
            metrics.append(Metric("val_macro_f1", 0.42, 1, 1))  # the same step logged twice
        client.log_batch(run_id, metrics=metrics)
        if i == 0:  # one run with test embeddings (the report's t-SNE)
            (folder / "test_labels.npy").write_bytes(b"labels")
            client.log_artifact(run_id, str(folder / "test_labels.npy"), "artifacts")
        client.set_terminated(run_id)
    return uri


def run_by_run(monkeypatch, uri: str, **options) -> load.Runs:
    """The loader as it read before: `get_metric_history` per run and key (a store without bulk reads)."""
    with monkeypatch.context() as patch:
        patch.delattr(SqlAlchemyStore, "get_metric_history_bulk")
        return load_runs("speed", uri, **options)


@pytest.mark.parametrize("history", [("replicate",), ("replicate", "search"), None])
def test_bulk_read_gives_the_run_by_run_frames(store, monkeypatch, history):
    monkeypatch.setattr(load, "BULK_RUNS", 2)  # several chunks per key
    bulk = load_runs("speed", store, history=history)
    before = run_by_run(monkeypatch, store, history=history)
    pd.testing.assert_frame_equal(bulk.tidy, before.tidy)
    pd.testing.assert_frame_equal(bulk.runs, before.runs)
    assert bulk.problems == before.problems
    per_epoch = bulk.tidy[bulk.tidy["epoch"].notna()]
    if history is None:
        assert per_epoch.empty
    else:
        assert set(per_epoch["phase"]) == set(history)
        assert per_epoch.groupby("run_id")["epoch"].max().le(4).all()  # steps past epochs_run dropped


def test_a_sql_store_is_read_per_metric_key_not_per_run(store, monkeypatch):
    calls = {"history": 0, "bulk": []}
    original = SqlAlchemyStore.get_metric_history_bulk

    def counted_bulk(self, run_ids, metric_key, max_results):
        calls["bulk"].append((len(run_ids), metric_key))
        return original(self, run_ids, metric_key, max_results)

    def counted_history(self, *args, **kwargs):
        calls["history"] += 1
        raise AssertionError("read run by run")

    monkeypatch.setattr(SqlAlchemyStore, "get_metric_history_bulk", counted_bulk)
    monkeypatch.setattr(MlflowClient, "get_metric_history", counted_history)
    runs = load_runs("speed", store)
    assert calls["history"] == 0
    # 4 replicate runs with histories, 3 per-epoch keys: one query per key
    assert sorted(calls["bulk"]) == [(4, "time_forward_s"), (4, "train_loss"), (4, "val_macro_f1")]
    curve = runs.history("val_macro_f1")
    assert len(curve) == (3 + 4 + 3 + 3) + 4  # epochs_run points of runs 0, 1, 2, 4 (3: none), and a repeated step 1


def test_artifacts_are_listed_at_each_runs_uri_without_looking_the_run_up(store, monkeypatch):
    runs = load_runs("speed", store)
    client = MlflowClient(store)
    expected = {run_id: sorted(a.path for a in client.list_artifacts(run_id, "artifacts")) for run_id in runs.runs["run_id"]}
    assert sum(bool(paths) for paths in expected.values()) == 1
    assert set(runs.artifact_uris) == set(runs.runs["run_id"])

    def no_lookup(*args, **kwargs):
        raise AssertionError("the run was looked up to list its artifacts")

    monkeypatch.setattr(MlflowClient, "list_artifacts", no_lookup)
    monkeypatch.setattr(MlflowClient, "get_run", no_lookup)
    monkeypatch.setattr(SqlAlchemyStore, "get_run", no_lookup)
    assert {run_id: sorted(a.path for a in _listed(runs, client, run_id)) for run_id in runs.runs["run_id"]} == expected
