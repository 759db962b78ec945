"""The MCP server's parts without Ray: the catalog of live tools, argument checks, the tool
sandbox around a call (real bubblewrap), and the handlers through the SDK's own in-process client
(list, call, resources, list-changed in both protocol eras). tests/test_mcp_stdio.py drives the
real `flakebot mcp` over stdio end to end."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from flakebot.errors import ConfigError
from flakebot.manifest import mcp_tool, parameters_schema
from flakebot.mcp_server.calls import (
    MAX_INPUT_BYTES,
    MAX_OUTPUT_BYTES,
    ToolCaller,
    schema_problems,
)
from flakebot.mcp_server.catalog import Catalog, signature
from flakebot.mcp_server.server import FlakebotMCP
from flakebot.settings import Settings
from flakebot.tool_sandbox import scratch_dir
from messages import ServiceSettings, ToolManifest
from tests.samples import SAMPLES, SPEC

MANIFEST = SAMPLES["tool_manifest"]
assert isinstance(MANIFEST, ToolManifest)
CLI_SCHEMA = mcp_tool(SPEC)


def deploy(home: Path, run_id: str, name: str = "hexview", **update: Any) -> ToolManifest:
    """A run's manifest in the home, as a run leaves it (what the catalog reads)."""
    manifest = MANIFEST.model_copy(
        update={"run_id": run_id, "name": name, "mcp_tool": CLI_SCHEMA, **update}
    )
    directory = home / "runs" / run_id
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "manifest.json").write_text(manifest.model_dump_json())
    return manifest


def everywhere(_: str) -> bool:
    return True


def test_a_renamed_tool_never_shadows_a_tool_named_like_it(home: Path) -> None:
    """Two runs named hexview become hexview-aaaaaa and hexview-bbbbbb; a third spec named
    hexview-aaaaaa was silently replaced by one of them."""
    deploy(home, "run-20261206-100000-aaaaaa")
    deploy(home, "run-20261206-100001-bbbbbb")
    deploy(home, "run-20261206-100002-cccccc", name="hexview-aaaaaa")
    catalog = Catalog.load(home, everywhere)
    assert len(catalog.names()) == 3
    assert catalog.get("hexview-aaaaaa").run_id == "run-20261206-100002-cccccc"  # type: ignore[union-attr]
    assert catalog.get("hexview-run-20261206-100000-aaaaaa") is not None
    assert catalog.get("hexview-bbbbbb").run_id == "run-20261206-100001-bbbbbb"  # type: ignore[union-attr]


def test_the_catalog_lists_live_runs_and_names_duplicates_apart(home: Path) -> None:
    deploy(home, "run-20261206-100000-aaaaaa")
    deploy(home, "run-20261206-100001-bbbbbb")
    deploy(home, "run-20261206-100002-cccccc", name="csvstat")
    deploy(home, "run-20261206-100003-dddddd", name="build_tool")  # may not shadow ours
    (home / "runs" / "run-20261206-100004-eeeeee").mkdir()  # no manifest: still running
    broken = home / "runs" / "run-20261206-100005-ffffff"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")

    catalog = Catalog.load(home, everywhere)

    assert catalog.names() == ["build_tool-dddddd", "csvstat", "hexview-aaaaaa", "hexview-bbbbbb"]
    tool = catalog.get("hexview-bbbbbb")
    assert tool is not None and tool.run_id == "run-20261206-100001-bbbbbb"
    assert catalog.by_uri(tool.uri) == tool
    assert tool.uri == "flakebot://tools/hexview-bbbbbb/manifest.md"


def test_a_run_whose_store_path_is_gone_is_not_listed(home: Path) -> None:
    deploy(home, "run-20261206-100000-aaaaaa")
    assert Catalog.load(home, lambda path: False).names() == []
    assert Catalog.load(home).names() == []  # the sample's store path does not exist here


def test_the_signature_changes_when_a_manifest_appears_or_goes(home: Path) -> None:
    before = signature(home)
    deploy(home, "run-20261206-100000-aaaaaa")
    after = signature(home)
    assert after != before and after[0][0] == "run-20261206-100000-aaaaaa"


def test_schema_problems_name_the_field_and_the_fault() -> None:
    schema = parameters_schema(SPEC)
    assert schema_problems(schema, {"args": ["-n", "4"], "stdin": "x"}) == []
    problems = schema_problems(schema, {"args": "-n 4", "colour": True})
    assert any(p.startswith("args: '-n 4' is not of type 'array'") for p in problems), problems
    assert any("'colour' was unexpected" in p for p in problems), problems
    assert schema_problems(schema, {}) == ["(the arguments): 'args' is a required property"]


def test_a_service_is_called_with_an_http_request() -> None:
    spec = SPEC.model_copy(
        update={"tool_kind": "service", "service": ServiceSettings(args=["--port", "{port}"])}
    )
    schema = parameters_schema(spec)
    assert schema["required"] == ["path"]
    assert schema_problems(schema, {"path": "/health", "method": "GET"}) == []
    assert schema_problems(schema, {"path": "no-slash"}) != []


@pytest.mark.parametrize("path", ["../escape.txt", "/tmp/absolute.txt", "a/../../up.txt"])
def test_input_files_outside_the_call_dir_are_refused_before_anything_is_written(
    tmp_path: Path, path: str
) -> None:
    refused = pytest.raises(ConfigError, match="not a path inside the call's directory")
    with refused, scratch_dir({"fine.txt": "ok", path: "x"}):
        pass
    assert not Path("/tmp/absolute.txt").exists()


@pytest.mark.parametrize(
    ("files", "fault"),
    [
        ({"a": "1", "./a": "2"}, "are the same file"),
        ({"a": "1", "a/b": "2"}, "is also a directory of 'a/b'"),
        ({"d/e/f": "1", "d": "2"}, "'d' is also a directory of 'd/e/f'"),
        ({"x" * 300: "1"}, "could not be written: File name too long"),
        ({"d/" * 3000 + "f": "1"}, "could not be written"),
    ],
)
def test_input_files_that_cannot_all_be_written_are_a_clear_error(
    files: dict[str, str], fault: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(fault)), scratch_dir(files):
        pass


class NoNix:
    """A deployed 'tool' that is the system's shell: its closure is /usr, which the sandbox
    shows anyway, so no Nix store path is needed to test the confinement itself."""

    def closure(self, store_path: str) -> list[str]:
        return []


def shell_tool(home: Path) -> Any:
    deploy(home, "run-20261206-100000-aaaaaa", name="shell", bin_path="/bin/sh")
    tool = Catalog.load(home, everywhere).get("shell")
    assert tool is not None
    return tool


def test_a_call_writes_only_its_own_scratch_directory(home: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"  # the host's: not even visible in the sandbox
    in_usr = Path(f"/usr/flakebot-escape-{tmp_path.name}")  # visible, read-only
    caller = ToolCaller(NoNix())  # type: ignore[arg-type]
    script = (
        f"echo hi > {outside}; echo hi > {in_usr}; echo hi > {home}/escape;"
        " echo ok > inside.txt && cat inside.txt && cat data/in.txt"
    )
    result = caller.call(
        shell_tool(home), {"args": ["-c", script], "files": {"data/in.txt": "given"}}
    )
    assert result.structured_content is not None
    assert result.structured_content["stdout"] == "ok\ngiven", result
    stderr = result.structured_content["stderr"]
    assert "outside.txt: Directory nonexistent" in stderr, stderr
    assert f"{in_usr}: Read-only file system" in stderr, stderr
    assert not outside.exists() and not in_usr.exists() and not (home / "escape").exists()


def test_a_call_with_bad_arguments_is_a_tool_error_naming_them(home: Path) -> None:
    caller = ToolCaller(NoNix())  # type: ignore[arg-type]
    result = caller.call(shell_tool(home), {"args": ["-c", "true"], "files": {"../up": "x"}})
    assert result.is_error
    text = result.content[0].text  # type: ignore[union-attr]
    assert "not a path inside the call's directory" in text
    big = "x" * (MAX_INPUT_BYTES // 2 + 1)
    result = caller.call(shell_tool(home), {"args": [], "stdin": big, "files": {"b": big}})
    assert result.is_error and "at most" in result.content[0].text  # type: ignore[union-attr]
    result = caller.call(shell_tool(home), {"args": [1, 2]})
    assert result.is_error and "args/0: 1 is not of type 'string'" in result.content[0].text  # type: ignore[union-attr]
    result = caller.call(shell_tool(home), {"args": ["-c", "a\x00b"]})
    assert result.is_error and "args/1: contains a NUL byte" in result.content[0].text  # type: ignore[union-attr]
    result = caller.call(shell_tool(home), {"args": [], "files": {"a": "1", "a/b": "2"}})
    assert result.is_error and "is also a directory of 'a/b'" in result.content[0].text  # type: ignore[union-attr]


def test_a_call_that_prints_without_end_is_stopped_at_the_output_bound(home: Path) -> None:
    caller = ToolCaller(NoNix())  # type: ignore[arg-type]
    result = caller.call(shell_tool(home), {"args": ["-c", "echo begin; exec cat /dev/zero"]})
    assert result.is_error
    text = result.content[0].text  # type: ignore[union-attr]
    assert f"printed more than {MAX_OUTPUT_BYTES} bytes and was stopped" in text
    assert "began:\nbegin" in text


def serve(settings: Settings, **options: Any) -> FlakebotMCP:
    app = FlakebotMCP(settings=settings, present=everywhere, watch_interval_s=0.1, **options)
    app._caller = ToolCaller(NoNix())  # type: ignore[arg-type]
    return app


def run(test: Callable[[], Any]) -> None:
    anyio.run(test)


def test_listing_calling_and_reading_through_the_sdk_client(home: Path, settings: Settings) -> None:
    app = serve(settings)
    deploy(home, "run-20261206-100000-aaaaaa", name="shell", bin_path="/bin/sh")

    async def session() -> None:
        async with Client(app.server()) as client:
            tools = {tool.name: tool for tool in (await client.list_tools()).tools}
            assert set(tools) == {"build_tool", "clean_tool", "shell"}
            assert tools["shell"].input_schema["required"] == ["args"]
            assert tools["build_tool"].input_schema["required"] == ["request"]
            done = await client.call_tool("shell", {"args": ["-c", "printf 46"]})
            assert not done.is_error and done.structured_content == {
                "stdout": "46",
                "stderr": "",
                "exit_code": 0,
            }
            failed = await client.call_tool("shell", {"args": ["-c", "exit 3"]})
            assert failed.is_error and failed.structured_content["exit_code"] == 3  # type: ignore[index]
            bad = await client.call_tool("shell", {"argv": []})
            assert bad.is_error and "'args' is a required property" in bad.content[0].text  # type: ignore[union-attr]
            with pytest.raises(MCPError, match="no tool named 'nope'") as raised:
                await client.call_tool("nope", {})
            assert raised.value.code == types.INVALID_PARAMS
            resources = (await client.list_resources()).resources
            assert [str(r.uri) for r in resources] == ["flakebot://tools/shell/manifest.md"]
            page = await client.read_resource("flakebot://tools/shell/manifest.md")
            assert "hexyl" in page.contents[0].text  # type: ignore[union-attr]
            missing = await client.call_tool("clean_tool", {"name": "gone"})
            assert missing.is_error and "no tool named 'gone'" in missing.content[0].text  # type: ignore[union-attr]
            unplanned = await client.call_tool("build_tool", {"request": "  "})
            assert unplanned.is_error  # a blank request: named, nothing started

    run(session)


def test_a_tool_is_cleaned_once_its_calls_under_way_end_and_takes_no_new_ones(
    home: Path, settings: Settings
) -> None:
    app = serve(settings)
    deploy(home, "run-20261206-100000-aaaaaa", name="shell", bin_path="/bin/sh")
    ended: dict[str, Any] = {}

    async def session() -> None:
        async with Client(app.server()) as client, anyio.create_task_group() as group:

            async def call() -> None:
                done = await client.call_tool("shell", {"args": ["-c", "sleep 2; echo done"]})
                ended["call"] = anyio.current_time()
                assert not done.is_error and done.content[0].text == "done\n"  # type: ignore[union-attr]

            async def clean(name: str) -> None:
                ended[name] = anyio.current_time()
                result = await client.call_tool("clean_tool", {"name": "shell"})
                ended[name] = anyio.current_time()
                assert not result.is_error, result
                ended[f"{name} text"] = result.content[0].text  # type: ignore[union-attr]

            group.start_soon(call)
            await anyio.sleep(0.5)  # the call is under way
            group.start_soon(clean, "clean")
            await anyio.sleep(0.3)
            refused = await client.call_tool("shell", {"args": ["-c", "true"]})
            assert refused.is_error and "is being cleaned" in refused.content[0].text  # type: ignore[union-attr]
            group.start_soon(clean, "again")

    run(session)
    assert ended["clean"] >= ended["call"]  # the clean waited for the call
    assert str(ended["clean text"]).startswith("Cleaned shell")
    assert "was cleaned by another request" in str(ended["again text"])
    assert not (home / "runs" / "run-20261206-100000-aaaaaa").exists()


def test_build_tool_arguments_are_checked_before_any_run(home: Path, settings: Settings) -> None:
    app = serve(settings)

    async def session() -> None:
        async with Client(app.server()) as client:
            result = await client.call_tool("build_tool", {"request": "x", "candidates": 99})
            assert result.is_error
            assert "candidates: 99 is greater than the maximum of 8" in result.content[0].text  # type: ignore[union-attr]
            assert app._ray is None  # no cluster was started for it

    run(session)


def test_new_and_cleaned_runs_are_announced_on_listen_streams(
    home: Path, settings: Settings
) -> None:
    app = serve(settings)

    async def session() -> None:
        async with Client(app.server()) as client:
            assert [t.name for t in (await client.list_tools()).tools] == [
                "build_tool",
                "clean_tool",
            ]
            async with client.listen(tools_list_changed=True) as events:
                deploy(home, "run-20261206-100000-aaaaaa")  # another process deployed it
                with anyio.fail_after(10):
                    await events.__anext__()
                names = [tool.name for tool in (await client.list_tools()).tools]
                assert "hexview" in names
                manifest = home / "runs" / "run-20261206-100000-aaaaaa" / "manifest.json"
                manifest.unlink()  # cleaned by `flakebot clean`
                with anyio.fail_after(10):
                    await events.__anext__()
                assert "hexview" not in [tool.name for tool in (await client.list_tools()).tools]

    run(session)


def test_handshake_era_clients_get_list_changed_notifications(
    home: Path, settings: Settings
) -> None:
    app = serve(settings)
    seen: list[str] = []

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ServerNotification):
            seen.append(message.method)

    async def session() -> None:
        async with Client(app.server(), mode="legacy", message_handler=on_message) as client:
            await client.list_tools()
            deploy(home, "run-20261206-100000-aaaaaa")
            wanted = {"notifications/tools/list_changed", "notifications/resources/list_changed"}
            with anyio.fail_after(10):  # both, in either order (one is sent after the other)
                while not wanted <= set(seen):
                    await anyio.sleep(0.05)
            assert "hexview" in [tool.name for tool in (await client.list_tools()).tools]

    run(session)


def test_the_manifest_schema_is_what_the_server_lists(home: Path) -> None:
    manifest = deploy(home, "run-20261206-100000-aaaaaa")
    tool = Catalog.load(home, everywhere).get("hexview")
    assert tool is not None
    assert json.loads(json.dumps(manifest.mcp_tool["inputSchema"])) == parameters_schema(SPEC)


class Echo(BaseHTTPRequestHandler):
    """A deployed service's stand-in on the loopback: answers with what it was sent."""

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode()
        reply = f"{self.command} {self.path} {body}".encode()
        self.send_response(201 if self.command == "POST" else 200)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    do_GET = do_POST = _answer

    def log_message(self, *args: Any) -> None:
        pass


def test_a_service_tool_is_sent_the_request(home: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        spec = SPEC.model_copy(
            update={"tool_kind": "service", "service": ServiceSettings(args=["{port}"])}
        )
        deploy(home, "run-20261206-100000-aaaaaa", tool_kind="service", service_url=url,
               mcp_tool=mcp_tool(spec))  # fmt: skip
        tool = Catalog.load(home, everywhere).get("hexview")
        assert tool is not None
        caller = ToolCaller(NoNix())  # type: ignore[arg-type]
        sent = caller.call(tool, {"method": "POST", "path": "/items?x=1", "body": "hi"})
        assert sent.structured_content == {"status": 201, "body": "POST /items?x=1 hi"}
        assert not sent.is_error
        for path in ("/a\n", "/\x00", "/a\tb"):
            odd = caller.call(tool, {"path": path})
            assert odd.is_error and "- path: " in odd.content[0].text  # type: ignore[union-attr]
        wrong = caller.call(tool, {"args": ["--port", "1"]})
        assert wrong.is_error and "'path' is a required property" in wrong.content[0].text  # type: ignore[union-attr]
    finally:
        server.shutdown()
        server.server_close()
    down = caller.call(tool, {"path": "/"})
    assert down.is_error and "did not answer" in down.content[0].text  # type: ignore[union-attr]


def test_build_tool_reads_spec_files_from_its_spec_dir_only(
    tmp_path: Path, settings: Settings
) -> None:
    """A client could make the server (root) read any YAML or JSON file and quote it back in
    the spec's errors."""
    specs, elsewhere = tmp_path / "specs", tmp_path / "elsewhere"
    specs.mkdir()
    elsewhere.mkdir()
    secret = elsewhere / "config.yaml"
    secret.write_text("password: hunter2-s3cr3t: oops\n")
    inside = specs / "broken.yaml"
    inside.write_text("name: [unclosed\n")
    app = serve(settings, spec_dir=specs)

    async def session() -> None:
        async with Client(app.server(), mode="legacy") as client:
            for path in (secret, specs / ".." / "elsewhere" / "config.yaml"):
                refused = await client.call_tool("build_tool", {"request": str(path)})
                text = refused.content[0].text  # type: ignore[union-attr]
                assert refused.is_error and f"outside {specs}" in text, text
                assert "hunter2" not in text
            inside_error = await client.call_tool("build_tool", {"request": str(inside)})
            text = inside_error.content[0].text  # type: ignore[union-attr]
            assert inside_error.is_error and "is not valid YAML" in text, text  # read: invalid

    run(session)
