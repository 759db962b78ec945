"""Crate commands: `flakebot search`, `flakebot index` and `flakebot registry serve`."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from flakebot.cli import JsonFlag, RegistryOption, app, load_settings, out, print_json
from flakebot.crates.index import CrateIndex, index_path
from flakebot.crates.mirror import MirrorServer
from flakebot.errors import ConfigError
from flakebot.scout import Scout
from flakebot.settings import parse_registry
from messages import CrateCandidate, CrateQuery


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
    settings = load_settings()
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
        print_json(payload)
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
            "popularity": parts.popularity,
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
    settings = load_settings()
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
        print_json(payload)
        return
    out.print(f"Indexed {stats.crates} crates from {directory} in {stats.seconds:.2f} s.")
    for directory_name, reason in stats.skipped:
        out.print(f"[yellow]skipped[/] {escape(directory_name)}: {escape(reason)}")


registry_app = typer.Typer(
    help="Registries: serve a directory registry as a crates.io-protocol registry.",
    no_args_is_help=True,
)
app.add_typer(registry_app, name="registry")


@registry_app.command("serve")
def registry_serve(
    directory: Annotated[
        Path, typer.Argument(help="A directory registry: Debian's, or `cargo vendor` output.")
    ],
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="0: any free port.")] = 0,
    bind: Annotated[
        str, typer.Option("--bind", help="The address to listen on (loopback by default).")
    ] = "127.0.0.1",
    url: Annotated[
        str | None,
        typer.Option("--url", help="The URL clients reach it by (default http://BIND:PORT)."),
    ] = None,
    yank: Annotated[
        list[str] | None,
        typer.Option("--yank", help="Serve NAME@VERSION as yanked (repeatable)."),
    ] = None,
) -> None:
    """Serve DIR as a crates.io-protocol registry: sparse index, .crate downloads with real
    checksums, and the search and crate API. Use it with --registry crates-io:URL."""
    settings = load_settings()
    if not directory.is_dir():
        raise ConfigError(
            f"{directory} is not a directory",
            hint="pass a directory of unpacked crates, e.g. /usr/share/cargo/registry",
        )
    for item in yank or []:
        name, at, version = item.partition("@")
        if not at or not name or not version:
            raise ConfigError(
                f"--yank {item!r} is not NAME@VERSION", hint="e.g. --yank hexyl@0.8.0"
            )
    if url is not None and not url.startswith(("http://", "https://")):
        raise ConfigError(f"--url {url!r} must start with http:// or https://")
    server = MirrorServer(
        directory, settings.home, bind=bind, port=port, public_url=url, yanked=yank or []
    )
    crates = server.mirror.count()
    out.print(f"Serving {crates} crates from {directory} at {server.url}", highlight=False)
    out.print(f"  use it with: --registry crates-io:{server.url}")
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
