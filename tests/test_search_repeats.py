"""No config trained twice in a cell: a small finite space is enumerated, and a repeated suggestion
starts no trial (its study is told the earlier outcome). Real Optuna studies, driven the way Tune
drives a searcher (suggest, results, complete)."""

import json

import optuna
import pytest
import yaml

from gloss_core.report import SCORE, EpochReport
from sweeps.cells import CellSearcher, config_key, finite_points
from sweeps.spec import Distribution, SpaceSampler
from trainables.plan import CELL
from trainables.report import epoch_result

TABLE2 = yaml.safe_load(open("sweeps/specs/table2.yaml"))


def spaces_of(spec: dict) -> dict[str, SpaceSampler]:
    return {name: SpaceSampler({k: Distribution.model_validate(v) for k, v in variant.get("space", {}).items()})
            for name, variant in spec["losses"].items()}


def value_of(config: dict) -> float:
    """A deterministic score of a config (TPE then keeps proposing the best region)."""
    return 0.5 + 0.4 * (config.get("lr") == 3e-5) + 0.01 * config.get("lam", 0) - 0.01 * config.get("temperature", 0)


def final(config: dict, last: bool = True) -> dict:
    return epoch_result(EpochReport(3, {"val_macro_f1": value_of(config)}, 3, value_of(config), last=last,
                                    stop="budget" if last else None))


def drive(searcher: CellSearcher, concurrent: int = 1) -> dict[str, list[str]]:
    """Run the searcher to its end, `concurrent` trials at a time; returns cell -> trained configs."""
    trained: dict[str, list[str]] = {}
    running: dict[str, dict] = {}
    n = 0
    while True:
        while len(running) < concurrent:
            n += 1
            config = searcher.suggest(f"t{n}")
            if config is None or config == CellSearcher.FINISHED:
                break
            running[f"t{n}"] = config
        if not running:
            return trained
        trial_id, config = next(iter(running.items()))
        del running[trial_id]
        values = {k: v for k, v in config.items() if k != CELL}
        trained.setdefault(config[CELL], []).append(config_key(values))
        searcher.on_trial_complete(trial_id, result={**final(values), "trial_id": trial_id})


@pytest.mark.parametrize("seed", range(5))
def test_a_table2_shaped_search_trains_no_config_twice(seed):
    searcher = CellSearcher(spaces_of(TABLE2), TABLE2["search"]["num_samples"], 4, SCORE, "max", seed)
    trained = drive(searcher, concurrent=4)
    repeats = searcher.repeats()
    for cell, configs in trained.items():
        assert len(configs) == len(set(configs)), cell  # never the same config twice
        assert repeats[cell]["trained"] == len(configs)
        assert repeats[cell]["suggestions"] == repeats[cell]["trained"] + repeats[cell]["skipped_repeats"]
    # 5 learning rates: enumerated, 5 trials instead of 20; lr x temperature has exactly 20 points
    assert len(trained["ce"]) == 5 and repeats["ce"]["enumerated_points"] == 5
    assert len(trained["scl_ce"]) == 20 and repeats["scl_ce"]["enumerated_points"] == 20
    for cell in ("gloss_o_ce", "gloss_sqrt_ce"):  # sampled: 20 distinct trials each, whatever TPE repeats
        assert len(trained[cell]) == 20 and repeats[cell]["enumerated_points"] == 0
        assert len(searcher.study(cell).trials) == repeats[cell]["suggestions"]  # every suggestion told
    assert searcher.total_trials() == sum(len(c) for c in trained.values()) == 5 + 20 + 20 + 20


def test_a_study_stuck_on_repeats_is_handed_untried_points():
    space = {"lr": Distribution.model_validate({"choice": [1e-5, 2e-5, 3e-5, 4e-5]})}
    searcher = CellSearcher({"c": SpaceSampler(space)}, 3, 1, SCORE, "max", 0)
    first = searcher.suggest("first")
    searcher.on_trial_complete("first", result=final({"lr": first["lr"]}))
    for _ in range(50):  # the study insists on the trained point
        searcher.study("c").enqueue_trial({"lr": first["lr"]})
    trained = drive(searcher)
    assert len(trained["c"]) == 2 and first["lr"] not in [json.loads(k)["lr"] for k in trained["c"]]
    assert searcher.repeats()["c"]["trained"] == 3 and searcher.repeats()["c"]["skipped_repeats"] >= 20


def test_a_repeat_of_a_trial_still_running_is_told_its_outcome_when_it_ends():
    space = {"lr": Distribution.model_validate({"choice": [1e-5, 2e-5]}),
             "sigma": Distribution.model_validate({"loguniform": [0.1, 10.0]})}
    searcher = CellSearcher({"c": SpaceSampler(space)}, 6, 6, SCORE, "max", 0)
    study = searcher.study("c")
    first = searcher.suggest("t1")
    first_values = {k: v for k, v in first.items() if k != CELL}
    # a later suggestion repeating t1 while it runs: make the study propose exactly t1's config
    study.enqueue_trial(first_values)
    second = searcher.suggest("t2")
    assert second is not None and config_key({k: v for k, v in second.items() if k != CELL}) != config_key(first_values)
    assert searcher.repeats()["c"]["skipped_repeats"] == 1 and len(study.trials) == 3
    waiting = [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING and t.params == first_values]
    assert len(waiting) == 2  # t1 itself and its repeat
    searcher.on_trial_complete("t1", result={**final(first_values), "trial_id": "t1"})
    told = [t for t in study.trials if t.params == first_values]
    assert [t.state for t in told] == [optuna.trial.TrialState.COMPLETE] * 2
    assert told[0].value == told[1].value == pytest.approx(value_of(first_values))
    # a repeat of a pruned trial is told pruned at once
    searcher.on_trial_complete("t2", result={**final({k: v for k, v in second.items() if k != CELL}, last=False)})
    study.enqueue_trial({k: v for k, v in second.items() if k != CELL})
    searcher.suggest("t3")
    pruned = [t for t in study.trials if t.params == {k: v for k, v in second.items() if k != CELL}]
    assert [t.state for t in pruned] == [optuna.trial.TrialState.PRUNED] * 2


def test_finite_points_only_for_small_discrete_spaces():
    lr = Distribution.model_validate({"choice": [1, 2, 3]})
    units = Distribution.model_validate({"int": [1, 4]})
    assert len(finite_points({"lr": lr, "units": units}, 12)) == 12
    assert finite_points({"lr": lr, "units": units}, 11) is None
    assert finite_points({"lr": lr, "s": Distribution.model_validate({"uniform": [0, 1]})}, 100) is None
    assert finite_points({}, 10) == [{}]  # no space: one point, the constants


def test_a_cell_without_a_space_trains_its_one_config_once():
    searcher = CellSearcher({"c": SpaceSampler({})}, 4, 2, SCORE, "max", 0)
    trained = drive(searcher, concurrent=2)
    assert trained == {"c": ["{}"]} and searcher.total_trials() == 1
    assert searcher.repeats()["c"]["enumerated_points"] == 1


def test_a_failed_trial_restarted_under_a_new_id_is_a_new_study_trial_with_the_same_values():
    """`--resume --retry-failed`: Tune restarts a failed trial under a new id that the searcher
    never suggested, its config in Tune's flattened result. The cell's study keeps the FAIL and
    records the retry's outcome as a trial of its own, with the same values."""
    spaces = spaces_of({"losses": {"scl_ce": TABLE2["losses"]["scl_ce"]}})
    searcher = CellSearcher(spaces, num_samples=2, max_concurrent=2, metric=SCORE, mode="max", seed=0)
    failing = searcher.suggest("t1")
    searcher.on_trial_complete("t1", None, error=True)
    study = searcher.study("scl_ce")
    assert [t.state.name for t in study.trials] == ["FAIL"]
    flat = {f"config/{key}": value for key, value in failing.items()} | final(failing) | {"training_iteration": 3}
    searcher.on_trial_result("t1-retry", flat)
    searcher.on_trial_complete("t1-retry", flat)
    states = [(t.state.name, t.params) for t in study.trials]
    params = {k: v for k, v in failing.items() if k != CELL}
    assert states == [("FAIL", params), ("COMPLETE", params)]
    assert study.trials[1].value == pytest.approx(value_of(failing))
    assert searcher.repeats()["scl_ce"]["trained"] == 1  # the retry is no new config
    searcher.on_trial_complete("t1-retry", flat)  # heard once
    searcher.on_trial_result("t1", flat)  # an id that ended is never adopted again
    assert len(study.trials) == 2


def test_a_retry_in_an_enumerated_space_keeps_its_values_and_the_queue():
    """The enumerated points wait in the study's queue; the retry's trial is not taken from it."""
    searcher = CellSearcher(spaces_of({"losses": {"ce": TABLE2["losses"]["ce"]}}), num_samples=5, max_concurrent=5,
                            metric=SCORE, mode="max", seed=0)
    failing = searcher.suggest("t1")
    searcher.on_trial_complete("t1", None, error=True)
    flat = {f"config/{key}": value for key, value in failing.items()} | final(failing) | {"training_iteration": 3}
    searcher.on_trial_complete("t1-retry", flat)
    study = searcher.study("ce")
    done = [(t.state.name, t.params["lr"]) for t in study.trials if t.state.name != "WAITING"]
    assert done == [("FAIL", failing["lr"]), ("COMPLETE", failing["lr"])]
    rest = [searcher.suggest(f"n{i}") for i in range(4)]
    assert sorted(c["lr"] for c in rest) == sorted(set(TABLE2["losses"]["ce"]["space"]["lr"]["choice"]) - {failing["lr"]})


def test_each_cell_runs_at_most_max_concurrent_trials_at_once():
    """The search sets no Tune-wide limit: the searcher alone bounds each cell."""
    losses = {"ce": {"loss": "ce", "space": {"lr": {"loguniform": [1e-5, 1e-3]}}},
              "ce2": {"loss": "ce", "space": {"lr": {"loguniform": [1e-5, 1e-3]}}}}
    searcher = CellSearcher(spaces_of({"losses": losses}), num_samples=5, max_concurrent=2, metric=SCORE,
                            mode="max", seed=0)
    started = [searcher.suggest(f"t{i}") for i in range(5)]
    assert [c[CELL] for c in started[:4]].count("ce") == 2 and started[4] is None  # 2 per cell, then wait
    searcher.on_trial_complete("t0", final(started[0]))
    assert searcher.suggest("t5")[CELL] == started[0][CELL]  # a slot freed in that cell
