"""Started Ray workers kept ready on a `flakebot up` cluster, so that a run's actors start at once.

Every actor runs in a Python worker process of its own, and Ray starts one per actor (about 0.7 s
of CPU each here) unless an idle worker is free; an actor's worker dies with it, and Ray prestarts
idle workers only when a node's first driver connects. A run with three candidates starts eleven
actors: on two cores, the starts of its rivals' coders and testers slowed the likely winner's scout
and build. So a kept cluster runs a keeper, a detached actor on its head node that tops the node's
idle workers back up to `size` whenever no run of its home is in progress: the pool is refilled
between runs, never during one, and a run takes its actors' workers from it.

The workers are started by the raylet's PrestartWorkers call (Ray's own gRPC service; Ray 2.60
has no Python API for it) with no job and an empty runtime environment, so any run's actors may
take them (the driver passes no runtime environment to a kept cluster: flakebot.driver). At most
`batch` are asked for at a time (the raylet drops what is over its start-up concurrency, the
node's CPUs). Should the call fail (another Ray version), the keeper logs it and stops: runs then
start their workers themselves, as without it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from flakebot.proc import argv, children
from flakebot.runstate import all_runs

log = structlog.get_logger()
WARM_WORKERS = 12  # a three-candidate run from free text: 4 run-wide, 6 candidates', 2 at home
CHECK_S = 1.0  # how often the keeper looks at the pool
APPEAR_S = 10.0  # how long workers asked for may take to show up before it asks again
IDLE = b"ray::IDLE"
# A worker before it names itself: `python setup_worker.py default_worker.py ...` (the raylet's
# own command line names them too, but in a later argument)
STARTING = (b"/setup_worker.py", b"/default_worker.py")


def idle_workers(raylet_pid: int) -> list[int]:
    """The raylet's worker processes that are idle or still starting (no actor or task yet)."""
    found = []
    for pid in children(raylet_pid):
        command = argv(pid)
        if command[0].startswith(IDLE) or any(arg.endswith(STARTING) for arg in command[1:3]):
            found.append(pid)
    return found


def runs_in_progress(home: Path) -> bool:
    return any(record.in_progress() for record in all_runs(home))


class PoolKeeper:
    """Keeps `size` idle workers under the raylet `raylet_pid` while no run of `home` is in
    progress; `prestart(n)` asks the raylet for n more (actors.worker_pool)."""

    def __init__(
        self,
        home: Path,
        size: int,
        batch: int,
        raylet_pid: int,
        prestart: Callable[[int], None],
    ) -> None:
        self.home = home
        self.size = size
        self.batch = max(1, batch)
        self.raylet_pid = raylet_pid
        self.prestart = prestart
        self.stopped = threading.Event()
        self.failure: str | None = None

    def missing(self) -> int:
        return max(0, self.size - len(idle_workers(self.raylet_pid)))

    def top_up(self) -> int:
        """One look: how many workers it asked for (none while a run is in progress)."""
        wanted = min(self.missing(), self.batch)
        if wanted == 0 or runs_in_progress(self.home):
            return 0
        before = len(idle_workers(self.raylet_pid))
        self.prestart(wanted)
        deadline = time.monotonic() + APPEAR_S  # so that it never asks twice for the same ones
        while len(idle_workers(self.raylet_pid)) < before + wanted:
            if time.monotonic() > deadline or self.stopped.wait(0.1):
                break
        return wanted

    def keep(self) -> None:
        """Top up every CHECK_S seconds until stopped, or until asking fails."""
        while not self.stopped.wait(CHECK_S):
            try:
                self.top_up()
            except Exception as exc:  # another Ray version: runs start their own workers
                self.failure = f"{type(exc).__name__}: {exc}"[:500]
                log.warning("worker_pool_not_kept", error=self.failure)
                return


def wait_full(raylet_pid: int, size: int, timeout: float) -> bool:
    """Wait until the raylet has `size` idle workers; False after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while len(idle_workers(raylet_pid)) < size:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True
