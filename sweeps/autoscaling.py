"""Whether a cluster can ever run one trial when no live node fits it: an autoscaler that can add
such a node (KubeRay with zero GPU workers at rest), or nodes that join within a wait.

`autoscaler_can_fit(cpu, gpu, before)` looks once: the node types the autoscaler reported to the
GCS, if it did; otherwise what the autoscaler is doing with a request for one trial's bundle
(launching a node for it, or calling it infeasible). Only launches beyond those already under way
at the first look (`before`; none at the first look itself) count: a node another demand asked
for says nothing of this bundle. `wait_for_resources(...)` asks the autoscaler for that bundle
and polls until a node fits, the autoscaler launches one, or the wait runs out;
`scaling_or_wait(...)` is what the preflight calls. Needs a connected Ray (`ray.init`); every read
is best effort, and an unreadable state counts as no autoscaler.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Callable, Literal

POLL_S = 2.0  # between two looks while waiting
SAY_EVERY_S = 10.0  # between two progress lines

AUTOSCALER_PROBE_S = 30.0  # how long an autoscaler that has not answered yet is given to launch a node

Verdict = Literal["can", "cannot", "pending", "none"]


@dataclass(frozen=True)
class Scaling:
    """What the autoscaler says of one trial's bundle. `verdict`: `can` (a node type fits, or a
    node is being launched), `cannot` (no node type fits), `pending` (an autoscaler runs and has
    not said yet), `none` (no autoscaler runs, or its state cannot be read). `detail` says it in
    words for the console and the error."""

    verdict: Verdict
    detail: str
    launching: dict[str, int] = field(default_factory=dict)  # node type -> nodes being launched


def fits(resources: dict, cpu: float, gpu: float) -> bool:
    return resources.get("CPU", 0) >= cpu and resources.get("GPU", 0) >= gpu


def live_resources(nodes: list[dict]) -> list[dict]:
    """Each alive node's total resources (`ray.nodes()` rows)."""
    return [node.get("Resources", {}) for node in nodes if node.get("Alive", True)]


def describe_nodes(nodes: list[dict]) -> str:
    """The cluster's live nodes in a few words: how many, and the largest."""
    alive = live_resources(nodes)
    largest = max(alive, key=lambda r: (r.get("GPU", 0), r.get("CPU", 0)), default={})
    return (f"{len(alive)} live node(s), largest: cpu {largest.get('CPU', 0):g}, gpu {largest.get('GPU', 0):g}")


def _node_types_from_gcs(cpu: float, gpu: float) -> Scaling | None:
    """The node types an autoscaler reported to the GCS (`ClusterConfig`), if any did."""
    import ray._private.state

    config = ray._private.state.state.get_cluster_config()
    groups = list(config.node_group_configs) if config is not None else []
    if not groups:
        return None
    described = ", ".join(f"{g.name} (cpu {g.resources.get('CPU', 0):g}, gpu {g.resources.get('GPU', 0):g}, "
                          f"up to {'any' if g.max_count == -1 else g.max_count})" for g in groups)
    fitting = [g for g in groups if g.max_count != 0 and fits(dict(g.resources), cpu, gpu)]
    if fitting:
        return Scaling("can", f"the autoscaler can add node type {fitting[0].name}; its node types: {described}")
    return Scaling("cannot", f"no node type of the autoscaler fits; its node types: {described}")


def _v1_status() -> dict | None:
    """The autoscaler v1 monitor's last status (what `ray status` prints), or None if none runs.
    A cluster started without an autoscaling config (`ray start`, `ray.init`) runs the monitor
    read-only, each node its own type `node_<id>`: it launches nothing, so it counts as none."""
    from ray._private import ray_constants
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
    status = json.loads(raw) if raw else None
    report = (status or {}).get("autoscaler_report") or {}
    mapping = report.get("node_type_mapping") or {}
    if not mapping or all(node_type == f"node_{node}" for node, node_type in mapping.items()):
        return None
    return status


def _launch_answer(launching: dict[str, int], before: dict[str, int] | None, pending_detail: str) -> Scaling:
    """`can` if more nodes of some type are being launched than at the first look (`before`);
    at the first look itself (`before` None) no launch can be this bundle's yet."""
    before = launching if before is None else before
    new = {name: count - before.get(name, 0) for name, count in launching.items() if count > before.get(name, 0)}
    if new:
        names = ", ".join(f"{count} x {name}" for name, count in sorted(new.items()))
        return Scaling("can", f"the autoscaler is launching {names}", launching)
    return Scaling("pending", pending_detail, launching)


def _v1_scaling(status: dict, before: dict[str, int] | None) -> Scaling:
    report = status.get("autoscaler_report") or {}
    launching = dict(report.get("pending_launches") or {})
    for pending in report.get("pending_nodes") or []:
        launching[pending[1]] = launching.get(pending[1], 0) + 1
    return _launch_answer(launching, before, "the autoscaler has launched no node for it (none of its node types "
                                             "fits, or it needs longer)")


def _v2_scaling(cpu: float, gpu: float, before: dict[str, int] | None) -> Scaling:
    import ray
    from ray._raylet import GcsClient
    from ray.core.generated.autoscaler_pb2 import GetClusterStatusReply

    reply = GetClusterStatusReply()
    reply.ParseFromString(GcsClient(ray.get_runtime_context().gcs_address).get_cluster_status(timeout_s=10))
    state = reply.autoscaling_state
    launching: dict[str, int] = {}
    for request in state.pending_instance_requests:
        launching[request.ray_node_type_name] = launching.get(request.ray_node_type_name, 0) + request.count
    for instance in state.pending_instances:
        launching[instance.ray_node_type_name] = launching.get(instance.ray_node_type_name, 0) + 1
    answer = _launch_answer(launching, before, "the autoscaler has launched no node for it")
    if answer.verdict == "can":
        return answer
    infeasible = [dict(r.request.resources_bundle) for c in state.infeasible_cluster_resource_constraints
                  for r in c.resource_requests] + [dict(r.resources_bundle) for r in state.infeasible_resource_requests]
    if any(b.get("CPU", 0) >= cpu and b.get("GPU", 0) >= gpu for b in infeasible):
        return Scaling("cannot", "the autoscaler says no node type fits it (infeasible)", launching)
    return answer


def autoscaler_can_fit(cpu: float, gpu: float, before: dict[str, int] | None = None) -> Scaling:
    """One look at whether the cluster's autoscaler can add a node holding `cpu` and `gpu`;
    `before` is what was being launched at the first look, None for the first look itself."""
    try:
        from ray.autoscaler.v2.utils import is_autoscaler_v2

        known = _node_types_from_gcs(cpu, gpu)
        if known is not None:
            return known
        if is_autoscaler_v2(fetch_from_server=True):
            return _v2_scaling(cpu, gpu, before)
        status = _v1_status()
    except Exception as err:  # noqa: BLE001 - a client connection or an older Ray may not expose these
        return Scaling("none", f"the autoscaler's state cannot be read ({type(err).__name__}: {str(err)[:200]})")
    if status is None:
        return Scaling("none", "no autoscaler runs on this cluster")
    return _v1_scaling(status, before)


def _request(bundles: list[dict]) -> None:
    from ray.autoscaler.sdk import request_resources

    try:
        request_resources(bundles=bundles)
    except Exception:  # noqa: BLE001 - without an autoscaler the request goes nowhere, which is fine
        pass


def wait_for_resources(cpu: float, gpu: float, wait_s: float, nodes: Callable[[], list[dict]],
                       say: Callable[[str], None], poll_s: float = POLL_S,
                       before: dict[str, int] | None = None) -> Scaling:
    """Ask the autoscaler for one trial's bundle, then look every `poll_s` for up to `wait_s`
    seconds, with a progress line every `SAY_EVERY_S`. Returns `can` as soon as a live node fits
    or the autoscaler launches one; `cannot` as soon as the autoscaler calls the bundle
    infeasible; otherwise the last answer when the wait runs out. The request is withdrawn at
    the end (the trials' own demands drive the autoscaler from then on)."""
    bundle = {"CPU": cpu, **({"GPU": gpu} if gpu else {})}
    started = time.monotonic()
    said = started
    _request([bundle])
    try:
        while True:
            if any(fits(r, cpu, gpu) for r in live_resources(nodes())):
                return Scaling("can", "a node that fits has joined")
            answer = autoscaler_can_fit(cpu, gpu, before or {})
            if answer.verdict in ("can", "cannot"):
                return answer
            now = time.monotonic()
            if now - started >= wait_s:
                return answer
            if now - said >= SAY_EVERY_S:
                said = now
                say(f"waiting for a node with cpu {cpu:g}, gpu {gpu:g}: {now - started:.0f} s of {wait_s:g} s; "
                    f"the cluster has {describe_nodes(nodes())}; {answer.detail}")
            time.sleep(min(poll_s, max(0.0, wait_s - (now - started))))
    finally:
        _request([])


def scaling_or_wait(cpu: float, gpu: float, wait_s: float, nodes: Callable[[], list[dict]],
                    say: Callable[[str], None]) -> tuple[Scaling, float]:
    """No live node fits one trial: may the sweep start anyway? Asks the autoscaler; one whose node
    types are known answers at once; otherwise the wait is `wait_s` seconds (`--wait-for-resources`)
    for a node to join or the autoscaler to launch one, or, with no `wait_s` and an autoscaler
    that has not answered yet, `AUTOSCALER_PROBE_S`. Returns the answer and the seconds waited."""
    started = time.monotonic()
    answer = autoscaler_can_fit(cpu, gpu)
    if answer.verdict in ("can", "cannot"):
        return answer, 0.0
    window = wait_s or (AUTOSCALER_PROBE_S if answer.verdict == "pending" else 0.0)
    if window <= 0:
        return answer, 0.0
    say(f"resources: no live node has cpu {cpu:g}, gpu {gpu:g} ({describe_nodes(nodes())}); "
        f"waiting up to {window:g} s ({answer.detail})")
    answer = wait_for_resources(cpu, gpu, window, nodes, say, before=answer.launching)
    return answer, time.monotonic() - started
