"""The `flakebot` command line.

Every command prints a readable result on a terminal and, with `--json`, the same as JSON on
stdout. Logs go to stderr. A FlakebotError becomes a message and a hint, never a traceback.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from flakebot import __version__
from flakebot.doctor import CHECK_NAMES, CheckName, Doctor, DoctorReport
from flakebot.errors import ConfigError, FlakebotError
from flakebot.logs import configure_logging
from flakebot.settings import Settings
from messages import PROTOCOL_VERSION, json_schema

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


def _settings() -> Settings:
    settings = Settings.from_env()
    secrets = [settings.groq_api_key.get_secret_value()] if settings.groq_api_key else []
    configure_logging(settings.log_level, settings.log_format, secrets=secrets)
    return settings


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


@app.command()
def doctor(
    as_json: JsonFlag = False,
    check: Annotated[
        list[str] | None,
        typer.Option("--check", help=f"Run only these checks: {', '.join(CHECK_NAMES)}."),
    ] = None,
) -> None:
    """Check that cargo, clippy, Nix, bubblewrap, the crate registry and Ray work here."""
    settings = _settings()
    only = _check_names(check) if check else CHECK_NAMES
    if as_json:
        report = Doctor(settings).run(only)
    else:
        with err.status("checking cargo, Nix, bubblewrap, the registry and Ray..."):
            report = Doctor(settings).run(only)
    if as_json:
        payload = {"healthy": report.healthy, "checks": report.model_dump(mode="json")["checks"]}
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
    else:
        _print_report(report)
    if not report.healthy:
        raise typer.Exit(1)


def _check_names(names: list[str]) -> tuple[CheckName, ...]:
    chosen: list[CheckName] = []
    for name in names:
        match = [known for known in CHECK_NAMES if known == name]
        if not match:
            raise ConfigError(
                f"unknown check {name!r}", hint=f"choose from {', '.join(CHECK_NAMES)}"
            )
        chosen.extend(match)
    return tuple(chosen)


def _print_report(report: DoctorReport) -> None:
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    table.add_column("check")
    table.add_column("status")
    table.add_column("detail", overflow="fold")
    marks = {"ok": "[green]ok[/]", "warn": "[yellow]warn[/]", "fail": "[red]FAIL[/]"}
    for check in report.checks:
        detail = escape(check.detail)
        if check.hint is not None:
            detail += f"\n[dim]fix: {escape(check.hint)}[/]"
        table.add_row(check.name, marks[check.status], detail)
    out.print(table)
    if report.healthy:
        out.print("[green]Everything Flakebot needs is here.[/]")
    else:
        failed = [check.name for check in report.checks if check.status == "fail"]
        out.print(f"[red]Missing or broken: {', '.join(failed)}.[/] Follow the hints above.")


@app.command()
def schema() -> None:
    """Print the JSON Schema of every protocol message (one discriminated union)."""
    sys.stdout.write(json.dumps(json_schema(), indent=2) + "\n")


def main() -> None:
    """Console-script entry point: run the app and turn our errors into readable messages."""
    try:
        app()
    except FlakebotError as exc:
        err.print(f"[red]error:[/] {escape(exc.message)}")
        if exc.hint:
            err.print(f"[dim]hint:[/] {escape(exc.hint)}")
        sys.exit(2)


if __name__ == "__main__":
    main()
