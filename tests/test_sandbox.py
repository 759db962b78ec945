"""The sandbox: a cleared environment, no network, a read-only world, and a time limit."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from flakebot.errors import CommandTimedOut, ConfigError
from flakebot.priority import launcher, session_nice
from flakebot.proc import Completed, stop_running
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


@pytest.mark.parametrize("confined", [True, False], ids=["sandboxed", "unsandboxed"])
def test_stopping_running_programs_leaves_nothing_inside_when_it_returns(
    sandbox: Sandbox, tmp_path: Path, confined: bool
) -> None:
    # What a candidate's end does to its tester: the processes are gone (not merely doomed) the
    # moment stop_running returns, a grandchild in a session of its own too (outside a
    # sandbox, nothing else would take that one along).
    if not confined:
        sandbox = Sandbox(sandbox.toolchain, enabled=False)
    marker = f"{time.time_ns() % 10_000}.321"
    ended: list[Completed] = []
    running = threading.Thread(
        target=lambda: ended.append(
            sandbox.run(
                ["sh", "-c", f"setsid sleep {marker} & sleep {marker}"],
                workdir=tmp_path,
                target_dir=tmp_path / "t",
                timeout=120,
            )
        )
    )
    running.start()
    for _ in range(100):
        if (
            subprocess.run(
                ["pgrep", "-f", f"^setsid sleep {marker}|^sleep {marker}"],
                capture_output=True,
                check=False,
            ).stdout.count(b"\n")
            >= 2
        ):
            break
        time.sleep(0.1)
    else:
        pytest.fail("the sandbox did not start")
    assert stop_running() == 1
    found = subprocess.run(["pgrep", "-f", marker], capture_output=True, check=False)
    assert found.returncode == 1, found.stdout  # at once: no waiting here
    running.join(timeout=30)
    assert ended and ended[0].returncode < 0  # its run ends as a killed program's
    assert stop_running() == 0


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


def test_no_capability_can_undo_a_read_only_bind(sandbox: Sandbox, tmp_path: Path) -> None:
    """uid 0 inside, but no capabilities (none to regain either): no remount, no unmount."""
    registry = tmp_path / "registry"
    registry.mkdir()
    (registry / "crate.txt").write_text("original\n")
    workdir = tmp_path / "fork"
    (workdir / ".git").mkdir(parents=True)
    (workdir / ".git" / "config").write_text("[core]\n")
    confined = Sandbox(sandbox.toolchain, read_only=(registry,))
    script = (
        "grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status; "
        f"mount -o remount,rw,bind {registry} || echo remount-refused; "
        f"echo tampered > {registry}/crate.txt || echo registry-read-only; "
        f"umount {workdir}/.git || echo umount-refused; "
        f"echo '[core] fsmonitor = touch /x' >> {workdir}/.git/config || echo git-read-only"
    )
    done = confined.run(
        ["sh", "-c", script], workdir=workdir, target_dir=tmp_path / "t", timeout=30
    )
    assert "CapEff:\t0000000000000000" in done.stdout
    assert "CapBnd:\t0000000000000000" in done.stdout and "NoNewPrivs:\t1" in done.stdout
    for refused in ("remount-refused", "registry-read-only", "umount-refused", "git-read-only"):
        assert refused in done.stdout, done.stdout + done.stderr
    assert (registry / "crate.txt").read_text() == "original\n"
    assert (workdir / ".git" / "config").read_text() == "[core]\n"


def test_the_kernels_settings_are_read_only(sandbox: Sandbox, tmp_path: Path) -> None:
    """uid 0 may write a sysctl without any capability: core_pattern set to a program in the fork
    would have the kernel run it as root on the host. (On failure it writes back the same value.)"""
    script = (
        "v=$(cat /proc/sys/kernel/core_pattern); "
        "printf '%s' \"$v\" > /proc/sys/kernel/core_pattern && echo core-pattern-written; "
        "grep -E ' /proc/sys ' /proc/self/mountinfo"
    )
    done = sandbox.run(
        ["sh", "-c", script], workdir=tmp_path, target_dir=tmp_path / "t", timeout=30
    )
    assert "core-pattern-written" not in done.stdout
    assert "Read-only file system" in done.stderr, done.stderr
    assert done.stdout.split(" /proc/sys ")[1].startswith("ro,"), done.stdout


def test_etc_holds_a_synthetic_passwd_and_nothing_of_the_host(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    done = sandbox.run(
        ["sh", "-c", "ls /etc; cat /etc/passwd"],
        workdir=tmp_path,
        target_dir=tmp_path / "t",
        timeout=30,
    )
    listed = set(done.stdout.split())
    assert {"passwd", "group"} <= listed
    assert not listed & {"hostname", "os-release", "shadow", "hosts", "resolv.conf"}
    host_root_line = Path("/etc/passwd").read_text().splitlines()[0]
    assert host_root_line not in done.stdout and "root:x:0:0:root:/tmp/flakebot-home" in done.stdout


def test_a_later_candidate_builds_at_a_lower_priority(sandbox: Sandbox, tmp_path: Path) -> None:
    from flakebot.tester import LATER_CANDIDATE_NICE, niceness

    assert niceness("c1-hexyl") == 0 and niceness("reused") == 0
    assert niceness("c2-bincode") == niceness("c12-x") == LATER_CANDIDATE_NICE
    base = os.nice(0)
    groups = Path("/proc/self/autogroup").exists()  # sessions share the CPU by their own nice
    for nice in (0, LATER_CANDIDATE_NICE):
        done = sandbox.run(
            ["sh", "-c", "nice; sh -c nice; cat /proc/self/autogroup 2>/dev/null || true"],
            workdir=tmp_path, target_dir=tmp_path / "target", timeout=30, nice=nice,
        )  # fmt: skip
        assert done.stdout.split()[:2] == [str(min(base + nice, 19))] * 2, done.stderr
        if groups:  # the sandbox's session (bwrap --new-session) is lowered too
            assert done.stdout.split()[-2:] == ["nice", str(nice)]


def test_the_launcher_lowers_a_command_and_its_session_outside_the_sandbox() -> None:
    done = subprocess.run(
        [*launcher(7), "sh", "-c", "nice; cat /proc/self/autogroup 2>/dev/null || true"],
        capture_output=True, text=True, start_new_session=True, timeout=60, check=True,
    )  # fmt: skip
    assert done.stdout.split()[0] == str(min(os.nice(0) + 7, 19))
    if Path("/proc/self/autogroup").exists():
        assert done.stdout.split()[-2:] == ["nice", "7"]
        assert session_nice() != 7  # the caller's session is not touched


def test_a_planted_rust_toolchain_file_runs_nothing_on_the_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A build script writes rust-toolchain.toml into its fork naming a "toolchain" of its own;
    a flakebot command run from inside that fork found it through rustup and ran its rustc.
    (Without rustup nothing reads the file: the assertions hold there too.)"""
    fake = tmp_path / "tc" / "bin"
    fake.mkdir(parents=True)
    marker = tmp_path / "ran"
    for name in ("cargo", "rustc"):
        (fake / name).write_text(f"#!/bin/sh\necho ran > {marker}\necho 'rustc 0.0.0'\n")
        (fake / name).chmod(0o755)
    (tmp_path / "rust-toolchain.toml").write_text(f'[toolchain]\npath = "{tmp_path / "tc"}"\n')
    monkeypatch.chdir(tmp_path)
    toolchain = Toolchain.find()
    assert toolchain.root != tmp_path / "tc"
    assert toolchain.version().startswith("rustc 1.")
    assert not marker.exists()


def test_without_cgroups_a_sandbox_still_runs_with_its_per_process_limits(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where no cgroup can be made (no permission, no controllers), the command runs under
    prlimit alone, and the log says so once."""
    from flakebot import cgroups

    monkeypatch.setattr(cgroups, "CGROUP_ROOT", tmp_path / "no-cgroups")
    monkeypatch.setattr(cgroups, "_unavailable_told", False)
    monkeypatch.setattr(cgroups, "_swept", set())
    with cgroups.limited(64 * 1024 * 1024) as group:
        assert not group.active
    done = sandbox.run(
        ["sh", "-c", "echo ran"], workdir=tmp_path, target_dir=tmp_path / "t", timeout=30
    )
    assert done.ok and done.stdout == "ran\n"
    assert cgroups._unavailable_told
    assert not (tmp_path / "no-cgroups").exists()
