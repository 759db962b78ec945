"""Proof that Ray works here: start a local cluster, pass a protocol message through a task, stop.

Run as `python -m actors.health`; prints one JSON line. `flakebot doctor` runs it in a child process
so that the doctor's own process never holds a Ray cluster.
"""

from __future__ import annotations

import json
import logging
import sys
import time

import ray

from messages import ToolRequest


@ray.remote(num_cpus=0)
def echo(request: ToolRequest) -> ToolRequest:
    """Returns the message it was given, so the round trip proves messages pass through Ray."""
    return request.model_copy(
        update={"requested_by": f"node:{ray.get_runtime_context().get_node_id()}"}
    )


def main() -> int:
    started = time.monotonic()
    ray.init(
        address="local",
        num_cpus=1,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.ERROR,
    )
    start_s = time.monotonic() - started
    try:
        sent = ToolRequest(run_id="doctor", text="ping")
        returned = ray.get(echo.remote(sent), timeout=120)
        if not isinstance(returned, ToolRequest) or returned.text != sent.text:
            print(f"a message did not survive the round trip: {returned!r}", file=sys.stderr)
            return 1
        nodes = len([node for node in ray.nodes() if node["Alive"]])  # type: ignore[no-untyped-call]
    finally:
        ray.shutdown()
    print(
        json.dumps(
            {
                "ray_version": ray.__version__,
                "start_s": round(start_s, 2),
                "nodes": nodes,
                "echoed_by": returned.requested_by,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
