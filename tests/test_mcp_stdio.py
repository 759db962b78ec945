"""`flakebot mcp` end to end, driven by the MCP SDK's own client over stdio as a desktop assistant
would start it: build the demo tool (real Ray, cargo, bubblewrap and Nix; the scripted model), see
it listed and announced, call it in its sandbox, read its manual, clean it; and cancel a build,
which stops the run and cleans what it made."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import mcp_types as types
import pytest
from mcp import Client, StdioServerParameters

from flakebot.journal import Journal
from flakebot.settings import Settings
from tests.conftest import FLAKEBOT

pytestmark = pytest.mark.slow
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SPEC = str(EXAMPLES / "hexview.yaml")
BUILD_S = 1200


@asynccontextmanager
async def flakebot_mcp(home: Path, *extra: str) -> AsyncIterator[Client]:
    params = StdioServerParameters(
        command=str(FLAKEBOT),
        args=[
            "mcp",
            "--model",
            f"scripted:{EXAMPLES / 'hexview-script.yaml'}",
            "--candidates",
            "1",
            *extra,
        ],
        env={**os.environ, "FLAKEBOT_HOME": str(home)},
    )
    async with Client(params, read_timeout_seconds=BUILD_S) as client:
        yield client


def text(result: types.CallToolResult) -> str:
    return "\n".join(part.text for part in result.content if isinstance(part, types.TextContent))


def test_build_list_call_and_clean_a_tool_over_stdio(home: Path, tmp_path: Path) -> None:
    progress: list[str] = []
    announced: list[object] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append(message or "")

    async def session() -> None:
        async with flakebot_mcp(home) as client:
            names = [tool.name for tool in (await client.list_tools()).tools]
            assert names == ["build_tool", "clean_tool"]

            async def listen() -> None:
                async with client.listen(tools_list_changed=True) as events:
                    async for event in events:
                        announced.append(event)

            async with anyio.create_task_group() as group:
                group.start_soon(listen)
                with anyio.fail_after(BUILD_S):
                    built = await client.call_tool(
                        "build_tool", {"request": SPEC}, progress_callback=on_progress
                    )
                assert not built.is_error, text(built)
                with anyio.fail_after(10):
                    while not announced:
                        await anyio.sleep(0.1)
                group.cancel_scope.cancel()

            assert built.structured_content is not None
            assert built.structured_content["tool"] == "hexview"
            assert progress[0].startswith("run run-") and progress[0].endswith("started")
            assert any(line.startswith("deploy") for line in progress), progress
            # the attempts inside the coder: the untouched fork fails its acceptance tests
            tried = [line for line in progress if line.startswith("test [c1-hexyl]: attempt")]
            assert tried[0].startswith("test [c1-hexyl]: attempt 0: build passed, test failed")
            assert tried[0].endswith("failing tests)"), tried
            assert tried[-1].startswith("test [c1-hexyl]: attempt 1: build passed, test passed")
            assert "# hexview" in text(built) or "hexview" in text(built).splitlines()[0]

            tools = {tool.name: tool for tool in (await client.list_tools()).tools}
            assert "hexview" in tools
            assert tools["hexview"].input_schema["required"] == ["args"]

            dumped = await client.call_tool(
                "hexview", {"args": ["--border", "none"], "stdin": "Flakebot"}
            )
            assert not dumped.is_error, text(dumped)
            assert "46 6c 61 6b 65 62 6f 74" in text(dumped)
            from_file = await client.call_tool(
                "hexview", {"args": ["--border", "none", "in.bin"], "files": {"in.bin": "hi"}}
            )
            assert "68 69" in text(from_file), text(from_file)

            wrong = await client.call_tool("hexview", {"args": "--border none"})
            assert wrong.is_error
            assert "args: '--border none' is not of type 'array'" in text(wrong)
            escape = tmp_path / "escaped.txt"
            for path in (str(escape), f"../../../../../..{escape}"):
                refused = await client.call_tool(
                    "hexview", {"args": ["x"], "files": {path: "owned"}}
                )
                assert refused.is_error
                assert "not a path inside the call's directory" in text(refused)
            assert not escape.exists()

            resources = [str(r.uri) for r in (await client.list_resources()).resources]
            assert resources == ["flakebot://tools/hexview/manifest.md"]
            manual = await client.read_resource(resources[0])
            page = manual.contents[0]
            assert isinstance(page, types.TextResourceContents)
            assert "46 6c 61 6b 65 62 6f 74" in page.text  # the worked example

            cleaned = await client.call_tool("clean_tool", {"name": "hexview"})
            assert not cleaned.is_error, text(cleaned)
            names = [tool.name for tool in (await client.list_tools()).tools]
            assert names == ["build_tool", "clean_tool"]
            assert (await client.list_resources()).resources == []

    anyio.run(session)
    assert not list((home / "runs").iterdir())  # the run's record went with it


def test_cancelling_a_build_stops_the_run_and_cleans_it(home: Path) -> None:
    progress: list[str] = []

    async def session() -> None:
        async with flakebot_mcp(home) as client:

            async def on_progress(done: float, total: float | None, message: str | None) -> None:
                progress.append(message or "")
                if "candidate_started" in (message or ""):  # its coder and tester are at work
                    scope.cancel()

            with anyio.CancelScope() as scope, anyio.fail_after(BUILD_S):
                await client.call_tool(
                    "build_tool", {"request": SPEC}, progress_callback=on_progress
                )
            assert scope.cancelled_caught, progress
            # the server goes on serving, and cleans the run it was building
            run_id = progress[0].split()[1]
            settings = Settings(home=home, registry=Settings.from_env().registry)
            with anyio.fail_after(120):
                while (home / "runs" / run_id).exists():
                    await anyio.sleep(0.5)
            names = [tool.name for tool in (await client.list_tools()).tools]
            assert names == ["build_tool", "clean_tool"]
            row = Journal(settings.journal_path).run(run_id)
            assert row is not None and row.state == "failed", row
            assert row.reason == "the run was cancelled by its caller"

    anyio.run(session)


def test_a_client_that_cancels_and_goes_away_still_gets_the_run_cleaned(home: Path) -> None:
    """The client ends the server 2-4 s after it leaves (SIGTERM, then SIGKILL to its process
    group), long before a clean is done: the run is finished by a process that outlives it."""
    progress: list[str] = []

    async def session() -> None:
        async with flakebot_mcp(home) as client:

            async def on_progress(done: float, total: float | None, message: str | None) -> None:
                progress.append(message or "")
                if "candidate_started" in (message or ""):
                    scope.cancel()

            with anyio.CancelScope() as scope, anyio.fail_after(BUILD_S):
                await client.call_tool(
                    "build_tool", {"request": SPEC}, progress_callback=on_progress
                )
            assert scope.cancelled_caught, progress
        # the client has closed the server's stdin and killed its process group by now

    anyio.run(session)
    run_id = progress[0].split()[1]
    run = home / "runs" / run_id
    deadline = time.monotonic() + 180
    while run.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    finisher_log = home / "logs" / "cancelled.log"
    log = finisher_log.read_text() if finisher_log.exists() else "(no finisher's log)"
    assert not run.exists(), log
    for kept in ("workspaces", "deployments", "gcroots"):
        assert not list((home / kept).glob(f"{run_id}*")), (kept, log)
    settings = Settings(home=home, registry=Settings.from_env().registry)
    row = Journal(settings.journal_path).run(run_id)
    assert row is not None and row.state == "failed", row
    assert row.reason == "the run was cancelled by its caller"
    assert '"event": "cancelled_run_cleaned"' in log and '"failures": []' in log, log


def test_the_server_says_what_is_wrong_with_a_request_it_cannot_plan(home: Path) -> None:
    async def session() -> None:
        params = StdioServerParameters(
            command=str(FLAKEBOT),
            args=["mcp"],
            env={**os.environ, "FLAKEBOT_HOME": str(home), "FLAKEBOT_MODEL": ""},
        )
        async with Client(params, read_timeout_seconds=60) as client:
            result = await client.call_tool("build_tool", {"request": "a hex viewer"})
            assert result.is_error
            assert "no model to plan a request in words" in text(result)

    anyio.run(session)
