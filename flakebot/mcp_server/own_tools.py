"""The MCP server's own tools, `build_tool` and `clean_tool`, as clients see them (names,
schemas, descriptions), the lines build_tool reports its progress in, and the SDK server class that
announces list-changed notifications on every transport."""

from __future__ import annotations

from typing import Any

import mcp_types as types
from mcp.server.lowlevel.server import NotificationOptions, Server
from mcp.server.models import InitializationOptions

from messages import RunEvent, TestReport

MAX_CANDIDATES = 8

BUILD_TOOL = types.Tool(
    name="build_tool",
    title="Build a tool",
    description=(
        "Build, test and deploy a command-line tool or service from a Rust crate, and return its "
        "manifest (how to call it, worked examples). The new tool is then listed here and can be "
        "called like any other. `request` is a description in words (needs the server's model) "
        "or the path of a tool spec file (YAML or JSON). Takes a minute or more; progress is "
        "reported; cancelling stops the run and cleans up."
    ),
    input_schema={
        "type": "object",
        "properties": {
            "request": {
                "type": "string",
                "pattern": "\\S",
                "description": "What the tool should do, or the path of a spec file.",
            },
            "candidates": {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_CANDIDATES,
                "description": "How many crates to fork and try at once (default 3).",
            },
            "timeout_s": {
                "type": "number",
                "exclusiveMinimum": 0,
                "description": "Give up on the run after this many seconds.",
            },
        },
        "required": ["request"],
        "additionalProperties": False,
    },
    annotations=types.ToolAnnotations(open_world_hint=True),
)
CLEAN_TOOL = types.Tool(
    name="clean_tool",
    title="Clean a tool",
    description=(
        "Remove a tool this server lists, and everything its run made (service, Nix store paths, "
        "fork, workspaces). The tool is no longer listed afterwards."
    ),
    input_schema={
        "type": "object",
        "properties": {"name": {"type": "string", "description": "The tool's name as listed."}},
        "required": ["name"],
        "additionalProperties": False,
    },
    annotations=types.ToolAnnotations(destructive_hint=True, idempotent_hint=True),
)


def text_result(text: str, structured: dict[str, Any] | None = None) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)], structured_content=structured
    )


def attempt_line(report: TestReport) -> str:
    stages = ", ".join(f"{stage.stage} {stage.status}" for stage in report.stages)
    found = []
    if report.errors:
        found.append(f"{len(report.errors)} compiler errors")
    if report.failed_tests:
        found.append(f"{len(report.failed_tests)} failing tests")
    more = f" ({', '.join(found)})" if found else ""
    return f"test [{report.candidate_id}]: attempt {report.attempt}: {stages}{more}"


def progress_line(event: RunEvent) -> str:
    where = f"{event.step}" + (f" [{event.candidate_id}]" if event.candidate_id else "")
    return f"{where}: {event.event}" + (f": {event.detail[:200]}" if event.detail else "")


class ProtocolServer(Server[Any]):
    """The SDK's server, announcing list-changed notifications on every transport: the HTTP
    session manager asks for the initialization options without any."""

    def __init__(self, notify: NotificationOptions, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.notify = notify

    def create_initialization_options(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
    ) -> InitializationOptions:
        return super().create_initialization_options(
            notification_options or self.notify, experimental_capabilities, extensions
        )
