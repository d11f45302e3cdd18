"""Every row of docs/bad-inputs.md: the case named there gets an error containing its excerpt."""

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bad_history_cases import cases as history_cases

from gloss_core.config import TrainConfig
from gloss_core.data import load_splits
from gloss_core.models import resolve_model_path
from sweeps.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
GLOSS = str(Path(sys.executable).with_name("gloss"))
DOC = REPO / "docs" / "bad-inputs.md"
GOOD = {
    "name": "ok", "datasets": {"x": {"data": "synthetic"}}, "models": {"m": {"model": "minilm"}},
    "losses": {"ce": {"loss": "ce", "space": {"lr": {"loguniform": [1e-5, 1e-3]}}}},
}


def rows() -> list[tuple[str, str]]:
    out = []
    for line in DOC.read_text().splitlines():
        match = re.match(r"\| `([\w-]+)` \|.*\| `(.+)` \|$", line)
        if match:
            out.append((match.group(1), match.group(2)))
    return out


def error_of(call) -> str:
    try:
        call()
    except Exception as err:  # noqa: BLE001 - the message is what is checked
        return str(err)
    raise AssertionError("no error raised")


def spec_error(tmp: Path, text: str | None = None, **changes) -> str:
    path = tmp / "spec.yaml"
    path.write_text(text if text is not None else yaml.safe_dump({**GOOD, **changes}))
    return error_of(lambda: load_spec(path))


def without(key: str) -> dict:
    return {k: v for k, v in GOOD.items() if k != key}


def csv_folder(tmp: Path, train="text,label\na,x\nb,y\n", val="text,label\na,x\nb,y\n",
               test="text,label\na,x\nb,y\n") -> str:
    folder = tmp / "data"
    folder.mkdir(exist_ok=True)
    for name, content in (("train", train), ("val", val), ("test", test)):
        (folder / f"{name}.csv").write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(folder)


def data_error(tmp: Path, **options) -> str:
    return error_of(lambda: load_splits(TrainConfig(**options)))


def cli(*args: str, cwd: Path | None = None, status: int = 2) -> str:
    done = subprocess.run([GLOSS, *args], capture_output=True, text=True, cwd=cwd, timeout=300)
    assert done.returncode == status, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    output = done.stdout + done.stderr
    assert "Traceback" not in output, output[-3000:]
    return re.sub(r"\s+", " ", re.sub(r"[│╭╮╰╯─]", " ", output))


def sweep_spec(tmp: Path, **changes) -> Path:
    """GOOD with its store and storage in `tmp`, then `changes`."""
    spec = {**GOOD, "name": "demo", "tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}",
            "storage_path": str(tmp / "rr"), **changes}
    path = tmp / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def sweep_cli(tmp: Path, *args: str, status: int = 2, **changes) -> str:
    return cli("sweep", "run", str(sweep_spec(tmp, **changes)), *args, cwd=tmp, status=status)


def thesis_survives(tmp: Path, marker: dict | None, *args: str) -> str:
    """A folder at storage_path/demo holding a user's notes: refused, and nothing is deleted."""
    folder = tmp / "rr" / "demo"
    (folder / "notes").mkdir(parents=True)
    (folder / "notes" / "thesis.txt").write_text("two years of work")
    if marker is not None:
        (folder / "gloss-sweep.json").write_text(json.dumps(marker))
    message = sweep_cli(tmp, *args)
    assert (folder / "notes" / "thesis.txt").read_text() == "two years of work"
    return message


def resume_earlier_format(tmp: Path) -> str:
    """A sweep folder an earlier version wrote (its marker has no state format): never resumed."""
    folder = tmp / "rr" / "demo"
    (folder / "search").mkdir(parents=True)
    (folder / "gloss-sweep.json").write_text(json.dumps({"sweep": "demo", "spec_sha256": "x"}))
    message = sweep_cli(tmp, "--resume")
    assert (folder / "search").is_dir()  # nothing deleted
    return message


def earlier_checkpoint(tmp: Path) -> str:
    """A checkpoint whose history holds the flat dicts of an earlier version."""
    import torch

    from gloss_core.training.build import build_run

    run = build_run(TrainConfig(epochs=1, synthetic_size=16))
    state = run.state()
    state["history"] = [{"epoch": 1, "train_loss": 0.5, "val_macro_f1": 0.5}]
    (tmp / "ckpt").mkdir()
    torch.save(state, tmp / "ckpt" / "state.pt")
    return cli("train", "--epochs", "2", "--synthetic-size", "16", "--resume", str(tmp / "ckpt"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def billion_laughs() -> str:
    lines = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def truncated_checkpoint(tmp: Path) -> str:
    folder = tmp / "ckpt"
    folder.mkdir()
    (folder / "state.pt").write_bytes(b"PK\x03\x04 truncated")
    return cli("train", "--resume", str(folder), "--epochs", "2")


def empty_experiment(tmp: Path) -> str:
    from mlflow.tracking import MlflowClient

    MlflowClient(f"sqlite:///{tmp / 'm.db'}").create_experiment("empty", artifact_location=str(tmp / "art"))
    return cli("analyze", "report", "-e", "empty", "--out", str(tmp / "r"), "--tracking-uri", f"sqlite:///{tmp / 'm.db'}")


def labels_like_text(tmp: Path) -> str:
    rows = "".join(f"text {i},free text number {i}\n" for i in range(200))
    return data_error(tmp, data=csv_folder(tmp, train="text,label\n" + rows))


def split_is_a_folder(tmp: Path) -> str:
    folder = Path(csv_folder(tmp))
    (folder / "train.csv").unlink()
    (folder / "train.csv").mkdir()
    return data_error(tmp, data=str(folder))


def sweep_exists(tmp: Path) -> str:
    from sweeps.runner import SweepRunner

    spec = load_spec(REPO / "sweeps" / "specs" / "demo.yaml")
    runner = SweepRunner(spec, f"sqlite:///{tmp / 'mlflow.db'}", str(tmp / "ray_results"))
    runner.storage.mark("an earlier run")  # the sweep's own folder, from an earlier run
    return error_of(lambda: runner.run())


CASES = {
    "spec-file-missing": lambda t: error_of(lambda: load_spec(t / "nope.yaml")),
    "spec-not-yaml": lambda t: spec_error(t, "name: [unclosed"),
    "spec-not-mapping": lambda t: spec_error(t, "- a\n- b\n"),
    "spec-no-name": lambda t: spec_error(t, yaml.safe_dump(without("name"))),
    "spec-bad-name": lambda t: spec_error(t, name="my sweep!"),
    "spec-unknown-key": lambda t: spec_error(t, epochz=3),
    "spec-unknown-train-option": lambda t: spec_error(t, train={"lrr": 0.1}),
    "spec-grid-key-in-train": lambda t: spec_error(t, train={"seed": 3}),
    "spec-loss-of-other-protocol": lambda t: spec_error(t, losses={"x": {"loss": "triplet"}}),
    "spec-empty-range": lambda t: spec_error(t, losses={"ce": {"loss": "ce", "space": {"lr": {"loguniform": [1e-3, 1e-5]}}}}),
    "spec-two-distributions": lambda t: spec_error(
        t, losses={"ce": {"loss": "ce", "space": {"lr": {"uniform": [0, 1], "choice": [1]}}}}),
    "spec-zero-cpu": lambda t: spec_error(t, resources={"cpu": 0}),
    "spec-entry-resources": lambda t: spec_error(t, models={"m": {"model": "minilm", "resources": {"gpu": -1}}}),
    "spec-cuda-without-gpu": lambda t: spec_error(t, models={"m": {"model": "minilm", "device": "cuda"}}),
    "spec-bad-cell-value": lambda t: spec_error(t, datasets={"x": {"data": "synthetic", "batch_size": 0}}),
    "spec-no-seeds": lambda t: spec_error(t, seeds=[]),
    "spec-bad-mode": lambda t: spec_error(t, mode="maximize"),
    "spec-metric-not-measured": lambda t: spec_error(t, metric="val_loss"),
    "train-selection-not-measured": lambda t: cli("train", "--protocol", "standalone", "--loss", "scl",
                                                  "--selection-metric", "val_macro_f1"),
    "sweep-exists": sweep_exists,
    "data-folder-missing": lambda t: data_error(t, data="/no/such/folder"),
    "data-missing-column": lambda t: data_error(t, data=csv_folder(t, train="text,category\na,x\nb,y\n")),
    "data-empty-text": lambda t: data_error(t, data=csv_folder(t, train="text,label\n,x\nb,y\n"), empty_text="error"),
    "data-not-utf8": lambda t: data_error(t, data=csv_folder(t, val=b"text,label\n\xff,x\nb,y\n")),
    "data-label-absent-from-train": lambda t: data_error(t, data=csv_folder(t, test="text,label\na,x\nb,c\n")),
    "data-single-class": lambda t: data_error(t, data=csv_folder(t, train="text,label\na,x\nb,x\n")),
    "model-folder-missing": lambda t: error_of(lambda: resolve_model_path("./no/such/model")),
    "model-bad-pooling": lambda t: error_of(lambda: TrainConfig(pooling="max")),
    "cli-resume-and-restart": lambda t: cli("sweep", "run", str(REPO / "sweeps/specs/demo.yaml"), "--resume", "--restart",
                                            cwd=t),
    "cli-retry-without-resume": lambda t: cli("sweep", "run", str(REPO / "sweeps/specs/demo.yaml"), "--retry-failed",
                                              cwd=t),
    "cli-cells-match-nothing": lambda t: cli("sweep", "run", str(REPO / "sweeps/specs/demo.yaml"), "--cells", "R52__*",
                                             cwd=t),
    "cli-train-bad-loss": lambda t: cli("train", "--loss", "focal"),
    "cli-status-unknown-sweep": lambda t: cli("sweep", "status", "nope", "--tracking-uri", f"sqlite:///{t / 'm.db'}"),
    "cli-analyze-unknown-experiment": lambda t: cli("analyze", "report", "-e", "nope", "--out", str(t / "r"),
                                                    "--tracking-uri", f"sqlite:///{t / 'm.db'}"),
    "cli-analyze-bad-format": lambda t: cli("analyze", "report", "-e", "x", "--out", str(t / "r"), "--format", "pdf"),
    # round two: nothing destroyed, nothing silently wrong, no tracebacks
    "restart-unmarked-folder": lambda t: thesis_survives(t, None, "--restart"),
    "restart-other-sweeps-folder": lambda t: thesis_survives(t, {"sweep": "other"}, "--restart"),
    "resume-unmarked-folder": lambda t: thesis_survives(t, None, "--resume"),
    "resume-earlier-state-format": lambda t: resume_earlier_format(t),
    "train-resume-earlier-checkpoint": lambda t: earlier_checkpoint(t),
    "storage-path-is-a-file": lambda t: (t / "file").write_text("x") and sweep_cli(t, storage_path=str(t / "file")),
    "spec-billion-laughs": lambda t: spec_error(t, billion_laughs()),
    "spec-duplicate-key": lambda t: spec_error(t, "name: ok\ndatasets: [synthetic]\nmodels: {m: {model: minilm}}\n"
                                                  "losses: {ce: {loss: ce}}\nlosses: {g: {loss: gloss}}\n"),
    "spec-long-value-shortened": lambda t: (lambda m: m if len(m) < 1000 else f"message of {len(m)} characters")(
        spec_error(t, mode="x" * 100_000)),
    "spec-train-wrong-type": lambda t: spec_error(t, train={"weight_decay": "fast"}),
    "spec-choice-wrong-type": lambda t: spec_error(
        t, losses={"ce": {"loss": "ce", "space": {"lr": {"choice": [1e-4, "fast"]}}}}),
    "spec-float-for-int": lambda t: spec_error(t, train={"epochs": 2.5}),
    "spec-no-losses": lambda t: spec_error(t, losses={}),
    "spec-repeated-seeds": lambda t: spec_error(t, seeds=[0, 0]),
    "spec-repeated-replicate-seeds": lambda t: spec_error(t, replicate={"seeds": [1, 1]}),
    "spec-replicate-seed-0-of-grid-seed-0": lambda t: spec_error(t, seeds=[0, 1], replicate={"seeds": [0, 1]}),
    "spec-double-underscore-dataset": lambda t: spec_error(
        t, datasets={"A": {"data": "synthetic"}, "A__B": {"data": "synthetic"}},
        models={"C": {"model": "minilm"}, "B__C": {"model": "minilm"}}),
    "spec-double-underscore-model": lambda t: spec_error(t, models={"C": {"model": "minilm"}, "B__C": {"model": "minilm"}}),
    "spec-double-underscore-loss": lambda t: spec_error(t, losses={"ce__x": {"loss": "ce"}}),
    "spec-cells-share-a-name": lambda t: spec_error(
        t, datasets={"A_": {"data": "synthetic"}, "A": {"data": "synthetic"}},
        models={"B": {"model": "minilm"}, "_B": {"model": "minilm"}}, losses={"ce": {"loss": "ce"}}),
    "spec-seed-out-of-range": lambda t: spec_error(t, replicate={"seeds": [1, 2_000_000]}),
    "spec-missing-data-folder": lambda t: spec_error(t, datasets={"x": {"data": "./no/such"}}),
    "spec-is-a-folder": lambda t: cli("sweep", "run", str(REPO / "sweeps" / "specs")),
    "spec-too-large": lambda t: spec_error(t, "# " + "x" * 2_000_000 + "\n"),
    "spec-not-utf8": lambda t: (t / "spec.yaml").write_bytes(b"name: \xff\n") and error_of(lambda: load_spec(t / "spec.yaml")),
    "spec-empty": lambda t: spec_error(t, ""),
    "spec-sensitivity-bad-param": lambda t: spec_error(
        t, losses={"g": {"loss": "gloss"}}, sensitivity={"losses": ["g"], "params": {"dropout": [0.5]}}),
    "spec-gloss-batch-too-small": lambda t: spec_error(t, losses={"g": {"loss": "gloss", "fixed": {"gamma": 0.7}}},
                                                       train={"batch_size": 3}),
    "tracking-uri-bogus": lambda t: sweep_cli(t, tracking_uri="bogus://x"),
    "tracking-uri-sqlite-folder": lambda t: sweep_cli(t, "--tracking-uri", "sqlite:////tmp"),
    "status-store-unreachable": lambda t: cli("sweep", "status", "x", "--tracking-uri", f"http://127.0.0.1:{free_port()}"),
    "address-unreachable": lambda t: sweep_cli(t, "--address", f"127.0.0.1:{free_port()}"),
    "address-malformed": lambda t: sweep_cli(t, "--address", "nonsense"),
    "resources-too-big": lambda t: sweep_cli(t, "--num-cpus", "2", resources={"cpu": 64}),
    "resources-never-join": lambda t: sweep_cli(t, "--num-cpus", "2", "--wait-for-resources", "3",
                                                resources={"cpu": 64}),
    "cli-num-cpus-zero": lambda t: sweep_cli(t, "--num-cpus", "0"),
    "cli-train-lr-text": lambda t: cli("train", "--lr", "fast"),
    "train-output-under-a-file": lambda t: (t / "notes.txt").write_text("x") and cli(
        "train", "--output", str(t / "notes.txt" / "metrics.json")),
    "train-output-is-a-folder": lambda t: cli("train", "--output", str(t)),
    "train-resume-missing": lambda t: cli("train", "--resume", "no/such/dir", cwd=t),
    "train-resume-truncated": truncated_checkpoint,
    "train-gloss-batch-too-small": lambda t: cli("train", "--batch-size", "2", "--gamma", "0.3"),
    "analyze-out-under-a-file": lambda t: (t / "notes.txt").write_text("x") and cli(
        "analyze", "report", "-e", "x", "--out", str(t / "notes.txt" / "report"), "--tracking-uri", f"sqlite:///{t / 'm.db'}"),
    "analyze-no-runs": empty_experiment,
    "every-trial-failed": lambda t: (t / "empty-model").mkdir() or sweep_cli(
        t, "--num-cpus", "2", status=3, models={"m": {"model": str(t / "empty-model")}}, replicate=None,
        search={"num_samples": 1}, asha={"max_t": 1}),
    "data-duplicate-header": lambda t: data_error(t, data=csv_folder(t, train="text,label,label\na,x,y\nb,y,x\n")),
    "data-labels-look-like-text": labels_like_text,
    "data-split-is-a-folder": split_is_a_folder,
    "data-broken-quoting": lambda t: data_error(t, data=csv_folder(t, val='text,label\n"a,x\nb,y\n')),
}


CASES.update(history_cases(cli, sweep_cli, sweep_spec, spec_error, GOOD))  # a sweep's history: bad_history_cases.py


def test_the_table_has_at_least_20_cases_and_each_has_a_test():
    documented = [case for case, _ in rows()]
    assert len(documented) >= 20 and len(set(documented)) == len(documented)
    assert set(documented) == set(CASES)
    assert {"spec", "data", "model", "CLI", "storage", "store", "cluster", "sweep"} <= set(
        re.findall(r"^\| `[\w-]+` \| (\w+) \|", DOC.read_text(), re.M))


@pytest.mark.parametrize("case,excerpt", rows(), ids=[case for case, _ in rows()])
def test_bad_input_gets_its_documented_error(case, excerpt, tmp_path):
    message = CASES[case](tmp_path)
    assert excerpt in message, f"{case}: expected {excerpt!r} in {message!r}"


# ---- inputs that used to go silently wrong, now right ---------------------------------------------------
def test_csv_with_bom_long_fields_and_chunks_reads_like_the_plain_file(tmp_path, monkeypatch):
    import gloss_core.data.sources as sources

    long_text = "word " * 40_000  # 200 KB in one field: the tokenizer truncates it, the reader does not
    plain = "text,label\n" + "".join(f"row {i},{'xy'[i % 2]}\n" for i in range(40)) + f'"{long_text}",x\n'
    (tmp_path / "plain").mkdir()
    (tmp_path / "bom").mkdir()
    reference = load_splits(TrainConfig(data=csv_folder(tmp_path / "plain", train=plain)))
    bom = load_splits(TrainConfig(data=csv_folder(tmp_path / "bom", train=b"\xef\xbb\xbf" + plain.encode())))
    monkeypatch.setattr(sources, "CHUNK_ROWS", 7)  # the same rows, parsed 7 at a time
    chunked = load_splits(TrainConfig(data=str(tmp_path / "plain" / "data")))
    for splits in (bom, chunked):
        assert splits.train.texts == reference.train.texts and splits.train.labels.tolist() == reference.train.labels.tolist()
    assert reference.train.texts[-1] == long_text and len(reference.train.texts) == 41
    assert any("2 classes (x 21, y 20)" in note for note in reference.notes)


def test_train_prints_data_notes_and_no_zero_timing_table(tiny_model_dir, tmp_path):
    rows = "text,label\n" + "".join(f"text number {i},{'xy'[i % 2]}\n" for i in range(33))
    data = csv_folder(tmp_path, train=rows)
    done = subprocess.run([GLOSS, "train", "--model", tiny_model_dir, "--data", data, "--batch-size", "16",
                           "--max-length", "16", "--epochs", "1", "--no-timing", "--output", str(tmp_path / "m.json")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    done.stdout = " ".join(done.stdout.split())
    assert "data: " in done.stdout and "train.csv: 2 classes (x 17, y 16)" in done.stdout
    assert "time/epoch" not in done.stdout  # timing off: no table of zeros
    # 33 rows in batches of 16: the last batch of 1 keeps its one label, so its G-Loss term is 0: said and counted
    assert "1 batch(es)" in done.stdout
    history = json.loads((tmp_path / "m.json").read_text())["history"]
    assert [h["gloss_zero_batches"] for h in history] == [1]


def test_sqlite_artifacts_live_beside_the_database(tmp_path):
    from mlflow.tracking import MlflowClient

    from sweeps.mlflow_runs import experiment_id

    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    (tmp_path / "store").mkdir()
    client = MlflowClient(uri)
    exp = client.get_experiment(experiment_id(client, "beside", uri))
    assert exp.artifact_location.removeprefix("file://") == str(tmp_path / "store" / "mlartifacts" / "beside")


def test_a_restart_says_what_it_deleted_and_a_fresh_start_marks_its_folder(tmp_path):
    from sweeps.runner import SweepRunner, spec_hash
    from sweeps.storage import MARKER

    spec = load_spec(sweep_spec(tmp_path))
    runner = SweepRunner(spec, spec.tracking_uri, spec.storage_path)
    runner.storage.mark(spec_hash(spec))
    marker = json.loads((tmp_path / "rr" / "demo" / MARKER).read_text())
    assert marker["sweep"] == "demo" and marker["spec_sha256"] == spec_hash(spec) and marker["created"]
    (tmp_path / "rr" / "demo" / "search").mkdir()
    runner.discard_previous()
    assert not (tmp_path / "rr" / "demo").exists()


def test_only_address_or_ray_address_joins_a_cluster(monkeypatch):
    from sweeps.ray_session import resolve_address

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert resolve_address(None) == "local"  # not "auto": a stale ray_current_cluster file is never followed
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6380")
    assert resolve_address(None) == "10.0.0.1:6380" and resolve_address("127.0.0.1:1") == "127.0.0.1:1"


def test_debug_shows_the_traceback_and_errors_are_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    args = ["train", "--output", str(tmp_path / "notes.txt" / "m.json")]
    plain = subprocess.run([GLOSS, *args], capture_output=True, text=True)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert len([line for line in plain.stderr.splitlines() if line.strip()]) == 1
    debug = subprocess.run([GLOSS, "--debug", *args], capture_output=True, text=True)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "UserError" in debug.stderr


def test_a_sweep_folder_from_before_markers_is_recognised(tmp_path):
    from sweeps.storage import SweepStorage

    storage = SweepStorage(str(tmp_path), "old")
    (tmp_path / "old" / "search").mkdir(parents=True)
    (tmp_path / "old" / "search" / "tuner.pkl").write_bytes(b"x")
    (tmp_path / "old" / "replicate").mkdir()
    assert storage.ours()
    (tmp_path / "old" / "notes").mkdir()  # anything else in it: not only a sweep's, refused
    assert not storage.ours()
