"""Running external programs: argv lists only (never a shell), a time limit, the whole group killed.

Every program Flakebot runs (cargo, nix, bwrap, git helpers) goes through `run`. It starts the
child in its own session so that a timeout kills every process the child started; errors carry
only the tail of the output.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from flakebot.errors import CommandFailed, CommandTimedOut, ToolMissing

log = structlog.get_logger()


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
