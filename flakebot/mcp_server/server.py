"""Flakebot as an MCP server: an agent asks for a tool with `build_tool`, then calls it.

Tools:
- `build_tool(request, candidates?, timeout_s?)` runs the whole job through the actors (as
  `flakebot run` does) and returns the manifest: Markdown as text, the manifest as structured
  content. Each run event, and each test report a candidate's coder journals, goes to the caller
  as a progress notification. Cancelling the call (notifications/cancelled, or closing the
  connection) stops the run and cleans what it made (flakebot.cancelling: in a process that
  outlives this server, which a client may end right after).
- one tool per live deployed run of this FLAKEBOT_HOME (flakebot.mcp_server.catalog), with the
  manifest's input schema; calling it runs the binary in the tool sandbox (calls.py).
- `clean_tool(name)` cleans the run behind a tool, as `flakebot clean RUN` does.
Resources: each tool's Markdown manifest at flakebot://tools/<name>/manifest.md.

The tool list changes as runs are deployed and cleaned, by this server or any other process of the
home: a watcher polls the home's run records and tells clients (`notifications/tools/list_changed`
and `resources/list_changed` on handshake-era connections, `subscriptions/listen` streams on
2026-07-28 ones).
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import mcp_types as types
import structlog
from anyio.streams.memory import MemoryObjectSendStream
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import NotificationOptions, Server
from mcp.server.session import ServerSession
from mcp.server.subscriptions import (
    InMemorySubscriptionBus,
    ListenHandler,
    ResourcesListChanged,
    ToolsListChanged,
)
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from flakebot import __version__
from flakebot.cancelling import start_finisher
from flakebot.driver import Flakebot, new_run_id
from flakebot.errors import FlakebotError, RunFailed, SpecError
from flakebot.janitor import Janitor
from flakebot.journal import Entry, Journal
from flakebot.manifest import to_markdown
from flakebot.mcp_server.calls import (
    ToolCaller,
    input_schema,
    invalid_arguments,
    output_schema,
    schema_problems,
    tool_error,
)
from flakebot.mcp_server.catalog import Catalog, DeployedTool, signature
from flakebot.mcp_server.own_tools import (
    BUILD_TOOL,
    CLEAN_TOOL,
    ProtocolServer,
    attempt_line,
    progress_line,
    text_result,
)
from flakebot.nix import Nix
from flakebot.planner import looks_like_spec_file
from flakebot.settings import Settings
from flakebot.specs import load_spec
from messages import CleanupReport, CleanupRequest, RunEvent, TestReport, ToolManifest

log = structlog.get_logger()

WATCH_INTERVAL_S = 2.0
MAX_LEGACY_CONNECTIONS = 256
ATTEMPT_POLL_S = 1.0  # how often a build's journal is read for its candidates' test reports


@dataclass
class FlakebotMCP:
    """The server's state: the home's catalog of live tools and whom to tell when it changes."""

    settings: Settings
    model: str | None = None
    registry: str | None = None
    address: str | None = None
    candidates: int = 3
    watch_interval_s: float = WATCH_INTERVAL_S
    present: Callable[[str], bool] = os.path.exists  # is a store path still there
    # build_tool reads spec files from here and below only: a client may not make the server
    # (root) read any YAML or JSON file of the machine and show it in its errors
    spec_dir: Path = field(default_factory=lambda: Path.cwd().resolve())
    # stdio: the client ends the server with SIGTERM 2 s after closing its stdin, maybe while
    # Ray shuts down; Ray's own handler would print a stack trace to the client's log
    default_sigterm: bool = False
    catalog: Catalog = field(init=False)
    bus: InMemorySubscriptionBus = field(default_factory=InMemorySubscriptionBus)
    # handshake-era connections, each with a session to send on; a closed one is dropped when
    # a notification to it fails
    _sessions: dict[object, ServerSession] = field(default_factory=dict)
    _signature: tuple[tuple[str, int], ...] = ()
    _ray: Flakebot | None = None
    _connecting: anyio.Lock = field(default_factory=anyio.Lock)
    _caller: ToolCaller | None = None
    _journal: Journal | None = None
    _finishers: list[subprocess.Popen[bytes]] = field(default_factory=list)  # of cancelled runs
    _calls: dict[str, int] = field(default_factory=dict)  # run id: calls of its tool under way
    _cleaning: set[str] = field(default_factory=set)  # run ids clean_tool is cleaning

    def __post_init__(self) -> None:
        self.catalog = Catalog([])
        self.refresh()

    # --- the catalog and its listeners ------------------------------------------------------

    def refresh(self) -> bool:
        """Reload the catalog if the home's run records changed; True if the tools changed."""
        now = signature(self.settings.home)
        if now == self._signature:
            return False
        self._signature = now
        before = {name: tool.run_id for name, tool in self.catalog.tools.items()}
        self.catalog = Catalog.load(self.settings.home, self.present)
        after = {name: tool.run_id for name, tool in self.catalog.tools.items()}
        return before != after

    async def changed(self) -> None:
        """Tell every client that the tools (and their manifests) changed."""
        await self.bus.publish(ToolsListChanged())
        await self.bus.publish(ResourcesListChanged())
        for connection, session in list(self._sessions.items()):
            try:
                await session.send_tool_list_changed()
                await session.send_resource_list_changed()
            except Exception as exc:  # a closed connection: forget it
                log.debug("mcp_notify_failed", error=str(exc))
                self._sessions.pop(connection, None)

    async def _refresh_and_tell(self) -> None:
        if self.refresh():
            await self.changed()

    async def watch(self) -> None:
        """Poll the home for runs deployed or cleaned by anyone; tell clients when tools change."""
        while True:
            await anyio.sleep(self.watch_interval_s)
            self._finishers = [done for done in self._finishers if done.poll() is None]  # reaped
            try:
                await self._refresh_and_tell()
            except Exception as exc:  # a home being written to: try again next time
                log.warning("mcp_watch_failed", error=str(exc)[:300])

    def _seen(self, ctx: ServerRequestContext[Any]) -> None:
        """Handshake-era connections get list-changed notifications on their session."""
        if ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
            # A session is one request's view of its connection; its list-changed
            # notifications go on the connection's own channel, so any of them will do. The
            # SDK has no public handle on the connection to key them by.
            connection = getattr(ctx.session, "_connection", ctx.session)
            self._sessions.pop(connection, None)
            self._sessions[connection] = ctx.session  # the most recently heard from last
            while len(self._sessions) > MAX_LEGACY_CONNECTIONS:  # closed ones may not say so
                self._sessions.pop(next(iter(self._sessions)))

    # --- handlers ---------------------------------------------------------------------------

    async def list_tools(
        self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        self._seen(ctx)
        await self._refresh_and_tell()
        deployed = [
            types.Tool(
                name=tool.name,
                title=tool.manifest.name,
                description=f"{tool.manifest.summary} (built by Flakebot run {tool.run_id}; "
                f"manual: {tool.uri})",
                input_schema=input_schema(tool),
                output_schema=output_schema(tool),
                annotations=types.ToolAnnotations(open_world_hint=False),
            )
            for tool in sorted(self.catalog.tools.values(), key=lambda tool: tool.name)
        ]
        return types.ListToolsResult(tools=[BUILD_TOOL, CLEAN_TOOL, *deployed])

    async def call_tool(
        self, ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        self._seen(ctx)
        arguments = dict(params.arguments or {})
        if params.name == "build_tool":
            return await self.build_tool(ctx, arguments)
        if params.name == "clean_tool":
            return await self.clean_tool(arguments)
        self.refresh()
        tool = self.catalog.get(params.name)
        if tool is None:
            known = ", ".join(["build_tool", "clean_tool", *self.catalog.names()])
            raise MCPError(
                types.INVALID_PARAMS,
                f"no tool named {params.name!r} (it may have been cleaned); tools now: {known}",
            )
        if tool.run_id in self._cleaning:
            return tool_error(f"{tool.name} is being cleaned; build it again to use it")
        self._calls[tool.run_id] = self._calls.get(tool.run_id, 0) + 1
        try:
            return await anyio.to_thread.run_sync(self.caller().call, tool, arguments)
        finally:
            self._calls[tool.run_id] -= 1
            if not self._calls[tool.run_id]:
                del self._calls[tool.run_id]

    def caller(self) -> ToolCaller:
        if self._caller is None:
            self._caller = ToolCaller(Nix())
        return self._caller

    async def list_resources(
        self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        self._seen(ctx)
        await self._refresh_and_tell()
        return types.ListResourcesResult(
            resources=[
                types.Resource(
                    name=f"{tool.name} manifest",
                    uri=tool.uri,
                    description=f"How to use {tool.name}: {tool.manifest.summary}",
                    mime_type="text/markdown",
                )
                for tool in sorted(self.catalog.tools.values(), key=lambda tool: tool.name)
            ]
        )

    async def read_resource(
        self, ctx: ServerRequestContext[Any], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        self._seen(ctx)
        self.refresh()
        tool = self.catalog.by_uri(str(params.uri))
        if tool is None:
            raise MCPError(
                types.INVALID_PARAMS, f"no resource {params.uri}: its tool may have been cleaned"
            )
        return types.ReadResourceResult(
            contents=[
                types.TextResourceContents(
                    uri=tool.uri, mime_type="text/markdown", text=tool.markdown()
                )
            ]
        )

    # --- build_tool and clean_tool ----------------------------------------------------------

    def _bot(self, arguments: dict[str, Any]) -> Flakebot:
        return Flakebot(
            model=self.model,
            registry=self.registry,
            address=self.address,
            candidates=int(arguments.get("candidates", self.candidates)),
            timeout=arguments.get("timeout_s"),
            settings=self.settings,
        )

    async def build_tool(
        self, ctx: ServerRequestContext[Any], arguments: dict[str, Any]
    ) -> types.CallToolResult:
        problems = schema_problems(BUILD_TOOL.input_schema, arguments)
        if problems:
            return invalid_arguments("build_tool", problems)
        bot = self._bot(arguments)
        request: str = arguments["request"]
        if looks_like_spec_file(request):
            if not Path(request).resolve().is_relative_to(self.spec_dir):
                return tool_error(
                    f"{request} is outside {self.spec_dir}, where this server reads spec files: "
                    "put it there, or start the server with --spec-dir naming its directory"
                )
            try:  # a spec that does not validate is told at once, before a cluster is joined
                load_spec(Path(request), new_run_id())
            except SpecError as exc:
                return tool_error(exc.message + (f"\nhint: {exc.hint}" if exc.hint else ""))
        if bot.model is None and self.settings.model is None and not looks_like_spec_file(request):
            return tool_error(
                "this server has no model to plan a request in words: pass the path of a spec "
                "file, or start the server with --model"
            )
        async with self._connecting:  # joins `flakebot up`'s cluster, or starts one, once
            if self._ray is None:
                await anyio.to_thread.run_sync(bot.connect)
                self._ray = bot
                if self.default_sigterm and threading.current_thread() is threading.main_thread():
                    signal.signal(signal.SIGTERM, signal.SIG_DFL)
        run_id = new_run_id()
        send, receive = anyio.create_memory_object_stream[str](math.inf)
        finished = anyio.Event()

        async def report() -> None:
            count = 0
            async with receive:
                async for line in receive:
                    count += 1
                    await ctx.session.report_progress(count, None, line)

        def on_event(event: RunEvent) -> None:
            send.send_nowait(progress_line(event))

        await ctx.session.report_progress(0, None, f"run {run_id} started")
        outcome: ToolManifest | FlakebotError
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(report)
                group.start_soon(self._attempts, run_id, send.clone(), finished)
                try:
                    outcome = await bot.abuild(request, on_event=on_event, run_id=run_id)
                except FlakebotError as exc:
                    outcome = exc
                finally:
                    finished.set()
                    send.close()
        except anyio.get_cancelled_exc_class():
            # The client may end this server right after (a stdio client kills its process
            # group 4 s after closing stdin): a process of its own finishes the run.
            log.info("mcp_build_cancelled", run_id=run_id)
            try:
                self._finishers.append(start_finisher(self.settings, run_id))
            except OSError as exc:
                log.warning("mcp_cancel_clean_failed", run_id=run_id, error=str(exc)[:300])
            raise
        if isinstance(outcome, RunFailed):
            return tool_error(f"the run {run_id} failed: {outcome.message}")
        if isinstance(outcome, FlakebotError):
            return tool_error(outcome.message + (f"\nhint: {outcome.hint}" if outcome.hint else ""))
        manifest = outcome
        await self._refresh_and_tell()
        tool = self.catalog.by_run(run_id)
        shape = '{"path": "/..."}' if manifest.tool_kind == "service" else '{"args": [...]}'
        called = (
            f"It is listed as the MCP tool `{tool.name}`; call it with {shape}.\n\n"
            if tool is not None
            else ""
        )
        return text_result(
            f"Built {manifest.name} (run {run_id}). {called}{to_markdown(manifest)}",
            {"tool": tool.name if tool else None, "manifest": manifest.model_dump(mode="json")},
        )

    async def _attempts(
        self, run_id: str, send: MemoryObjectSendStream[str], finished: anyio.Event
    ) -> None:
        """Each test report a candidate's coder adds to the journal, as a progress line: the run
        events alone say nothing between a candidate's start and its result."""
        seen = 0
        async with send:
            while True:
                with anyio.move_on_after(ATTEMPT_POLL_S):
                    await finished.wait()
                entries = await anyio.to_thread.run_sync(self._entries, run_id, seen)
                for entry in entries:
                    seen = entry.seq + 1
                    if isinstance(entry.message, TestReport):
                        send.send_nowait(attempt_line(entry.message))
                if finished.is_set():
                    return

    def _entries(self, run_id: str, since: int) -> list[Entry]:
        if self._journal is None:
            self._journal = Journal(self.settings.journal_path)
        return self._journal.entries(run_id, since=since)

    async def clean_tool(self, arguments: dict[str, Any]) -> types.CallToolResult:
        problems = schema_problems(CLEAN_TOOL.input_schema, arguments)
        if problems:
            return invalid_arguments("clean_tool", problems)
        name = arguments["name"]
        self.refresh()
        tool = self.catalog.get(name)
        if tool is None:
            return tool_error(
                f"no tool named {name!r} to clean; tools now: "
                + (", ".join(self.catalog.names()) or "none")
            )
        if tool.run_id in self._cleaning:  # another request is at it: wait, then say so
            while tool.run_id in self._cleaning:
                await anyio.sleep(0.1)
            return text_result(f"{tool.name} (run {tool.run_id}) was cleaned by another request.")
        self._cleaning.add(tool.run_id)  # new calls of it are refused from now on
        try:
            # calls under way use its store path: they end (within their time limit) first
            with anyio.move_on_after(self.caller().timeout_s + 5):
                while self._calls.get(tool.run_id):
                    await anyio.sleep(0.1)
            report = await anyio.to_thread.run_sync(_clean, self.settings, tool)
        except FlakebotError as exc:
            return tool_error(f"{tool.name} was not cleaned: {exc.message}")
        finally:
            self._cleaning.discard(tool.run_id)
        await self._refresh_and_tell()
        freed = report.bytes_freed / 1024**2
        removed = len(report.removed)
        text = f"Cleaned {tool.name} (run {tool.run_id}): {removed} items, {freed:.1f} MiB."
        if report.failures:
            text += "\nNot removed:\n" + "\n".join(
                f"- {failure.path}: {failure.reason}" for failure in report.failures
            )
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=text)],
            structured_content=report.model_dump(mode="json"),
            is_error=bool(report.failures),
        )

    # --- the MCP server ---------------------------------------------------------------------

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        if self._ray is not None:
            self._ray.close()
            self._ray = None

    def server(self) -> Server[Any]:
        @asynccontextmanager
        async def lifespan(_: Server[Any]) -> AsyncIterator[dict[str, Any]]:
            async with anyio.create_task_group() as group:
                group.start_soon(self.watch)
                try:
                    yield {}
                finally:
                    group.cancel_scope.cancel()

        return ProtocolServer(
            self.notification_options(),
            "flakebot",
            version=__version__,
            title="Flakebot",
            instructions=(
                "Ask build_tool for a tool you lack (in words, or a spec file); it is then listed "
                "as a tool of its own. Its manual is a resource. clean_tool removes it."
            ),
            lifespan=lifespan,
            on_list_tools=self.list_tools,
            on_call_tool=self.call_tool,
            on_list_resources=self.list_resources,
            on_read_resource=self.read_resource,
            on_subscriptions_listen=ListenHandler(self.bus),
        )

    def notification_options(self) -> NotificationOptions:
        return NotificationOptions(tools_changed=True, resources_changed=True)


def _clean(settings: Settings, tool: DeployedTool) -> CleanupReport:
    return Janitor(settings).clean(CleanupRequest(run_id=tool.run_id, reason="requested"))
