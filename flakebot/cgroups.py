"""Limits on a sandbox's whole process tree: a cgroup of its own, for memory and tasks.

`prlimit --as` bounds each process's address space, not their sum, not how many processes there
are, and not the sandbox's private /tmp (a tmpfs, whose pages count against no process). A build
script, a test or a deployed tool could fork without end, start many processes of 8 GiB each, or
fill /tmp until the host's memory ran out. A cgroup bounds them together: memory (tmpfs pages are
charged to the cgroup that writes them) and tasks (a fork bomb's next fork fails).

`limited()` makes a cgroup under `flakebot/` in each hierarchy it needs (cgroup v2: the unified
one with the memory and pids controllers; v1: the memory and pids hierarchies) and gives the
argv prefix that puts a command in it: a small launcher on the host that writes its own pid into
the cgroup and then executes the command, so everything the command starts is inside from its
first instruction. Afterwards, whatever is still inside is killed and the cgroup removed. A
cgroup of a Flakebot process that died is removed by the next one (its name holds the pid).

On a machine where cgroups cannot be made (no permission, no controllers), `limited()` yields
None and the sandbox runs with the per-process limits only; that is logged once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import structlog

from flakebot.proc import Completed

log = structlog.get_logger()

CGROUP_ROOT = Path("/sys/fs/cgroup")
DEFAULT_TASKS = 2048  # processes and threads: rustc and the test harness are threaded
_PREFIX = "flakebot"
_counter = itertools.count()
_lock = threading.Lock()
_unavailable_told = False
_swept: set[Path] = set()  # parents whose dead processes' cgroups this process removed
_v2_parents: dict[Path, Path] = {}  # this process's v2 cgroup -> where its sandboxes' go

# The launcher: writes its pid into each cgroup, then becomes the command (nothing it starts is
# ever outside). Its text is fixed; the command comes as argv, never through a shell.
JOIN = (
    "import os, sys\n"
    "end = sys.argv.index('--')\n"
    "for procs in sys.argv[1:end]:\n"
    "    with open(procs, 'w') as f: f.write(str(os.getpid()))\n"
    "os.execvp(sys.argv[end + 1], sys.argv[end + 1:])\n"
)


@dataclass(frozen=True)
class Group:
    """One command's cgroup: a directory per hierarchy (one for v2, memory and pids for v1)."""

    directories: tuple[Path, ...]
    memory: Path  # the directory holding the memory controller's files
    v2: bool

    @property
    def active(self) -> bool:
        """False for NO_GROUP: no cgroup could be made, the command runs with prlimit alone."""
        return bool(self.directories)

    def join_argv(self) -> list[str]:
        """The prefix that starts a command inside (nothing for NO_GROUP)."""
        if not self.active:
            return []
        procs = [str(directory / "cgroup.procs") for directory in self.directories]
        return [sys.executable, "-I", "-S", "-c", JOIN, *procs, "--"]

    def oom_kills(self) -> int:
        """How many processes the kernel killed inside for want of memory."""
        name, key = ("memory.events", "oom_kill") if self.v2 else ("memory.oom_control", "oom_kill")
        with contextlib.suppress(OSError, ValueError):
            for line in (self.memory / name).read_text().splitlines():
                field, _, value = line.partition(" ")
                if field == key:
                    return int(value)
        return 0

    def told(self, done: Completed) -> Completed:
        """`done`, with a line on its stderr if the kernel killed a process inside for memory
        (what the model or the user sees: a bare SIGKILL says nothing)."""
        kills = self.oom_kills() if self.active else 0
        if not kills:
            return done
        note = (
            f"\n[flakebot: the sandbox reached its memory limit ({_mib(self.memory_limit)} MiB, "
            f"its /tmp included); the kernel killed {kills} process(es) in it]\n"
        )
        return dataclasses.replace(done, stderr=done.stderr + note)

    @property
    def memory_limit(self) -> int:
        name = "memory.max" if self.v2 else "memory.limit_in_bytes"
        with contextlib.suppress(OSError, ValueError):
            return int((self.memory / name).read_text())
        return 0

    def remove(self) -> None:
        """Kill what is still inside, then remove the cgroup (retried briefly: a killed process
        leaves its cgroup a moment after it dies)."""
        for directory in self.directories:
            _empty_and_remove(directory)


NO_GROUP = Group(directories=(), memory=Path("/nonexistent"), v2=False)


@contextlib.contextmanager
def limited(memory_bytes: int, tasks: int = DEFAULT_TASKS) -> Iterator[Group]:
    """A fresh cgroup limited to `memory_bytes` and `tasks`, removed afterwards; NO_GROUP (the
    command runs with per-process limits only) where cgroups cannot be made."""
    group = _make(memory_bytes, tasks) or NO_GROUP
    try:
        yield group
    finally:
        group.remove()


def _make(memory_bytes: int, tasks: int) -> Group | None:
    global _unavailable_told
    name = f"{os.getpid()}-{next(_counter)}-{secrets.token_hex(3)}"  # pid first: see _sweep
    try:
        if (CGROUP_ROOT / "cgroup.controllers").is_file():
            return _make_v2(name, memory_bytes, tasks)
        return _make_v1(name, memory_bytes, tasks)
    except OSError as exc:
        with _lock:
            if not _unavailable_told:
                _unavailable_told = True
                log.warning(
                    "cgroups_unavailable",
                    error=str(exc)[:300],
                    effect="sandboxes are limited per process only (prlimit), not as a whole",
                )
        return None


def own_cgroups(text: str | None = None) -> dict[str, str]:
    """This process's cgroup in each hierarchy, from /proc/self/cgroup: controller (or "" for
    the v2 hierarchy) -> path."""
    if text is None:
        text = Path("/proc/self/cgroup").read_text()
    found: dict[str, str] = {}
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            found[controller] = path
    return found


def _make_v2(name: str, memory_bytes: int, tasks: int) -> Group:
    """Under this process's own cgroup, so that what limits Flakebot limits its sandboxes. The
    v2 rule that a cgroup with processes has no controllers for its children can forbid that
    (Flakebot is in it); then `flakebot/` is made at the top, with Flakebot's own limits copied
    to it, all its sandboxes together bounded as Flakebot is."""
    controllers = (CGROUP_ROOT / "cgroup.controllers").read_text().split()
    if not {"memory", "pids"} <= set(controllers):
        raise OSError(f"cgroup v2 without the memory and pids controllers: {controllers}")
    own = CGROUP_ROOT / own_cgroups().get("", "/").lstrip("/")
    with _lock:
        parent = _v2_parents.get(own)
        if parent is None:
            parent = _v2_parent(own)
            _v2_parents[own] = parent
            _sweep(parent)
    directory = parent / name
    directory.mkdir()
    try:
        (directory / "memory.max").write_text(str(memory_bytes))
        if (directory / "memory.swap.max").exists():
            (directory / "memory.swap.max").write_text("0")
        (directory / "pids.max").write_text(str(tasks))
    except OSError:
        _empty_and_remove(directory)
        raise
    return Group(directories=(directory,), memory=directory, v2=True)


def _v2_parent(own: Path) -> Path:
    if own != CGROUP_ROOT:
        try:
            _enable(own)
            parent = own / _PREFIX
            parent.mkdir(exist_ok=True)
            _enable(parent)
            return parent
        except OSError as exc:
            log.info("cgroup_under_own_refused", cgroup=str(own), error=exc.strerror)
    _enable(CGROUP_ROOT)
    parent = CGROUP_ROOT / _PREFIX
    parent.mkdir(exist_ok=True)
    _enable(parent)
    for setting in ("memory.max", "pids.max"):  # Flakebot's own bounds, for them all
        with contextlib.suppress(OSError):
            (parent / setting).write_text((own / setting).read_text().strip())
    return parent


def _enable(directory: Path) -> None:
    control = directory / "cgroup.subtree_control"
    enabled = control.read_text().split()
    missing = [f"+{name}" for name in ("memory", "pids") if name not in enabled]
    if missing:
        control.write_text(" ".join(missing))


def _make_v1(name: str, memory_bytes: int, tasks: int) -> Group:
    """Under this process's own cgroup of each hierarchy (v1 lets a cgroup with processes have
    children), so that what limits Flakebot limits its sandboxes."""
    own = own_cgroups()
    made: list[Path] = []
    try:
        for controller, settings in (
            (
                "memory",
                {
                    "memory.limit_in_bytes": memory_bytes,
                    "memory.memsw.limit_in_bytes": memory_bytes,  # no swap beyond it either
                },
            ),
            ("pids", {"pids.max": tasks}),
        ):
            parent = CGROUP_ROOT / controller / own.get(controller, "/").lstrip("/") / _PREFIX
            with _lock:
                if parent not in _swept:
                    parent.mkdir(exist_ok=True)
                    _sweep(parent)
            directory = parent / name
            directory.mkdir()
            made.append(directory)
            for setting, value in settings.items():
                if (directory / setting).exists():  # memsw only with swap accounting on
                    (directory / setting).write_text(str(value))
    except OSError:
        for directory in made:
            _empty_and_remove(directory)
        raise
    return Group(directories=tuple(made), memory=made[0], v2=False)


def _mib(value: int) -> int:
    return value // (1024 * 1024)


def _sweep(parent: Path) -> None:
    """Remove the cgroups of Flakebot processes that are gone (their pid is in the name), and,
    since this runs before this process makes any there, those named with its own pid (a
    process that had it before)."""
    _swept.add(parent)
    for child in parent.iterdir():
        pid = child.name.partition("-")[0]
        if not child.is_dir() or not pid.isdigit():
            continue
        if int(pid) == os.getpid() or not Path(f"/proc/{pid}").exists():
            _empty_and_remove(child)


def _empty_and_remove(directory: Path, wait_s: float = 5.0) -> None:
    """Kill what is inside (v2's cgroup.kill: all at once, no pid read and signalled later,
    which a fork could outrun or the kernel could have given to another process), then rmdir."""
    deadline = time.monotonic() + wait_s
    kill = directory / "cgroup.kill"
    while True:
        if kill.exists():
            with contextlib.suppress(OSError):
                kill.write_text("1")
        else:
            with contextlib.suppress(OSError, ValueError):
                for pid in (directory / "cgroup.procs").read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
        try:
            directory.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if time.monotonic() > deadline:
                log.warning("cgroup_not_removed", cgroup=str(directory), error=exc.strerror)
                return
            time.sleep(0.05)
