"""The resource preflight on a real autoscaling Ray cluster (Ray's autoscaler v1 with its fake
multi-node provider): a head without GPUs and a GPU node type at zero workers is accepted, and
the autoscaler does add the node; a trial no node type can hold fails within the wait, naming
what it needs and what the cluster has."""

import re
import time

import pytest
import ray

from autoscaling_cluster import FakeAutoscalingCluster
from sweeps.preflight import PreflightError, check_resources

GPU_WORKER = {"gpu_worker": {"resources": {"CPU": 2, "GPU": 1}, "node_config": {}, "min_workers": 0,
                             "max_workers": 1}}


@pytest.fixture(scope="module")
def autoscaling_cluster(tmp_path_factory):
    """A 2-CPU head without GPUs whose autoscaler may add one `gpu_worker` (2 CPUs, 1 GPU)."""
    with FakeAutoscalingCluster(tmp_path_factory.mktemp("autoscaling"), 2, GPU_WORKER) as address:
        ray.init(address=address)
        try:
            yield address
        finally:
            ray.shutdown()


def test_a_node_type_the_autoscaler_can_add_is_accepted_and_the_node_comes(autoscaling_cluster):
    assert not any(n["Resources"].get("GPU") for n in ray.nodes() if n["Alive"])  # none at rest
    lines = []
    check_resources(1, 1, ray.nodes(), say=lines.append)
    # the autoscaler's launch is seen under way, or (on a quick cluster) its node has already joined
    assert any("the autoscaler is launching 1 x gpu_worker" in line or "a node that fits has joined" in line
               for line in lines), lines

    @ray.remote(num_gpus=1, num_cpus=1)
    def gpu_ids():
        return ray.get_gpu_ids()

    assert len(ray.get(gpu_ids.remote(), timeout=240)) == 1  # the trial's bundle did find its node


def test_a_trial_no_node_type_can_hold_fails_within_the_wait(autoscaling_cluster):
    lines = []
    started = time.monotonic()
    with pytest.raises(PreflightError) as raised:
        check_resources(1, 2, ray.nodes(), wait_s=4, say=lines.append)
    assert time.monotonic() - started < 4 + 60  # the wait, one poll and a last look (bounded, on a loaded machine too)
    message = str(raised.value)
    assert "a trial asks for cpu 1, gpu 2, but no node of this cluster has that much" in message
    assert re.search(r"\(largest: cpu 2, gpu [01]\) among its [12] live node\(s\) after waiting [45] s, and the "
                     r"autoscaler has launched no node for it", message), message
    assert "--wait-for-resources SECONDS" in message
    assert lines and lines[0].startswith("resources: no live node has cpu 1, gpu 2"), lines


def _v1_status_with(pending_launches: dict, pending_nodes: list) -> dict:
    return {"autoscaler_report": {"pending_launches": pending_launches, "pending_nodes": pending_nodes,
                                  "node_type_mapping": {"n1": "gpu_worker"}}}


def test_only_a_launch_beyond_those_under_way_at_the_first_look_counts():
    """A node another demand asked for (still launching when the preflight first looks) says
    nothing of this trial's bundle; one more launched after the request does."""
    from sweeps.autoscaling import _v1_scaling

    under_way = _v1_status_with({}, [("10.0.0.2", "gpu_worker", "setting-up")])
    first = _v1_scaling(under_way, None)
    assert first.verdict == "pending" and first.launching == {"gpu_worker": 1}
    assert _v1_scaling(under_way, first.launching).verdict == "pending"
    more = _v1_scaling(_v1_status_with({"gpu_worker": 1}, [("10.0.0.2", "gpu_worker", "setting-up")]),
                       first.launching)
    assert more.verdict == "can" and more.detail == "the autoscaler is launching 1 x gpu_worker"
    assert _v1_scaling(_v1_status_with({"big": 2}, []), {}).detail == "the autoscaler is launching 2 x big"
