"""docker/e2e.sh's checks, from the host, of what a sweep on the compose stack left in its MLflow
server. Each failed check exits non-zero with one line naming the sweep, the phase and what was
found; a passing one prints one line.

    check.py sweep URI NAME --search N --replicate M [--nodes K] [--predict]
        every trial of each phase is one run (distinct trial ids), FINISHED and `completed`; nothing
        in the experiment is still RUNNING; the trials ran on at least K nodes (their `node` tag);
        each of the sweep's registered models has exactly one version and, with --predict, answers
        `gloss predict models:/NAME@best` with one prediction per input row.
    check.py completed URI NAME
        prints the trial ids of the completed search trials, one a line (before a resume).
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
from pathlib import Path

from mlflow.tracking import MlflowClient

GLOSS = Path(sys.executable).parent / "gloss"


class CheckFailed(Exception):
    pass


def trial_runs(client: MlflowClient, experiment_id: str, phase: str) -> list:
    return client.search_runs([experiment_id], f"tags.kind = 'trial' and tags.phase = '{phase}'", max_results=1000)


def experiment_of(client: MlflowClient, name: str):
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        raise CheckFailed(f"{name}: no MLflow experiment of that name on {client.tracking_uri}")
    return experiment


def check_phase(client: MlflowClient, name: str, experiment_id: str, phase: str, expected: int) -> list:
    runs = trial_runs(client, experiment_id, phase)
    ids = [run.data.tags.get("trial_id") for run in runs]
    if len(ids) != expected or len(set(ids)) != expected:
        raise CheckFailed(f"{name}, phase {phase}: {len(ids)} trial run(s) for {len(set(ids))} trial id(s), "
                          f"expected {expected} of each: {sorted(map(str, ids))}")
    unfinished = [(run.data.tags.get("trial_id"), run.info.status, run.data.tags.get("ended")) for run in runs
                  if run.info.status != "FINISHED" or run.data.tags.get("ended") != "completed"]
    if unfinished:
        raise CheckFailed(f"{name}, phase {phase}: trials not FINISHED/completed: {unfinished}")
    return runs


def check_registered(client: MlflowClient, name: str, predict: bool) -> list[str]:
    models = [m.name for m in client.search_registered_models(f"name LIKE '{name}.%'")]
    if not models:
        raise CheckFailed(f"{name}: no registered model named {name}.<cell>")
    for model in models:
        versions = client.search_model_versions(f"name = '{model}'")
        if len(versions) != 1:
            raise CheckFailed(f"{name}: registered model {model} has {len(versions)} versions, expected 1")
        if predict:
            check_predict(client.tracking_uri, model)
    return models


def check_predict(uri: str, model: str) -> None:
    texts = ["a short text to classify", "another sentence for the model", "the third row"]
    with tempfile.TemporaryDirectory() as folder:
        source, out = Path(folder) / "in.csv", Path(folder) / "out.csv"
        source.write_text("text\n" + "\n".join(texts) + "\n")
        done = subprocess.run([str(GLOSS), "predict", f"models:/{model}@best", str(source), "--output", str(out),
                               "--tracking-uri", uri], capture_output=True, text=True, timeout=300)
        if done.returncode != 0 or not out.is_file():
            raise CheckFailed(f"gloss predict models:/{model}@best failed ({done.returncode}): "
                              f"{(done.stdout + done.stderr)[-1500:]}")
        with out.open() as f:
            rows = list(csv.DictReader(f))
        if len(rows) != len(texts) or not all(row.get("prediction") for row in rows):
            raise CheckFailed(f"gloss predict models:/{model}@best wrote {len(rows)} rows for {len(texts)} "
                              f"texts, or rows without a prediction: {rows}")


def check_sweep(uri: str, name: str, search: int, replicate: int, nodes: int, predict: bool) -> str:
    client = MlflowClient(uri)
    experiment = experiment_of(client, name)
    runs = check_phase(client, name, experiment.experiment_id, "search", search)
    runs += check_phase(client, name, experiment.experiment_id, "replicate", replicate)
    running = [run.info.run_name for run in client.search_runs([experiment.experiment_id], "", max_results=1000)
               if run.info.status == "RUNNING"]
    if running:
        raise CheckFailed(f"{name}: runs still RUNNING after the job ended: {running}")
    seen = sorted({run.data.tags.get("node", "") for run in runs} - {""})
    if len(seen) < nodes:
        raise CheckFailed(f"{name}: the trials ran on {len(seen)} node(s) {seen}, expected at least {nodes} "
                          f"(the head and the worker)")
    models = check_registered(client, name, predict)
    return (f"{name}: {search} search and {replicate} replicate trial(s), one run each, all completed; "
            f"nodes {seen}; registered {models}, one version each{', gloss predict answers' if predict else ''}")


def completed_trials(uri: str, name: str) -> list[str]:
    client = MlflowClient(uri)
    runs = trial_runs(client, experiment_of(client, name).experiment_id, "search")
    return sorted(run.data.tags["trial_id"] for run in runs if run.data.tags.get("ended") == "completed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    sweep = commands.add_parser("sweep")
    completed = commands.add_parser("completed")
    for command in (sweep, completed):
        command.add_argument("uri")
        command.add_argument("name")
    sweep.add_argument("--search", type=int, required=True)
    sweep.add_argument("--replicate", type=int, required=True)
    sweep.add_argument("--nodes", type=int, default=1)
    sweep.add_argument("--predict", action="store_true")
    args = parser.parse_args()
    try:
        if args.command == "sweep":
            print(check_sweep(args.uri, args.name, args.search, args.replicate, args.nodes, args.predict))
        else:
            print("\n".join(completed_trials(args.uri, args.name)))
    except CheckFailed as failed:
        print(f"e2e check failed: {failed}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
