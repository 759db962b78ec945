"""Shared fixtures: settings in a private FLAKEBOT_HOME; running the installed `flakebot` CLI."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Protocol

import pytest

from flakebot.crates.index import CrateIndex
from flakebot.fork import Forker
from flakebot.sandbox import Sandbox, Toolchain
from flakebot.settings import Settings
from messages import CrateCandidate, RegistryRef, ScoreParts

# No test may reach a real model endpoint; the models refuse while this is set (subprocesses too).
os.environ["FLAKEBOT_FORBID_REAL_MODELS"] = "1"
DEBIAN = RegistryRef(source="local", location="/usr/share/cargo/registry")

FLAKEBOT = Path(sys.executable).with_name("flakebot")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "flakebot-home"
    path.mkdir()
    return path


@pytest.fixture
def settings(home: Path) -> Settings:
    return Settings.from_env({"FLAKEBOT_HOME": str(home), "HOME": os.environ.get("HOME", "/root")})


class CliResult:
    def __init__(self, done: subprocess.CompletedProcess[str]) -> None:
        self.code = done.returncode
        self.stdout = done.stdout
        self.stderr = done.stderr

    def json(self) -> object:
        return json.loads(self.stdout)


class Cli(Protocol):
    def __call__(
        self, *args: str, env: Mapping[str, str] | None = None, timeout: float = 300
    ) -> CliResult: ...


@pytest.fixture
def cli(home: Path) -> Cli:
    """Run `flakebot ARGS` as a user would, with FLAKEBOT_HOME private to the test."""

    def invoke(*args: str, env: Mapping[str, str] | None = None, timeout: float = 300) -> CliResult:
        full_env = {**os.environ, "FLAKEBOT_HOME": str(home), **(env or {})}
        done = subprocess.run(
            [str(FLAKEBOT), *args],
            capture_output=True,
            text=True,
            env=full_env,
            timeout=timeout,
            check=False,
        )
        return CliResult(done)

    return invoke


@pytest.fixture(scope="session")
def shared_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    home = tmp_path_factory.mktemp("flakebot-home")
    return Settings.from_env({"FLAKEBOT_HOME": str(home)})


@pytest.fixture(scope="session")
def sandbox() -> Sandbox:
    return Sandbox(Toolchain.find())


@pytest.fixture(scope="session")
def forker(shared_settings: Settings, sandbox: Sandbox) -> Forker:
    return Forker(shared_settings, sandbox)


def candidate(
    name: str, version: str, candidate_id: str, registry: RegistryRef = DEBIAN
) -> CrateCandidate:
    return CrateCandidate(
        run_id="t",
        candidate_id=candidate_id,
        name=name,
        version=version,
        registry=registry,
        score=1.0,
        score_parts=ScoreParts(relevance=1.0),
    )


@pytest.fixture
def listener() -> Iterator[tuple[int, list[str]]]:
    """A loopback port listening outside the sandbox, recording who connects."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    accepted: list[str] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, peer = server.accept()
            except TimeoutError:
                continue
            accepted.append(str(peer))
            connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    stop.set()
    thread.join()
    server.close()


@pytest.fixture(scope="session")
def debian_index(tmp_path_factory: pytest.TempPathFactory) -> CrateIndex:
    """Debian's registry, indexed once for the session."""
    index = CrateIndex(Path(DEBIAN.location), tmp_path_factory.mktemp("index") / "debian.sqlite")
    index.refresh()
    return index
