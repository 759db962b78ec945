"""A sandbox's process tree is limited as a whole: memory (its /tmp included) and tasks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from flakebot import cgroups
from flakebot.sandbox import Sandbox, Toolchain
from flakebot.tool_sandbox import ToolSandbox

MIB = 1024 * 1024


@pytest.fixture(scope="module", autouse=True)
def cgroups_here() -> None:
    with cgroups.limited(64 * MIB, 16) as group:
        if not group.active:
            pytest.skip(
                "this machine lets Flakebot make no cgroup (see the cgroups_unavailable log)"
            )


def ours() -> list[Path]:
    """This process's cgroups still on the machine."""
    prefix = f"{os.getpid()}-"
    return [
        child
        for parent in cgroups.CGROUP_ROOT.glob("**/flakebot")
        for child in parent.iterdir()
        if child.name.startswith(prefix)
    ]


def test_a_fork_bomb_stops_at_the_task_limit(tmp_path: Path) -> None:
    sandbox = Sandbox(Toolchain.find(), tasks=48)
    script = "for i in $(seq 1 200); do sleep 3 & done; echo spawned"
    done = sandbox.run(
        ["sh", "-c", script], workdir=tmp_path, target_dir=tmp_path / "t", timeout=60
    )
    assert "fork" in done.stderr.lower(), done.stderr[-500:]  # "Cannot fork": the bound held
    assert ours() == []  # the cgroup went with the run, and what was left in it


def test_filling_the_private_tmp_counts_against_the_sandboxs_memory(tmp_path: Path) -> None:
    """/tmp is a tmpfs of half the host's memory, whose pages count against no process's
    address space: 400 MiB there passed a 256 MiB limit before."""
    sandbox = Sandbox(Toolchain.find(), memory_bytes=256 * MIB)
    script = "head -c 400M /dev/zero > /tmp/fill && echo filled"
    done = sandbox.run(
        ["sh", "-c", script], workdir=tmp_path, target_dir=tmp_path / "t", timeout=60
    )
    assert "filled" not in done.stdout and not done.ok
    assert "[flakebot: the sandbox reached its memory limit (256 MiB" in done.stderr, done.stderr


def test_a_deployed_tool_is_limited_too() -> None:
    tool = ToolSandbox(closure=(), tasks=32)
    done = tool.run(
        ["/bin/sh", "-c", "for i in $(seq 1 100); do sleep 3 & done; echo x"], timeout=60
    )
    assert "fork" in done.stderr.lower(), done.stderr[-500:]
    assert ours() == []


def test_cgroups_of_a_flakebot_process_that_died_are_removed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with cgroups.limited(64 * MIB) as group:
        assert group.active
        parents = [directory.parent for directory in group.directories]
    dead = 2**22 + 17  # above pid_max's default: no process has it
    stale = [parent / f"{dead}-0" for parent in parents]
    stale += [parent / f"{os.getpid()}-0" for parent in parents]  # an earlier process's pid
    for directory in stale:
        directory.mkdir()
    monkeypatch.setattr(cgroups, "_swept", set())
    with cgroups.limited(64 * MIB):
        assert not any(directory.exists() for directory in stale)


def test_this_process_cgroups_are_read_for_v1_and_v2() -> None:
    v1 = "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/abc\n2:cpu,cpuacct:/x\n0::/"
    assert cgroups.own_cgroups(v1) == {
        "name=systemd": "/",
        "pids": "/",
        "memory": "/process_api/abc",
        "cpu": "/x",
        "cpuacct": "/x",
        "": "/",
    }
    assert cgroups.own_cgroups("0::/user.slice/session-1.scope") == {
        "": "/user.slice/session-1.scope"
    }


def test_sandboxes_are_placed_under_flakebots_own_cgroup() -> None:
    """What limits Flakebot (a container's or a unit's memory cap) limits its sandboxes."""
    own = cgroups.own_cgroups()
    with cgroups.limited(64 * MIB) as group:
        assert group.active
        if group.v2:  # or at the top, with Flakebot's limits, where v2 forbids it
            mine = cgroups.CGROUP_ROOT / own[""].lstrip("/")
            assert group.memory.parent in (mine / "flakebot", cgroups.CGROUP_ROOT / "flakebot")
        else:
            memory = group.memory.relative_to(cgroups.CGROUP_ROOT / "memory")
            assert memory.parent.parent == Path(own["memory"].lstrip("/"))
