"""A Ray head started with `ray start --head` on this machine, as a user starts one: token
authentication on, the dashboard (the jobs API) on loopback, its own ports and temp dir. Every
process it starts carries a marker in its environment, so `stop` ends exactly those (the agents
rename themselves `ray::...` over their command line and environment, so the files they hold
open in its temp dir say whose they are)."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from flakebot.cluster import MARKER, LocalCluster

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class LocalHead:
    home: Path  # the head's FLAKEBOT_HOME
    cargo: int = 2
    marker: str = field(default_factory=lambda: uuid.uuid4().hex)
    temp_dir: Path = field(
        default_factory=lambda: Path(tempfile.mkdtemp(prefix="fbray-", dir="/tmp"))
    )  # short: Ray's socket paths must fit in 107 bytes
    dashboard_port: int = field(default_factory=free_port)

    @property
    def token_path(self) -> Path:
        return self.temp_dir / "auth_token"

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def client_env(self) -> dict[str, str]:
        """What a client (`ray job submit`) needs: the token, the documented way."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        return env | {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.token_path),
            "PATH": f"{BIN}:{os.environ['PATH']}",
        }

    def start(self, **env: str) -> None:
        self.token_path.write_text(secrets.token_hex(32))
        self.token_path.chmod(0o600)
        worker_ports = 20000 + (free_port() % 400) * 100
        argv = [
            str(BIN / "ray"), "start", "--head",
            f"--port={free_port()}",
            "--include-dashboard=true", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--node-manager-port={free_port()}",
            f"--object-manager-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--ray-client-server-port={free_port()}",
            f"--min-worker-port={worker_ports}", f"--max-worker-port={worker_ports + 99}",
            "--num-cpus=2", f'--resources={{"cargo": {self.cargo}}}',
            f"--temp-dir={self.temp_dir}",
        ]  # fmt: skip
        environment = self.client_env() | {
            "FLAKEBOT_HOME": str(self.home),
            MARKER: self.marker,
            **env,
        }
        done = subprocess.run(argv, env=environment, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr

    def processes(self) -> list[int]:
        """Its processes, found the way `flakebot down` finds a cluster's (flakebot.cluster)."""
        as_cluster = LocalCluster(
            address="", temp_dir=str(self.temp_dir), token_path=str(self.token_path),
            marker=self.marker, cores=self.cargo,
        )  # fmt: skip
        return as_cluster.processes()

    def stop(self) -> None:
        deadline = time.monotonic() + 30
        while (pids := self.processes()) and time.monotonic() < deadline:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
            _reap()


def _reap() -> None:
    """Collect the head's processes that were our children (ray start's daemons are not)."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass
