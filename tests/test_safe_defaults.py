"""Safe defaults: checkpoints load with weights_only=True, YAML with safe_load, servers in the docs
bind loopback, and passwords in tracking URIs never reach the logs or the MLflow store."""

import ast
import json
import re
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from gloss_core.training.checkpoint import load_checkpoint, save_checkpoint
from sweeps.resilience import redact
from sweeps.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
SOURCES = [p for folder in ("gloss_core", "trainables", "sweeps", "analysis", "bench") for p in (REPO / folder).rglob("*.py")]
SOURCES.append(REPO / "gloss_cli.py")


def calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name):
            yield f"{node.func.value.id}.{node.func.attr}", node


def test_torch_load_only_with_weights_only_and_yaml_only_safe():
    seen_torch_load = False
    for path in SOURCES:
        for name, node in calls(path):
            if name == "torch.load":
                seen_torch_load = True
                flags = {k.arg: k.value for k in node.keywords}
                assert isinstance(flags.get("weights_only"), ast.Constant) and flags["weights_only"].value is True, path
            assert name not in ("yaml.load", "yaml.unsafe_load", "yaml.full_load"), f"{path}: {name}"
            if name == "pickle.load":  # only the searcher state Tune saved in the sweep's own storage
                assert path.name == "cells.py", f"{path}: pickle.load"
    assert seen_torch_load


def test_checkpoint_refuses_arbitrary_objects(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    save_checkpoint(tmp_path, {"epoch": 1, "weights": torch.zeros(2)})
    assert load_checkpoint(tmp_path)["epoch"] == 1
    torch.save({"epoch": 1, "payload": Evil()}, save_checkpoint(tmp_path, {}))
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        load_checkpoint(tmp_path)


def test_servers_in_the_docs_bind_loopback():
    docs = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    text = "\n".join(p.read_text() for p in docs)
    assert "ray start --head" in text  # the cluster recipe is among the pages read
    for line in text.splitlines():
        if re.search(r"\bray start --head\b", line):
            assert "--dashboard-host 127.0.0.1" in line, line
        if re.search(r"\bmlflow (server|ui)\b.*--host", line):
            assert "--host 127.0.0.1" in line, line
        assert "0.0.0.0" not in line or "compose" in line.lower(), line


def test_redact_hides_passwords():
    assert redact("postgresql://u:pw@db:5432/x") == "postgresql://u:***@db:5432/x"
    assert redact("http://a:b@host:5000 and https://c:d@e/") == "http://a:***@host:5000 and https://c:***@e/"
    assert redact("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"


def test_a_password_in_the_spec_never_reaches_the_store(tmp_path):
    from sweeps.record import summary_run
    from sweeps.runner import SweepRunner

    path = tmp_path / "s.yaml"
    path.write_text((REPO / "sweeps/specs/demo.yaml").read_text()
                    + "\ntracking_uri: http://gloss:TOPSECRET@127.0.0.1:1/\n")
    spec = load_spec(path)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    runner = SweepRunner(spec, uri, str(tmp_path / "ray_results"))
    run_id = summary_run(runner.client, runner.exp_id, spec)
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    stored = json.dumps(run.data.tags) + json.dumps(run.data.params)
    stored += Path(client.download_artifacts(run_id, "spec.json", str(tmp_path))).read_text()
    assert "TOPSECRET" not in stored and "gloss:***@127.0.0.1" in stored


def test_a_new_tracking_store_is_created_without_console_noise(tmp_path):
    """The first sweep on a new SQLite store (a fresh clone's main job) prints none of MLflow's
    INFO lines about creating its tables: `quiet_mlflow` holds even when MLflow is imported after it."""
    import subprocess
    import sys

    spec = REPO / "sweeps" / "specs" / "demo.yaml"
    code = ("from sweeps.spec import load_spec\nfrom sweeps.startup import started\n"
            f"spec = load_spec({str(spec)!r})\n"
            f"with started(spec, 'sqlite:///{tmp_path / 'new.db'}', storage_path={str(tmp_path / 'rr')!r}) as start:\n"
            "    print('cleared', start.uri)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "new.db").is_file() and "cleared sqlite:///" in done.stdout
    said = done.stdout + done.stderr
    assert "INFO" not in said and "Creating initial MLflow database tables" not in said, said
    assert done.stdout.count("\n") == 1, said
