"""`--cells PATTERN` (sweeps/cell_groups.py): which cells a run selects, which group each cell
trains in, what the sweep's folder records; a real sweep run on a subset, then the rest."""

import json

import pytest

from gloss_core.errors import UserError
from sweeps.cell_groups import (LEDGER, CellGroup, NoCellMatches, plan_groups, planned_cells, read_groups,
                                select_cells, started_phases, write_groups)
from sweeps.storage import SweepStorage

CELLS = ["R8__bert__ce__s0", "R8__bert__gloss__s0", "MR__bert__ce__s0", "MR__roberta__ce__s0"]


def test_patterns_select_cells_in_the_spec_order():
    assert select_cells(CELLS, None) == CELLS
    assert select_cells(CELLS, "R8__*") == CELLS[:2]
    assert select_cells(CELLS, "MR__roberta__*, R8__*__ce__s0") == [CELLS[0], CELLS[3]]  # spec order, not pattern's
    assert select_cells(CELLS, "*__ce__*") == [CELLS[0], CELLS[2], CELLS[3]]


def test_a_pattern_that_selects_nothing_names_itself_and_the_cells():
    with pytest.raises(NoCellMatches, match=r"--cells 'R52__\*' matches none of the sweep's cells \(R8__bert__ce__s0"):
        select_cells(CELLS, "R52__*")
    with pytest.raises(NoCellMatches, match="no pattern given"):
        select_cells(CELLS, " , ")
    with pytest.raises(NoCellMatches):  # case matters: cell names are keys of the spec
        select_cells(CELLS, "r8__*")
    with pytest.raises(NoCellMatches, match=r"`\{a,b\}` is not a shell pattern here; give a__\*,b__\*"):
        select_cells(CELLS, "{R52,MR}__*")  # braces are not fnmatch's, and never a format field


def test_a_whole_sweep_is_one_group_with_the_plain_phase_folders():
    groups: list[CellGroup] = []
    planned = plan_groups(groups, CELLS, CELLS, None)
    assert [g.name for g in planned.train] == [""] and planned.train[0].cells == CELLS
    assert planned.train[0].folder("search") == "search" and not planned.left and not planned.restore
    again = plan_groups(groups, CELLS, CELLS, None)  # a resume: the same group, nothing new
    assert again.train == [groups[0]] and len(groups) == 1


def test_subsets_start_groups_and_a_cell_stays_in_the_group_that_started_it():
    groups: list[CellGroup] = []
    first = plan_groups(groups, CELLS, select_cells(CELLS, "R8__*"), "R8__*")
    [g1] = first.train
    assert (g1.name, g1.cells, g1.pattern, g1.folder("replicate")) == ("g1", CELLS[:2], "R8__*", "replicate-g1")
    assert first.left == CELLS[2:]
    # g1 interrupted (not done): a run of other cells leaves it as it is
    second = plan_groups(groups, CELLS, select_cells(CELLS, "MR__bert__*"), "MR__bert__*")
    assert [g.name for g in second.train] == ["g2"] and second.restore == [] and second.left == CELLS[:2] + [CELLS[3]]
    g1.done = True
    # everything: g1 (finished: nothing left to train, but --retry-failed may retry it) and g2
    # (unfinished) continue; the last cell starts g3
    third = plan_groups(groups, CELLS, CELLS, None)
    assert [g.name for g in third.train] == ["g1", "g2", "g3"] and third.restore == [] and third.left == []
    assert groups[2].cells == [CELLS[3]]
    for group in groups:
        group.done = True
    # finished groups not selected are read back for the closing tables
    last = plan_groups(groups, CELLS, select_cells(CELLS, "MR__roberta__*"), "MR__roberta__*")
    assert [g.name for g in last.train] == ["g3"] and [g.name for g in last.restore] == ["g1", "g2"]
    # a pattern touching one cell of a group runs the whole group (a Tune experiment resumes whole)
    fourth = plan_groups(groups, CELLS, select_cells(CELLS, "R8__bert__gloss__s0"), "R8__bert__gloss__s0")
    assert fourth.train == [g1] and len(groups) == 3 and fourth.training() == CELLS[:2]  # both cells may train


def test_the_resources_check_covers_every_cell_a_run_may_train(tmp_path):
    storage = SweepStorage(str(tmp_path), "s")
    assert planned_cells(storage, CELLS, "MR__*") == CELLS[2:]  # a fresh sweep: what the pattern selects
    write_groups(storage, [CellGroup("", CELLS, True)])  # a sweep that ran whole
    assert planned_cells(storage, CELLS, "MR__bert__*") == CELLS  # its one group resumes whole
    assert read_groups(storage, CELLS) == [CellGroup("", CELLS, True)]  # nothing written


def test_the_ledger_round_trips_and_a_folder_from_before_groups_is_one_group(tmp_path):
    storage = SweepStorage(str(tmp_path), "s")
    assert read_groups(storage, CELLS) == []
    (tmp_path / "s" / "search").mkdir(parents=True)  # a sweep folder from before the ledger
    assert read_groups(storage, CELLS) == [CellGroup("", CELLS)]
    written = [CellGroup("g1", CELLS[:2], True, "R8__*"), CellGroup("g2", CELLS[2:], False, "MR__*")]
    write_groups(storage, written)
    assert read_groups(storage, CELLS) == written
    assert read_groups(storage, CELLS[:3])[1].cells == [CELLS[2]]  # cells the spec no longer has are dropped
    assert started_phases(storage, CELLS) == set()  # the old `search` folder is no group's now
    (tmp_path / "s" / "replicate-g1").mkdir()
    (tmp_path / "s" / "search-g2").mkdir()
    assert started_phases(storage, CELLS) == {"search", "replicate"}


def test_an_unreadable_ledger_is_named_and_nothing_is_guessed(tmp_path):
    storage = SweepStorage(str(tmp_path), "s")
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / LEDGER).write_text(json.dumps({"groups": [{"cells": []}]}))
    with pytest.raises(UserError, match=rf"{LEDGER} cannot be read .*--restart"):
        read_groups(storage, CELLS)


def test_a_sweep_run_on_some_cells_then_resumed_trains_each_cell_once(tiny_model_dir, tmp_path, capsys):
    """`--cells` on a fresh sweep trains only the cells it selects (their phases in their own Tune
    experiments) and leaves no trace of the others; a `--resume` without it trains the rest and
    only reads back the first cells (same trial runs, same trial ids), and tables both."""
    from mlflow.tracking import MlflowClient

    from sweeps.runner import run_sweep
    from sweeps.spec import load_spec
    from test_sweep import write_spec

    spec = load_spec(write_spec(
        tmp_path, tiny_model_dir, "subset", models={"tiny": {"model": tiny_model_dir}, "other": {"model": tiny_model_dir}},
        losses={"ce": {"loss": "ce", "space": {"lr": {"loguniform": [1e-4, 1e-3]}}}},
        search={"num_samples": 2, "max_concurrent": 2}, asha={"max_t": 1, "grace_period": 1},
        replicate={"seeds": [1]}))
    tiny, other = "synth__tiny__ce__s0", "synth__other__ce__s0"
    client = MlflowClient(spec.tracking_uri)

    def trial_ids() -> dict[tuple[str, str], set[str]]:
        exp = client.get_experiment_by_name("subset")
        found: dict[tuple[str, str], set[str]] = {}
        for run in client.search_runs([exp.experiment_id], "tags.kind = 'trial'", max_results=1000):
            found.setdefault((run.data.tags["cell"], run.data.tags["phase"]), set()).add(run.data.tags["trial_id"])
        return found

    first = run_sweep(spec, num_cpus=2, cells="*__tiny__*")
    said = capsys.readouterr().out
    assert "sweep subset: 1 of 2 cells (--cells)" in said and f"runs cell group g1 (1 cell): {tiny}" in said
    assert f"left as they are: 1 cell(s) not selected and not finished ({other})" in said
    assert [row["cell"] for row in first["cells"]] == [tiny] and set(first["best"]) == {tiny}
    after_first = trial_ids()
    assert set(after_first) == {(tiny, "search"), (tiny, "replicate")}, after_first  # nothing of the other cell
    assert len(after_first[(tiny, "search")]) == 2 and len(after_first[(tiny, "replicate")]) == 1
    folder = tmp_path / "ray_results" / "subset"
    assert {"search-g1", "replicate-g1"} <= {p.name for p in folder.iterdir()} and not (folder / "search").exists()
    assert json.loads((folder / LEDGER).read_text())["groups"] == [
        {"name": "g1", "cells": [tiny], "done": True, "pattern": "*__tiny__*"}]

    second = run_sweep(spec, num_cpus=2, resume=True)
    said = capsys.readouterr().out
    assert f"runs cell group g2 (1 cell): {other}" in said and "reads back cell group g1 (1 cell)" in said
    assert "left as they are" not in said
    assert [row["cell"] for row in second["cells"]] == [cell.name for cell in spec.cells()]  # the spec's order
    assert {row["cell"] for row in second["cells"]} == {tiny, other}
    assert second["best"][tiny] == first["best"][tiny] and len(second["replicate"][other]) == 1
    after_second = trial_ids()
    assert {k: v for k, v in after_second.items() if k[0] == tiny} == after_first  # read back, not trained again
    assert len(after_second[(other, "search")]) == 2 and len(after_second[(other, "replicate")]) == 1
    groups = json.loads((folder / LEDGER).read_text())["groups"]
    assert [(g["name"], g["cells"], g["done"]) for g in groups] == [("g1", [tiny], True), ("g2", [other], True)]
