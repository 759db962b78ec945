"""The pool of started Ray workers a kept cluster keeps between runs (flakebot.worker_pool).

The keeper's rules on plain processes, with this test process standing in for the raylet and a
`prestart` that starts idle-named children of it (the seam where Ray's PrestartWorkers call is);
then a real `flakebot up` cluster whose run actors land on the pool's workers, which it refills
between runs and not during one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flakebot import cluster
from flakebot.runstate import RunRecord
from flakebot.worker_pool import PoolKeeper, idle_workers, wait_full
from tests.conftest import Cli

SLEEP = "/usr/bin/sleep"


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[bytes]]]:
    children: list[subprocess.Popen[bytes]] = []
    yield children
    for child in children:
        child.kill()
        child.wait()


def start_idle(spawned: list[subprocess.Popen[bytes]], count: int) -> None:
    for _ in range(count):
        spawned.append(subprocess.Popen(["ray::IDLE", "60"], executable=SLEEP))


def test_idle_workers_are_children_named_idle_or_still_starting(
    spawned: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    already = set(idle_workers(os.getpid()))  # none, unless this process has a pool of its own
    start_idle(spawned, 2)
    script = tmp_path / "default_worker.py"
    script.write_text("import time\ntime.sleep(60)\n")
    spawned.append(subprocess.Popen([sys.executable, str(script), "--node-ip-address=x"]))
    spawned.append(subprocess.Popen(["ray::CoderActor.develop", "60"], executable=SLEEP))
    raylet = ["/x/raylet", "-c", "import time; time.sleep(60)",
              f"--python_worker_command=python /x/setup_worker.py {script}"]  # fmt: skip
    spawned.append(subprocess.Popen(raylet, executable=sys.executable))  # names it, is not one
    found = set(idle_workers(os.getpid())) - already
    assert found == {child.pid for child in spawned[:3]}
    assert idle_workers(2**22 + 7) == []  # no such process


def test_the_keeper_tops_up_in_batches_and_never_during_a_run(
    spawned: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    asked: list[int] = []

    def prestart(count: int) -> None:
        asked.append(count)
        start_idle(spawned, count)

    already = len(idle_workers(os.getpid()))
    keeper = PoolKeeper(
        tmp_path, size=already + 5, batch=2, raylet_pid=os.getpid(), prestart=prestart
    )
    start_idle(spawned, 1)
    record = RunRecord(tmp_path, "run-20261206-000000-aaaaaa")
    with record.active():  # a run in progress: nothing is started beside it
        assert keeper.top_up() == 0 and asked == []
    assert [keeper.top_up() for _ in range(3)] == [2, 2, 0]
    assert asked == [2, 2] and len(idle_workers(os.getpid())) == already + 5
    spawned[0].kill()  # a run took one
    spawned[0].wait()
    assert keeper.top_up() == 1 and len(idle_workers(os.getpid())) == already + 5


def test_a_keeper_whose_call_fails_stops_and_says_why(tmp_path: Path) -> None:
    def prestart(count: int) -> None:
        raise RuntimeError("PrestartWorkers: method not found")

    size = len(idle_workers(os.getpid())) + 1
    keeper = PoolKeeper(tmp_path, size=size, batch=1, raylet_pid=os.getpid(), prestart=prestart)
    thread = threading.Thread(target=keeper.keep, daemon=True)
    thread.start()
    thread.join(timeout=10)
    keeper.stopped.set()
    assert not thread.is_alive()
    assert keeper.failure == "RuntimeError: PrestartWorkers: method not found"


DRIVER = """
import json, os, ray
from flakebot.driver import Flakebot

@ray.remote(num_cpus=0)
class Probe:
    def pid(self):
        return os.getpid()

Flakebot().connect()
probes = [Probe.remote() for _ in range(3)]
print(json.dumps(ray.get([probe.pid.remote() for probe in probes], timeout=120)))
"""


@pytest.mark.slow
def test_a_kept_cluster_s_actors_start_on_its_pool_which_is_refilled_between_runs(
    cli: Cli, home: Path
) -> None:
    started = cli("up", "--cores", "2", "--warm-workers", "4")
    assert started.code == 0, started.stderr
    assert "4 workers kept started" in started.stdout
    up = cluster.running(home)
    try:
        assert up is not None and up.warm_workers == 4
        raylet = up.raylet()
        assert raylet is not None and wait_full(raylet, 4, timeout=120)
        pool = set(idle_workers(raylet))
        env = {**os.environ, "FLAKEBOT_HOME": str(home)}
        with RunRecord(home, "run-20261206-000000-bbbbbb").active():  # as a run holds it
            driver = subprocess.run(
                [sys.executable, "-c", DRIVER], env=env, capture_output=True, text=True,
                timeout=300, check=False,
            )  # fmt: skip
            assert driver.returncode == 0, driver.stderr[-2000:]
            pids = json.loads(driver.stdout.strip().splitlines()[-1])
            assert set(pids) <= pool, "the actors started on workers of the pool"
            time.sleep(3)  # the keeper looks every second: it starts nothing during a run
            assert len(set(idle_workers(raylet)) - pool) == 0
        assert wait_full(raylet, 4, timeout=120), "the pool is refilled once no run is on"
        assert not set(idle_workers(raylet)) & set(pids)
    finally:
        assert cli("down").code == 0
    assert up is not None and up.processes() == []


def test_a_run_carries_only_the_settings_its_kept_cluster_lacks() -> None:
    up = cluster.LocalCluster(
        address="127.0.0.1:1", temp_dir="/tmp/x", token_path="/tmp/x/t", marker="m", cores=2,
        env={"FLAKEBOT_LOG_LEVEL": "debug", "FLAKEBOT_FORBID_REAL_MODELS": "1"},
    )  # fmt: skip
    same = {"FLAKEBOT_LOG_LEVEL": "debug", "FLAKEBOT_FORBID_REAL_MODELS": "1"}
    assert up.job_env(same) == {}  # no runtime environment: the pool's workers fit
    changed = {"FLAKEBOT_LOG_LEVEL": "info", "FLAKEBOT_LEASE_TTL": "60"}
    assert up.job_env(changed) == changed
