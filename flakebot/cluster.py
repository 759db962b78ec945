"""A local Ray cluster kept running between runs: `flakebot up` and `flakebot down`.

Without it, every `flakebot run` starts Ray and stops it again (about 5 s of a run here, before
any cargo command). When one is up for this FLAKEBOT_HOME, the driver joins it instead
(flakebot.driver): `run`, `resume`, `batch`, `bench` and the Python API alike.

It is `ray start --head` on loopback with token authentication, no dashboard, and a temp dir of its
own, recorded in FLAKEBOT_HOME/cluster.json. Its processes get the environment of `flakebot up`
without any model key (a run hands its key to its actors through the object store:
actors.secrets), with FLAKEBOT_HOME set, so the nodes' runs share the driver's home. `down` ends
exactly its processes: each carries a marker in its environment, and Ray's agents, which overwrite
their environment, hold files open in its temp dir.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from flakebot.errors import ConfigError
from flakebot.home import write_private
from flakebot.proc import argv

RECORD = "cluster.json"
KEYS = ("GROQ_API_KEY", "GROQ_API_KEY_FILE")  # never in a cluster's environment
MARKER = "FLAKEBOT_LOCAL_CLUSTER"
# The settings a run's job carries to a cluster's actors (flakebot.driver), as a runtime
# environment; on a kept cluster only those that differ from what it was started with.
JOB_ENV = ("FLAKEBOT_CONTACT", "FLAKEBOT_LOG_LEVEL", "FLAKEBOT_FORBID_REAL_MODELS",
           "FLAKEBOT_LEASE_TTL")  # fmt: skip
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class LocalCluster:
    """A running `flakebot up` cluster, as cluster.json records it."""

    address: str  # host:port of its GCS
    temp_dir: str
    token_path: str
    marker: str
    cores: int
    warm_workers: int = 0  # idle Ray workers kept started between runs (flakebot.worker_pool)
    env: dict[str, str] = field(default_factory=dict)  # its JOB_ENV settings

    def job_env(self, wanted: dict[str, str]) -> dict[str, str]:
        """Of the settings a run carries, those its processes do not already have: with none,
        a run passes no runtime environment, and its actors may take the pool's workers."""
        return {name: value for name, value in wanted.items() if self.env.get(name) != value}

    def client_env(self) -> dict[str, str]:
        """What a driver needs in its environment to join it."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": self.token_path}

    def reachable(self) -> bool:
        host, _, port = self.address.rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=1.0):
                return True
        except (OSError, ValueError):
            return False

    def raylet(self) -> int | None:
        """The pid of its raylet (on this machine)."""
        for pid in self.processes():
            if argv(pid)[0].endswith(b"/raylet"):
                return pid
        return None

    def processes(self) -> list[int]:
        """Every process of this cluster on this machine."""
        mine = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            if self._marked(entry) or self._holds_temp_files(entry):
                mine.append(int(entry.name))
        return mine

    def _marked(self, process: Path) -> bool:
        try:
            return f"{MARKER}={self.marker}".encode() in (process / "environ").read_bytes()
        except OSError:
            return False

    def _holds_temp_files(self, process: Path) -> bool:
        try:
            for descriptor in (process / "fd").iterdir():
                if os.readlink(descriptor).startswith(f"{self.temp_dir}/"):
                    return True
        except OSError:
            return False
        return False


def record_path(home: Path) -> Path:
    return home / RECORD


def running(home: Path) -> LocalCluster | None:
    """The cluster up for this home, if it still answers (a stale record is removed)."""
    path = record_path(home)
    try:
        cluster = LocalCluster(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    if cluster.reachable():
        return cluster
    path.unlink(missing_ok=True)
    return None


def temp_dir_for(home: Path) -> Path:
    """Short, as Ray's socket paths must fit in 107 bytes; one per home and user."""
    digest = hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:10]
    return Path("/tmp") / f"flakebot-ray-{os.getuid()}-{digest}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start(home: Path, *, cores: int | None = None, warm_workers: int = 0) -> LocalCluster:
    """`flakebot up`: start the cluster for `home`, or return the one already up. Its pool of
    `warm_workers` is the caller's to start (flakebot.driver.keep_workers)."""
    already = running(home)
    if already is not None:
        return already
    cores = cores or os.cpu_count() or 2
    temp_dir = temp_dir_for(home)
    temp_dir.mkdir(mode=0o700, exist_ok=True)
    token_path = temp_dir / "auth_token"
    write_private(token_path, secrets.token_hex(32))
    cluster = LocalCluster(
        address=f"127.0.0.1:{free_port()}",
        temp_dir=str(temp_dir),
        token_path=str(token_path),
        marker=secrets.token_hex(8),
        cores=cores,
        warm_workers=warm_workers,
        env={name: os.environ[name] for name in JOB_ENV if name in os.environ},
    )
    ray = Path(sys.executable).with_name("ray")
    argv = [
        str(ray), "start", "--head",
        "--node-ip-address=127.0.0.1", f"--port={cluster.address.rpartition(':')[2]}",
        "--include-dashboard=false", "--disable-usage-stats",
        f"--num-cpus={cores}", f'--resources={{"cargo": {cores}}}',
        f"--temp-dir={temp_dir}",
    ]  # fmt: skip
    if warm_workers:  # kept idle beyond the node's CPUs (prestarted ones, and any a run left)
        argv.append(f"--system-config={json.dumps({'num_workers_soft_limit': warm_workers})}")
    env = {name: value for name, value in os.environ.items() if name not in KEYS}
    env |= cluster.client_env() | {"FLAKEBOT_HOME": str(home), MARKER: cluster.marker}
    env.pop("RAY_ADDRESS", None)
    try:
        done = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=START_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        stop_processes(cluster)
        raise ConfigError(
            f"ray start did not finish within {START_TIMEOUT_S:g} s",
            hint="check `flakebot doctor --check ray`",
        ) from None
    if done.returncode != 0:
        stop_processes(cluster)
        raise ConfigError(
            f"ray start failed: {(done.stderr or done.stdout).strip()[-600:]}",
            hint="check `flakebot doctor --check ray`",
        )
    write_private(record_path(home), json.dumps(asdict(cluster)))
    return cluster


def stop(home: Path) -> LocalCluster | None:
    """`flakebot down`: end the cluster's processes and forget it; None if none was up."""
    path = record_path(home)
    try:
        cluster = LocalCluster(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    stop_processes(cluster)
    path.unlink(missing_ok=True)
    shutil.rmtree(cluster.temp_dir, ignore_errors=True)  # its sockets, logs and token
    return cluster


def stop_processes(cluster: LocalCluster) -> None:
    """SIGTERM, then SIGKILL what is left after a grace period."""
    for pid in cluster.processes():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    grace = time.monotonic() + 3.0
    while (pids := cluster.processes()) and time.monotonic() < deadline:
        if time.monotonic() > grace:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
