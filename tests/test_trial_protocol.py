"""The trial side of a sweep without Ray: the phase plan, the NaN rule, the trial's scratch folder,
the progress lines and `gloss sweep status`; and the analysis package's light imports."""

import os
import subprocess
import sys
import tempfile

import pytest
import torch
from mlflow.tracking import MlflowClient

from gloss_core.config import TrainConfig
from gloss_core.train import train
from gloss_core.data.splits import DataError
from gloss_core.training.metrics import silhouettes
from sweeps.progress import progress_line
from trainables.plan import CELL, PhasePlan
from trainables.report import closing_result, epoch_result, read_result
from trainables.trainable import nan_failures, run_trial


def test_the_plan_merges_cell_constants_and_the_trials_values():
    plan = PhasePlan("search", {"a": {"loss": "gloss", "lr": 1e-3, "seed": 0}, "b": {"loss": "ce"}})
    assert plan.values({CELL: "a", "lr": 2e-4, "gamma": 0.5}) == {"loss": "gloss", "lr": 2e-4, "seed": 0, "gamma": 0.5}
    config = plan.train_config({CELL: "b", "seed": 3})
    assert isinstance(config, TrainConfig) and config.loss == "ce" and config.seed == 3
    with pytest.raises(ValueError, match="unknown config key"):
        plan.train_config({CELL: "b", "_threads": 2})


def test_each_grid_seed_replicates_on_training_seeds_of_its_own():
    from sweeps.spec import SweepSpec

    spec = SweepSpec.model_validate({"name": "s", "datasets": ["d"], "models": ["m"], "seeds": [0, 1],
                                     "losses": {"ce": {"loss": "ce"}}, "replicate": {"seeds": [1, 2]}})
    cells = {cell.name: cell for cell in spec.cells()}
    plan = PhasePlan("replicate", {name: {"loss": "ce"} for name in cells},
                     grid_seeds={name: cell.seed for name, cell in cells.items()})
    seeds = {(name, r): plan.values({CELL: name, "seed": r})["seed"] for name in cells for r in (1, 2)}
    assert seeds == {("d__m__ce__s0", 1): 1, ("d__m__ce__s0", 2): 2,  # grid seed 0 keeps the replicate seeds
                     ("d__m__ce__s1", 1): 1_000_001, ("d__m__ce__s1", 2): 1_000_002}
    assert len(set(seeds.values())) == 4  # the same chosen config never trains on the same seed twice
    assert PhasePlan("search", {"c": {"seed": 0}}).values({CELL: "c", "lr": 1e-3})["seed"] == 0  # search: the grid's


def test_undefined_silhouettes_never_fail_a_trial():
    emb = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    undefined = silhouettes(emb, torch.tensor([0, 0, 0, 0, 0, 1]))  # one class with 2+ samples: both NaN
    metrics = {"epoch": 1, "train_loss": 0.5, **{f"val_{k}": v for k, v in undefined.items()},
               **{f"test_{k}": v for k, v in undefined.items()}}
    assert all(v != v for k, v in metrics.items() if k.endswith("silhouette"))
    assert nan_failures(metrics) == []
    assert nan_failures({**metrics, "train_loss": float("nan")}) == ["train_loss"]


def test_the_trials_scratch_folder_is_removed_when_training_raises(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    plan = PhasePlan("replicate", report_test=True, artifacts=True)
    config = TrainConfig(data=str(tmp_path / "no-such-data"), epochs=1)
    with pytest.raises(DataError) as raised:
        run_trial(config, plan, lambda metrics, folder: None)
    assert raised.value is not None  # the traceback (and its frames) are still alive here
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("gloss-trial-")]


def test_a_replicate_line_counts_epochs_not_reports(tiny_model_dir):
    config = TrainConfig(model=tiny_model_dir, loss="ce", epochs=3, patience=0, batch_size=64)
    result = train(config)
    closing = {**closing_result(result), "training_iteration": 4}  # one more report than epochs
    line = progress_line("replicate 1/2", "synth__m__ce__s0", "abc_00000", "completed", read_result(closing),
                         "val_macro_f1")
    assert "after 3 epoch(s)" in line and f"val_macro_f1={result.score:.4f}" in line
    search = {**epoch_result(result.history[1]), "training_iteration": 2}
    assert "after 2 epoch(s)" in progress_line("search 1/8", "c", "t", "stopped early (ASHA)", read_result(search),
                                               "val_macro_f1")


def _record(client, exp_id: str, name: str, metric: str, mode: str) -> None:
    from sweeps.record import summary_run
    from sweeps.spec import SweepSpec

    spec = SweepSpec.model_validate({"name": name, "datasets": ["d"], "models": ["m"], "metric": metric, "mode": mode,
                                     "losses": {"ce": {"loss": "ce"}}})
    client.set_terminated(summary_run(client, exp_id, spec))


@pytest.mark.parametrize("mode,best", [("min", 0.2), ("max", 0.8)])
def test_status_picks_the_best_by_the_sweeps_metric_and_mode(tmp_path, mode, best):
    from sweeps.status import sweep_status

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp_id = client.create_experiment("s")
    _record(client, exp_id, "s", "val_accuracy", mode)
    for value in (0.2, 0.8, 0.5):
        run = client.create_run(exp_id, tags={"kind": "trial", "phase": "search", "cell": "c", "ended": "completed"})
        client.log_metric(run.info.run_id, "score", value)  # the metric at the trial's best epoch
        client.log_metric(run.info.run_id, "val_accuracy", 1 - value)  # its last epoch: not what ranks it
    [row] = sweep_status("s", uri)
    assert row["metric"] == "val_accuracy" and row["best"] == pytest.approx(best) and row["completed"] == 3


def test_analysis_imports_without_ray_torch_or_transformers():
    code = ("import sys, analysis.cli, analysis.report, analysis.load, analysis.tables, analysis.importance, "
            "analysis.sensitivity, analysis.plots, analysis.stats\n"
            "print(sorted(m for m in ('ray', 'torch', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[]"
