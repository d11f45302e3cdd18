"""The single training run behind `gloss train`: tiny local encoders, data errors, and one real MiniLM run."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from gloss_cli import app
from gloss_core.models import TextClassifier, load_tokenizer, resolve_model_path
from gloss_core.data.synthetic import synthetic_splits
from gloss_core.config import TrainConfig
from gloss_core.train import train
from gloss_core.training.build import balanced_weights

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


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
    first = train(config, report=lambda metrics, folder: seen.append(metrics))
    second = train(config)
    assert [h.epoch for h in seen] == [1, 2]
    for key in ("val_macro_f1", "test_macro_f1", "test_accuracy", "best_epoch"):
        assert first.metrics()[key] == second.metrics()[key], key
    assert [h.metrics["train_loss"] for h in first.history] == [h.metrics["train_loss"] for h in second.history]
    assert first.metrics()["val_macro_f1"] == max(h.metrics["val_macro_f1"] for h in first.history)
    assert set(first.seeds) == {"data_order", "init", "dropout", "mask"}


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
    majority_macro_f1 = result.metrics()["majority_val_accuracy"] / 2  # one class predicted: F1 of the other is 0
    assert result.metrics()["val_macro_f1"] > max(0.6, majority_macro_f1 + 0.2), result


def test_early_stopping_patience(tiny_model_dir):
    # lr = 0: validation never improves after epoch 1, so patience 2 stops after epoch 3
    result = train(TrainConfig(model=tiny_model_dir, loss="ce", epochs=10, patience=2, lr=0.0, batch_size=64))
    assert [h.epoch for h in result.history] == [1, 2, 3]
    assert result.best_epoch == 1


def _same_run(a, b):
    for key in ("best_epoch", "epochs_run", "val_macro_f1", "val_accuracy", "test_macro_f1", "test_accuracy",
                "test_macro_silhouette", "test_micro_silhouette"):
        assert a.metrics().get(key) == b.metrics().get(key), key
    assert [h.metrics["train_loss"] for h in a.history] == [h.metrics["train_loss"] for h in b.history]
    assert [h.metrics.get("val_macro_f1") for h in a.history] == [h.metrics.get("val_macro_f1") for h in b.history]


@pytest.mark.parametrize("loss,protocol", [("gloss", "integrated"), ("gloss", "standalone")])
def test_resume_from_checkpoint_ends_with_the_same_metrics(tiny_model_dir, tmp_path, loss, protocol):
    config = TrainConfig(model=tiny_model_dir, loss=loss, protocol=protocol, epochs=3, batch_size=16, lr=1e-3,
                         sigma="sqrt", scheduler="linear", warmup_ratio=0.2, probe_epochs=5)
    saved = {}

    def keep_epoch_2(metrics, folder):
        assert folder is not None
        if metrics.epoch == 2:
            shutil.copytree(folder, tmp_path / "ckpt")
            saved["metrics"] = metrics

    full = train(config, report=keep_epoch_2)
    state = torch.load(tmp_path / "ckpt" / "state.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "loss", "rng", "epoch", "best", "best_state", "sigma_value"} <= set(state)
    assert state["epoch"] == 2
    resumed_epochs = []
    resumed = train(config, report=lambda m, f: resumed_epochs.append(m.epoch), resume_from=str(tmp_path / "ckpt"))
    assert resumed_epochs == [3]
    _same_run(full, resumed)
    assert resumed.metrics()["sigma"] == full.metrics()["sigma"]


def test_best_epoch_weights_are_restored_for_test(tiny_model_dir, tmp_path):
    config = TrainConfig(model=tiny_model_dir, loss="ce", epochs=4, batch_size=16, lr=3e-3, seed=1)
    states = {}
    result = train(config, report=lambda m, f: states.update({m.epoch: torch.load(Path(f) / "state.pt", weights_only=True)}))
    assert result.best_epoch < result.epochs_run, "precondition: the best epoch is not the last one"
    tokenizer = load_tokenizer(tiny_model_dir)
    from gloss_core.data.batching import Batches
    from gloss_core.data import load_splits
    from gloss_core.training.metrics import classification_metrics

    splits = load_splits(config)
    test = Batches(splits.test, tokenizer, 16)

    def test_f1(weights):
        model = TextClassifier.from_pretrained(tiny_model_dir, splits.num_classes)
        model.load_state_dict(weights)
        model.eval()
        with torch.no_grad():
            logits = torch.cat([model(**inputs)[0] for inputs, _ in test])
        return classification_metrics(logits, splits.test.labels)["macro_f1"]

    last = states[result.epochs_run]
    assert test_f1(last["best_state"]) == pytest.approx(result.metrics()["test_macro_f1"], abs=1e-12)
    assert torch.equal(last["best_state"]["head.weight"], states[result.best_epoch]["model"]["head.weight"])
    assert not torch.equal(last["model"]["head.weight"], last["best_state"]["head.weight"])


@pytest.mark.parametrize("loss", ["gloss", "scl", "triplet", "cosine"])
def test_standalone_protocol_trains_encoder_then_a_linear_probe(tiny_model_dir, loss):
    result = train(TrainConfig(model=tiny_model_dir, protocol="standalone", loss=loss, epochs=2, batch_size=16,
                               lr=1e-3, probe_epochs=30, probe_patience=5))
    assert 1 <= result.best_epoch <= 2
    for key in ("val_macro_silhouette", "val_micro_silhouette", "test_macro_silhouette", "probe_best_epoch",
                "val_macro_f1", "test_macro_f1", "test_accuracy"):
        assert key in result.metrics(), key
    assert result.best_epoch == max(result.history, key=lambda h: h.metrics["val_macro_silhouette"]).epoch
    assert result.metrics()["test_accuracy"] > 0.8  # the synthetic topics are easy to separate
    assert result.metrics()["val_macro_f1"] == pytest.approx(result.metrics()["probe_val_macro_f1"])  # standardisation folded in


def test_timing_breakdown_and_artifacts(tiny_model_dir, tmp_path):
    result = train(TrainConfig(model=tiny_model_dir, loss="gloss", epochs=2, batch_size=16, artifacts_dir=str(tmp_path)))
    phases = result.timing_per_epoch_s
    assert set(phases) >= {"data", "forward", "graph", "propagation", "loss", "backward", "optimizer"}
    assert phases["graph"] > 0 and phases["propagation"] > 0 and phases["forward"] > 0
    assert sum(phases.values()) <= result.metrics()["time_per_epoch_s"] * 1.01
    W1, W2 = np.load(tmp_path / "adjacency_epoch001.npy"), np.load(tmp_path / "adjacency_epoch002.npy")
    assert W1.shape == (64, 64) and np.allclose(np.diag(W1), 0) and not np.array_equal(W1, W2)
    emb = np.load(tmp_path / "test_embeddings.npy")
    assert emb.shape == (len(np.load(tmp_path / "test_labels.npy")), 32)


def test_hf_source_through_the_config(tiny_model_dir, tmp_path):
    for name in ("train", "val", "test"):
        (tmp_path / f"{name}.csv").write_text("sentence,label\n" + "".join(
            f"{w} film {i},{i % 2}\n" for i, w in enumerate(["good", "bad", "fine", "poor"] * 4)))
    result = train(TrainConfig(model=tiny_model_dir, data=f"hf:{tmp_path}", hf_splits="train,validation,test",
                               text_column="sentence", loss="ce", epochs=1, batch_size=8))
    assert 0.0 <= result.metrics()["test_macro_f1"] <= 1.0


def test_classification_metrics_match_sklearn():
    from sklearn.metrics import accuracy_score, f1_score

    from gloss_core.training.metrics import accuracy_and_macro_f1, classification_metrics

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 300)
    pred = np.where(rng.random(300) < 0.6, y, rng.integers(0, 5, 300))
    pred[pred == 3] = 0  # class 3 never predicted; class 4 predicted, never true
    got = accuracy_and_macro_f1(y, pred)
    assert got["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-15)
    assert got["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro", zero_division=0), abs=1e-15)
    names, guessed = np.array(["pos", "neg", "neu"])[y % 3], np.array(["pos", "neg", "neu"])[pred % 3]
    assert accuracy_and_macro_f1(names, guessed)["macro_f1"] == pytest.approx(
        f1_score(names, guessed, average="macro"), abs=1e-15)
    logits = torch.nn.functional.one_hot(torch.as_tensor(pred), 5).double()
    assert classification_metrics(logits, torch.as_tensor(y)) == got
    with pytest.raises(ValueError, match="one length"):
        accuracy_and_macro_f1(y, pred[:-1])


def test_silhouette_samples_match_sklearn_across_row_blocks(monkeypatch):
    from sklearn.metrics import silhouette_samples as sklearn_silhouette_samples

    from gloss_core.training import metrics

    monkeypatch.setattr(metrics, "SILHOUETTE_ROWS", 7)  # 60 rows in 9 blocks, the last one short
    g = torch.Generator().manual_seed(1)
    points = torch.randn(60, 6, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (60,), generator=g)
    labels[-1] = 9  # a singleton class: 0
    points[10:15] = points[10]  # duplicates: zero distances inside a block and across blocks
    labels[10:15] = 2
    got = metrics.silhouette_samples(points, labels).numpy()
    np.testing.assert_allclose(got, sklearn_silhouette_samples(points.numpy(), labels.numpy()), rtol=1e-10,
                               atol=1e-13)
    assert got[-1] == 0.0
    same = torch.zeros(4, 3, dtype=torch.float64)  # a = b = 0 everywhere: 0, as scikit-learn gives
    assert metrics.silhouette_samples(same, torch.tensor([0, 0, 1, 1])).tolist() == [0.0] * 4


def test_silhouettes_match_oracle():
    import oracles
    from gloss_core.training.metrics import silhouettes

    g = torch.Generator().manual_seed(0)
    emb = torch.randn(30, 5, generator=g, dtype=torch.float64)
    labels = torch.tensor([0] * 12 + [1] * 10 + [2] * 7 + [3])  # class 3 is a singleton, skipped in macro
    got = silhouettes(emb, labels)
    macro, micro = oracles.silhouettes(emb.numpy(), labels.tolist())
    assert got["macro_silhouette"] == pytest.approx(macro, rel=1e-10)
    assert got["micro_silhouette"] == pytest.approx(micro, rel=1e-10)
    assert np.isnan(silhouettes(emb, torch.zeros(30, dtype=torch.long))["macro_silhouette"])


def test_schedules():
    from gloss_core.training.build import make_scheduler

    def lrs(**kw):
        config = TrainConfig(epochs=4, lr=1.0, **kw)
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = make_scheduler(config, opt, steps_per_epoch=10)
        out = []
        for _ in range(40):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    assert set(lrs()) == {1.0}
    multistep = lrs(scheduler="multistep", lr_milestone=2, lr_decay=0.1)
    assert multistep[19] == 1.0 and multistep[20] == pytest.approx(0.1)
    linear = lrs(scheduler="linear", warmup_ratio=0.25)
    assert linear[0] == pytest.approx(0.1) and linear[9] == pytest.approx(1.0) and linear[39] == pytest.approx(1 / 30)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="loss 'triplet' is not a loss of the integrated protocol"):
        TrainConfig(loss="triplet")
    with pytest.raises(ValueError, match="protocol must be one of"):
        TrainConfig(protocol="joint")
    with pytest.raises(ValueError, match="unknown config key"):
        TrainConfig.from_dict({"lr": 1e-3, "learning_rate": 1})
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        TrainConfig(batch_size=0)


def test_cli_checkpoint_dir_and_resume(tiny_model_dir, tmp_path):
    args = ["train", "--model", tiny_model_dir, "--epochs", "2", "--batch-size", "16", "--loss", "scl"]
    first = CliRunner().invoke(app, args + ["--checkpoint-dir", str(tmp_path / "ck"), "--output", str(tmp_path / "a.json")])
    assert first.exit_code == 0, first.output
    assert (tmp_path / "ck" / "state.pt").is_file()
    again = CliRunner().invoke(app, args + ["--epochs", "3", "--resume", str(tmp_path / "ck"), "--output", str(tmp_path / "b.json")])
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "b.json").read_text())["epochs_run"] == 3
    missing = CliRunner().invoke(app, ["train", "--data", str(tmp_path / "nowhere"), "--model", tiny_model_dir])
    assert missing.exit_code == 2 and "data folder not found" in missing.output


def test_linear_probe_separates_nearly_constant_features():
    from gloss_core.training.probe import train_linear_probe

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(200) % 2
    # a huge shared offset and a class signal in the fourth decimal: raw Adam steps would not see it
    emb = 5.0 + 1e-4 * (labels[:, None].float() * 2 - 1) + 2e-5 * torch.randn(200, 8, generator=g)
    head, info = train_linear_probe(emb[:150], labels[:150], emb[150:], labels[150:], 2, seed=0)
    with torch.no_grad():
        accuracy = (head(emb[150:]).argmax(dim=1) == labels[150:]).float().mean().item()
    assert accuracy > 0.95 and info["probe_val_macro_f1"] > 0.95


@pytest.mark.parametrize("architecture", ["roberta", "distilbert"])
def test_other_encoder_families_train_from_local_folders(tmp_path, architecture):
    from tiny_models import tiny_encoder

    tiny_encoder(architecture).save_pretrained(tmp_path)
    load_tokenizer("minilm").save_pretrained(tmp_path)
    result = train(TrainConfig(model=str(tmp_path), loss="gloss", epochs=1, batch_size=16, pooling="mean"))
    assert result.epochs_run == 1 and 0.0 <= result.metrics()["test_macro_f1"] <= 1.0


def test_bf16_autocast_run_on_cpu(tiny_model_dir):
    result = train(TrainConfig(model=tiny_model_dir, loss="gloss", epochs=1, batch_size=16, precision="bf16"))
    assert np.isfinite(result.history[0].metrics["train_loss"])


@pytest.mark.parametrize("sigma", [1.5, "sqrt"])
def test_a_resumed_run_applies_sigma_scale_once(tiny_model_dir, tmp_path, sigma):
    config = TrainConfig(model=tiny_model_dir, loss="gloss", epochs=3, batch_size=16, lr=1e-3, sigma=sigma,
                         sigma_scale=2.0)

    def keep_epoch_1(metrics, folder):
        if metrics.epoch == 1:
            shutil.copytree(folder, tmp_path / "ckpt")

    full = train(config, report=keep_epoch_1)
    if sigma == 1.5:
        assert full.metrics()["sigma"] == pytest.approx(3.0)
    resumed = train(config, report=lambda m, f: None, resume_from=str(tmp_path / "ckpt"))
    assert resumed.metrics()["sigma"] == full.metrics()["sigma"]
    _same_run(full, resumed)


def test_probe_epochs_must_be_positive():
    with pytest.raises(ValueError, match="probe_epochs must be >= 1, got 0"):
        TrainConfig(protocol="standalone", loss="scl", probe_epochs=0)


def test_limit_subsets_depend_on_the_subset_seed_not_the_run_seed():
    from gloss_core.data import load_splits

    mr = str(SHARED_DATA / "MR")
    a, b = load_splits(TrainConfig(data=mr, limit=64, seed=1)), load_splits(TrainConfig(data=mr, limit=64, seed=2))
    for split in ("train", "val", "test"):
        assert getattr(a, split).texts == getattr(b, split).texts, split
    other = load_splits(TrainConfig(data=mr, limit=64, seed=1, subset_seed=7))
    assert other.train.texts != a.train.texts


def _fp32_bytes(model_dir: str) -> int:
    model = TextClassifier.from_pretrained(model_dir, num_classes=2)
    return sum(t.numel() * 4 for t in model.state_dict().values())


def test_checkpoints_hold_one_copy_of_the_weights_and_the_best_waits_in_one_file(tiny_model_dir, tmp_path):
    from gloss_core.training.checkpoint import BestWeights

    # lr 3e-3 on seed 1: the best epoch (2) is behind the last (4), as in the best-epoch test above
    config = TrainConfig(model=tiny_model_dir, loss="ce", epochs=4, batch_size=16, lr=3e-3, seed=1)
    best = BestWeights(tmp_path / "best.safetensors")
    writes, sizes, saved = [], {}, {}
    original = best.save
    best.save = lambda weights, epoch: (writes.append(epoch), original(weights, epoch))[1]

    def keep(metrics, folder):
        sizes[metrics.epoch] = (Path(folder) / "state.pt").stat().st_size
        if metrics.epoch == 3:
            shutil.copytree(folder, tmp_path / "ckpt3")
        saved[metrics.epoch] = torch.load(Path(folder) / "state.pt", weights_only=True)

    full = train(config, report=keep, best_weights=best)
    assert full.best_epoch < full.epochs_run, "precondition: the best epoch is behind the last"
    limit = 3.1 * _fp32_bytes(tiny_model_dir)
    assert max(sizes.values()) <= limit, (sizes, limit)
    assert all(state["best_state"] is None for state in saved.values())  # never a second copy inside
    assert writes and writes == sorted(set(writes)) and set(writes) <= {h.best_epoch for h in full.history}
    assert len(writes) <= len({h.best_epoch for h in full.history})  # only when the best moves
    resumed = train(config, report=lambda m, f: None, resume_from=str(tmp_path / "ckpt3"), best_weights=best)
    _same_run(full, resumed)


def test_a_truncated_checkpoint_is_named(tiny_model_dir, tmp_path):
    from gloss_core.training.checkpoint import CheckpointError, load_checkpoint

    (tmp_path / "state.pt").write_bytes(b"PK\x03\x04 not a whole checkpoint")
    with pytest.raises(CheckpointError, match="state.pt: the checkpoint cannot be read"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("protocol,loss", [("integrated", "gloss"), ("standalone", "scl")])
def test_a_saved_model_gives_the_runs_test_predictions(tiny_model_dir, tmp_path, protocol, loss):
    from gloss_core.data import load_splits
    from gloss_core.export import load_model
    from gloss_core.training.metrics import classification_metrics

    config = TrainConfig(model=tiny_model_dir, loss=loss, protocol=protocol, epochs=2, batch_size=16, lr=1e-3,
                         probe_epochs=20, save_model=str(tmp_path / "model"))
    result = train(config)
    saved = load_model(tmp_path / "model")
    assert saved.labels == ["class0", "class1"] and saved.card["config"]["loss"] == loss
    assert saved.card["metrics"]["test_accuracy"] == result.metrics()["test_accuracy"]
    assert {"torch", "transformers"} <= set(saved.card["package_versions"])
    test = load_splits(config).test
    probabilities = saved.predict_proba(test.texts)
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(len(test.texts)))
    got = classification_metrics(probabilities, test.labels)
    assert got["accuracy"] == result.metrics()["test_accuracy"] and got["macro_f1"] == result.metrics()["test_macro_f1"]
    config_json = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config_json["id2label"] == {"0": "class0", "1": "class1"}
    assert (tmp_path / "model" / "model.safetensors").is_file()


def test_checkpoint_budget_bounds_the_time_spent_on_checkpoints(tiny_model_dir, monkeypatch):
    import gloss_core.training.budget as budget
    from gloss_core.training.build import build_run

    monkeypatch.setitem(budget.CHECKPOINT_COST, "s_per_model_byte", 2e-9)
    run = build_run(TrainConfig(model=tiny_model_dir, loss="ce", epochs=5, checkpoint_budget=0.05))
    assert run.budget.cost_s == pytest.approx(2e-9 * run.model_bytes)  # this process's measured cost
    now = {"t": 100.0}
    monkeypatch.setattr(budget.time, "perf_counter", lambda: now["t"])
    plan = run.budget
    plan.unsaved_since, plan.cost_s = 100.0, 0.0
    assert plan.due(1, last=False)  # free: always due
    plan.cost_s = 1.0  # a checkpoint costs 1 s: 19 s of unsaved work before the next
    now["t"] = 110.0
    assert not plan.due(1, last=False)
    now["t"] = 119.5
    assert plan.due(1, last=False)  # 1 / (19.5 + 1) < 5%
    assert not plan.due(1, last=True)  # nothing left to resume after the last epoch
    plan.spent(119.5, 121.5)  # a 2 s checkpoint: the next waits for 38 s of unsaved work
    assert budget.CHECKPOINT_COST["s_per_model_byte"] == pytest.approx(2.0 / run.model_bytes)
    now["t"] = 121.5 + 37.0
    assert not plan.due(2, last=False)
    now["t"] = 121.5 + 38.5
    assert plan.due(2, last=False)
    every = budget.CheckpointBudget(every=2, budget=None, model_bytes=run.model_bytes)  # no budget: every due epoch
    assert every.due(2, last=True) and not every.due(3, last=False)


def test_a_budgeted_run_checkpoints_first_never_last_and_resumes_exactly(tiny_model_dir, tmp_path, monkeypatch):
    import gloss_core.training.budget as budget

    monkeypatch.setitem(budget.CHECKPOINT_COST, "s_per_model_byte", 0.0)  # checkpoints cost nothing: every due one
    folders = {}

    def report(metrics, folder):
        if folder is not None:
            folders[metrics.epoch] = Path(folder, "state.pt").read_bytes()

    config = TrainConfig(model=tiny_model_dir, loss="gloss", epochs=3, checkpoint_budget=0.05, batch_size=16)
    full = train(config, report)
    assert 1 in folders and 3 not in folders
    (tmp_path / "state.pt").write_bytes(folders[1])
    _same_run(full, train(config, resume_from=str(tmp_path)))


# ---- every kill point of a checkpoint is resumable ----------------------------------------------------------

class Killed(BaseException):
    """A SIGKILL as far as the run can tell: nothing catches it."""


# seed 1, lr 3e-3 on 64 noisy rows: the best epochs run 1, 1, 3, 3, 5, 5, so each checkpoint (every
# second epoch) names another epoch's file and the one before names a third
KILL_RUN = ["--loss", "ce", "--epochs", "6", "--batch-size", "16", "--lr", "0.003", "--seed", "1",
            "--synthetic-size", "64", "--max-length", "16", "--synthetic-noise", "0.3", "--checkpoint-every", "2"]


def _kill_config(model_dir: str) -> TrainConfig:
    return TrainConfig(model=model_dir, loss="ce", epochs=6, batch_size=16, lr=3e-3, seed=1, synthetic_size=64,
                       max_length=16, synthetic_noise=0.3, checkpoint_every=2)


def _epoch_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("best.epoch*"))


def test_a_kill_at_any_step_of_a_checkpoint_resumes_to_the_same_run(tiny_model_dir, tmp_path, monkeypatch):
    """Each step in turn (the best weights' file, the old files' deletion, `state.pt`, the hand-over:
    killed halfway through its copy) is killed at each checkpoint; the run resumed from the last
    checkpoint handed over (or from scratch) ends as an uninterrupted one."""
    import gloss_core.training.engine as engine
    from gloss_core.training.checkpoint import BestWeights

    config, steps, kill = _kill_config(tiny_model_dir), [], {"at": None}

    def step(name):
        steps.append(name)
        if len(steps) == kill["at"]:
            raise Killed(name)

    def traced(name, original):
        return lambda *args, **kwargs: (step(name), original(*args, **kwargs))[1]

    monkeypatch.setattr(BestWeights, "save", traced("best weights", BestWeights.save))
    monkeypatch.setattr(BestWeights, "keep", traced("old files go", BestWeights.keep))
    monkeypatch.setattr(engine, "save_checkpoint", traced("state.pt", engine.save_checkpoint))

    def tune(store: Path, handed: list):
        def report(metrics, folder):
            if folder is None:
                return
            copy = store / f"checkpoint_{len(list(store.glob('*'))):03d}"
            copy.mkdir(parents=True)
            (copy / "state.pt").write_bytes(Path(folder, "state.pt").read_bytes()[:1000])  # half a copy
            step("hand-over")
            shutil.copy2(Path(folder, "state.pt"), copy / "state.pt")
            handed.append(str(copy))  # Tune's report returns: the checkpoint is the trial's latest
        return report

    full = train(config, report=tune(tmp_path / "full", []), best_weights=BestWeights(tmp_path / "full-best" / "best.safetensors"))
    sequence = list(steps)
    assert sequence.count("best weights") == 3 and sequence.count("hand-over") == 3, sequence  # precondition
    for at in range(1, len(sequence) + 1):
        steps.clear()
        kill["at"], handed, location = at, [], tmp_path / f"best-{at}" / "best.safetensors"
        with pytest.raises(Killed):
            train(config, report=tune(tmp_path / f"tune-{at}", handed), best_weights=BestWeights(location))
        kill["at"] = None
        resumed = train(config, report=tune(tmp_path / f"tune-{at}", handed), best_weights=BestWeights(location),
                        resume_from=handed[-1] if handed else None)
        _same_run(full, resumed)
        assert len(_epoch_files(location.parent)) <= 2, (sequence[at - 1], _epoch_files(location.parent))
        BestWeights(location).delete()
        assert not list(location.parent.iterdir())


def test_the_best_weights_keep_at_most_two_files_and_delete_takes_them_all(tmp_path):
    from gloss_core.training.checkpoint import BestWeights, CheckpointError

    weights = {"w": torch.arange(4.0)}
    best = BestWeights(tmp_path / "trial_1.safetensors")
    (tmp_path / "trial_1.epoch0009.safetensors.tmp").write_bytes(b"half")  # what a killed attempt left
    (tmp_path / "trial_10.epoch0001.safetensors").write_bytes(b"another trial's")
    for epoch, keep in ((1, {1}), (3, {1, 3}), (5, {3, 5})):
        best.save(weights, epoch)
        best.keep(keep)
    assert sorted(p.name for p in tmp_path.glob("trial_1.*")) == ["trial_1.epoch0003.safetensors",
                                                                 "trial_1.epoch0005.safetensors"]
    assert torch.equal(BestWeights(tmp_path / "trial_1.safetensors").load(5)["w"], weights["w"])
    with pytest.raises(CheckpointError, match="epoch0001.safetensors: the best epoch's weights are missing"):
        best.load(1)
    best.delete()
    assert [p.name for p in tmp_path.iterdir()] == ["trial_10.epoch0001.safetensors"]


def test_a_checkpoint_of_one_best_weights_file_still_resumes(tmp_path):
    from safetensors.torch import save_file

    from gloss_core.training.checkpoint import BestWeights

    save_file({"w": torch.ones(2)}, str(tmp_path / "best.safetensors"), metadata={"epoch": "2"})  # as gloss wrote it
    best = BestWeights(tmp_path / "best.safetensors")
    assert torch.equal(best.load(2)["w"], torch.ones(2))
    best.keep({2})
    assert [p.name for p in tmp_path.iterdir()] == ["best.epoch0002.safetensors"]


@pytest.mark.parametrize("kill_at", ["copy", "rename the old away", "rename the new in", "delete the old"])
def test_an_interrupted_checkpoint_dir_copy_leaves_a_good_checkpoint(tmp_path, monkeypatch, kill_at):
    import os

    from gloss_core.cli import _keep_checkpoint, _recover_checkpoint_dir
    from gloss_core.training.checkpoint import BestWeights, load_checkpoint, save_checkpoint

    kept = tmp_path / "kept"
    save_checkpoint(kept, {"epoch": 2})
    BestWeights(kept / "best.safetensors").save({"w": torch.ones(1)}, 1)
    save_checkpoint(tmp_path / "next", {"epoch": 4})
    BestWeights(kept / "best.safetensors").save({"w": torch.ones(1)}, 3)  # written before the copy, as Run.state does
    copytree, rename, rmtree = shutil.copytree, os.rename, shutil.rmtree

    def copy(source, destination, **kwargs):
        if kill_at == "copy" and ".tmp-" in str(destination):
            Path(destination).mkdir()
            (Path(destination) / "state.pt").write_bytes(b"")  # the 0-byte state.pt of a killed copy
            raise Killed(kill_at)
        return copytree(source, destination, **kwargs)

    def move(source, destination):
        if (kill_at, ".old-" in str(destination)) in (("rename the old away", True), ("rename the new in", False)):
            raise Killed(kill_at)
        return rename(source, destination)

    def remove(path, **kwargs):
        if kill_at == "delete the old" and ".old-" in str(path):
            raise Killed(kill_at)
        return rmtree(path, **kwargs)

    monkeypatch.setattr(shutil, "copytree", copy)
    monkeypatch.setattr(os, "rename", move)
    monkeypatch.setattr(shutil, "rmtree", remove)
    with pytest.raises(Killed):
        _keep_checkpoint(tmp_path / "next", kept)
    monkeypatch.undo()
    _recover_checkpoint_dir(kept)
    epoch = load_checkpoint(kept)["epoch"]
    assert epoch == (2 if kill_at in ("copy", "rename the old away") else 4)
    assert torch.equal(BestWeights(kept / "best.safetensors").load(1 if epoch == 2 else 3)["w"], torch.ones(1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept", "next"]  # no leftover


def test_gloss_train_killed_while_keeping_a_checkpoint_resumes_to_the_same_run(tiny_model_dir, tmp_path, monkeypatch):
    import os

    runner, kept = CliRunner(), tmp_path / "kept"
    base = ["train", "--model", tiny_model_dir, *KILL_RUN]
    full = runner.invoke(app, [*base, "--output", str(tmp_path / "full.json")])
    assert full.exit_code == 0, full.output
    rename, renames = os.rename, []

    def move(source, destination):  # the second checkpoint's copy: killed with the kept folder renamed away
        if Path(destination) == kept:
            renames.append(source)
            if len(renames) == 2:
                raise Killed("between the renames")
        return rename(source, destination)

    monkeypatch.setattr(os, "rename", move)
    with pytest.raises(Killed):
        runner.invoke(app, [*base, "--checkpoint-dir", str(kept)], catch_exceptions=False)
    monkeypatch.undo()
    assert not kept.exists() and len(list(tmp_path.glob("kept.*"))) == 2  # the old and the whole new copy
    resumed = runner.invoke(app, [*base, "--checkpoint-dir", str(kept), "--resume", str(kept),
                                  "--output", str(tmp_path / "resumed.json")])
    assert resumed.exit_code == 0, resumed.output
    assert sorted(p.name for p in tmp_path.glob("kept*")) == ["kept"]
    a, b = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("full", "resumed"))
    for key in ("best_epoch", "epochs_run", "val_macro_f1", "test_macro_f1", "test_accuracy"):
        assert a[key] == b[key], key
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]
