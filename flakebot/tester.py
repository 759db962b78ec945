"""The tester: cargo build, cargo test and cargo clippy in the sandbox, read into a TestReport.

Clippy lints during the build: `cargo build` runs with clippy's driver as the workspace's rustc
wrapper (what `cargo clippy` itself does, over `cargo check`), so the fork's own crates are
compiled and linted in one pass and the dependencies are compiled once, by plain rustc. A separate
`cargo clippy` would check every dependency again. The build's `clippy::` diagnostics make the
clippy stage; when clippy errors alone stopped the build (a deny-by-default lint), the crate is
built again without the wrapper (only the crate itself recompiles), so the tests still run and
the report reads as `cargo build`, `cargo test`, `cargo clippy` would. When the build fails, test
is skipped (its output would only repeat the build's errors). Clippy is skipped when the toolchain
has no clippy. Every stage has a time limit; one that runs over is `timed_out` and its whole
process tree is killed.

All attempts and candidates of one crate version share one target dir, so a fix rebuilds
incrementally. Cargo names a path package's artifacts without its directory and trusts mtimes, so
two forks of one crate would each see the other's binaries as fresh: the tester holds a lock on the
target dir while it runs, and when the fork differs from the one that built there last, it touches
the fork's files so cargo rebuilds the crate itself (its dependencies stay cached). The lock and
the "last fork" marker live beside the target dir, not in it: the sandbox writes the target dir,
so anything Flakebot kept there could be a planted symlink by the next time it is written.
"""

from __future__ import annotations

import fcntl
import functools
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import structlog

from flakebot.cargo_output import parse_diagnostics, parse_test_results
from flakebot.errors import CommandTimedOut
from flakebot.home import write_private
from flakebot.proc import Completed, tail
from flakebot.sandbox import Sandbox
from flakebot.scout import candidate_rank
from messages import Diagnostic, StageResult, TestReport
from messages.coding import Stage, StageStatus

log = structlog.get_logger()


COMMANDS: dict[Stage, list[str]] = {
    "build": ["cargo", "build", "--message-format=json"],
    "test": ["cargo", "test", "--no-fail-fast", "--message-format=json"],
}
CLIPPY_ARGS_SEPARATOR = "__CLIPPY_HACKERY__"  # how cargo-clippy hands its arguments to the driver
LINT_NAME = re.compile(r"clippy::[a-z][a-z0-9_]*")
LINTED_DURING_BUILD = "linted by clippy-driver during the build (the workspace's rustc wrapper)"


LATER_CANDIDATE_NICE = 19


def clippy_environment(sandbox: Sandbox, lint_warn: Sequence[str]) -> dict[str, str]:
    """What `cargo clippy -- -W <lint>...` sets for cargo, here for `cargo build`. Only lint
    names pass (they come from an earlier build's output): nothing else reaches the driver."""
    args = [arg for lint in lint_warn if LINT_NAME.fullmatch(lint) for arg in ("-W", lint)]
    return {
        "RUSTC_WORKSPACE_WRAPPER": str(sandbox.toolchain.bin_dir / "clippy-driver"),
        "CLIPPY_ARGS": "".join(f"{arg}{CLIPPY_ARGS_SEPARATOR}" for arg in args),
    }


def niceness(candidate_id: str) -> int:
    """The scout's first candidate builds at normal priority, the others at a lower one: on a
    small machine the likely winner is then not slowed by its rivals (a nice-10 process gets
    about a tenth of a core a nice-0 one wants), and they still use what it leaves idle."""
    return 0 if candidate_rank(candidate_id) in (1, None) else LATER_CANDIDATE_NICE


@dataclass(frozen=True)
class StageLimits:
    """Seconds each stage may take."""

    build: float = 1_800.0
    test: float = 1_800.0


class Tester:
    """Builds and tests one fork at a time in the sandbox."""

    __test__ = False  # not a pytest test class

    def __init__(self, sandbox: Sandbox, *, limits: StageLimits | None = None) -> None:
        self.sandbox = sandbox
        self.limits = limits or StageLimits()

    def test(
        self,
        workdir: Path,
        target_dir: Path,
        *,
        run_id: str,
        candidate_id: str,
        attempt: int,
        commit: str | None = None,
        stages: Sequence[Stage] = ("build", "test", "clippy"),
        lint_warn: Sequence[str] = (),
    ) -> TestReport:
        """Run `stages` (all three by default) on the work tree at `workdir` and report.

        `lint_warn`: clippy lints reported as warnings rather than errors (those the crate broke
        before any edit: see flakebot.coder)."""
        bound = log.bind(candidate=candidate_id, attempt=attempt)
        with _TargetLock(target_dir, workdir):
            results = self._run_stages(
                workdir, target_dir, stages, lint_warn, nice=niceness(candidate_id)
            )
        report = TestReport(
            run_id=run_id,
            candidate_id=candidate_id,
            attempt=attempt,
            commit=commit,
            stages=results,
            sandboxed=self.sandbox.enabled,
        )
        bound.info(
            "tests_passed" if report.green else "tests_failed",
            stages={stage.stage: stage.status for stage in results},
            errors=len(report.errors),
            failed_tests=len(report.failed_tests),
        )
        return report

    def _run_stages(
        self,
        workdir: Path,
        target_dir: Path,
        stages: Sequence[Stage],
        lint_warn: Sequence[str],
        *,
        nice: int = 0,
    ) -> list[StageResult]:
        wanted = set(stages)
        run = functools.partial(self._stage, workdir=workdir, target_dir=target_dir, nice=nice)
        clippy: StageResult | None = None
        if "clippy" not in wanted:
            build = run("build", COMMANDS["build"])
        elif not self.sandbox.toolchain.has_clippy:
            build = run("build", COMMANDS["build"])
            clippy = _skipped("clippy", "clippy is not installed in this toolchain")
        else:
            linted = run(
                "build", COMMANDS["build"], env=clippy_environment(self.sandbox, lint_warn)
            )
            build, clippy = _split_lints(linted)
            if build.status == "failed" and clippy.status == "failed" and not _errors(build):
                again = run("build", COMMANDS["build"])  # only lints stopped it: build plainly
                build = again.model_copy(
                    update={"duration_s": round(linted.duration_s + again.duration_s, 3)}
                )
        results = [build]
        if "test" in wanted:
            if build.status == "passed":
                results.append(run("test", COMMANDS["test"]))
            else:
                results.append(_skipped("test", "the build failed"))
        return results + ([clippy] if clippy is not None else [])

    def _stage(
        self,
        stage: Stage,
        command: list[str],
        *,
        workdir: Path,
        target_dir: Path,
        nice: int = 0,
        env: dict[str, str] | None = None,
    ) -> StageResult:
        limit = getattr(self.limits, stage)
        try:
            done = self.sandbox.run(
                command, workdir=workdir, target_dir=target_dir, timeout=limit, nice=nice, env=env
            )
        except CommandTimedOut as exc:
            return StageResult(
                stage=stage,
                status="timed_out",
                duration_s=exc.seconds,
                log_tail=f"killed after {exc.seconds:g} s\n{exc.output_tail}",
            )
        return _result(stage, done)


def _errors(result: StageResult) -> list[Diagnostic]:
    return [found for found in result.diagnostics if found.level == "error"]


def _split_lints(linted: StageResult) -> tuple[StageResult, StageResult]:
    """A build run under clippy's driver, as the build's result and clippy's."""
    lints = [d for d in linted.diagnostics if (d.code or "").startswith("clippy::")]
    rest = [d for d in linted.diagnostics if not (d.code or "").startswith("clippy::")]
    build = linted.model_copy(update={"diagnostics": rest})
    clippy = StageResult(
        stage="clippy",
        status="failed" if any(d.level == "error" for d in lints) else "passed",
        duration_s=0.0,  # inside the build's time
        exit_code=linted.exit_code,
        diagnostics=lints,
        log_tail=LINTED_DURING_BUILD,
    )
    if linted.status == "timed_out":
        clippy = _skipped("clippy", "the build timed out")
    elif linted.status != "passed" and not lints:
        clippy = _skipped("clippy", "the build failed")
    return build, clippy


def _result(stage: Stage, done: Completed) -> StageResult:
    found = parse_diagnostics(done.stdout)
    tests = parse_test_results(done.stdout, done.stderr) if stage == "test" else []
    status: StageStatus = "passed" if done.ok else "failed"
    if done.ok and any(test.status == "failed" for test in tests):
        status = "failed"
    if not done.ok and not found and not tests and "error" not in done.stderr:
        status = "error"
    return StageResult(
        stage=stage,
        status=status,
        duration_s=round(done.seconds, 3),
        exit_code=done.returncode,
        diagnostics=found,
        tests=tests,
        log_tail=tail(done.stderr, 3_000),
    )


class _TargetLock:
    """Exclusive use of a shared target dir; touches the fork if another one built there last."""

    def __init__(self, target_dir: Path, workdir: Path) -> None:
        self.target_dir = target_dir
        self.workdir = workdir.resolve()
        self._handle: TextIO | None = None

    def __enter__(self) -> None:
        self.target_dir.mkdir(parents=True, exist_ok=True)
        state = self.target_dir.parent / ".flakebot-targets"
        state.mkdir(exist_ok=True)
        name = self.target_dir.name
        lock = os.open(state / f"{name}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        self._handle = os.fdopen(lock, "a+")
        fcntl.flock(self._handle, fcntl.LOCK_EX)
        marker = state / f"{name}.last-fork"
        last = marker.read_text() if marker.is_file() and not marker.is_symlink() else ""
        if last != str(self.workdir):
            now = time.time()
            for path in self.workdir.rglob("*"):
                if ".git" in path.parts or path.is_symlink() or not path.is_file():
                    continue
                os.utime(path, (now, now), follow_symlinks=False)
            write_private(marker, str(self.workdir))

    def __exit__(self, *exc_info: object) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()


def _skipped(stage: Stage, why: str) -> StageResult:
    return StageResult(stage=stage, status="skipped", duration_s=0.0, log_tail=why)
