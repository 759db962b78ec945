"""`flakebot mcp --transport http`: the real server in a process of its own, on the loopback, for
clients holding its bearer token only; and the token file's rules."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from flakebot.errors import ConfigError
from flakebot.mcp_server.serving import TOKEN_FILE, BearerAuth, http_token
from tests.conftest import FLAKEBOT

LISTENING = re.compile(r"flakebot mcp: listening on (http://127\.0\.0\.\d+:(\d+)/mcp) \((.*)\)")
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "probe", "version": "0"},
    },
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream"}


@contextmanager
def http_server(home: Path, *extra: str) -> Iterator[tuple[str, int, str]]:
    """`flakebot mcp --transport http --port 0 EXTRA...`; yields its URL, port and what it says
    guards it, once it listens."""
    process = subprocess.Popen(
        [str(FLAKEBOT), "mcp", "--transport", "http", "--port", "0", *extra],
        env={**os.environ, "FLAKEBOT_HOME": str(home)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        found = LISTENING.fullmatch(line.strip())
        assert found, line
        yield found[1], int(found[2]), found[3]
    finally:
        process.terminate()
        process.wait(timeout=20)
        if process.stderr is not None:
            process.stderr.close()


def tool_names(url: str, token: str | None, mode: str = "auto") -> list[str]:
    """The tools the server lists to the SDK's client; in the handshake era (mode 'legacy') it
    must also announce that it tells of changes to them."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}

    async def session() -> list[str]:
        async with (
            httpx2.AsyncClient(headers=headers) as http,
            Client(streamable_http_client(url, http_client=http), mode=mode) as client,
        ):
            if mode == "legacy":
                capabilities = client.server_capabilities
                assert capabilities.tools is not None and capabilities.tools.list_changed
                assert capabilities.resources is not None and capabilities.resources.list_changed
            return [tool.name for tool in (await client.list_tools()).tools]

    return anyio.run(session)


def listeners(port: int) -> set[str]:
    """The IPv4 addresses listening on `port`, as /proc/net/tcp writes them."""
    rows = [row.split() for row in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    return {row[1] for row in rows if row[3] == "0A" and row[1].endswith(f":{port:04X}")}


def test_the_http_transport_serves_token_holders_on_the_loopback_only(home: Path) -> None:
    with http_server(home) as (url, port, guarded):
        token_file = home / TOKEN_FILE
        assert guarded == f"bearer token in {token_file}"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        assert len(token) >= 32
        assert listeners(port) == {f"0100007F:{port:04X}"}  # 127.0.0.1, not every address

        for headers in (
            {},
            {"Authorization": "Bearer not-the-token-at-all"},
            {"Authorization": f"Basic {token}"},
            {"Authorization": f"Bearer {token[:-1]}"},
        ):
            refused = httpx.post(url, json=INITIALIZE, headers={**MCP_HEADERS, **headers})
            assert refused.status_code == 401, headers
            assert refused.headers["www-authenticate"].startswith("Bearer")
            assert "token file" in refused.json()["error_description"]
            assert token not in refused.text
        with pytest.raises(ExceptionGroup) as unheard:  # the SDK's client, refused
            tool_names(url, None)
        assert unheard.group_contains(MCPError, match="error response")
        assert tool_names(url, token) == ["build_tool", "clean_tool"]
        assert tool_names(url, token, mode="legacy") == ["build_tool", "clean_tool"]

    with http_server(home) as (url, _, _):  # a restart keeps the token: clients stay configured
        assert (home / TOKEN_FILE).read_text().strip() == token
        assert tool_names(url, token) == ["build_tool", "clean_tool"]


def test_no_auth_is_for_the_loopback_only(home: Path) -> None:
    with http_server(home, "--no-auth") as (url, _, guarded):
        assert guarded == "without authentication"
        assert tool_names(url, None) == ["build_tool", "clean_tool"]
    assert not (home / TOKEN_FILE).exists()

    # any loopback address, not only 127.0.0.1: a page whose name resolves to it is refused
    with http_server(home, "--no-auth", "--host", "127.0.0.2") as (url, port, _):
        assert url == f"http://127.0.0.2:{port}/mcp"
        for host in ("evil.example", f"evil.example:{port}"):
            foreign = httpx.post(url, json=INITIALIZE, headers={**MCP_HEADERS, "Host": host})
            assert foreign.status_code == 421, (host, foreign.text)
        page = httpx.post(
            url, json=INITIALIZE, headers={**MCP_HEADERS, "Origin": "http://evil.example"}
        )
        assert page.status_code == 403, page.text
        assert tool_names(url, None) == ["build_tool", "clean_tool"]

    refused = subprocess.run(
        [str(FLAKEBOT), "mcp", "--transport", "http", "--no-auth", "--host", "0.0.0.0"],
        env={**os.environ, "FLAKEBOT_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2
    assert "--no-auth serves only on the loopback, not on 0.0.0.0" in refused.stderr


def test_a_given_token_file_is_used_and_a_taken_port_is_a_clear_error(
    home: Path, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("a-token-of-the-users-own-choosing\n")
    token_file.chmod(0o600)
    with http_server(home, "--token-file", str(token_file)) as (url, port, guarded):
        assert guarded == f"bearer token in {token_file}"
        assert tool_names(url, "a-token-of-the-users-own-choosing") == ["build_tool", "clean_tool"]
        assert not (home / TOKEN_FILE).exists()
        taken = subprocess.run(
            [str(FLAKEBOT), "mcp", "--transport", "http", "--port", str(port)],
            env={**os.environ, "FLAKEBOT_HOME": str(home)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert taken.returncode == 2
        assert f"cannot listen on 127.0.0.1:{port}" in taken.stderr
        assert "Traceback" not in taken.stderr


def test_the_token_file_must_be_private_usable_and_not_a_link(tmp_path: Path) -> None:
    made = tmp_path / "home" / "mcp-token"
    token = http_token(made, create=True)
    assert http_token(made, create=True) == token  # made once, then read
    assert stat.S_IMODE(made.stat().st_mode) == 0o600

    with pytest.raises(ConfigError, match="no token file"):
        http_token(tmp_path / "missing", create=False)

    shared = tmp_path / "shared"
    shared.write_text("x" * 40)
    shared.chmod(0o640)
    with pytest.raises(ConfigError, match="can be read by others") as caught:
        http_token(shared, create=False)
    assert "x" * 40 not in str(caught.value)

    short = tmp_path / "short"
    short.write_text("abc\n")
    short.chmod(0o600)
    with pytest.raises(ConfigError, match="not usable"):
        http_token(short, create=False)

    link = tmp_path / "link"
    link.symlink_to(made)
    with pytest.raises(ConfigError, match="cannot read the token file"):
        http_token(link, create=False)


def test_bearer_auth_takes_exactly_one_matching_bearer_header() -> None:
    auth = BearerAuth(app=None, token="s3cret-token-value")
    assert auth.allowed([(b"authorization", b"Bearer s3cret-token-value")])
    assert auth.allowed([(b"Authorization", b"bearer s3cret-token-value")])
    assert not auth.allowed([])
    assert not auth.allowed([(b"authorization", b"Bearer s3cret-token-valu")])
    assert not auth.allowed([(b"authorization", b"Basic s3cret-token-value")])
    assert not auth.allowed([(b"authorization", b"s3cret-token-value")])
    assert not auth.allowed(
        [
            (b"authorization", b"Bearer wrong"),
            (b"authorization", b"Bearer s3cret-token-value"),
        ]
    )
