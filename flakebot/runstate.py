"""A run's own record under FLAKEBOT_HOME/runs/<run>/: the facts Flakebot trusts about a run.

Everything in a fork and its target dir is attacker-controlled once a sandboxed stage or a model
edit has run, so facts about a run never come from there. They come from here, written by Flakebot
outside every sandbox:

- `resources.json`: what the run made (workspaces, target dirs, GC roots, store paths, deployment
  sources, services and prebuilds with their process identity), each tagged with its candidate,
  and when the run's lease started. Every role records what it creates here first; the janitor
  reads it back.
- `forks/<candidate>.json`: each fork as it was made: the crate candidate (name, version, licence,
  repository, the registry it came from) and the Workspace message (path, branch, target dir,
  package directory). Later steps read the registry to bind into a sandbox, the target dir and the
  package directory from here, never from the fork's `.cargo/config.toml` or its layout.
- `active.lock`: held (flock) by the process running the run; a run whose lock can be taken is not
  in progress, however it ended (a crashed supervisor releases it with its process).

Updates take a file lock, so roles in several processes can record at once; files are 0600.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal, TextIO

from pydantic import BaseModel, ConfigDict, Field

from flakebot.errors import RunBusy
from flakebot.home import ID_PATTERN, PRIVATE_DIR, PRIVATE_FILE, check_id, run_dir, write_private
from messages import CrateCandidate, Workspace

CLEAN_WAIT_S = 600.0  # how long a clean waits for another clean of the run to end

Kind = Literal[
    "workspace", "target_dir", "gc_root", "store_path", "deployment", "service", "prebuild"
]


class Resource(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Kind
    path: str  # for a service: its URL
    candidate_id: str | None = None
    pid: int | None = None
    started: int | None = None  # a process's start time (clock ticks since boot), with its pid


class Resources(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lease_started: float = Field(default_factory=time.time)
    items: list[Resource] = Field(default_factory=list)


class ForkRecord(BaseModel):
    """A fork as Flakebot made it: where it came from and where its parts are."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    candidate: CrateCandidate
    workspace: Workspace


class RunRecord:
    """The record of one run."""

    def __init__(self, home: Path, run_id: str) -> None:
        self.run_id = run_id
        self.directory = run_dir(home, run_id)
        self.path = self.directory / "resources.json"

    @contextmanager
    def _locked(self) -> Iterator[Resources]:
        self.directory.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
        with _open_private(self.directory / ".lock") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            resources = self.load()
            yield resources
            write_private(self.path, resources.model_dump_json(indent=1))

    def load(self) -> Resources:
        if not self.path.exists():
            return Resources()
        return Resources.model_validate_json(self.path.read_text())

    def add(
        self,
        kind: Kind,
        path: str | Path,
        *,
        candidate_id: str | None,
        pid: int | None = None,
        started: int | None = None,
    ) -> None:
        resource = Resource(
            kind=kind, path=str(path), candidate_id=candidate_id, pid=pid, started=started
        )
        with self._locked() as resources:
            if resource not in resources.items:
                resources.items.append(resource)

    def remove(self, resource: Resource) -> None:
        with self._locked() as resources:
            resources.items = [item for item in resources.items if item != resource]

    def items(self, kind: Kind | None = None, candidate_id: str | None = None) -> list[Resource]:
        return [
            item
            for item in self.load().items
            if (kind is None or item.kind == kind)
            and (candidate_id is None or item.candidate_id == candidate_id)
        ]

    def lease_age(self) -> float:
        return time.time() - self.load().lease_started

    def exists(self) -> bool:
        return self.directory.exists()

    # Forks ---------------------------------------------------------------------------------------

    def _fork_path(self, candidate_id: str) -> Path:
        return self.directory / "forks" / f"{check_id(candidate_id, 'candidate id')}.json"

    def save_fork(self, candidate: CrateCandidate, workspace: Workspace) -> None:
        record = ForkRecord(candidate=candidate, workspace=workspace)
        write_private(self._fork_path(workspace.candidate_id), record.model_dump_json(indent=1))

    def fork(self, candidate_id: str) -> ForkRecord | None:
        path = self._fork_path(candidate_id)
        if not path.is_file():
            return None
        return ForkRecord.model_validate_json(path.read_text())

    # Being in progress ---------------------------------------------------------------------------

    @contextmanager
    def active(self, *, wait: bool = True) -> Iterator[None]:
        """Mark the run as in progress for as long as the block runs (and this process lives).
        Without `wait`, a run another process holds raises RunBusy at once."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
        with _open_private(self.directory / "active.lock") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                raise RunBusy(
                    f"run {self.run_id} is in progress in another process",
                    hint=f"follow it: flakebot status {self.run_id} --follow",
                ) from None
            lock.seek(0)
            lock.truncate()
            lock.write(f"{os.getpid()}\n")
            lock.flush()
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @contextmanager
    def working(self) -> Iterator[None]:
        """Held (shared) by a process while it does a part of the run on this node (a coder's
        fork and edit-test loop), so that `workers_gone` can wait for it to end. No record
        here (a node other than the run's home), nothing to hold."""
        lock = self._open_lock("workers.lock")
        if lock is None:
            yield
            return
        try:
            if not _flock_within(lock, CLEAN_WAIT_S, shared=True):  # held only by a clean
                raise RunBusy(f"run {self.run_id} is being cleaned: nothing more is done for it")
            yield
        finally:
            os.close(lock)

    @contextmanager
    def workers_gone(self, wait_s: float) -> Iterator[bool]:
        """Wait (at most `wait_s`) until no process holds `working`, and keep new ones waiting
        while the block runs; yields whether they were all gone in time. A run being ended and
        cleaned uses it: a candidate's coder, killed a moment before, may still be at work."""
        lock = self._open_lock("workers.lock")
        if lock is None:
            yield True
            return
        try:
            yield _flock_within(lock, wait_s)
        finally:
            os.close(lock)

    def _open_lock(self, name: str) -> int | None:
        try:
            return os.open(
                self.directory / name,
                os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                PRIVATE_FILE,
            )
        except FileNotFoundError:  # no record (here): nothing to hold
            return None

    @contextmanager
    def cleaning(self, wait_s: float = CLEAN_WAIT_S) -> Iterator[None]:
        """Held while a janitor cleans the run: one at a time, whichever process (two at once
        each found the other's removals gone and reported them as failures). A run whose record
        is gone already has nothing to hold. Waits at most `wait_s`, then RunBusy."""
        lock = self._open_lock(".clean.lock")
        if lock is None:
            yield
            return
        try:
            if not _flock_within(lock, wait_s):
                raise RunBusy(
                    f"run {self.run_id} is being cleaned by another process",
                    hint="try again once that clean has ended",
                )
            yield
        finally:
            os.close(lock)

    def in_progress(self) -> bool:
        """Is a live process running this run now?"""
        path = self.directory / "active.lock"
        if not path.exists():
            return False
        with path.open("r") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    return True
                raise
            fcntl.flock(lock, fcntl.LOCK_UN)
        return False


def _flock_within(lock: int, wait_s: float, *, shared: bool = False) -> bool:
    """Take `lock` (exclusively, or `shared`) within `wait_s` seconds; whether it was taken."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(lock, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)


@contextmanager
def _open_private(path: Path) -> Iterator[TextIO]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, PRIVATE_FILE)
    with os.fdopen(fd, "r+") as handle:
        yield handle


def all_runs(home: Path) -> list[RunRecord]:
    runs = home / "runs"
    if not runs.is_dir():
        return []
    return [
        RunRecord(home, entry.name)
        for entry in sorted(runs.iterdir())
        if entry.is_dir() and not entry.is_symlink() and ID_PATTERN.match(entry.name)
    ]
