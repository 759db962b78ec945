"""The transports of `flakebot mcp`: stdio (the client starts the server) or Streamable HTTP.

Over stdio, stdout is the protocol's: the SDK points fd 1 at stderr while it serves, so nothing a
child process (Ray, Nix, a sandbox) prints can corrupt the stream, and Flakebot's own logs and
Ray's driver messages go to stderr and the log file.

Over HTTP anyone who reaches the port could build and run tools as this user, and a loopback port
is reachable by every user of the machine. So the server binds the loopback unless told otherwise,
with the SDK's DNS-rebinding checks on, and every request must carry `Authorization: Bearer
<token>`: the token is FLAKEBOT_HOME/mcp-token (made on first use, mode 0600, kept so a client's
configuration stays valid), or the file `--token-file` names. `--no-auth` drops the check, on the
loopback only.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import secrets
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from mcp.server.stdio import stdio_server
from mcp.server.transport_security import TransportSecuritySettings

from flakebot.errors import ConfigError
from flakebot.home import write_private
from flakebot.mcp_server.server import FlakebotMCP

LOOPBACK = "127.0.0.1"
HTTP_PATH = "/mcp"
TOKEN_FILE = "mcp-token"
MIN_TOKEN_CHARS = 16


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def http_token(path: Path, create: bool) -> str:
    """The bearer token in `path`; made (random, 0600) if there is none and `create` says so."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        if not create:
            raise ConfigError(
                f"no token file {path}", hint="write a token of 16 or more characters into it"
            ) from None
        write_private(path, secrets.token_urlsafe(32) + "\n")
        return http_token(path, create=False)
    except OSError as exc:
        raise ConfigError(f"cannot read the token file {path}: {exc.strerror}") from None
    with os.fdopen(fd, encoding="utf-8") as handle:
        if os.fstat(handle.fileno()).st_mode & 0o077:
            raise ConfigError(
                f"the token file {path} can be read by others",
                hint=f"chmod 600 {path}, and make a new token if others may have read it",
            )
        token = handle.read().strip()
    if len(token) < MIN_TOKEN_CHARS or any(char.isspace() for char in token):
        raise ConfigError(
            f"the token in {path} is not usable: it must be {MIN_TOKEN_CHARS} or more characters "
            "without spaces",
            hint=f"remove {path} to have a new one made",
        )
    return token


@dataclass
class BearerAuth:
    """ASGI middleware: HTTP requests without `Authorization: Bearer <token>` get 401."""

    app: Any
    token: str

    def allowed(self, headers: list[tuple[bytes, bytes]]) -> bool:
        given = [value for name, value in headers if name.lower() == b"authorization"]
        if len(given) != 1:
            return False
        scheme, _, credential = given[0].partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(
            credential.strip(), self.token.encode()
        )

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self.allowed(scope.get("headers", [])):
            await self.app(scope, receive, send)
            return
        body = json.dumps(
            {
                "error": "invalid_token",
                "error_description": "this Flakebot MCP server needs 'Authorization: Bearer "
                "<token>', the token being the contents of its token file",
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b'Bearer realm="flakebot", error="invalid_token"'),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


async def serve_stdio(app: FlakebotMCP) -> None:
    app.default_sigterm = True
    server = app.server()
    async with stdio_server() as (read_stream, write_stream):
        await server.run(
            read_stream,
            write_stream,
            server.create_initialization_options(app.notification_options()),
        )


def rebinding_checks(host: str) -> TransportSecuritySettings | None:
    """On a loopback address, requests must name a loopback host (and a browser's page, a
    loopback origin): a web page cannot reach the server through a name it resolves to the
    loopback (DNS rebinding). The SDK does this for 127.0.0.1, localhost and ::1 only, not for
    127.0.0.2 and the rest of 127/8."""
    if not is_loopback(host):
        return None
    named = f"[{host}]" if ":" in host else host
    hosts = sorted({named, "127.0.0.1", "localhost", "[::1]"})
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[f"{name}:*" for name in hosts],
        allowed_origins=[f"http://{name}:*" for name in hosts],
    )


@dataclass(frozen=True)
class HttpOptions:
    host: str = LOOPBACK
    port: int = 8765
    token_file: Path | None = None  # None: FLAKEBOT_HOME/mcp-token
    auth: bool = True


async def serve_http(app: FlakebotMCP, options: HttpOptions) -> None:
    import uvicorn  # only the HTTP transport needs it

    host, port = options.host, options.port
    if not options.auth and not is_loopback(host):
        raise ConfigError(
            f"--no-auth serves only on the loopback, not on {host}",
            hint="drop --no-auth: clients then send the token file's token",
        )
    server = app.server()
    asgi: Any = server.streamable_http_app(
        streamable_http_path=HTTP_PATH, host=host, transport_security=rebinding_checks(host)
    )
    guarded = "without authentication"
    if options.auth:
        token_file = options.token_file or app.settings.home / TOKEN_FILE
        asgi = BearerAuth(asgi, http_token(token_file, create=options.token_file is None))
        guarded = f"bearer token in {token_file}"
        if not is_loopback(host):
            print(
                f"flakebot mcp: serving on {host} over plain HTTP: the token crosses the network "
                "unencrypted; put a TLS proxy in front of it",
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
        f"flakebot mcp: listening on http://{shown}:{bound}{HTTP_PATH} ({guarded})",
        file=sys.stderr,
        flush=True,
    )
    config = uvicorn.Config(asgi, log_level="warning", lifespan="on")
    await uvicorn.Server(config).serve(sockets=[listening])


def serve(app: FlakebotMCP, transport: str, http: HttpOptions | None = None) -> None:
    try:
        if transport == "http":
            anyio.run(serve_http, app, http or HttpOptions())
        else:
            anyio.run(serve_stdio, app)
    finally:
        app.close()
