"""`flakebot mcp`: Flakebot as an MCP server for agents (flakebot.mcp_server)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from flakebot.cli import RegistryOption, app, load_settings
from flakebot.cli.coding import ModelOption
from flakebot.mcp_server.own_tools import MAX_CANDIDATES
from flakebot.mcp_server.server import FlakebotMCP
from flakebot.mcp_server.serving import LOOPBACK, HttpOptions, serve


@app.command("mcp")
def mcp_command(
    transport: Annotated[
        Literal["stdio", "http"],
        typer.Option("--transport", help="stdio (the client starts the server) or http."),
    ] = "stdio",
    model: ModelOption = None,
    candidates: Annotated[
        int,
        typer.Option(
            "--candidates", min=1, max=MAX_CANDIDATES, help="Default candidates per build."
        ),
    ] = 3,
    registry: RegistryOption = None,
    address: Annotated[str | None, typer.Option("--address", help="Join this Ray cluster.")] = None,
    host: Annotated[
        str, typer.Option("--host", help="HTTP: the address to bind (default: loopback).")
    ] = LOOPBACK,
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="HTTP: the port (0: any free one).")
    ] = 8765,
    token_file: Annotated[
        Path | None,
        typer.Option(
            "--token-file",
            help="HTTP: the file holding the bearer token clients must send (default: "
            "FLAKEBOT_HOME/mcp-token, made on first use).",
        ),
    ] = None,
    no_auth: Annotated[
        bool,
        typer.Option("--no-auth", help="HTTP: take requests without a token (loopback only)."),
    ] = False,
    spec_dir: Annotated[
        Path | None,
        typer.Option(
            "--spec-dir",
            help="build_tool reads spec files from this directory and below only "
            "(default: the working directory).",
        ),
    ] = None,
) -> None:
    """Serve MCP: build_tool, clean_tool, and every deployed tool of this home as a tool.

    Register it with a client as the command `flakebot mcp --model MODEL` (stdio), or as the URL
    it prints with `--transport http` and the header `Authorization: Bearer TOKEN`. Tools built
    here, or by `flakebot run` in the same FLAKEBOT_HOME, are listed and callable; each call runs
    in the tool sandbox."""
    settings = load_settings()
    server = FlakebotMCP(
        settings=settings,
        model=model,
        registry=registry,
        address=address,
        candidates=candidates,
        spec_dir=(spec_dir or Path.cwd()).resolve(),
    )
    http = HttpOptions(host=host, port=port, token_file=token_file, auth=not no_auth)
    serve(server, transport, http)
