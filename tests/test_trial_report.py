"""One score per trial: the selection metric at the trial's best epoch, in the engine's typed
reports, in Tune's result dict and back, and in everything that ranks trials (Optuna, the
progress line, the trial's MLflow run, `gloss sweep status`, the choice of each cell's best)."""

import math
from types import SimpleNamespace

import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient

from gloss_core.config import TrainConfig
from gloss_core.report import SCORE, EpochReport
from gloss_core.training.build import build_run
from sweeps.cells import CellSearcher
from sweeps.outcomes import best_trials
from sweeps.progress import progress_line
from sweeps.spec import Cell, Distribution, SpaceSampler
from trainables.plan import CELL, PhasePlan
from trainables.report import closing_result, epoch_result, read_result

PEAK_AT_2 = [0.5, 0.7, 0.6, 0.55]  # validation macro-F1 per epoch: best at epoch 2, falling after


def scripted_run(tiny_model_dir, values, **options):
    """A real run whose validation metric follows `values`, epoch by epoch."""
    run = build_run(TrainConfig(model=tiny_model_dir, loss="ce", epochs=len(values), batch_size=64, **options))
    real = run.evaluate
    epochs = iter(values)

    def evaluate(batches):
        metrics, emb, labels = real(batches)
        if batches is run.data.val:
            metrics = {**metrics, "macro_f1": next(epochs)}
        return metrics, emb, labels

    run.evaluate = evaluate
    return run


def test_the_engines_score_is_the_metric_at_the_best_epoch(tiny_model_dir):
    run = scripted_run(tiny_model_dir, PEAK_AT_2, patience=2)
    reports = []
    run.fit(lambda report, folder: reports.append(report))
    assert [r.score for r in reports] == [0.5, 0.7, 0.7, 0.7]
    assert [r.best_epoch for r in reports] == [1, 2, 2, 2]
    assert [r.metrics["val_macro_f1"] for r in reports] == PEAK_AT_2  # the raw curve stays
    assert [r.last for r in reports] == [False, False, False, True] and reports[-1].stop == "early_stop"
    result = run.result()
    assert (result.score, result.best_epoch, result.epochs_run, result.stop) == (0.7, 2, 4, "early_stop")
    assert result.validation["val_macro_f1"] == 0.7


def test_a_budget_stop_and_a_metric_to_minimise(tiny_model_dir):
    run = scripted_run(tiny_model_dir, [0.5, 0.3, 0.4], patience=0, selection_mode="min")
    reports = []
    run.fit(lambda report, folder: reports.append(report))
    assert [r.score for r in reports] == [0.5, 0.3, 0.3] and reports[-1].stop == "budget"
    with pytest.raises(ValueError, match="not measured on validation in the standalone protocol"):
        TrainConfig(protocol="standalone", loss="scl", selection_metric="val_macro_f1")


def test_reports_survive_the_round_trip_through_tunes_result_dict(tiny_model_dir):
    from gloss_core.train import train

    result = train(TrainConfig(model=tiny_model_dir, loss="ce", epochs=2, patience=0, batch_size=64, seed=7))
    epoch = EpochReport(3, {"train_loss": 0.4, "val_macro_f1": 0.6, "epoch_time_s": 1.0}, 2, 0.65, last=True,
                        stop="early_stop", checkpoint_write_s=0.25, node_id="n1", gpu_ids=("0", "1"), resumed=True)
    read = read_result({**epoch_result(epoch), "trial_id": "t1", "node_ip": "10.0.0.2", "timestamp": 5.0,
                        "training_iteration": 3})
    assert (read.trial_id, read.epochs, read.score, read.best_epoch, read.last, read.stop, read.closing) == (
        "t1", 3, 0.65, 2, True, "early_stop", False)
    assert (read.node_id, read.node_ip, read.gpu_ids, read.checkpoint_write_s) == ("n1", "10.0.0.2", "0,1", 0.25)
    assert read.metrics[SCORE] == 0.65 and read.metrics["resumed_from_checkpoint"] == 1.0
    assert read.curve == {"epoch": 3.0, "val_macro_f1": 0.6}
    closing = read_result(closing_result(result))
    assert closing.closing and closing.last and closing.seed == 7 and closing.epochs == 2 and not closing.curve
    assert closing.score == result.score and closing.test("test_accuracy") == result.test["test_accuracy"]
    assert closing.metrics["final_val_macro_f1"] == result.validation["val_macro_f1"]
    assert "val_macro_f1" not in closing.metrics  # the best epoch's, already logged at its own step
    assert math.isnan(read_result(None).score) and not read_result({}).last


def peaking_trial(trial_id: str) -> list[dict]:
    """Tune's results of one search trial that peaks at epoch 2 and stops early at epoch 4."""
    out = []
    for epoch, value in enumerate(PEAK_AT_2, start=1):
        best = max(range(epoch), key=lambda i: PEAK_AT_2[i]) + 1
        report = EpochReport(epoch, {"val_macro_f1": value, "train_loss": 1.0 / epoch}, best, PEAK_AT_2[best - 1],
                             last=epoch == 4, stop="early_stop" if epoch == 4 else None)
        out.append({**epoch_result(report), "trial_id": trial_id, "training_iteration": epoch,
                    "timestamp": 1.0e9 + epoch})
    return out


def test_optuna_the_progress_line_mlflow_and_status_all_see_the_epoch_2_value(tmp_path):
    from sweeps.mlflow_runs import experiment_id
    from sweeps.record import summary_run
    from sweeps.spec import SweepSpec
    from sweeps.status import sweep_status
    from sweeps.tracking import MLflowTrialLogger

    results = peaking_trial("t1")
    # Optuna (a real study) is told the trial's score
    space = {"lr": Distribution.model_validate({"loguniform": [1e-5, 1e-3]})}
    searcher = CellSearcher({"c": SpaceSampler(space)}, 1, 1, SCORE, "max")
    config = searcher.suggest("t1")
    for result in results:
        searcher.on_trial_result("t1", result)
    searcher.on_trial_complete("t1", result=results[-1])
    [told] = searcher.study("c").trials
    assert told.state == optuna.trial.TrialState.COMPLETE and told.value == 0.7
    # the progress line
    line = progress_line("search 1/1", "c", "t1", "completed", read_result(results[-1]), "val_macro_f1")
    assert "val_macro_f1=0.7000 (best, epoch 2)" in line and "after 4 epoch(s)" in line
    # the trial's MLflow run, through the sweep's real logger, and gloss sweep status
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    spec = SweepSpec.model_validate({"name": "peak", "datasets": ["d"], "models": ["m"],
                                     "losses": {"ce": {"loss": "ce"}}})
    exp = experiment_id(client, "peak", uri)
    client.set_terminated(summary_run(client, exp, spec))
    cell = Cell("peak", "c", "d", "m", "ce", 0, "integrated", {"loss": "ce", "seed": 0}, {})
    parent = client.create_run(exp, tags={"kind": "cell"}).info.run_id
    logger = MLflowTrialLogger(uri, exp, {"c": parent}, {"c": cell}, PhasePlan("search", {"c": cell.constants}))
    trial = SimpleNamespace(trial_id="t1", config=config, last_result=results[-1], checkpoint=None, status="TERMINATED",
                            error_file=None)
    logger.log_trial_start(trial)
    for epoch, result in enumerate(results, start=1):
        logger.log_trial_result(epoch, trial, result)
    logger.log_trial_end(trial)
    logger.on_experiment_end([trial])
    [run] = client.search_runs([exp], "tags.kind = 'trial'")
    assert run.data.metrics[SCORE] == 0.7 and run.data.tags["ended"] == "completed"
    assert [m.value for m in client.get_metric_history(run.info.run_id, "val_macro_f1")] == PEAK_AT_2
    [row] = sweep_status("peak", uri)
    assert row["best"] == 0.7 and row["metric"] == "val_macro_f1"
    # the runner's choice of the cell's best trial
    grid = [SimpleNamespace(metrics=results[-1], error=None, config=config),
            SimpleNamespace(metrics={**results[-1], SCORE: 0.9, "trial_id": "t2"}, error="boom", config=config)]
    [(name, best)] = best_trials(grid, PhasePlan("search", {"c": {"loss": "ce"}}), "max").items()
    assert name == "c" and (best.value, best.trial_id) == (0.7, "t1")  # a failed trial is never chosen
    assert config[CELL] == "c"
    # a tie goes to the smallest trial id, in whatever order a (restored) ResultGrid lists the trials
    tied = [SimpleNamespace(metrics={**results[-1], "trial_id": tid}, error=None, config=config)
            for tid in ("a_00002", "a_00001", "a_00003")]
    for order in (tied, tied[::-1]):
        assert best_trials(order, PhasePlan("search", {"c": {"loss": "ce"}}), "max")["c"].trial_id == "a_00001"


def test_a_silhouette_score_may_be_undefined(tiny_model_dir):
    run = build_run(TrainConfig(model=tiny_model_dir, protocol="standalone", loss="scl", epochs=1, batch_size=64,
                                probe_epochs=2))
    real = run.evaluate
    run.evaluate = lambda batches: ({**real(batches)[0], "macro_silhouette": float("nan")}, *real(batches)[1:])
    reports = []
    run.fit(lambda report, folder: reports.append(report))
    assert reports[0].best_epoch == 0 and math.isnan(reports[0].score)
    assert SCORE not in read_result(epoch_result(reports[0])).metrics  # NaN is not logged
    assert torch.isfinite(torch.tensor(reports[0].metrics["train_loss"]))
