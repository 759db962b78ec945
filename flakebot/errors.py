"""Flakebot's exceptions.

Errors that a user or the machine causes carry a ``hint``: what to do about it. The CLI prints the
message and the hint, never a traceback. Errors a model causes (bad JSON, an edit that does not
compile) are not exceptions that end a run: they are recorded and fed back to the model. Our own
bugs raise whatever Python raises.

    FlakebotError                 base; message + hint
    ├── ConfigError               a setting, environment variable or CLI argument is wrong
    ├── SpecError                 a tool spec or message file does not validate
    ├── ToolMissing               an external program (cargo, nix, bwrap...) is not installed
    ├── CommandFailed             an external program ran and failed (exit code, output tail)
    │   └── CommandTimedOut       ...or did not finish within its time limit
    ├── ManifestError             a crate's Cargo.toml is missing, not TOML, or has no name/version
    ├── RegistryUnavailable       crates.io could not be reached or kept failing
    ├── CrateNotFound             crates.io has no crate of that name
    ├── ForkError                 a candidate cannot be forked into a workspace that builds here
    ├── BundleError               a git bundle is malformed or incomplete
    ├── DeployError               nix build failed, or a deployed service did not come up
    ├── ModelError                a model could not give a usable answer
    │   ├── ModelUnavailable      the endpoint failed, refused, or may not be called (tests)
    │   └── ModelReplyInvalid     replies kept failing validation (each one is fed back first)
    └── BudgetExceeded            a run's token, call, time or money bound is reached
"""

from __future__ import annotations


class FlakebotError(Exception):
    """Base of every error Flakebot raises on purpose."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if self.hint is None else f"{self.message}\n  hint: {self.hint}"


class ConfigError(FlakebotError):
    """A setting, environment variable or CLI argument is wrong."""


class SpecError(FlakebotError):
    """A tool spec or message file does not validate."""


class ToolMissing(FlakebotError):
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
