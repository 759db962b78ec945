"""Running external programs: argv lists only (never a shell), a time limit, the whole group killed.

Every program Flakebot runs (cargo, nix, bwrap, git helpers) goes through `run`. It starts the
child in its own session so that a timeout kills every process the child started; errors carry
only the tail of the output. What a program prints is kept within a bound (`max_output` bytes per
stream: its head and its tail, the middle dropped and counted), since much of it is a hostile
crate's or tool's to choose: a test printing without end must not take the host's memory. A caller
may have the program stopped instead once it passes the bound (`stop_at_limit`).

`stop_running` ends, and waits out, every program `run` has running in this process, with
everything they started: a candidate's tester is stopped so before its actor is killed, so that
its build is gone when its candidate's end returns (killing the actor alone takes its sandboxes
along only once Ray gets round to it, seconds later on a busy machine).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import structlog

from flakebot.errors import CommandFailed, CommandTimedOut, RoleLost, ToolMissing

log = structlog.get_logger()
_running: set[subprocess.Popen[bytes]] = set()
_running_lock = threading.Lock()
_ending = threading.Event()  # stop_running(for_good=True): this process starts no more programs
MAX_OUTPUT = 64 * 1024 * 1024  # bytes kept of each of a program's streams
CHUNK = 64 * 1024
STOPPED_AT_LIMIT = -1  # Completed.returncode of a program stopped for printing past its bound


@dataclass(frozen=True)
class Completed:
    """A finished program: its argv, exit code, output (tails) and how long it took."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    dropped: int = 0  # bytes of output not kept (past `max_output`; with stop_at_limit, unread)

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def stopped_at_limit(self) -> bool:
        return self.returncode == STOPPED_AT_LIMIT

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


class _Capture:
    """One stream of a program, kept within `limit` bytes: its head and its tail."""

    def __init__(self, limit: int) -> None:
        self.half = max(limit // 2, 1)
        self.head = bytearray()
        self.tail: deque[bytes] = deque()
        self.tail_bytes = 0
        self.total = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.half - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self.tail.append(chunk)
            self.tail_bytes += len(chunk)
            while self.tail_bytes - len(self.tail[0]) >= self.half:
                self.tail_bytes -= len(self.tail.popleft())

    @property
    def dropped(self) -> int:
        return self.total - len(self.head) - self.tail_bytes

    def text(self) -> str:
        """What was kept, decoded as UTF-8 with newlines made '\\n' (as text-mode pipes do)."""
        head = _newlines(self.head.decode(errors="replace"))
        tail = _newlines(b"".join(self.tail).decode(errors="replace"))
        if self.dropped:
            return f"{head}\n[... {self.dropped} bytes not kept ...]\n{tail}"
        return head + tail


def _newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _read(stream: IO[bytes], capture: _Capture, over: threading.Event, limit: int) -> None:
    with stream:
        while chunk := os.read(stream.fileno(), CHUNK):
            capture.add(chunk)
            if capture.total > limit:
                over.set()


def _write(stream: IO[bytes], data: bytes) -> None:
    with contextlib.suppress(OSError), stream:  # a program that stops reading ends the write
        view = memoryview(data)
        while view:
            view = view[os.write(stream.fileno(), view[:CHUNK]) :]


def run(
    argv: Sequence[str | Path],
    *,
    timeout: float,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    stdin: str | None = None,
    pass_fds: Sequence[int] = (),
    max_output: int = MAX_OUTPUT,
    stop_at_limit: bool = False,
) -> Completed:
    """Run `argv` (no shell) and wait at most `timeout` seconds; kill its process group after.

    `pass_fds` stay open in the child (bubblewrap reads data for the sandbox from them). Of each
    output stream at most `max_output` bytes are kept; with `stop_at_limit` the program is killed
    once either passes it, and its returncode is STOPPED_AT_LIMIT."""
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
            start_new_session=True,
            pass_fds=tuple(pass_fds),
        )
    except FileNotFoundError as exc:
        raise ToolMissing(args[0], hint="install it, or put it on PATH") from exc
    with _running_lock:
        _running.add(child)
        if _ending.is_set():  # stop_running came while it started
            _kill_group(child)
    captures = (_Capture(max_output), _Capture(max_output))
    over = threading.Event()
    assert child.stdout is not None and child.stderr is not None
    workers = [
        threading.Thread(target=_read, args=(pipe, capture, over, max_output), daemon=True)
        for pipe, capture in zip((child.stdout, child.stderr), captures, strict=True)
    ]
    if child.stdin is not None:
        data = (stdin or "").encode(errors="replace")
        workers.append(threading.Thread(target=_write, args=(child.stdin, data), daemon=True))
    child.stdout = child.stderr = child.stdin = None  # the threads own the pipes now
    for worker in workers:
        worker.start()
    stopped = False
    deadline = started + timeout
    try:
        for reader in workers[:2]:  # both streams to their end, then the exit code
            while reader.is_alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise subprocess.TimeoutExpired(args, timeout)
                if stop_at_limit and over.is_set() and not stopped:
                    _kill_group(child)
                    stopped = True
                reader.join(min(left, 0.1))  # returns as soon as the stream ends
        code = child.wait(max(deadline - time.monotonic(), 0.01))
    except subprocess.TimeoutExpired:
        _kill_group(child)
        _wind_up(child, workers)
        log.warning("command_timed_out", argv=args[:4], seconds=timeout)
        raise CommandTimedOut(
            args, timeout, tail(captures[1].text() or captures[0].text())
        ) from None
    except BaseException:
        _kill_group(child)
        _wind_up(child, workers)
        raise
    finally:
        with _running_lock:
            _running.discard(child)
    return Completed(
        argv=args,
        returncode=STOPPED_AT_LIMIT if stopped else code,
        stdout=captures[0].text(),
        stderr=captures[1].text(),
        seconds=time.monotonic() - started,
        dropped=sum(capture.dropped for capture in captures),
    )


def _wind_up(child: subprocess.Popen[bytes], workers: list[threading.Thread]) -> None:
    """After a kill: reap the child and give the readers a moment to see the pipes close (a
    process outside the group may still hold them: the readers are daemons, left to it)."""
    child.wait()
    for worker in workers:
        worker.join(5)


def _kill_group(child: subprocess.Popen[bytes]) -> None:
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
