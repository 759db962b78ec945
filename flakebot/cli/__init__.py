"""The `flakebot` command line.

Every command prints a readable result on a terminal and, with `--json`, the same as JSON on
stdout. Logs go to stderr. Any error becomes `error: ...` and `hint: ...` on stderr and a documented
exit code, never a traceback: a FlakebotError as its message, anything else as an internal error
whose traceback goes to a crash log under FLAKEBOT_HOME/crashes (`--debug` prints it instead).
Commands live in the modules of this package, one per area; this module holds the app and what
they share.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape

from flakebot import __version__
from flakebot.errors import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    FlakebotError,
    MachineNotReady,
    exit_code,
)
from flakebot.home import ensure_home, private_umask, write_private
from flakebot.logs import configure_logging
from flakebot.redact import redact
from flakebot.settings import Settings
from flakebot.shown import printable, visible
from messages import PROTOCOL_VERSION

app = typer.Typer(
    name="flakebot",
    help="Build, test and deploy the tools an agent asks for: Rust crates, Nix flakes, Ray.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


class _Console(Console):
    """A console that shows what others wrote (compiler messages, a model's summary, a tool's
    help) without obeying it: control characters in strings become visible escapes."""

    def print(self, *objects: Any, **kwargs: Any) -> None:
        safe = [visible(item) if isinstance(item, str) else item for item in objects]
        super().print(*safe, **kwargs)


out = _Console(highlight=False, soft_wrap=True)
err = _Console(stderr=True, highlight=False, soft_wrap=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
RegistryOption = Annotated[
    str | None,
    typer.Option(
        "--registry",
        help="local, local:DIR, crates-io or crates-io:URL (default: FLAKEBOT_REGISTRY).",
    ),
]


def load_settings() -> Settings:
    """Settings from the environment, with logging configured and FLAKEBOT_HOME made private."""
    settings = Settings.from_env()
    secrets = [settings.groq_api_key.get_secret_value()] if settings.groq_api_key else []
    configure_logging(settings.log_level, settings.log_format, secrets=secrets)
    try:
        ensure_home(settings.home)
    except OSError as exc:
        raise MachineNotReady(
            f"FLAKEBOT_HOME {settings.home} cannot be created: {exc.strerror}",
            hint="set FLAKEBOT_HOME to a directory you can write",
        ) from None
    return settings


def print_json(payload: object) -> None:
    """Write `payload` (pydantic models included) as indented JSON on stdout."""

    def plain(value: object) -> object:
        if isinstance(value, BaseModel):
            return value.model_dump(mode="json")
        if isinstance(value, list):
            return [plain(item) for item in value]
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        return value

    sys.stdout.write(json.dumps(plain(payload), indent=2) + "\n")


def _version(value: bool) -> None:
    if value:
        out.print(f"flakebot {__version__} (protocol v{PROTOCOL_VERSION})")
        raise typer.Exit()


_debug = {"on": False}
interrupted = {"hint": ""}  # what a command interrupted by Ctrl-C tells the user to do next


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="On an error, print the whole traceback.")
    ] = False,
) -> None:
    """Flakebot: agents ask for a tool; Flakebot builds, proves and deploys it.

    Exit codes: 0 done; 1 a negative answer (tests red, doctor unhealthy, something not cleaned);
    2 bad usage or input; 3 the work failed (a run, a fork, a deploy); 4 this machine lacks
    something Flakebot needs; 70 an internal error (a crash log is written); 130 interrupted.
    """
    _debug["on"] = debug or os.environ.get("FLAKEBOT_LOG_LEVEL", "").strip().lower() == "debug"


MAX_MESSAGE_LINES = 20


def report_error(error: FlakebotError) -> None:
    """An error as the user sees it: `error: ...` (details indented, bounded) and `hint: ...`."""
    lines = printable(error.message).strip().splitlines() or [type(error).__name__]
    err.print(f"[red]error:[/] {escape(lines[0])}")
    shown = lines[1:MAX_MESSAGE_LINES]
    for line in shown:
        err.print(f"  {escape(line)}", highlight=False)
    if len(lines) > MAX_MESSAGE_LINES:
        err.print(f"  [dim]... {len(lines) - MAX_MESSAGE_LINES} more lines[/]")
    if error.hint:
        err.print(f"[dim]hint:[/] {escape(printable(error.hint))}")


def report_crash(error: BaseException) -> None:
    """An unexpected exception: one line, and the traceback in a crash log (or here, --debug)."""
    trace = redact("".join(traceback.format_exception(error)))
    first = printable(redact(str(error)).strip().splitlines()[0] if str(error).strip() else "")
    err.print(f"[red]error:[/] internal error: {escape(type(error).__name__)}: {escape(first)}")
    if _debug["on"]:
        err.print(escape(trace), highlight=False)
        return
    log_path = _crash_log(trace)
    where = f"the traceback is in {log_path}" if log_path else "rerun with --debug to see it"
    err.print(f"[dim]hint:[/] this is a bug in Flakebot; {where} (--debug prints it)")


def _crash_log(trace: str) -> Path | None:
    name = time.strftime("crash-%Y%m%d-%H%M%S-") + f"{os.getpid()}.log"
    for directory in (_crash_dir(), Path(tempfile.gettempdir())):
        if directory is None:
            continue
        try:
            write_private(directory / name, trace)
        except OSError:
            continue
        return directory / name
    return None


def _crash_dir() -> Path | None:
    try:
        return Settings.from_env().home / "crashes"
    except FlakebotError:
        return None


def main() -> None:
    """Console-script entry point: every error becomes a message, a hint and an exit code."""
    private_umask()
    try:
        code = app(standalone_mode=False)
    except typer.TyperException as exc:  # usage errors: typer prints them as the user expects
        exc.show()  # type: ignore[attr-defined]
        sys.exit(getattr(exc, "exit_code", 2))
    except FlakebotError as exc:
        if _debug["on"]:
            err.print(escape(redact("".join(traceback.format_exception(exc)))), highlight=False)
        report_error(exc)
        sys.exit(exit_code(exc))
    except (KeyboardInterrupt, typer.Abort):
        code = EXIT_INTERRUPTED
    except Exception as exc:
        if type(exc).__name__ != "Abort":  # Ctrl-C, as the command-line parser reports it
            report_crash(exc)
            sys.exit(EXIT_INTERNAL)
        code = EXIT_INTERRUPTED
    if code == EXIT_INTERRUPTED:  # typer returns it for Ctrl-C in a command
        err.print("[red]error:[/] interrupted")
        if interrupted["hint"]:
            err.print(f"[dim]hint:[/] {escape(interrupted['hint'])}")
    sys.exit(code if isinstance(code, int) else 0)


# The commands register themselves on `app` when their modules are imported.
from flakebot.cli import (  # noqa: E402
    batching,
    benching,
    coding,
    crates,
    deploying,
    forks,
    running,
    serving,
    status,
    system,
)

__all__ = [
    "app",
    "batching",
    "benching",
    "coding",
    "crates",
    "deploying",
    "forks",
    "main",
    "running",
    "serving",
    "status",
    "system",
]
