"""The kept cluster's worker pool keeper as a Ray actor (flakebot.worker_pool), and its raylet call.

PrestartWorkers is the raylet's own gRPC call (NodeManagerService, Ray 2.40 and later); Ray 2.60
has no Python API for it, so it is called through Ray's generated stubs. Without a job id, the
workers it starts may take any job's actors.
"""

from __future__ import annotations

import importlib
import os
import threading
from pathlib import Path
from typing import Any

import ray

from flakebot.logs import bind_context
from flakebot.worker_pool import PoolKeeper, idle_workers

NAME = "worker-pool"
NAMESPACE = "flakebot"
GENERATED = ("common_pb2", "node_manager_pb2", "node_manager_pb2_grpc")
KEEP_ALIVE_S = 7 * 24 * 3600  # prestarted workers are not trimmed as idle before this


def prestart(node: dict[str, Any], count: int) -> None:
    """Ask the node's raylet to start `count` workers for no job, with no runtime environment."""
    from ray._private.grpc_utils import init_grpc_channel

    common, messages, service = (_generated(name) for name in GENERATED)
    channel = init_grpc_channel(f"{node['NodeManagerAddress']}:{node['NodeManagerPort']}")
    try:
        request = messages.PrestartWorkersRequest(
            language=common.PYTHON, keep_alive_duration_secs=KEEP_ALIVE_S, num_workers=count
        )
        request.runtime_env_info.serialized_runtime_env = "{}"
        service.NodeManagerServiceStub(channel).PrestartWorkers(request, timeout=10)
    finally:
        channel.close()


def _generated(name: str) -> Any:
    """One of Ray's generated protobuf modules (untyped)."""
    return importlib.import_module(f"ray.core.generated.{name}")


@ray.remote(num_cpus=0)
class PoolKeeperActor:
    """The cluster's keeper, started detached by `flakebot up` on the head node. A worker's
    parent is its node's raylet."""

    def __init__(self, home: str, size: int, batch: int) -> None:
        bind_context(actor="worker-pool")
        here = ray.get_runtime_context().get_node_id()
        nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
        (node,) = [node for node in nodes if node["NodeID"] == here]
        self.keeper = PoolKeeper(
            Path(home),
            size,
            batch,
            raylet_pid=os.getppid(),
            prestart=lambda count: prestart(node, count),
        )
        self.thread = threading.Thread(target=self.keeper.keep, daemon=True)
        self.thread.start()

    def state(self) -> dict[str, Any]:
        return {
            "size": self.keeper.size,
            "idle": len(idle_workers(self.keeper.raylet_pid)),
            "kept": self.thread.is_alive(),
            "failure": self.keeper.failure,
        }


def start_keeper(home: Path, size: int, batch: int) -> Any:
    """The keeper of the cluster this process has joined (ray.init): started, or the one up."""
    return PoolKeeperActor.options(  # type: ignore[attr-defined]
        name=NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True
    ).remote(str(home), size, batch)
