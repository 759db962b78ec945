"""The sandbox: a cleared environment, no network, a read-only world, and a time limit."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from flakebot.errors import CommandTimedOut, ConfigError
from flakebot.sandbox import Sandbox, Toolchain


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    return Sandbox(Toolchain.find())


def test_environment_is_cleared_of_secrets(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GROQ_API_KEY", "gsk_secretsecretsecretsecret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "also-secret")
    done = sandbox.run(["env"], workdir=tmp_path, target_dir=tmp_path / "target", timeout=30)
    assert done.ok, done.stderr
    names = {line.split("=", 1)[0] for line in done.stdout.splitlines()}
    assert "GROQ_API_KEY" not in names and "AWS_SECRET_ACCESS_KEY" not in names
    assert {"PATH", "HOME", "CARGO_HOME", "CARGO_TARGET_DIR"} <= names
    assert "secret" not in done.stdout


def test_only_the_workspace_and_target_are_writable(sandbox: Sandbox, tmp_path: Path) -> None:
    workdir, target = tmp_path / "ws", tmp_path / "target"
    workdir.mkdir()
    outside = tmp_path / "outside.txt"
    script = (
        f"echo in > {workdir}/inside.txt; echo t > {target}/t.txt; "
        f"echo out > {outside} || echo blocked-tmp; "
        "echo x > /usr/flakebot-test || echo blocked-usr; "
        "echo y > /root/flakebot-test || echo blocked-root"
    )
    done = sandbox.run(["sh", "-c", script], workdir=workdir, target_dir=target, timeout=30)
    assert (workdir / "inside.txt").read_text() == "in\n"
    assert (target / "t.txt").read_text() == "t\n"
    assert not outside.exists()
    assert "blocked-usr" in done.stdout  # the system is read-only
    assert not Path("/root/flakebot-test").exists()  # anything else lands in a throwaway tmpfs


def test_no_network_interfaces_but_loopback(sandbox: Sandbox, tmp_path: Path) -> None:
    done = sandbox.run(
        ["cat", "/proc/net/dev"], workdir=tmp_path, target_dir=tmp_path / "t", timeout=30
    )
    interfaces = [line.split(":")[0].strip() for line in done.stdout.splitlines()[2:]]
    assert interfaces == ["lo"]


def test_timeout_kills_everything_inside(sandbox: Sandbox, tmp_path: Path) -> None:
    marker = f"{time.time_ns() % 10_000}.123"
    started = time.monotonic()
    with pytest.raises(CommandTimedOut):
        sandbox.run(
            ["sh", "-c", f"sleep {marker} & sleep {marker}"],
            workdir=tmp_path,
            target_dir=tmp_path / "t",
            timeout=2,
        )
    assert time.monotonic() - started < 20
    for _ in range(50):
        found = subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True, check=False)
        if found.returncode == 1:
            break
        time.sleep(0.1)
    else:
        pytest.fail("a sandboxed process outlived its timeout")


def test_memory_limit_applies(tmp_path: Path) -> None:
    small = Sandbox(Toolchain.find(), memory_bytes=64 * 1024**2)
    done = small.run(
        ["python3", "-c", "bytearray(256 * 1024 * 1024)"],
        workdir=tmp_path,
        target_dir=tmp_path / "t",
        timeout=30,
    )
    assert not done.ok and "MemoryError" in done.stderr


def test_no_sandbox_still_clears_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GROQ_API_KEY", "gsk_secretsecretsecretsecret")
    open_box = Sandbox(Toolchain.find(), enabled=False)
    done = open_box.run(["env"], workdir=tmp_path, target_dir=tmp_path / "t", timeout=30)
    assert "GROQ_API_KEY" not in done.stdout


def test_relative_paths_are_refused(sandbox: Sandbox, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="absolute"):
        sandbox.run(["true"], workdir=Path("relative"), target_dir=tmp_path, timeout=5)
    assert os.path.isabs(sandbox.toolchain.root)
