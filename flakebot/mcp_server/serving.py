"""The transports of `flakebot mcp`: stdio (the client starts the server) or Streamable HTTP.

Over stdio, stdout is the protocol's: the SDK points fd 1 at stderr while it serves, so nothing a
child process (Ray, Nix, a sandbox) prints can corrupt the stream, and Flakebot's own logs and
Ray's driver messages go to stderr and the log file. Over HTTP the server binds the loopback unless
told otherwise, with the SDK's DNS-rebinding checks on; it has no authentication of its own, so
anyone who can reach the port can build and run tools as this user.
"""

from __future__ import annotations

import ipaddress
import socket
import sys

import anyio
from mcp.server.stdio import stdio_server

from flakebot.errors import ConfigError
from flakebot.mcp_server.server import FlakebotMCP

LOOPBACK = "127.0.0.1"
HTTP_PATH = "/mcp"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def serve_stdio(app: FlakebotMCP) -> None:
    app.default_sigterm = True
    server = app.server()
    async with stdio_server() as (read_stream, write_stream):
        await server.run(
            read_stream,
            write_stream,
            server.create_initialization_options(app.notification_options()),
        )


async def serve_http(app: FlakebotMCP, host: str = LOOPBACK, port: int = 8765) -> None:
    import uvicorn  # only the HTTP transport needs it

    server = app.server()
    asgi = server.streamable_http_app(streamable_http_path=HTTP_PATH, host=host)
    if not is_loopback(host):
        print(
            f"flakebot mcp: serving on {host}:{port} without authentication: anyone who reaches "
            "it can build and run tools as this user",
            file=sys.stderr,
        )
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listening = socket.socket(family, socket.SOCK_STREAM)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listening.bind((host, port))
        listening.listen(128)
    except OSError as exc:
        listening.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror}",
            hint="pick another --port (0: any free one)",
        ) from None
    bound = listening.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    print(
        f"flakebot mcp: listening on http://{shown}:{bound}{HTTP_PATH}", file=sys.stderr, flush=True
    )
    config = uvicorn.Config(asgi, log_level="warning", lifespan="on")
    await uvicorn.Server(config).serve(sockets=[listening])


def serve(app: FlakebotMCP, transport: str, host: str = LOOPBACK, port: int = 8765) -> None:
    try:
        if transport == "http":
            anyio.run(serve_http, app, host, port)
        else:
            anyio.run(serve_stdio, app)
    finally:
        app.close()
