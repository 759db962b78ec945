"""Running external programs: argv lists only (never a shell), a time limit, the whole group killed.

Every program Flakebot runs (cargo, nix, bwrap, git helpers) goes through `run`. It starts the
child in its own session so that a timeout kills every process the child started; errors carry
only the tail of the output. `stop_running` ends, and waits out, every program `run` has running
in this process, with everything they started: a candidate's tester is stopped so before its
actor is killed, so that its build is gone when its candidate's end returns (killing the actor
alone takes its sandboxes along only once Ray gets round to it, seconds later on a busy machine).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from flakebot.errors import CommandFailed, CommandTimedOut, RoleLost, ToolMissing

log = structlog.get_logger()
_running: set[subprocess.Popen[str]] = set()
_running_lock = threading.Lock()
_ending = threading.Event()  # stop_running(for_good=True): this process starts no more programs


@dataclass(frozen=True)
class Completed:
    """A finished program: its argv, exit code, output (tails) and how long it took."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def check(self, *, hint: str | None = None) -> Completed:
        """Raise CommandFailed unless the program exited 0."""
        if not self.ok:
            raise CommandFailed(
                self.argv, self.returncode, tail(self.stderr or self.stdout), hint=hint
            )
        return self


def tail(text: str, chars: int = 2_000) -> str:
    return text if len(text) <= chars else "..." + text[-chars:]


def which(program: str, *, path: str | None = None, hint: str) -> str:
    """The absolute path of `program` on PATH, or ToolMissing with `hint`."""
    found = shutil.which(program, path=path)
    if found is None:
        raise ToolMissing(program, hint=hint)
    return found


def run(
    argv: Sequence[str | Path],
    *,
    timeout: float,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    stdin: str | None = None,
    pass_fds: Sequence[int] = (),
) -> Completed:
    """Run `argv` (no shell) and wait at most `timeout` seconds; kill its process group after.

    `pass_fds` stay open in the child (bubblewrap reads data for the sandbox from them)."""
    args = [str(part) for part in argv]
    started = time.monotonic()
    with _running_lock:
        if _ending.is_set():
            raise RoleLost(f"{args[0]} was not started: this process is ending")
    try:
        child = subprocess.Popen(
            args,
            cwd=cwd,
            env=None if env is None else dict(env),
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            start_new_session=True,
            pass_fds=tuple(pass_fds),
        )
    except FileNotFoundError as exc:
        raise ToolMissing(args[0], hint="install it, or put it on PATH") from exc
    with _running_lock:
        _running.add(child)
        if _ending.is_set():  # stop_running came while it started
            _kill_group(child)
    try:
        stdout, stderr = child.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(child)
        stdout, stderr = child.communicate()
        log.warning("command_timed_out", argv=args[:4], seconds=timeout)
        raise CommandTimedOut(args, timeout, tail(stderr or stdout)) from None
    except BaseException:
        _kill_group(child)
        child.communicate()
        raise
    finally:
        with _running_lock:
            _running.discard(child)
    return Completed(
        argv=args,
        returncode=child.returncode,
        stdout=stdout,
        stderr=stderr,
        seconds=time.monotonic() - started,
    )


def _kill_group(child: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot; None if it is gone (or a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):  # exited, not yet reaped
        return None
    return int(fields[19])  # field 22 of the whole line: starttime


def argv(pid: int) -> list[bytes]:
    """The process's command line, one item per argument; [b""] if it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return [b""]


def children(pid: int) -> list[int]:
    """The live children of `pid`, whichever of its threads started them."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return []
    found: list[int] = []
    for task in tasks:
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (children first), as /proc shows them: those in a
    sandbox's own pid namespace too."""
    found: list[int] = []
    pending = [pid]
    while pending:
        below = children(pending.pop())
        found += below
        pending += below
    return found


def stop_running(timeout: float = 10.0, *, for_good: bool = False) -> int:
    """Kill every program `run` has running in this process, and all they started, and wait
    (at most `timeout` seconds) until each has exited; how many were running. Their `run`
    calls then end as a killed program does. `for_good`: the process is ending, and `run`
    starts nothing after (RoleLost)."""
    with _running_lock:
        if for_good:
            _ending.set()
        children = list(_running)
    doomed: dict[int, int] = {}
    for child in children:
        for pid in [child.pid, *descendants(child.pid)]:
            started = start_time(pid)
            if started is not None:
                doomed[pid] = started
        _kill_group(child)
    for pid in doomed:  # those in sessions of their own too (bwrap --new-session)
        if start_time(pid) == doomed[pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(start_time(pid) != started for pid, started in doomed.items()):
            break
        time.sleep(0.02)
    else:
        log.warning("programs_not_stopped", pids=sorted(doomed)[:10])
    return len(children)
