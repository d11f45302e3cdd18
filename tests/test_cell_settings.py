"""A dataset or model entry's own training options and resources: the order they apply in, their
validation, the per-trial resources Tune is given, and the preflight check of every cell's need."""

from pathlib import Path

import pytest
import yaml

from sweeps.preflight import PreflightError, check_resources
from sweeps.resources import CellResources, distinct_needs
from sweeps.spec import Resources, SpecError, load_spec
from trainables.plan import CELL

REPO = Path(__file__).resolve().parents[1]
BASE = {
    "name": "cells", "datasets": {"x": {"data": "synthetic"}}, "models": {"m": {"model": "minilm"}},
    "losses": {"ce": {"loss": "ce", "space": {"lr": {"loguniform": [1e-5, 1e-3]}}}},
    "train": {"batch_size": 16, "max_length": 32}, "resources": {"cpu": 2, "gpu": 0},
}


def load(tmp_path: Path, **changes):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({**BASE, **changes}))
    return load_spec(path)


def error(tmp_path: Path, **changes) -> str:
    with pytest.raises(SpecError) as caught:
        load(tmp_path, **changes)
    return str(caught.value)


def test_entries_override_spec_wide_options_and_resources_key_by_key(tmp_path):
    spec = load(tmp_path,
                datasets={"short": {"data": "synthetic", "max_length": 24, "batch_size": 12, "resources": {"cpu": 3}},
                          "plain": {"data": "synthetic"}},
                models={"large": {"model": "minilm", "batch_size": 8, "resources": {"gpu": 1, "cpu": 5}},
                        "small": {"model": "minilm"}})
    cells = {(c.dataset, c.model): c for c in spec.cells()}
    # options: train < dataset < model; resources: spec < dataset < model, each key on its own
    assert cells["short", "large"].constants["batch_size"] == 8 and cells["short", "large"].constants["max_length"] == 24
    assert cells["short", "small"].constants["batch_size"] == 12
    assert cells["plain", "small"].constants["batch_size"] == 16 and cells["plain", "small"].constants["max_length"] == 32
    assert cells["short", "large"].resources == Resources(cpu=5, gpu=1)
    assert cells["short", "small"].resources == Resources(cpu=3, gpu=0)
    assert cells["plain", "large"].resources == Resources(cpu=5, gpu=1)
    assert cells["plain", "small"].resources == Resources(cpu=2, gpu=0)
    assert all("resources" not in c.constants for c in spec.cells())  # not a training option
    # what Tune is told per trial, by the cell named in the trial's config
    per_trial = CellResources({c.name: c for c in spec.cells()})
    assert per_trial({CELL: cells["short", "large"].name, "lr": 1e-4}) == {"cpu": 5, "gpu": 1}
    assert per_trial({CELL: cells["plain", "small"].name}) == {"cpu": 2, "gpu": 0}
    assert distinct_needs(spec.cells()) == [Resources(cpu=5, gpu=1), Resources(cpu=3, gpu=0), Resources(cpu=2, gpu=0)]


@pytest.mark.parametrize("models, expected", [
    ({"m": {"model": "minilm", "resources": {"gpu": -1}}}, "models.m.resources.gpu: Input should be greater than or equal to 0 (got -1)"),
    ({"m": {"model": "minilm", "resources": {"tpu": 1}}}, "models.m.resources.tpu: Extra inputs are not permitted"),
    ({"m": {"model": "minilm", "resources": {"gpu": 1.5}}}, "models.m.resources.gpu: Value error, a trial holds a fraction of one GPU or whole GPUs, not 1.5"),
    ({"m": {"model": "minilm", "resources": 2}}, "models.m.resources: give a mapping such as {gpu: 1}, got 2"),
    ({"m": {"model": "minilm", "train": {"batch_size": 8}}}, "models.m.train: an entry's training options go in the entry itself"),
    ({"m": {"model": "minilm", "batch_sise": 8}}, "unknown training option(s) ['batch_sise'] in models.m"),
])
def test_bad_entry_settings_are_named_with_their_path(tmp_path, models, expected):
    assert expected in error(tmp_path, models=models)


def test_dataset_entry_settings_are_checked_like_a_models(tmp_path):
    assert "datasets.x.resources.cpu: Input should be greater than 0 (got 0)" in error(
        tmp_path, datasets={"x": {"data": "synthetic", "resources": {"cpu": 0}}})


def test_a_cuda_device_without_a_gpu_share_is_refused_before_ray_starts(tmp_path):
    message = error(tmp_path, models={"m": {"model": "minilm", "device": "cuda"}})
    assert "cell x__m__ce__s0: device 'cuda' needs a GPU, but the cell's resources give it gpu 0" in message
    spec = load(tmp_path, models={"m": {"model": "minilm", "device": "cuda", "resources": {"gpu": 0.5}}})
    assert spec.cells()[0].resources.gpu == 0.5


def test_shipped_paper_specs_give_each_model_its_gpu_share():
    table2 = load_spec(REPO / "sweeps/specs/table2.yaml")
    shares = {c.model: (c.resources.cpu, c.resources.gpu) for c in table2.cells()}
    assert shares == {"bert-base": (4, 0.5), "roberta-large": (4, 1), "distilbert-base": (4, 0.5)}
    assert {c.constants["batch_size"] for c in table2.cells()} == {128}  # the reference's batch, every model
    table3 = load_spec(REPO / "sweeps/specs/table3.yaml")
    assert {(c.resources.cpu, c.resources.gpu) for c in table3.cells()} == {(4, 0.5)}


def test_preflight_checks_every_cells_need_not_just_the_spec_wide_one(tmp_path):
    spec = load(tmp_path, models={"large": {"model": "minilm", "resources": {"gpu": 1}}, "small": {"model": "minilm"}})
    nodes = [{"Alive": True, "Resources": {"CPU": 8, "GPU": 0}}]  # a CPU-only cluster: the spec-wide need fits
    check_resources(spec.resources.cpu, spec.resources.gpu, nodes)
    needs = distinct_needs(spec.cells())
    with pytest.raises(PreflightError, match="a trial asks for cpu 2, gpu 1"):
        for need in needs:
            check_resources(need.cpu, need.gpu, nodes)
    for need in needs:  # a GPU node holds both
        check_resources(need.cpu, need.gpu, [{"Alive": True, "Resources": {"CPU": 8, "GPU": 1}}])


def test_each_cells_trials_get_the_torch_threads_of_its_own_cpu_share(tmp_path):
    from types import SimpleNamespace

    from sweeps.runner import SweepRunner

    spec = load(tmp_path, resources={"cpu": 0.5},
                models={"large": {"model": "minilm", "resources": {"cpu": 3.5}}, "small": {"model": "minilm"}})
    cells = {cell.name: cell for cell in spec.cells()}
    threads = SweepRunner._threads(SimpleNamespace(cells=cells, group_cells=cells))
    assert {cells[name].model: n for name, n in threads.items()} == {"large": 3, "small": 1}  # whole CPUs, at least 1
