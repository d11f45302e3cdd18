"""A trial uses exactly the GPUs Ray assigned it, on a real local Ray cluster with logical GPUs
(`ray.init(num_gpus=2)` on this CPU host) and a real SQLite MLflow store: fractional trials pack
two to a GPU id and run at once, a `gpu: 0` trial records no GPU and trains on the CPU although
the node's environment names a GPU, and Tune keeps more than one trial of the custom searcher
pending at once."""

import collections
import os

import pytest
import ray
import torch
import yaml
from mlflow.tracking import MlflowClient
from ray import tune

from helpers import max_overlap

from gloss_core.report import EpochReport
from gloss_core.training.gpu import peak_gpu_memory_mb, release_gpu_memory
from sweeps.cells import CellSearcher
from sweeps.pending import PENDING_TRIALS, pending_trials
from sweeps.spec import SpaceSampler, load_spec
from trainables.devices import TrialDeviceError, trial_device
from trainables.report import PEAK_GPU_MEMORY, epoch_result, read_result


def never_asked() -> bool:
    raise AssertionError("a trial with no GPU asked CUDA whether it is available")


@pytest.mark.parametrize("requested, gpu_ids, cuda, expected", [
    ("auto", (), never_asked, "cpu"),  # no GPU assigned: the CPU, whatever CUDA would say
    ("auto", ("1",), lambda: True, "cuda:0"),  # Ray made GPU 1 the only visible one: cuda:0
    ("auto", ("0",), lambda: False, "cpu"),  # a logical GPU on a CPU host
    ("cpu", ("0",), never_asked, "cpu"),
    ("cuda:1", ("0", "1"), never_asked, "cuda:1"),
])
def test_device_follows_the_assigned_gpus(requested, gpu_ids, cuda, expected):
    assert trial_device(requested, gpu_ids, cuda) == expected


def test_a_cuda_device_without_an_assigned_gpu_is_an_error():
    with pytest.raises(TrialDeviceError, match="Ray assigned this trial no GPU"):
        trial_device("cuda", (), never_asked)


def test_gpu_memory_calls_are_no_ops_without_cuda():
    release_gpu_memory()
    assert peak_gpu_memory_mb(torch.device("cpu")) is None
    assert not torch.cuda.is_initialized()  # neither call started CUDA


def test_peak_gpu_memory_travels_in_the_result_only_when_measured():
    on_gpu = EpochReport(1, {"val_macro_f1": 0.5}, 1, 0.5, device="cuda:0", gpu_ids=("1",), peak_gpu_memory_mb=812.5)
    read = read_result(epoch_result(on_gpu))
    assert read.peak_gpu_memory_mb == 812.5 and read.metrics[PEAK_GPU_MEMORY] == 812.5 and read.gpu_ids == "1"
    on_cpu = epoch_result(EpochReport(1, {"val_macro_f1": 0.5}, 1, 0.5))
    assert PEAK_GPU_MEMORY not in on_cpu and read_result(on_cpu).peak_gpu_memory_mb is None


def test_the_sweeps_own_ray_session_hides_the_nodes_gpus_from_a_zero_gpu_worker(monkeypatch):
    from sweeps.ray_session import ray_session

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # the node's GPUs, as the raylet and its workers inherit them
    monkeypatch.delenv("RAY_ADDRESS", raising=False)

    @ray.remote(num_gpus=0)
    def visible():
        return os.environ.get("CUDA_VISIBLE_DEVICES"), ray.get_gpu_ids()

    with ray_session(None, 1):
        assert ray.get(visible.remote()) == ("", [])  # RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=1: no GPU to see


@pytest.fixture(scope="module")
def two_logical_gpus():
    """A local cluster with 2 logical GPUs whose workers' environment names both, as a GPU node's
    may: only Ray's assignment may decide what a trial uses. (Naming fewer GPUs than the node
    has would narrow what `ray.get_gpu_ids()` reports to those.)"""
    os.environ.pop("RAY_ADDRESS", None)
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"CUDA_VISIBLE_DEVICES": "0,1", "TOKENIZERS_PARALLELISM": "false"}})
    yield
    ray.shutdown()


def test_fractional_trials_share_gpus_and_a_zero_gpu_trial_uses_none(two_logical_gpus, tiny_model_dir, tmp_path):
    from sweeps.runner import run_sweep

    spec_path = tmp_path / "gpus.yaml"
    spec_path.write_text(yaml.safe_dump({
        "name": "gpus",
        "datasets": {"synth": {"data": "synthetic", "synthetic_size": 48, "synthetic_noise": 0.2}},
        "models": {"half": {"model": tiny_model_dir, "resources": {"gpu": 0.5}},
                   "none": {"model": tiny_model_dir, "resources": {"gpu": 0}}},
        "losses": {"ce": {"loss": "ce", "space": {"lr": {"loguniform": [1e-4, 1e-2]}}}},
        "train": {"batch_size": 16, "max_length": 16, "patience": 0, "timing": False},
        "search": {"num_samples": 4, "max_concurrent": 4, "seed": 0},
        "asha": {"max_t": 2, "grace_period": 2, "reduction_factor": 2},
        "resources": {"cpu": 0.25},
        "replicate": None,
        "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "storage_path": str(tmp_path / "ray_results"),
    }))
    spec = load_spec(spec_path)
    run_sweep(spec)
    client = MlflowClient(spec.tracking_uri)
    exp = client.get_experiment_by_name("gpus")
    runs = client.search_runs([exp.experiment_id], "tags.kind = 'trial'", max_results=100)
    by_model = collections.defaultdict(list)
    for run in runs:
        by_model[run.data.tags["model"]].append(run)
    half, none = by_model["half"], by_model["none"]
    assert len(half) == len(none) == 4 and all(r.info.status == "FINISHED" for r in runs)
    # gpu 0.5: the four ran at once, two on each GPU id, each on the CPU (the GPUs are logical here)
    assert collections.Counter(r.data.tags["gpu_ids"] for r in half) == {"0": 2, "1": 2}
    assert max_overlap(half) == 4
    assert {r.data.tags["device"] for r in half} == {"cpu"}
    # gpu 0: no GPU recorded, the CPU, although CUDA_VISIBLE_DEVICES=0,1 is set in its environment
    assert all("gpu_ids" not in r.data.tags and r.data.tags["device"] == "cpu" for r in none)
    assert all("peak_gpu_memory_mb" not in r.data.metrics for r in runs)  # no CUDA memory measured on a CPU


def test_a_zero_gpu_worker_sees_the_nodes_gpu_and_still_resolves_to_the_cpu(two_logical_gpus):
    @ray.remote(num_gpus=0)
    def where():
        return os.environ.get("CUDA_VISIBLE_DEVICES"), ray.get_gpu_ids(), trial_device(
            "auto", [str(g) for g in ray.get_gpu_ids()], lambda: True)

    visible, ids, device = ray.get(where.remote())
    assert visible == "0,1" and ids == []  # Ray 2.x leaves the node's variable to a 0-GPU worker
    assert device == "cpu"  # CUDA "available" and visible, yet not assigned: the CPU


def count_pending(limit, folder):
    """Run 4 quick trials of the sweep's searcher through Tune and return the most trials that were
    PENDING at one step. No `max_concurrent_trials`: what Tune keeps pending is the env var's."""

    class Pending(tune.Callback):
        most = 0

        def on_step_begin(self, iteration, trials, **info):
            Pending.most = max(Pending.most, sum(t.status == "PENDING" for t in trials))

    def quick(config):
        tune.report({"score": config["x"], "last_epoch": True})

    searcher = CellSearcher({"c": SpaceSampler(load_spec_space())}, 4, 4, "score", "max")
    with pending_trials(limit):
        tune.Tuner(tune.with_resources(quick, {"cpu": 0.25}),
                   tune_config=tune.TuneConfig(metric="score", mode="max", search_alg=searcher, num_samples=4),
                   run_config=tune.RunConfig(storage_path=str(folder), callbacks=[Pending()], verbose=0)).fit()
    assert PENDING_TRIALS not in os.environ  # set for the fit only
    return Pending.most


def load_spec_space():
    from sweeps.space import Distribution

    return {"x": Distribution(uniform=(0.0, 1.0))}


def test_more_than_one_trial_of_the_custom_searcher_is_pending_at_once(two_logical_gpus, tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_AIR_NEW_OUTPUT", "0")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(PENDING_TRIALS, raising=False)
    assert count_pending(None, tmp_path / "a") == 1  # Tune's own limit: a custom searcher, no max_concurrent_trials
    assert count_pending(4, tmp_path / "b") > 1
