"""The `flakebot` command line.

Every command prints a readable result on a terminal and, with `--json`, the same as JSON on
stdout. Logs go to stderr. A FlakebotError becomes a message and a hint, never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from flakebot import __version__
from flakebot.crate_index import CrateIndex, index_path
from flakebot.doctor import CHECK_NAMES, CheckName, Doctor, DoctorReport
from flakebot.errors import ConfigError, FlakebotError
from flakebot.logs import configure_logging
from flakebot.scout import Scout
from flakebot.settings import Settings, parse_registry
from messages import PROTOCOL_VERSION, CrateCandidate, CrateQuery, json_schema

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


RegistryOption = Annotated[
    str | None,
    typer.Option(
        "--registry",
        help="local, local:DIR, crates-io or crates-io:URL (default: FLAKEBOT_REGISTRY).",
    ),
]


@app.command()
def search(
    words: Annotated[list[str], typer.Argument(help="What the crate should do, e.g. hex viewer.")],
    registry: RegistryOption = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=100, help="How many.")] = 10,
    bins_only: Annotated[
        bool, typer.Option("--bins-only", help="Only crates with a binary target.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Find crates to start a tool from, ranked, with the parts of each score."""
    settings = _settings()
    text = " ".join(words).strip()
    if not text:
        raise ConfigError("the search query is empty", hint="search with a few words: hex viewer")
    query = CrateQuery(
        run_id="cli-search",
        queries=[text],
        registry=parse_registry(registry) if registry else settings.registry,
        bins_only=bins_only,
        prefer_binary=bins_only,
        limit=limit,
    )
    scout = Scout(settings)
    try:
        candidates = asyncio.run(scout.scout(query))
    finally:
        scout.close()
    if as_json:
        payload = [candidate.model_dump(mode="json") for candidate in candidates]
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
        return
    if not candidates:
        out.print(f"No crate in {query.registry} matches {text!r}.")
        return
    _print_candidates(candidates)


def _print_candidates(candidates: list[CrateCandidate]) -> None:
    """Two lines a candidate: rank, crate, score and description; then binaries, licence, parts."""
    width = max(60, out.width)
    names = [f"{candidate.name} {candidate.version}" for candidate in candidates]
    name_width = max(len(name) for name in names)
    indent = " " * (4 + name_width + 2 + 4 + 2)
    for rank, (candidate, name) in enumerate(zip(candidates, names, strict=True), start=1):
        parts = candidate.score_parts
        shown = {
            "relevance": parts.relevance,
            "binary": parts.has_binary,
            "licence": parts.license,
            "resolves": parts.resolves,
            "downloads": parts.downloads,
            "recency": parts.recency,
        }
        head = f"{rank:>2}. {name:<{name_width}}  {candidate.score:.2f}  "
        room = max(10, width - len(head))
        description = candidate.description or "(no description)"
        if len(description) > room:
            description = description[: room - 1] + "…"
        out.print(f"[bold]{escape(head)}[/]{escape(description)}")
        details = [
            f"bins: {','.join(candidate.bin_names)}" if candidate.bin_names else "library only",
            candidate.license or "licence unknown",
            " ".join(f"{key} {value:.2f}" for key, value in shown.items() if value is not None),
        ]
        out.print(f"[dim]{indent}{escape(' · '.join(details))}[/]")


@app.command()
def index(registry: RegistryOption = None, as_json: JsonFlag = False) -> None:
    """Re-read every crate of a local registry into the search index."""
    settings = _settings()
    target = parse_registry(registry) if registry else settings.registry
    if target.source != "local":
        raise ConfigError(
            f"{target} is not a local registry; only local registries are indexed",
            hint="pass --registry local or local:DIR",
        )
    directory = Path(target.location)
    crate_index = CrateIndex(directory, index_path(settings.home, directory))
    try:
        stats = crate_index.refresh(force=True)
    finally:
        crate_index.close()
    if as_json:
        payload = {
            "registry": str(target),
            "crates": stats.crates,
            "skipped": [{"directory": d, "reason": r} for d, r in stats.skipped],
            "seconds": round(stats.seconds, 3),
        }
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
        return
    out.print(f"Indexed {stats.crates} crates from {directory} in {stats.seconds:.2f} s.")
    for directory_name, reason in stats.skipped:
        out.print(f"[yellow]skipped[/] {escape(directory_name)}: {escape(reason)}")


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
