"""A sweep's models are written and checked by the trials that trained them: the driver only
uploads files. A real sweep (local Ray, SQLite MLflow) whose replicate models serve through
`gloss predict` by `models:/NAME@best` and `runs:/RUN/model`, while the driver process never
loads a model (the trials run in Ray's worker processes, which the counters here do not reach)."""

from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.entities import LoggedModelStatus
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from gloss_cli import app
from sweeps.spec import load_spec

SYNTH = {"data": "synthetic", "synthetic_size": 96, "synthetic_noise": 0.2}


def count_calls(monkeypatch, calls: Counter, owner, name: str) -> None:
    """Count the driver's calls of `owner.name`, then call it."""
    original = getattr(owner, name)

    def counted(*args, **kwargs):
        calls[f"{getattr(owner, '__name__', owner)}.{name}"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)


def predict(*args: str) -> tuple[int, str]:
    done = CliRunner().invoke(app, ["predict", *args])
    if done.exception is not None and not isinstance(done.exception, SystemExit):
        raise done.exception
    return done.exit_code, " ".join(done.output.split())


@pytest.fixture(scope="module")
def swept(tiny_model_dir, tmp_path_factory):
    """One cell (CE), one search trial, two replicate seeds; what the driver loaded meanwhile."""
    import gloss_core.export
    import mlflow.models
    import mlflow.models.utils
    import mlflow.pyfunc

    import serving.pyfunc
    import serving.registry
    from sweeps.runner import run_sweep

    folder = tmp_path_factory.mktemp("driver-models")
    spec = {"name": "served", "datasets": {"synth": SYNTH}, "models": {"tiny": {"model": tiny_model_dir}},
            "losses": {"ce": {"loss": "ce", "space": {"lr": {"choice": [1e-3]}}}},
            "train": {"batch_size": 16, "max_length": 16, "patience": 0, "timing": False},
            "search": {"num_samples": 1, "max_concurrent": 1, "seed": 0},
            "asha": {"max_t": 2, "grace_period": 2, "reduction_factor": 2}, "resources": {"cpu": 0.5},
            "replicate": {"seeds": [1, 2]}, "tracking_uri": f"sqlite:///{folder / 'mlflow.db'}",
            "storage_path": str(folder / "ray_results")}
    path = folder / "served.yaml"
    path.write_text(yaml.safe_dump(spec))
    calls: Counter = Counter()
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("RAY_ADDRESS", raising=False)
        for owner, name in ((mlflow.pyfunc, "load_model"), (mlflow.pyfunc, "save_model"),
                            (mlflow.models.Model, "log"), (mlflow.models.utils, "_validate_serving_input"),
                            (serving.pyfunc.GlossPyfunc, "load_context"), (gloss_core.export, "load_model"),
                            (serving.registry, "load_model")):
            count_calls(patch, calls, owner, name)
        summary = run_sweep(load_spec(path), num_cpus=2)
        during = Counter(calls)
        yield summary, spec["tracking_uri"], during, calls, folder  # the counters stay on for the test


def test_the_driver_loads_no_model_and_the_replicates_serve(swept):
    summary, uri, during, calls, folder = swept
    assert not during, f"the driver loaded or validated a model during the sweep: {dict(during)}"
    client = MlflowClient(uri, registry_uri=uri)
    exp = client.get_experiment_by_name("served")
    reps = client.search_runs([exp.experiment_id], "tags.kind = 'trial' and tags.phase = 'replicate'")
    assert len(reps) == 2
    for run in reps:  # each replicate's model: the folder its trial wrote, uploaded whole
        model_id = run.data.tags["model_uri"].removeprefix("models:/")
        logged = client.get_logged_model(model_id)
        assert logged.source_run_id == run.info.run_id and logged.status == LoggedModelStatus.READY
        files = {a.path for a in client.list_logged_model_artifacts(model_id)}
        assert {"MLmodel", "input_example.json", "artifacts"} <= files, files
        mlmodel = yaml.safe_load(Path(download(f"{logged.artifact_location}/MLmodel")).read_text())
        assert mlmodel["run_id"] == run.info.run_id and mlmodel["model_id"] == model_id
        assert "python_function" in mlmodel["flavors"] and mlmodel["signature"]["outputs"]

    # the cell's chosen replicate is registered; its alias `best` names that version
    name = "served.synth__tiny__ce__s0"
    [version] = client.search_model_versions(f"name = '{name}'")
    assert client.get_model_version_by_alias(name, "best").version == version.version
    chosen = next(r for r in reps if r.info.run_id == version.tags["run_id"])

    from gloss_core.config import TrainConfig
    from gloss_core.data import load_splits

    test = load_splits(TrainConfig(**SYNTH)).test
    frame = pd.DataFrame({"text": test.texts, "label": [f"class{i}" for i in test.labels.tolist()]})
    frame.to_csv(folder / "test.csv", index=False)
    expected = f"accuracy {chosen.data.metrics['test_accuracy']:.4f}"
    for reference in (f"models:/{name}@best", f"runs:/{chosen.info.run_id}/model"):
        status, output = predict(reference, str(folder / "test.csv"), "-o", str(folder / "out.csv"),
                                 "--tracking-uri", uri)
        assert status == 0 and expected in output, (reference, output)
    assert calls["mlflow.pyfunc.load_model"] >= 2  # the counters do see a load in this process
    status, output = predict(f"models:/{name}@nope", str(folder / "test.csv"), "-o", str(folder / "no.csv"),
                             "--tracking-uri", uri)
    assert status == 2 and f"registered model '{name}' has no alias 'nope'" in output, output
    assert not (folder / "no.csv").exists()


def download(artifact_uri: str) -> str:
    import mlflow.artifacts

    return mlflow.artifacts.download_artifacts(artifact_uri)


def test_a_checkpoint_model_without_an_mlmodel_is_tagged_and_not_loaded(tmp_path):
    """A checkpoint's `model/` from an earlier gloss (an exported folder alone) is not loaded by the
    driver to make it an MLflow model: its run says why it has none."""
    from ray import tune

    from sweeps.transfer import CheckpointTransfer
    from sweeps.trial_runs import TrialRuns

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("earlier")
    runs = TrialRuns(uri, exp, "replicate", "earlier", {})
    runs.runs["t1"] = run_id = client.create_run(exp).info.run_id
    (tmp_path / "checkpoint" / "model").mkdir(parents=True)
    (tmp_path / "checkpoint" / "model" / "gloss_card.json").write_text("{}")
    CheckpointTransfer(runs).model("t1", tune.Checkpoint.from_directory(str(tmp_path / "checkpoint")))
    tags = client.get_run(run_id).data.tags
    assert "model/ has no MLmodel" in tags["model_error"] and "model_uri" not in tags
