"""Building a candidate's dependencies while its coder works, so that its deploy compiles only it.

Most of a deploy's `nix build` is compiling the crate's dependencies in release mode, and they
depend only on its manifests, not on the model's edits. The offline stand-in builds them in a
derivation of their own, `flakebotDeps` on the package (flakebot/data/nix/nixpkgs-offline).
`Deployer.prebuild` exports the fork's current commit (prepared by its caller as the coder's first
test will leave the fork: CodeLoop.prepare_export) and renders its flake as a deploy does, and
`Prebuild.start` builds that attribute in the background, wrapped as the deploy's `nix build` is.
The deploy then finds it built (the same derivation, so the same output) and compiles only the
crate; a deploy that comes while the prebuild still runs waits for Nix's lock on the output and
takes it once built. On real nixpkgs the attribute does not exist: the prebuild fails, the
deploy builds everything. A prebuild never fails anything: what goes wrong is logged. It runs at
the candidate's own priority, sharing a small machine's cores with the candidate's tests: both
are on the way to the deploy, and each fills the other's idle moments (lowered, its dependencies
finished alone after the tests and the demo took 37 s instead of 31).

The build runs in a runner process (`python -m flakebot.prebuild JOB`) that detaches from the
process starting it and outlives it: a coder killed with its candidate (Ray kills an actor's
children with it) leaves a runner that notices, interrupts Nix as Ctrl-C would (Nix stops its
builder and removes its chroot) and records what the build added before it exits. A runner ends
when its build does, at its deadline, when `Prebuild.stop` or the janitor stops it (SIGTERM), or
when the process that started it is gone. It records itself in the run's record (a `prebuild`
resource with its pid and start time, which the janitor stops before it cleans), and then the
store paths of the build: of what it added to the store only what belongs to this build (the
closure of its derivation, their outputs, lock files and chroots, and the two flake sources),
never a path another run added at the same time; and what it found built that another run of
this home recorded (as a deploy does for a tool deployed before: cleaning that run leaves it,
the last run holding it removes it). A path made elsewhere, by no run of this home, is never
recorded, so never deleted. Its state is in `status.json` beside the export.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pygit2
import structlog
from pydantic import BaseModel, ConfigDict

from flakebot import services
from flakebot.cgroups import limited
from flakebot.errors import FlakebotError
from flakebot.home import check_id, private_umask, write_private
from flakebot.logs import bind_context, configure_logging
from flakebot.nix import BUILD_MEMORY_BYTES, BUILD_TASKS, BuildProcess, Nix, nix_env
from flakebot.proc import start_time
from flakebot.runstate import RunRecord, all_runs

log = structlog.get_logger()

State = Literal["running", "built", "failed", "stopped", "timed_out"]
RUNNER = "flakebot.prebuild"
STORE = Path("/nix/store")
DEADLINE_S = 1_800.0  # as long as a deploy's nix build may take
POLL_S = 0.5
INTERRUPT_GRACE_S = 20.0  # how long Nix gets to clean up after SIGINT
STOP_GRACE_S = INTERRUPT_GRACE_S + 10.0


class PrebuildJob(BaseModel):
    """What a runner builds, and for whom."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    home: str
    run_id: str
    candidate_id: str
    directory: str  # FLAKEBOT_HOME/prebuilds/<run>/<candidate>
    flake: str  # path:<export>
    attribute: str  # packages.<system>.default.flakebotDeps
    standin: str  # path:<the offline nixpkgs stand-in>, which `extra_args` put in for nixpkgs
    sandbox_paths: list[str]
    extra_args: list[str]
    deadline_s: float = DEADLINE_S
    watch_pid: int  # the process that started it: when it is gone, so is the prebuild
    watch_started: int
    manifests: str  # tree_manifests of what it builds


MANIFESTS = ("Cargo.toml", "Cargo.lock")


def commit_manifests(fork: Path) -> str:
    """A digest of every Cargo.toml and Cargo.lock in the fork's head commit: the dependencies'
    derivation can only change when it does. Read from the fork's git objects, which only
    Flakebot writes."""
    repo = pygit2.Repository(str(fork))
    found: list[str] = []
    pending = [("", repo.head.peel(pygit2.Commit).tree)]
    while pending:
        prefix, tree = pending.pop()
        for entry in tree:
            if entry.type_str == "tree" and isinstance(subtree := repo[entry.id], pygit2.Tree):
                pending.append((f"{prefix}{entry.name}/", subtree))
            elif entry.name in MANIFESTS:
                found.append(f"{prefix}{entry.name} {entry.id}")
    return _digest(found)


def tree_manifests(directory: Path) -> str:
    """The same digest for a directory Flakebot wrote (an export): equal to commit_manifests of
    a commit whose manifests are these (regular files only; no link is followed)."""
    found = []
    for parent, directories, files in os.walk(directory):
        directories.sort()
        for name in files:
            path = Path(parent) / name
            if name in MANIFESTS and not path.is_symlink() and path.is_file():
                blob = pygit2.hash(path.read_bytes())
                found.append(f"{path.relative_to(directory).as_posix()} {blob}")
    return _digest(found)


def _digest(entries: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(entries)).encode()).hexdigest()


class PrebuildStatus(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    state: State
    store_path: str | None = None
    seconds: float = 0.0
    detail: str = ""


def prebuild_dir(home: Path, run_id: str, candidate_id: str) -> Path:
    return home / "prebuilds" / check_id(run_id) / check_id(candidate_id, "candidate id")


def read_status(directory: Path) -> PrebuildStatus | None:
    try:
        return PrebuildStatus.model_validate_json((directory / "status.json").read_text())
    except (OSError, ValueError):
        return None


def is_runner(pid: int, started: int | None) -> bool:
    """Is `pid` still the prebuild runner that started at `started`?"""
    return started is not None and services.is_service_host(pid, started, program=RUNNER)


def stop_runner(pid: int, started: int | None) -> bool:
    """Stop the runner `pid` if it is still the one started at `started`, and wait until it has
    ended (it interrupts its build and records what it added first); True if it was running."""
    return services.stop(pid, started, grace=STOP_GRACE_S, program=RUNNER)


@dataclass
class Prebuild:
    """A started prebuild, as its starter sees it: how it is, waiting for it, stopping it."""

    job: PrebuildJob
    launcher: subprocess.Popen[str]
    runner: tuple[int, int | None] | None = field(default=None, init=False)
    _told: threading.Thread | None = field(default=None, init=False)

    @classmethod
    def start(cls, job: PrebuildJob) -> Prebuild:
        """Start the runner; returns at once (the runner detaches within about a second)."""
        directory = Path(job.directory)
        job_file = directory / "job.json"
        write_private(job_file, job.model_dump_json(indent=1))
        with (directory / "runner.log").open("a") as errors:
            launcher = subprocess.Popen(
                [sys.executable, "-m", RUNNER, str(job_file)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=errors,
                start_new_session=True,
                text=True,
                env=nix_env(),  # no key
            )
        prebuild = cls(job, launcher)
        prebuild._told = threading.Thread(target=prebuild._hear, daemon=True)
        prebuild._told.start()
        log.info("prebuild_started", candidate=job.candidate_id, flake=job.flake)
        return prebuild

    def _hear(self) -> None:
        """Read who the runner is from its launcher, and reap the launcher."""
        assert self.launcher.stdout is not None
        with self.launcher.stdout:
            line = self.launcher.stdout.readline().split()
        self.launcher.wait()
        if len(line) == 2 and line[0].isdigit():
            self.runner = (int(line[0]), int(line[1]) if line[1].isdigit() else None)

    def _runner(self) -> tuple[int, int | None] | None:
        if self._told is not None:
            self._told.join(timeout=60)
        return self.runner

    def poll(self) -> State:
        runner = self._runner()
        if runner is not None and is_runner(*runner):
            return "running"
        status = read_status(Path(self.job.directory))
        return status.state if status is not None else "failed"

    def wait(self, timeout: float) -> State:
        """Its state once it has ended, or after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while (state := self.poll()) == "running" and time.monotonic() < deadline:
            time.sleep(POLL_S)
        return state

    def status(self) -> PrebuildStatus | None:
        return read_status(Path(self.job.directory))

    def stop(self) -> State:
        """Stop it if it still runs (it cleans up and records first); its state then."""
        runner = self._runner()
        if runner is not None:
            stop_runner(*runner)
        return self.poll()


class Runner:
    """The runner's work: build, follow the build, record what it added."""

    def __init__(self, job: PrebuildJob, nix: Nix | None = None) -> None:
        self.job = job
        self.nix = nix or Nix()
        self.record = RunRecord(Path(job.home), job.run_id)
        self.stopping = threading.Event()

    def run(self) -> PrebuildStatus:
        started = time.monotonic()
        before = _store_names()
        installable = f"{self.job.flake}#{self.job.attribute}"
        drv: str | None = None
        build: BuildProcess | None = None
        state: State = "failed"
        store_path, detail = None, ""
        try:
            drv = self.nix.derivation(installable, self.job.extra_args)
            with limited(BUILD_MEMORY_BYTES, BUILD_TASKS) as group:  # its whole tree, as a deploy's
                if not self.stopping.is_set():
                    build = self.nix.start_build(
                        installable,
                        sandbox_paths=self.job.sandbox_paths,
                        extra_args=self.job.extra_args,
                        output=Path(self.job.directory) / "build.json",
                        join=group.join_argv(),
                    )
                state = self._follow(build, started) if build is not None else "stopped"
            if build is not None and state == "built":
                store_path = build.result().out_paths["out"]
            elif build is not None and state == "failed":
                detail = build.log.read_bytes()[-2_000:].decode(errors="replace")
        except FlakebotError as exc:
            detail = exc.message[:2_000]
        finally:
            self._record(before, drv)
        status = PrebuildStatus(
            state=state,
            store_path=store_path,
            seconds=round(time.monotonic() - started, 2),
            detail=detail,
        )
        log.info("prebuild_ended", state=state, store_path=store_path, seconds=status.seconds)
        return status

    def _follow(self, build: BuildProcess, started: float) -> State:
        while build.poll() is None:
            ended: State | None = None
            if self.stopping.is_set():
                ended = "stopped"
            elif start_time(self.job.watch_pid) != self.job.watch_started:
                ended = "stopped"  # whoever started it is gone: its candidate has ended
            elif time.monotonic() - started > self.job.deadline_s:
                ended = "timed_out"
            if ended is not None:
                build.interrupt(INTERRUPT_GRACE_S)
                return ended
            self.stopping.wait(POLL_S)
        return "built" if build.poll() == 0 else "failed"

    def _record(self, before: set[str], drv: str | None) -> None:
        """Record the store paths this build added, and those of the closures of its derivation
        and output that other runs of this home recorded (this run uses them too: cleaning
        those runs leaves them, and the last run holding them removes them)."""
        ours: set[str] = set()
        used: set[str] = set()
        if drv is not None:
            with contextlib.suppress(FlakebotError):
                closure = self.nix.closure(drv)
                drvs = [path for path in closure if path.endswith(".drv")]
                outputs = self.nix.outputs(drvs)
                ours |= {*closure, *outputs}
                ours |= {path + ".lock" for path in outputs} | {path + ".chroot" for path in drvs}
                built = [path for path in self.nix.outputs([drv]) if Path(path).exists()]
                used = {*closure, *(path for out in built for path in self.nix.closure(out))}
        for flake, extra_args in ((self.job.flake, self.job.extra_args), (self.job.standin, [])):
            with contextlib.suppress(FlakebotError):  # the store copies of both flakes
                ours.add(self.nix.source_path(flake, extra_args))
        added = {str(STORE / name) for name in _store_names() - before}
        held = {
            item.path
            for other in all_runs(Path(self.job.home))
            if other.run_id != self.job.run_id
            for item in other.items("store_path")
        }
        for path in sorted((added & ours) | (used & held)):
            self.record.add("store_path", path, candidate_id=self.job.candidate_id)


def _store_names() -> set[str]:
    try:
        return set(os.listdir(STORE))
    except FileNotFoundError:
        return set()


def main(argv: list[str] | None = None) -> int:
    """The runner: detach (the launcher says who the runner is and exits), build, record."""
    job = PrebuildJob.model_validate_json(Path((argv or sys.argv[1:])[0]).read_text())
    child = os.fork()
    if child:
        print(child, start_time(child), flush=True)
        os._exit(0)
    runner = Runner(job)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: runner.stopping.set())
    os.dup2(os.open(os.devnull, os.O_RDWR), 1)  # the launcher's pipe: its reader has what it needs
    private_umask()
    configure_logging("info", "json")  # to stderr: runner.log beside the export
    bind_context(run_id=job.run_id, candidate=job.candidate_id, actor="prebuild")
    directory = Path(job.directory)
    me = os.getpid()
    runner.record.add(  # the directory itself was recorded by whoever made it
        "prebuild",
        directory / "runner.log",
        candidate_id=job.candidate_id,
        pid=me,
        started=start_time(me),
    )
    status = runner.run()
    if directory.is_dir():  # not yet cleaned away
        write_private(directory / "status.json", status.model_dump_json(indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
