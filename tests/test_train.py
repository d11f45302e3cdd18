"""The single training run behind `gloss train`: tiny local encoders, data errors, and one real MiniLM run."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from gloss_cli import app
from gloss_core.data import DataError, load_csv_splits
from gloss_core.models import TextClassifier, load_tokenizer, resolve_model_path, tiny_bert
from gloss_core.synthetic import synthetic_splits
from gloss_core.train import TrainConfig, balanced_weights, train

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A random-initialised 2-layer BERT saved as a local Hugging Face folder, with MiniLM's tokenizer."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    tiny_bert().save_pretrained(folder)
    load_tokenizer("minilm").save_pretrained(folder)
    return str(folder)


def test_bundled_minilm_resolves_offline():
    path = Path(resolve_model_path("minilm"))
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def test_forward_returns_logits_and_embeddings(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    batch = tok(["one text", "a second, longer text"], padding=True, return_tensors="pt")
    for pooling in ("cls", "mean"):
        model = TextClassifier.from_pretrained(tiny_model_dir, num_classes=3, pooling=pooling)
        logits, emb = model(**batch)
        assert logits.shape == (2, 3) and emb.shape == (2, 32)
    with pytest.raises(ValueError, match="pooling"):
        TextClassifier.from_pretrained(tiny_model_dir, num_classes=3, pooling="max")


@pytest.mark.parametrize("loss", ["ce", "gloss", "scl"])
def test_tiny_run_is_reproducible(tiny_model_dir, loss):
    config = TrainConfig(model=tiny_model_dir, loss=loss, epochs=2, batch_size=16, lr=1e-3, sigma="sqrt" if loss == "gloss" else 1.0)
    seen = []
    first = train(config, report=seen.append)
    second = train(config)
    assert [h["epoch"] for h in seen] == [1, 2]
    for key in ("val_macro_f1", "test_macro_f1", "test_accuracy", "best_epoch"):
        assert first[key] == second[key], key
    assert [h["train_loss"] for h in first["history"]] == [h["train_loss"] for h in second["history"]]
    assert first["val_macro_f1"] == max(h["val_macro_f1"] for h in first["history"])
    assert set(first["seeds"]) == {"data_order", "init", "dropout", "mask"}


def test_cli_train_writes_metrics(tiny_model_dir, tmp_path):
    out = tmp_path / "metrics.json"
    result = CliRunner().invoke(
        app, ["train", "--model", tiny_model_dir, "--epochs", "1", "--batch-size", "16", "--output", str(out)]
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())
    assert metrics["config"]["model"] == tiny_model_dir and 0.0 <= metrics["test_macro_f1"] <= 1.0
    assert "test_macro_f1" in result.output
    bad = CliRunner().invoke(app, ["train", "--loss", "focal"])
    assert bad.exit_code != 0 and "focal" in bad.output


def _write(folder: Path, name: str, text: str):
    (folder / f"{name}.csv").write_text(text, encoding="utf-8")


def test_csv_errors_name_file_row_and_column(tmp_path):
    good = "text,label\na,0\nb,1\n"
    for name in ("train", "val", "test"):
        _write(tmp_path, name, good)
    assert load_csv_splits(tmp_path).num_classes == 2
    _write(tmp_path, "val", "text,label\na,0\nc,7\n")
    with pytest.raises(DataError, match=r"val\.csv, column 'label': label\(s\) \['7'\] absent from train"):
        load_csv_splits(tmp_path)
    _write(tmp_path, "val", good)
    _write(tmp_path, "test", "txt,label\na,0\n")
    with pytest.raises(DataError, match=r"test\.csv: missing column\(s\) \['text'\]"):
        load_csv_splits(tmp_path)
    _write(tmp_path, "test", "text,label\na,0\n ,1\n")
    with pytest.raises(DataError, match=r"test\.csv, row 3, column 'text': empty text"):
        load_csv_splits(tmp_path)
    _write(tmp_path, "test", good)
    _write(tmp_path, "train", "text,label\na,0\nb,0\n")
    with pytest.raises(DataError, match="single class"):
        load_csv_splits(tmp_path)
    (tmp_path / "train.csv").unlink()
    with pytest.raises(DataError, match=r"train\.csv: file not found"):
        load_csv_splits(tmp_path)


def test_synthetic_corpus_is_deterministic():
    a, b = synthetic_splits(num_classes=3, seed=4), synthetic_splits(num_classes=3, seed=4)
    assert a.train.texts == b.train.texts and torch.equal(a.train.labels, b.train.labels)
    assert synthetic_splits(num_classes=3, seed=5).train.texts != a.train.texts
    assert set(a.train.labels.tolist()) == {0, 1, 2}


def test_balanced_weights_match_sklearn():
    from sklearn.utils.class_weight import compute_class_weight

    labels = torch.tensor([0, 0, 0, 1, 2, 2])
    expected = compute_class_weight("balanced", classes=np.array([0, 1, 2]), y=labels.numpy())
    torch.testing.assert_close(balanced_weights(labels, 3), torch.tensor(expected, dtype=torch.float32))


@pytest.mark.slow
def test_minilm_on_mr_beats_the_majority_class():
    config = TrainConfig(data=str(SHARED_DATA / "MR"), limit=320, loss="gloss", epochs=2, batch_size=32, lr=5e-5)
    result = train(config)
    majority_macro_f1 = result["majority_val_accuracy"] / 2  # one class predicted: F1 of the other is 0
    assert result["val_macro_f1"] > max(0.6, majority_macro_f1 + 0.2), result


def test_early_stopping_patience(tiny_model_dir):
    # lr = 0: validation never improves after epoch 1, so patience 2 stops after epoch 3
    result = train(TrainConfig(model=tiny_model_dir, loss="ce", epochs=10, patience=2, lr=0.0, batch_size=64))
    assert [h["epoch"] for h in result["history"]] == [1, 2, 3]
    assert result["best_epoch"] == 1
