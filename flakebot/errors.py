"""Flakebot's exceptions.

Errors that a user or the machine causes carry a ``hint``: what to do about it. The CLI prints the
message and the hint, never a traceback, and exits with the code of the error's family (see
``exit_code``). Errors a model causes (bad JSON, an edit that does not compile) are not exceptions
that end a run: they are recorded and fed back to the model. Our own bugs raise whatever Python
raises; the CLI reports them as internal errors with a crash log. Every message and hint has its
secrets masked (flakebot.redact) when the error is made, so no key reaches a terminal or a journal.

A run has one failure type end to end: whatever goes wrong in any role becomes a ``step_failed``
message (the step, the reason, the evidence), the supervisor records it and cleans up, and the
caller gets ``RunFailed`` carrying that message and the journal's path.

    FlakebotError                 base; message + hint                              exit 3
    ├── ConfigError               a setting, environment variable or CLI argument is wrong   2
    │   └── RunBusy               the run is in progress in another process
    ├── SpecError                 a tool spec or message file does not validate              2
    ├── MachineNotReady           something this machine needs is missing or unusable        4
    │   └── ToolMissing           an external program (cargo, nix, bwrap...) is not installed
    ├── CommandFailed             an external program ran and failed (exit code, output tail)
    │   └── CommandTimedOut       ...or did not finish within its time limit
    ├── ManifestError             a crate's Cargo.toml is missing, not TOML, or has no name/version
    ├── RegistryUnavailable       crates.io could not be reached or kept failing
    ├── CrateNotFound             crates.io has no crate of that name
    ├── ForkError                 a candidate cannot be forked into a workspace that builds here
    │   └── UnsafePath            a fork's path goes through a symlink or names a special file
    ├── BundleError               a git bundle is malformed or incomplete
    ├── DeployError               nix build failed, or a deployed service did not come up
    ├── ModelError                a model could not give a usable answer
    │   ├── ModelUnavailable      the endpoint failed, refused, or may not be called (tests)
    │   └── ModelReplyInvalid     replies kept failing validation (each one is fed back first)
    ├── BudgetExceeded            a run's token, call, time or money bound is reached
    ├── StepTimedOut              a role did not answer within its step's deadline
    ├── RoleLost                  the process running a role died (an actor or its node)
    └── RunFailed                 a run ended without a tool: carries the step_failed message
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from flakebot.redact import redact

if TYPE_CHECKING:
    from messages import StepFailed

EXIT_USAGE = 2
EXIT_FAILED = 3
EXIT_MACHINE = 4
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130


class FlakebotError(Exception):
    """Base of every error Flakebot raises on purpose."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        message = redact(message)
        hint = None if hint is None else redact(hint)
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if self.hint is None else f"{self.message}\n  hint: {self.hint}"

    def __reduce__(self) -> tuple[object, ...]:
        # Picklable whatever the subclass's constructor takes (errors cross Ray's processes).
        return (_rebuild, (type(self), self.message, dict(self.__dict__)))


def _rebuild(cls: type[FlakebotError], message: str, state: dict[str, object]) -> FlakebotError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


class ConfigError(FlakebotError):
    """A setting, environment variable or CLI argument is wrong."""


class RunBusy(ConfigError):
    """The run is in progress in another process (resume it once that process has ended)."""


class SpecError(FlakebotError):
    """A tool spec or message file does not validate."""


class MachineNotReady(FlakebotError):
    """Something this machine needs (a program, the registry, a writable home) is missing."""


class ToolMissing(MachineNotReady):
    """An external program that Flakebot needs is not installed."""

    def __init__(self, program: str, *, hint: str) -> None:
        super().__init__(f"{program} is not installed or not on PATH", hint=hint)
        self.program = program


class CommandFailed(FlakebotError):
    """An external program exited with an error."""

    def __init__(
        self,
        argv: list[str],
        returncode: int | None,
        output_tail: str,
        *,
        hint: str | None = None,
    ) -> None:
        shown = " ".join(argv[:6]) + (" ..." if len(argv) > 6 else "")
        status = "timed out" if returncode is None else f"exited with {returncode}"
        message = f"`{shown}` {status}"
        if output_tail.strip():
            message += ":\n" + output_tail.rstrip()
        super().__init__(message, hint=hint)
        self.argv = argv
        self.returncode = returncode
        self.output_tail = output_tail


class CommandTimedOut(CommandFailed):
    """An external program did not finish within its time limit and was killed."""

    def __init__(self, argv: list[str], seconds: float, output_tail: str) -> None:
        super().__init__(argv, None, output_tail, hint=f"it was killed after {seconds:g} s")
        self.seconds = seconds


class ManifestError(FlakebotError):
    """A crate's Cargo.toml is missing, is not TOML, or lacks a name and version."""


class RegistryUnavailable(FlakebotError):
    """crates.io could not be reached or kept failing."""


class CrateNotFound(FlakebotError):
    """crates.io has no crate of that name."""


class ForkError(FlakebotError):
    """A candidate cannot be forked into a workspace that builds here."""


class BundleError(FlakebotError):
    """A bundle is malformed, or its objects do not make up the refs it names."""


class ModelError(FlakebotError):
    """A model could not give a usable answer."""


class ModelUnavailable(ModelError):
    """The model endpoint failed or refused, or real models may not be called (under test)."""


class ModelReplyInvalid(ModelError):
    """The model's replies kept failing validation; every raw reply is kept."""

    def __init__(self, message: str, *, replies: list[str], hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.replies = replies


class BudgetExceeded(FlakebotError):
    """A bound of the run (tokens, model calls, seconds, money) is reached."""

    def __init__(self, bound: str, message: str) -> None:
        super().__init__(message)
        self.bound = bound


class DeployError(FlakebotError):
    """`nix build` failed, or a deployed service did not start or answer its probes."""

    def __init__(self, message: str, *, log_tail: str, hint: str | None = None) -> None:
        full = f"{message}:\n{log_tail.rstrip()}" if log_tail.strip() else message
        super().__init__(full, hint=hint)
        self.log_tail = log_tail


class StepTimedOut(FlakebotError):
    """A role did not answer within its step's deadline (it is then ended)."""

    def __init__(self, what: str, seconds: float) -> None:
        super().__init__(f"{what} did not finish within {seconds:g} s")
        self.seconds = seconds


class RoleLost(FlakebotError):
    """The process running a role died: its actor was killed, crashed, or its node went away."""


class RunFailed(FlakebotError):
    """A run ended without a tool; `failure` says which step gave up, why, with what evidence."""

    def __init__(self, failure: StepFailed, *, journal: Path | None = None) -> None:
        where = f" (candidate {failure.candidate_id})" if failure.candidate_id else ""
        first_line = failure.reason.strip().splitlines()[0] if failure.reason.strip() else ""
        super().__init__(
            f"run {failure.run_id} failed in the {failure.step} step{where}: {first_line}",
            hint=None if journal is None else f"the run's history is in {journal}",
        )
        self.failure = failure
        self.journal = journal


def exit_code(error: BaseException) -> int:
    """The CLI's exit code for an error: usage 2, failed work 3, machine 4, internal 70."""
    if isinstance(error, ConfigError | SpecError):
        return EXIT_USAGE
    if isinstance(error, MachineNotReady):
        return EXIT_MACHINE
    if isinstance(error, FlakebotError):
        return EXIT_FAILED
    if isinstance(error, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return EXIT_INTERNAL
