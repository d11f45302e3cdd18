"""The sweep service with a real local Ray cluster, real Optuna and a real MLflow SQLite store."""

import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from sweeps.spec import SpecError, load_spec

REPO = Path(__file__).resolve().parents[1]
GLOSS = str(Path(sys.executable).with_name("gloss"))


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    return tiny_model_dir


def write_spec(folder: Path, model: str, name: str, **changes) -> Path:
    spec = {
        "name": name,
        "datasets": {"synth": {"data": "synthetic", "synthetic_size": 48, "synthetic_noise": 0.2}},
        "models": {"tiny": {"model": model}},
        "losses": {
            "ce": {"loss": "ce", "space": {"lr": {"loguniform": [1e-5, 3e-2]}}},
            "gloss": {"loss": "gloss", "space": {"lr": {"loguniform": [1e-5, 3e-2]}, "gamma": {"choice": [0.5, 0.7]}}},
        },
        "train": {"batch_size": 16, "max_length": 16, "patience": 0, "timing": False},
        "search": {"num_samples": 5, "max_concurrent": 2, "seed": 0},
        "asha": {"max_t": 4, "grace_period": 1, "reduction_factor": 2},
        "resources": {"cpu": 0.5},
        "replicate": {"seeds": [1, 2]},
        "tracking_uri": f"sqlite:///{folder / 'mlflow.db'}",
        "storage_path": str(folder / "ray_results"),
    }
    spec.update(changes)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def trial_runs(uri: str, name: str, phase: str):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    return client, exp, client.search_runs([exp.experiment_id], f"tags.kind = 'trial' and tags.phase = '{phase}'",
                                           max_results=1000)


def interrupt_when(spec_path: Path, cwd: Path, phase: str, completed: int, sig=signal.SIGINT):
    """Start `gloss sweep run SPEC`, send `sig` the moment its console reports the `completed`-th
    completed trial of `phase` (others in flight); returns the process (ended) and its output.

    The console line comes from the driver as the trial ends, so the signal cannot miss the phase
    the way polling MLflow, which the background writer fills in batches, could on a fast machine."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([GLOSS, "sweep", "run", str(spec_path), "--num-cpus", "2"], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, text=True)
    lines: list[str] = []
    reached = threading.Event()
    done_line = re.compile(rf"^\[{phase} \d+/\d+\] .*: completed after ")

    def read():
        seen = 0
        for line in proc.stdout:
            lines.append(line)
            seen += bool(done_line.match(line))
            if seen >= completed:
                reached.set()
        reached.set()  # the process ended first; the caller sees it below

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if not reached.wait(timeout=400) or proc.poll() is not None:
        proc.kill()
        reader.join(timeout=30)
        pytest.fail(f"the sweep did not reach {completed} completed {phase} trial(s) while running: "
                    + "".join(lines)[-3000:])
    os.kill(proc.pid, sig)
    proc.wait(timeout=180)
    reader.join(timeout=30)
    return proc, "".join(lines)


def test_two_cell_sweep_end_to_end(tiny_model, tmp_path, monkeypatch):
    from sweeps.runner import run_sweep

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)

    # 160 texts: enough that trials differ from their first epoch on (on 48, most of the tiny encoder's
    # trials tie at the one-class macro-F1 and ASHA's cutoffs stop none)
    synth = {"data": "synthetic", "synthetic_size": 160, "synthetic_noise": 0.2}
    spec = load_spec(write_spec(tmp_path, tiny_model, "two-cells", datasets={"synth": synth},
                                replicate={"seeds": [1, 2], "artifacts": True}))
    summary = run_sweep(spec, num_cpus=2)
    uri = spec.tracking_uri
    client, exp, runs = trial_runs(uri, "two-cells", "search")
    # the local cluster ran with token auth (Ray binds the machine's address, not loopback)
    assert os.environ["RAY_AUTH_MODE"] == "token" and (Path.home() / ".ray" / "auth_token").is_file()

    # exactly one child run per trial, under its cell's parent, with the right tags
    assert len(runs) == 2 * 5
    assert len({r.data.tags["trial_id"] for r in runs}) == 10
    parents = {r.data.tags["cell"]: r for r in client.search_runs(
        [exp.experiment_id], "tags.kind = 'cell' and tags.phase = 'search'")}
    assert set(parents) == {"synth__tiny__ce__s0", "synth__tiny__gloss__s0"}
    for run in runs:
        tags = run.data.tags
        assert tags["mlflow.parentRunId"] == parents[tags["cell"]].info.run_id
        assert tags["dataset"] == "synth" and tags["model"] == "tiny" and tags["seed"] == "0"
        assert tags["loss"] in ("ce", "gloss") and tags["cell"].endswith(f"__{tags['loss']}__s0")
        assert tags["ended"] in ("completed", "stopped_early")
        assert run.info.status == "FINISHED"
        assert run.data.params["loss"] == tags["loss"].replace("gloss", "gloss")
        history = client.get_metric_history(run.info.run_id, "val_macro_f1")
        assert [m.step for m in history] == list(range(1, len(history) + 1))
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"metrics.json", "validation_curve.csv"} <= artifacts

    # each cell's best trial is named by its trial id, the id its MLflow run carries
    ids_by_cell = {cell: {r.data.tags["trial_id"] for r in runs if r.data.tags["cell"] == cell} for cell in parents}
    for cell, best in summary["best"].items():
        assert best["trial_id"] in ids_by_cell[cell]

    # one score per trial: validation macro-F1 at its best epoch, what Optuna was told and what ranks trials
    peaks = {}
    for run in runs:
        curve = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "val_macro_f1"),
                                         key=lambda m: m.step)]
        peaks[run.data.tags["trial_id"]] = max(curve)
        assert run.data.metrics["score"] == max(curve)
        assert [m.value for m in sorted(client.get_metric_history(run.info.run_id, "score"), key=lambda m: m.step)] == [
            max(curve[:i + 1]) for i in range(len(curve))]  # best so far, epoch by epoch
    for cell, best in summary["best"].items():
        assert best["value"] == max(peaks[t] for t in ids_by_cell[cell]) == peaks[best["trial_id"]]

    # ASHA stopped some trials, and Optuna recorded exactly those as pruned
    stopped = [r for r in runs if r.data.tags["ended"] == "stopped_early"]
    assert stopped, "ASHA stopped no trial"
    for cell, states in summary["optuna"].items():
        cell_stopped = sum(1 for r in stopped if r.data.tags["cell"] == cell)
        assert states["PRUNED"] == cell_stopped
        assert states["COMPLETE"] + states["PRUNED"] == 5

    # the cells ran concurrently: a trial of one cell overlapped a trial of the other
    spans = {cell: [(r.info.start_time, r.info.end_time) for r in runs if r.data.tags["cell"] == cell] for cell in parents}
    a, b = spans.values()
    assert any(s1 < e2 and s2 < e1 for s1, e1 in a for s2, e2 in b)

    # replicate phase: each cell's best config on 2 seeds, evaluated on test; then the summary
    _, _, reps = trial_runs(uri, "two-cells", "replicate")
    assert len(reps) == 2 * 2 and {r.data.params["seed"] for r in reps} == {"1", "2"}
    assert all("test_macro_f1" in r.data.metrics for r in reps)
    assert [row["n"] for row in summary["cells"]] == [2, 2]
    all_runs = client.search_runs([exp.experiment_id], "", max_results=1000)
    assert not [r for r in all_runs if r.info.status == "RUNNING"]

    status = subprocess.run([GLOSS, "sweep", "status", "two-cells", "--tracking-uri", uri],
                            capture_output=True, text=True, check=True).stdout
    assert "synth__tiny__gloss__s0" in status and "search" in status and "replicate" in status

    # replicate runs carry their own seed as the tag, and the artifacts of their last checkpoint
    assert all(r.data.tags["seed"] == r.data.params["seed"] and r.data.tags["cell_seed"] == "0" for r in reps)
    for run in reps:
        names = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "artifacts")}
        assert {"test_embeddings.npy", "test_labels.npy", "adjacency_labels.npy", "adjacency_epoch001.npy"} <= names
        history = client.get_metric_history(run.info.run_id, "val_macro_f1")
        assert max(m.step for m in history) == run.data.metrics["epochs_run"]  # the test report adds no epoch

    # finished trials leave no checkpoint and no best-weights file behind
    storage = tmp_path / "ray_results" / "two-cells"
    assert not list(storage.glob("*/*/checkpoint_*")), list(storage.glob("*/*/checkpoint_*"))
    assert not [p for p in storage.glob("best_weights/**/*") if p.is_file()]

    # every replicate run holds its exported model; each cell's best on validation is registered,
    # and its predictions on the test split reproduce that run's logged test accuracy exactly
    import mlflow

    from gloss_core.config import TrainConfig
    from gloss_core.data import load_splits

    registry = MlflowClient(uri, registry_uri=uri)
    test = load_splits(TrainConfig(**synth)).test
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    assert all(r.data.tags["model_uri"].startswith("models:/m-") for r in reps)
    for cell in parents:
        mine = [r for r in reps if r.data.tags["cell"] == cell]
        chosen = min(mine, key=lambda r: (-r.data.metrics["final_val_macro_f1"], int(r.data.tags["seed"])))
        [version] = registry.search_model_versions(f"name = 'two-cells.{cell}'")
        assert version.tags["run_id"] == chosen.info.run_id and "mean ± std over 2 seeds" in version.tags["test_accuracy"]
        out = mlflow.pyfunc.load_model(f"models:/two-cells.{cell}/latest").predict(pd.DataFrame({"text": test.texts}))
        labels = [f"class{i}" for i in test.labels.tolist()]
        assert (out["prediction"] == pd.Series(labels)).mean() == chosen.data.metrics["test_accuracy"]

    # the analysis reads this layout: tables, learning curves, t-SNE and adjacency from the real runs
    out = tmp_path / "report"
    done = subprocess.run([GLOSS, "analyze", "report", "-e", "two-cells", "--tracking-uri", uri, "--out", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    table = (out / "tables" / "table2.md").read_text()
    assert "gloss" in table and "synth acc" in table
    figures = {p.name for p in (out / "figures").iterdir()}
    assert {"learning_curves_val_macro_f1.png", "tsne_synth.png", "adjacency_synth.png"} <= figures
    report = (out / "report.md").read_text()
    assert "sweep two-cells | git " in report and "git unknown" not in report


def test_interrupt_and_resume_keeps_every_trial_once(tiny_model, tmp_path):
    """The driver SIGKILLed mid-search, then --resume: every trial once, none lost. (SIGINT's
    resume is `test_a_sweep_on_s3_survives_sigint_and_resumes`, SIGTERM's, which goes the same
    way, `test_sweep_history.py::test_one_driver_sigterm_...`.)"""
    name = "resume-sigkill"
    spec_path = write_spec(tmp_path, tiny_model, name, replicate=None,
                           datasets={"synth": {"data": "synthetic", "synthetic_size": 600}},
                           search={"num_samples": 4, "max_concurrent": 1, "seed": 0},
                           asha={"max_t": 8, "grace_period": 8, "reduction_factor": 2})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc, output = interrupt_when(spec_path, tmp_path, "search", 2, signal.SIGKILL)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver's own children; Ray's reaper cleans the rest
    done_before = {r.data.tags["trial_id"] for r in trial_runs(uri, name, "search")[2]
                   if r.data.tags.get("ended") == "completed"}

    resumed = subprocess.run([GLOSS, "sweep", "run", str(spec_path), "--resume", "--num-cpus", "2"], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    client, exp, runs = trial_runs(uri, name, "search")
    ids = [r.data.tags["trial_id"] for r in runs]
    assert len(ids) == len(set(ids)) == 2 * 4  # no duplicate, no orphan, none lost
    assert done_before <= set(ids)
    assert all(r.info.status == "FINISHED" and r.data.tags["ended"] == "completed" for r in runs)
    everything = client.search_runs([exp.experiment_id], "", max_results=1000)
    assert not [r for r in everything if r.info.status == "RUNNING"]


def test_spec_errors_name_the_key(tmp_path, tiny_model):
    good = yaml.safe_load(write_spec(tmp_path, tiny_model, "ok").read_text())

    def bad(change, match):
        spec = {**good, **change}
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(spec))
        with pytest.raises(SpecError, match=match):
            load_spec(path)

    bad({"losses": {"x": {"loss": "triplet"}}}, r"losses\.x\.loss: 'triplet' is not a loss of the integrated protocol")
    bad({"asha": {"max_t": 0}}, r"asha\.max_t")
    bad({"search": {"num_samples": 2, "workers": 3}}, r"search\.workers: Extra inputs are not permitted")
    bad({"losses": {"x": {"loss": "ce", "space": {"lr": {"loguniform": [1e-3, 1e-5]}}}}}, "low < high")
    bad({"losses": {"x": {"loss": "ce", "space": {"learning_rate": {"uniform": [0, 1]}}}}}, r"unknown training option\(s\) \['learning_rate'\]")
    bad({"train": {"loss": "ce"}}, r"set by the grid axes")
    bad({"name": "a b"}, r"name: .*letters, digits")
    bad({"datasets": {"d": {"data": "synthetic", "lr": -1, "pooling": "max"}}}, r"cell d__tiny__ce__s0: pooling must be one of")
    sens = {"losses": ["gloss"], "params": {"gamma": [-0.1, 0.1]}}
    bad({"sensitivity": {**sens, "losses": ["nope"]}}, r"sensitivity\.losses: \['nope'\] are not loss variants")
    bad({"sensitivity": {**sens, "params": {"dropout": [0.5]}}}, r"'dropout' cannot be perturbed; allowed: sigma \(multipliers\)")
    bad({"sensitivity": {**sens, "params": {"sigma_scale": [1.0]}}}, r"multipliers must be > 0 and not 1")
    bad({"sensitivity": {**sens, "params": {"lam": [1.5]}}}, r"offsets must lie in \[-1, 1\]")
    bad({"sensitivity": {**sens, "params": {"temperature": [2.0]}}}, r"temperature acts on none of the chosen")
    bad({"sensitivity": {**sens, "seeds": [1, 7]}}, r"sensitivity\.seeds \[1, 7\] must be replicate seeds")
    bad({"sensitivity": sens, "replicate": None}, r"sensitivity needs the replicate phase")
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(path)
    with pytest.raises(SpecError, match="spec file not found"):
        load_spec(tmp_path / "missing.yaml")


def test_sensitivity_points_perturb_one_parameter_around_the_best():
    from sweeps.sensitivity import points

    best = {"lr": 1e-4, "lam": 0.9, "gamma": 0.5, "sigma": "sqrt", "loss": "gloss"}
    found, skipped = points("c", best, "gloss", "integrated",
                            {"lam": [-0.1, 0.2], "gamma": [-0.2, -0.1, 0.3], "sigma_scale": [0.5], "sigma": [2.0],
                             "lr": [0.5, 2.0]})
    by_name = {p.name: p for p in found}
    assert by_name["c~lam-low"].value == 0.8 and by_name["c~lam-low"].constants == {**best, "lam": 0.8}
    assert "c~lam-high" not in by_name and any("lam = 0.9 + 0.2 = 1.1 lies outside" in note for note in skipped)
    assert [by_name[f"c~gamma-low{i}"].value for i in (1, 2)] == [0.4, 0.3]  # low1 nearest the centre
    assert by_name["c~gamma-high"].value == 0.8 and by_name["c~gamma-high"].centre == 0.5
    assert by_name["c~sigma_scale-low"].value == 0.5  # not in the best config: the TrainConfig default, 1.0
    assert any("sigma = 'sqrt' is not a number" in note and "sigma_scale" in note for note in skipped)
    assert by_name["c~lr-low"].value == pytest.approx(5e-5) and by_name["c~lr-high"].value == pytest.approx(2e-4)
    for point in found:  # exactly one parameter differs from the best config
        assert [k for k in point.constants if point.constants[k] != best.get(k)] == [point.param]
    _, notes = points("c", {"lam": 0.9}, "ce", "integrated", {"lam": [-0.1], "gamma": [0.1]})
    assert len(notes) == 2 and all("does not act on loss 'ce'" in note for note in notes)


def test_shipped_specs_validate(tmp_path, monkeypatch):
    for path in sorted((REPO / "sweeps" / "specs").glob("*.yaml")):
        if path.name == "cluster_mr.yaml":  # its data is at /data/MR on the cluster's nodes, not here
            with pytest.raises(SpecError, match=r"datasets\.MR\.data: '/data/MR' does not exist"):
                load_spec(path)
            text = path.read_text().replace("/data/MR", str(REPO.parent / "shared" / "data" / "MR"))
            path = tmp_path / path.name
            path.write_text(text)
        spec = load_spec(path)
        assert spec.cells(), path


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def readme_block(containing: str, language: str = "bash") -> str:
    """The first fenced block of `language` in docs/cluster.md (the cluster guide the README points
    to) that contains `containing`."""
    text = (REPO / "docs" / "cluster.md").read_text()
    blocks = re.findall(rf"```{language}\n(.*?)```", text, re.S)
    return next(block for block in blocks if containing in block)


def test_readme_cluster_recipe_runs_verbatim(tmp_path):
    """docs/cluster.md's `ray start` / `ray job submit` block, run as written in a fresh shell (no Ray
    variables set; free ports, a tiny spec and temporary paths substituted), then the runs are
    checked in MLflow."""
    recipe = readme_block("ray start --head")
    gcs, dashboard = str(_free_port()), str(_free_port())
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for old, new in (("29123", gcs), ("8265", dashboard), ("--working-dir .", f"--working-dir {tmp_path}"),
                     ("sweeps/specs/demo.yaml", "job.yaml"), ("http://MLFLOW_HOST:5000", uri),
                     ("/shared/ray_results", str(tmp_path / "rr"))):
        assert old in recipe, old
        recipe = recipe.replace(old, new)
    (tmp_path / "job.yaml").write_text(yaml.safe_dump({
        "name": "jobtest", "datasets": {"synth": {"data": "synthetic", "synthetic_size": 32}},
        "models": {"minilm": {"model": "minilm"}},
        "losses": {"ce": {"loss": "ce", "space": {"lr": {"loguniform": [1e-5, 1e-4]}}}},
        "train": {"batch_size": 16, "max_length": 16, "patience": 0, "timing": False},
        "search": {"num_samples": 2, "max_concurrent": 2}, "asha": {"max_t": 1, "grace_period": 1},
        "resources": {"cpu": 1}, "replicate": None,
    }))
    (tmp_path / "recipe.sh").write_text("set -euo pipefail\n" + recipe.replace("ray stop", "ray stop --force"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]
    try:
        job = subprocess.run(["bash", str(tmp_path / "recipe.sh")], env=env, cwd=REPO, capture_output=True, text=True,
                             timeout=500)
    finally:
        subprocess.run(["ray", "stop", "--force"], env=env, capture_output=True, timeout=120)
    assert job.returncode == 0 and "succeeded" in job.stdout, job.stdout[-3000:] + job.stderr[-3000:]
    client, exp, runs = trial_runs(uri, "jobtest", "search")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    assert all(r.data.tags["ended"] == "completed" for r in runs)


def test_the_readme_shows_the_shipped_cluster_spec():
    assert yaml.safe_load(readme_block("name: cluster_mr", "yaml")) == yaml.safe_load(
        (REPO / "sweeps" / "specs" / "cluster_mr.yaml").read_text())


def test_failing_trials_are_recorded_and_never_stop_the_sweep(tiny_model, tmp_path, monkeypatch):
    """On a terminal: each phase's live line, and a console line only for each failed trial."""
    from rich.console import Console

    from sweeps import console
    from sweeps.runner import run_sweep

    shown = io.StringIO()
    monkeypatch.setattr(console, "console", Console(file=shown, force_terminal=True, width=200))

    spec = load_spec(write_spec(
        tmp_path, tiny_model, "failures",
        losses={"ce": {"loss": "ce", "space": {"lr": {"loguniform": [1e-4, 1e-3]}}},
                "diverge": {"loss": "gloss", "fixed": {"lr": 1e10}, "space": {"gamma": {"choice": [0.5, 0.7]}}}},
        search={"num_samples": 2, "max_concurrent": 2}, asha={"max_t": 2, "grace_period": 2},
        replicate={"seeds": [1]}))
    summary = run_sweep(spec, num_cpus=2)
    client, exp, runs = trial_runs(spec.tracking_uri, "failures", "search")
    failed = [r for r in runs if r.data.tags["loss"] == "diverge"]
    assert len(failed) == 2 and len(runs) == 4
    for run in failed:
        assert run.info.status == "FAILED" and run.data.tags["ended"] == "failed"
        assert "NonFiniteEmbeddingsError" in run.data.tags["error"]
    assert all(r.data.tags["ended"] == "completed" for r in runs if r.data.tags["loss"] == "ce")
    assert summary["optuna"]["synth__tiny__diverge__s0"]["FAIL"] == 2
    parent = client.search_runs([exp.experiment_id], "tags.kind = 'cell' and tags.cell = 'synth__tiny__diverge__s0' "
                                                     "and tags.phase = 'search'")[0]
    assert parent.info.status == "FAILED" and "no trial" in parent.data.tags["error"]
    rows = {row["cell"]: row for row in summary["cells"]}
    assert rows["synth__tiny__ce__s0"]["n"] == 1 and rows["synth__tiny__diverge__s0"]["n"] == 0
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown.getvalue())
    assert text.count(": FAILED (") == 2 and "NonFiniteEmbeddingsError" in text, text
    assert "completed after" not in text, text
    lines = text.replace("\r", "\n").splitlines()
    assert [line for line in lines if line.startswith("search: ")][-1].startswith(
        "search: 2/4 done · 0 running · 0 pending · 2 failed")
    assert [line for line in lines if line.startswith("replicate: ")][-1].startswith(
        "replicate: 1/1 done · 0 running · 0 pending · 0 failed")


def test_retry_failed_runs_the_failed_trials_again_and_the_study_keeps_both(tiny_model, tmp_path):
    """A model folder missing its weights fails its cell's trials; with the weights back,
    `--resume --retry-failed` trains them under new ids. Their failed runs give way to the
    retries' runs (the failures listed in the summary run), and the cell's study keeps each FAIL
    beside its retry's outcome, with the same values."""
    import json
    import shutil

    from sweeps.runner import run_sweep

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    weights = next(broken.glob("model.safetensors"))
    kept = weights.read_bytes()
    weights.unlink()
    spec = load_spec(write_spec(
        tmp_path, tiny_model, "retry", models={"tiny": {"model": tiny_model}, "broken": {"model": str(broken)}},
        losses={"ce": {"loss": "ce", "space": {"lr": {"loguniform": [1e-4, 1e-3]}}}},
        search={"num_samples": 2, "max_concurrent": 2}, asha={"max_t": 1, "grace_period": 1}, replicate=None))
    first = run_sweep(spec, num_cpus=2)
    assert first["optuna"]["synth__broken__ce__s0"]["FAIL"] == 2
    client, exp, runs = trial_runs(spec.tracking_uri, "retry", "search")
    failed = {r.data.tags["trial_id"]: r.data.params["lr"] for r in runs if r.data.tags["ended"] == "failed"}
    assert len(failed) == 2 and len(runs) == 4
    weights.write_bytes(kept)

    again = run_sweep(spec, resume=True, retry_failed=True, num_cpus=2)
    assert again["optuna"]["synth__broken__ce__s0"] == {"COMPLETE": 2, "PRUNED": 0, "FAIL": 2, "RUNNING": 0}
    assert again["optuna"]["synth__tiny__ce__s0"] == first["optuna"]["synth__tiny__ce__s0"]  # untouched
    client, exp, runs = trial_runs(spec.tracking_uri, "retry", "search")
    broken_runs = [r for r in runs if r.data.tags["cell"] == "synth__broken__ce__s0"]
    assert len(runs) == 4 and all(r.data.tags["ended"] == "completed" for r in runs)
    assert not set(failed) & {r.data.tags["trial_id"] for r in broken_runs}  # new ids
    assert sorted(r.data.params["lr"] for r in broken_runs) == sorted(failed.values())  # the same configs
    summary = client.search_runs([exp.experiment_id], "tags.kind = 'summary'")[0]
    [record] = client.list_artifacts(summary.info.run_id, "retried")
    assert re.fullmatch(r"retried/search-\d{8}T\d{6}Z\.json", record.path), record.path
    listed = json.loads(Path(client.download_artifacts(summary.info.run_id, record.path, str(tmp_path))).read_text())
    assert sorted(entry["trial_id"] for entry in listed) == sorted(failed)
    assert all(entry["cell"] == "synth__broken__ce__s0" and "model.safetensors" in entry["error"]
               for entry in listed), listed
    assert again["best"]["synth__broken__ce__s0"]["config"]["lr"] in {float(v) for v in failed.values()}


def test_a_search_used_by_replicate_is_not_retried(tmp_path):
    from types import SimpleNamespace

    from sweeps.cell_groups import CellGroup
    from sweeps.runner import SweepRunner
    from sweeps.storage import SweepStorage

    storage = SweepStorage(str(tmp_path), "s")
    runner = SimpleNamespace(storage=storage, group=CellGroup("", ["a"]))
    (tmp_path / "s" / "search").mkdir(parents=True)
    assert SweepRunner._may_retry(runner, "search") and SweepRunner._may_retry(runner, "replicate")
    (tmp_path / "s" / "replicate").mkdir()
    assert not SweepRunner._may_retry(runner, "search") and SweepRunner._may_retry(runner, "replicate")
    grouped = SimpleNamespace(storage=storage, group=CellGroup("g2", ["b"]))  # --cells: each group's own phases
    assert SweepRunner._may_retry(grouped, "search")
    (tmp_path / "s" / "sensitivity-g2").mkdir()
    assert not SweepRunner._may_retry(grouped, "search")


def test_a_small_finite_space_is_enumerated_and_no_config_trains_twice(tiny_model, tmp_path):
    from sweeps.runner import run_sweep

    spec = load_spec(write_spec(
        tmp_path, tiny_model, "finite",
        losses={"ce": {"loss": "ce", "space": {"lr": {"choice": [1e-4, 3e-4, 1e-3]}}},
                "gloss": {"loss": "gloss", "space": {"gamma": {"choice": [0.5, 0.7]}, "lam": {"choice": [0.5, 0.9]}}}},
        search={"num_samples": 4, "max_concurrent": 2}, asha={"max_t": 1, "grace_period": 1}, replicate=None))
    summary = run_sweep(spec, num_cpus=2)
    client, exp, runs = trial_runs(spec.tracking_uri, "finite", "search")
    configs = {}
    for run in runs:
        keys = ("lr",) if run.data.tags["loss"] == "ce" else ("gamma", "lam")
        configs.setdefault(run.data.tags["cell"], []).append(tuple(run.data.params[k] for k in keys))
    assert sorted(configs["synth__tiny__ce__s0"]) == [("0.0001",), ("0.0003",), ("0.001",)]  # 3 points, not 4 trials
    assert len(configs["synth__tiny__gloss__s0"]) == len(set(configs["synth__tiny__gloss__s0"])) == 4
    repeats = summary["search_repeats"]
    assert repeats["synth__tiny__ce__s0"] == {"suggestions": 3, "trained": 3, "skipped_repeats": 0,
                                              "enumerated_points": 3}
    parent = client.search_runs([exp.experiment_id], "tags.kind = 'cell' and tags.cell = 'synth__tiny__ce__s0' "
                                                     "and tags.phase = 'search'")[0]
    assert parent.data.metrics["search_enumerated_points"] == 3 and parent.data.metrics["search_trained"] == 3


@pytest.fixture
def s3_server(tmp_path, monkeypatch):
    """`moto_server` (an S3-compatible server) on a free loopback port, with a bucket, and the
    standard AWS variables pointing at it (Ray's workers inherit them)."""
    port = _free_port()
    server = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=(tmp_path / "moto.log").open("wb"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    env = {"AWS_ACCESS_KEY_ID": "gloss", "AWS_SECRET_ACCESS_KEY": "gloss-secret", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    import pyarrow.fs

    deadline = time.time() + 60
    while True:
        try:
            pyarrow.fs.S3FileSystem(endpoint_override=env["AWS_ENDPOINT_URL"],
                                    allow_bucket_creation=True).create_dir("gloss-sweeps")
            break
        except OSError:
            assert time.time() < deadline and server.poll() is None, (tmp_path / "moto.log").read_text()[-2000:]
            time.sleep(0.5)
    yield pyarrow.fs.FileSystem.from_uri("s3://gloss-sweeps")[0]  # from_uri reads AWS_ENDPOINT_URL
    os.killpg(server.pid, signal.SIGKILL)
    server.wait()


def test_a_sweep_on_s3_survives_sigint_and_resumes(tiny_model, tmp_path, s3_server):
    """Storage on an S3-compatible server: interrupted with SIGINT, resumed; every trial once in
    MLflow, none left RUNNING, and nothing written in the working folder."""
    name = "on-s3"
    specs, work = tmp_path / "specs", tmp_path / "work"
    specs.mkdir()
    work.mkdir()
    spec_path = write_spec(specs, tiny_model, name, replicate=None, storage_path="s3://gloss-sweeps/sweeps",
                           datasets={"synth": {"data": "synthetic", "synthetic_size": 200}},
                           search={"num_samples": 3, "max_concurrent": 1, "seed": 0},
                           asha={"max_t": 5, "grace_period": 5, "reduction_factor": 2})
    uri = f"sqlite:///{specs / 'mlflow.db'}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc, output = interrupt_when(spec_path, work, "search", 1)
    assert proc.returncode == 130, output[-3000:]
    _, _, before = trial_runs(uri, name, "search")
    assert not [r for r in before if r.info.status == "RUNNING"]  # closed as interrupted on the way out
    done_before = {r.data.tags["trial_id"] for r in before if r.data.tags.get("ended") == "completed"}
    assert done_before
    listed = s3_server.get_file_info(pyarrow_selector("gloss-sweeps/sweeps/on-s3"))
    assert {info.base_name for info in listed} >= {"search"}  # the sweep's state is on S3

    resumed = subprocess.run([GLOSS, "sweep", "run", str(spec_path), "--resume", "--num-cpus", "2"], cwd=work,
                             env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    client, exp, runs = trial_runs(uri, name, "search")
    ids = [r.data.tags["trial_id"] for r in runs]
    assert len(ids) == len(set(ids)) == 2 * 3
    assert done_before <= set(ids)  # what completed before the interrupt was kept, not trained again
    assert all(r.info.status == "FINISHED" and r.data.tags["ended"] == "completed" for r in runs)
    assert not [r for r in client.search_runs([exp.experiment_id], "", max_results=1000) if r.info.status == "RUNNING"]
    assert not list(work.iterdir()), list(work.iterdir())  # nothing written where the command ran
    checkpoints = s3_server.get_file_info(pyarrow_selector("gloss-sweeps/sweeps/on-s3/search", recursive=True))
    assert not [info.path for info in checkpoints if "/checkpoint_" in info.path]  # finished trials leave none


def pyarrow_selector(path: str, recursive: bool = False):
    import pyarrow.fs

    return pyarrow.fs.FileSelector(path, recursive=recursive)


def test_sensitivity_phase_runs_resumes_and_reports(tiny_model, tmp_path):
    """Search, replicate, then one-at-a-time perturbations of the G-Loss cell's best config on the
    replicate seeds; SIGINT during the sensitivity phase, --resume: every point once per seed, the
    replicate runs (the centre) never rerun; the report carries the tornado and the paired table."""
    name = "sens-e2e"
    spec_path = write_spec(
        tmp_path, tiny_model, name, datasets={"synth": {"data": "synthetic", "synthetic_size": 400}},
        losses={"ce": {"loss": "ce", "fixed": {"lr": 1e-3}},
                "gloss": {"loss": "gloss", "fixed": {"lr": 1e-3}, "space": {"gamma": {"choice": [0.5, 0.7]}}}},
        search={"num_samples": 2, "max_concurrent": 1, "seed": 0}, asha={"max_t": 3, "grace_period": 3},
        replicate={"seeds": [1, 2], "export": False},
        sensitivity={"losses": ["gloss"], "params": {"gamma": [-0.2, 0.2], "sigma_scale": [0.5, 2.0], "lam": [0.2]}})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc, output = interrupt_when(spec_path, tmp_path, "sensitivity", 1)
    assert proc.returncode == 130 and "--resume" in output, output[-3000:]  # interrupted in the sensitivity phase
    assert "lam = 0.9 + 0.2 = 1.1 lies outside its range; skipped" in output, output[-3000:]
    replicate_before = {r.data.tags["trial_id"] for r in trial_runs(uri, name, "replicate")[2]}
    assert len(replicate_before) == 2 * 2  # two cells, two seeds

    resumed = subprocess.run([GLOSS, "sweep", "run", str(spec_path), "--resume", "--num-cpus", "2"], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    client, exp, runs = trial_runs(uri, name, "sensitivity")
    assert {r.data.tags["trial_id"] for r in trial_runs(uri, name, "replicate")[2]} == replicate_before
    keys = [(r.data.tags["param"], r.data.tags["direction"], r.data.tags["seed"]) for r in runs]
    assert len(keys) == len(set(keys)) == 4 * 2  # gamma and sigma_scale, low and high, 2 seeds; lam skipped
    assert {(p, d) for p, d, _ in keys} == {(p, d) for p in ("gamma", "sigma_scale") for d in ("low", "high")}
    for run in runs:
        tags, params = run.data.tags, run.data.params
        assert run.info.status == "FINISHED" and tags["ended"] == "completed" and "test_macro_f1" in run.data.metrics
        assert float(params[tags["param"]]) == float(tags["value"]) and tags["base_cell"] == "synth__tiny__gloss__s0"
        centre = float(tags["centre"])
        assert float(tags["value"]) == pytest.approx(centre * float(tags["step"]) if tags["param"] == "sigma_scale"
                                                     else centre + float(tags["step"]))
        assert params["lr"] == "0.001" and tags["seed"] in ("1", "2")
    assert not [r for r in client.search_runs([exp.experiment_id], "", max_results=1000) if r.info.status == "RUNNING"]

    out = tmp_path / "report"
    done = subprocess.run([GLOSS, "analyze", "report", "-e", name, "--tracking-uri", uri, "--out", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    report = (out / "report.md").read_text()
    assert report.count("## Provenance") == 1 and report.count("| git ") == 1 and "<sub>" not in report
    assert "sensitivity seeds [1, 2]" in report and "replicate seeds [1, 2]" in report
    sections = dict(re.findall(r"^### (.+)\n\n(.+)$", report, flags=re.M))
    tornado = [caption for caption in sections if caption.startswith("Tornado around gloss")]
    assert tornado and sections[tornado[0]].startswith("![")
    for caption, body in sections.items():  # every figure is an image or a sentence saying why not
        assert body.startswith("![") or body.startswith("*not drawn") or body.startswith("*no "), (caption, body)
    table = pd.read_csv(out / "tables" / "sensitivity.csv")
    assert len(table) == 4 and set(table["param"]) == {"gamma", "sigma_scale"} and (table["n"] == 2).all()
