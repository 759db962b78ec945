"""The `flakebot` command line.

Every command prints a readable result on a terminal and, with `--json`, the same as JSON on
stdout. Logs go to stderr. A FlakebotError becomes a message and a hint, never a traceback.
Commands live in the modules of this package, one per area; this module holds the app and what
they share.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape

from flakebot import __version__
from flakebot.errors import FlakebotError, MachineNotReady
from flakebot.home import ensure_home
from flakebot.logs import configure_logging
from flakebot.settings import Settings
from messages import PROTOCOL_VERSION

app = typer.Typer(
    name="flakebot",
    help="Build, test and deploy the tools an agent asks for: Rust crates, Nix flakes, Ray.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False)

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


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Flakebot: agents ask for a tool; Flakebot builds, proves and deploys it."""


def main() -> None:
    """Console-script entry point: run the app and turn our errors into readable messages."""
    try:
        app()
    except FlakebotError as exc:
        err.print(f"[red]error:[/] {escape(exc.message)}")
        if exc.hint:
            err.print(f"[dim]hint:[/] {escape(exc.hint)}")
        sys.exit(2)


# The commands register themselves on `app` when their modules are imported.
from flakebot.cli import coding, crates, deploying, forks, running, system  # noqa: E402

__all__ = ["app", "coding", "crates", "deploying", "forks", "main", "running", "system"]
