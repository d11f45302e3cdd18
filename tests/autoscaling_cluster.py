"""A real local Ray cluster with a real autoscaler (Ray's fake multi-node provider: the nodes it
"launches" are raylets on this machine, with whatever resources their node type declares).

Ray's own `ray.cluster_utils.AutoscalingCluster` runs `ray stop --force` (every Ray process on
the machine, other sessions' too) and reads an example config its wheel does not ship, so this
starts the head with `ray.cluster_utils.Cluster` and the same provider, and stops only the
processes it started (the head's, and the nodes its autoscaler launched), by their ids.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import psutil


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fake_autoscaling_config(head_cpus: int, worker_node_types: dict, gcs_address: str) -> dict:
    return {
        "cluster_name": "gloss-fake-autoscaling",
        "max_workers": 4,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": gcs_address},
        "available_node_types": {"ray.head.default": {"resources": {"CPU": head_cpus}, "node_config": {},
                                                      "max_workers": 0},
                                 **worker_node_types},
        "head_node_type": "ray.head.default",
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 5,
        "docker": {}, "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [], "auth": {},
    }


class FakeAutoscalingCluster:
    """`with FakeAutoscalingCluster(folder, head_cpus, worker_node_types) as address: ...` (Ray's
    autoscaler v1: v2's monitor needs the example config the wheel lacks)."""

    def __init__(self, folder: Path, head_cpus: int, worker_node_types: dict):
        self.folder, self.head_cpus, self.worker_node_types = folder, head_cpus, worker_node_types
        self.cluster = None

    def __enter__(self) -> str:
        from ray._private.services import get_node_ip_address
        from ray.cluster_utils import Cluster

        port = _free_port()
        address = f"{get_node_ip_address()}:{port}"
        config = self.folder / "autoscaling.json"
        config.write_text(json.dumps(fake_autoscaling_config(self.head_cpus, self.worker_node_types, address)))
        env = {"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)  # the head's processes (the monitor among them) inherit these
        try:
            self.cluster = Cluster(initialize_head=True, head_node_args={
                "num_cpus": self.head_cpus, "num_gpus": 0, "gcs_server_port": port, "autoscaling_config": str(config),
                "include_dashboard": False})
        finally:
            for key, value in saved.items():
                os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
        return self.cluster.address

    def processes(self) -> list[psutil.Process]:
        """Every process of this cluster: its session folder (unique to it) is on their command line."""
        session = self.cluster.head_node.get_session_dir_path()
        found = []
        for process in psutil.process_iter(["cmdline"]):
            if any(session in part for part in process.info["cmdline"] or []):
                found.append(process)
        return found

    def __exit__(self, *exc) -> None:
        from ray._private import ray_constants

        for info in self.cluster.head_node.all_processes.get(ray_constants.PROCESS_TYPE_MONITOR, []):
            info.process.kill()  # first the autoscaler, so that it launches nothing more
        launched = [p for p in self.processes() if p.pid != os.getpid()]
        self.cluster.shutdown()
        for process in launched:  # the nodes the autoscaler launched, which the shutdown does not know
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(launched, timeout=10)
