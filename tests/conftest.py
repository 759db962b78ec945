"""Shared fixtures: settings in a private FLAKEBOT_HOME; running the installed `flakebot` CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import pytest

from flakebot.settings import Settings

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
