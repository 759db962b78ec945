"""One call of a deployed tool for an MCP client: arguments checked against the tool's schema, the
binary run in the tool sandbox (flakebot.tool_sandbox), the outcome as MCP content.

A CLI tool gets `args`, `stdin` and `files` (written into the call's own scratch directory, by
relative paths only); it sees its Nix closure read-only and nothing else of the host, has no
network, and writes only that directory, which is removed afterwards. A service tool gets one HTTP
request (`method`, `path`, `body`) sent to its URL on the loopback, where its sandbox listens.

Arguments that break the schema are the caller's mistake, so they come back as a tool error the
calling model can read and correct (MCP's advice for input validation), naming each problem.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import jsonschema
import mcp_types as types
import structlog

from flakebot.errors import CommandTimedOut, ConfigError, FlakebotError
from flakebot.mcp_server.catalog import DeployedTool
from flakebot.nix import Nix
from flakebot.redact import redact
from flakebot.tool_sandbox import ToolSandbox

log = structlog.get_logger()

CALL_TIMEOUT_S = 60.0
MAX_OUTPUT_CHARS = 100_000  # of each stream, in a call's result
MAX_OUTPUT_BYTES = 4 * 1024 * 1024  # a tool printing more (to either stream) is stopped
MAX_INPUT_BYTES = 64 * 1024 * 1024  # stdin and files of one call, written to the host's disk

OUTPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "stdout": {"type": "string"},
        "stderr": {"type": "string"},
        "exit_code": {"type": "integer"},
    },
    "required": ["stdout", "stderr", "exit_code"],
}
SERVICE_OUTPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"status": {"type": "integer"}, "body": {"type": "string"}},
    "required": ["status", "body"],
}


def output_schema(tool: DeployedTool) -> dict[str, Any]:
    return SERVICE_OUTPUT_SCHEMA if tool.manifest.tool_kind == "service" else OUTPUT_SCHEMA


def input_schema(tool: DeployedTool) -> dict[str, Any]:
    schema = tool.manifest.mcp_tool.get("inputSchema")
    return schema if isinstance(schema, dict) else {"type": "object"}


def schema_problems(schema: dict[str, Any], arguments: dict[str, Any]) -> list[str]:
    """Each way `arguments` break a tool's input schema, as a line naming where and what."""
    validator = jsonschema.Draft202012Validator(schema)
    problems = []
    for error in sorted(validator.iter_errors(arguments), key=lambda e: list(e.path)):
        where = "/".join(str(part) for part in error.path) or "(the arguments)"
        problems.append(f"{where}: {error.message}")
    return problems


def _unusable(arguments: dict[str, Any]) -> list[str]:
    """What a schema lets through and a program cannot take: a NUL byte in an argument (argv
    strings end at it), a control character or space in a request's path (JSON Schema's `$`,
    as Python evaluates it, matches before a final newline)."""
    problems = [
        f"args/{index}: contains a NUL byte, which no program argument can hold"
        for index, arg in enumerate(arguments.get("args") or [])
        if isinstance(arg, str) and "\x00" in arg
    ]
    path = arguments.get("path")
    if isinstance(path, str) and any(char.isspace() or not char.isprintable() for char in path):
        problems.append("path: must not contain spaces or control characters (encode them)")
    return problems


def invalid_arguments(name: str, problems: list[str], more: str = "") -> types.CallToolResult:
    return tool_error(
        f"invalid arguments for {name}:\n"
        + "\n".join(f"- {problem}" for problem in problems)
        + f"\nthe input schema is in tools/list{more}"
    )


def tool_error(text: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=True)


def _clip(text: str) -> str:
    if len(text) <= MAX_OUTPUT_CHARS:
        return text
    return text[:MAX_OUTPUT_CHARS] + f"\n[... {len(text) - MAX_OUTPUT_CHARS} more characters]"


@dataclass
class ToolCaller:
    """Runs calls of deployed tools; sync (the server runs it in a worker thread)."""

    nix: Nix
    timeout_s: float = CALL_TIMEOUT_S

    def call(self, tool: DeployedTool, arguments: dict[str, Any]) -> types.CallToolResult:
        problems = schema_problems(input_schema(tool), arguments) or _unusable(arguments)
        if problems:
            return invalid_arguments(tool.name, problems, f"; the manual is {tool.uri}")
        given = sum(
            len(text.encode(errors="replace"))
            for text in [arguments.get("stdin") or "", *(arguments.get("files") or {}).values()]
        )
        if given > MAX_INPUT_BYTES:
            return tool_error(
                f"the call's stdin and files are {given} bytes; at most {MAX_INPUT_BYTES} are "
                "taken: pass less data"
            )
        try:
            if tool.manifest.tool_kind == "service":
                return self._request(tool, arguments)
            return self._run(tool, arguments)
        except FlakebotError as exc:
            return tool_error(f"{tool.name} could not run: {exc.message}")
        except Exception as exc:  # not the caller's fault, but the caller must hear of it
            log.exception("mcp_call_failed", tool=tool.name)
            return tool_error(redact(f"{tool.name} could not run: {type(exc).__name__}: {exc}"))

    def _run(self, tool: DeployedTool, arguments: dict[str, Any]) -> types.CallToolResult:
        manifest = tool.manifest
        sandbox = ToolSandbox(closure=tuple(self.nix.closure(manifest.store_path)))
        try:
            done = sandbox.run(
                [manifest.bin_path, *arguments.get("args", [])],
                timeout=self.timeout_s,
                stdin=arguments.get("stdin"),
                files=arguments.get("files"),
                max_output=MAX_OUTPUT_BYTES,
                stop_at_limit=True,
            )
        except CommandTimedOut:
            return tool_error(f"{tool.name} did not finish within {self.timeout_s:g} s; stopped")
        stdout, stderr = _clip(done.stdout), _clip(done.stderr)
        if done.stopped_at_limit:
            return tool_error(
                f"{tool.name} printed more than {MAX_OUTPUT_BYTES} bytes and was stopped; ask "
                f"for less output. Its stdout began:\n{stdout[:2000]}"
            )
        text = stdout if done.returncode == 0 else f"exit code {done.returncode}\n{stderr}{stdout}"
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=text)],
            structured_content={"stdout": stdout, "stderr": stderr, "exit_code": done.returncode},
            is_error=done.returncode != 0,
        )

    def _request(self, tool: DeployedTool, arguments: dict[str, Any]) -> types.CallToolResult:
        url = tool.manifest.service_url
        if url is None:
            raise ConfigError(f"the manifest of {tool.name} names no service URL")
        method = arguments.get("method", "GET")
        try:
            with httpx.Client(timeout=self.timeout_s, trust_env=False) as client:
                response = client.request(
                    method, url.rstrip("/") + arguments["path"], content=arguments.get("body")
                )
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            return tool_error(f"{tool.name} did not answer at {url}: {exc}")
        body = _clip(response.text)
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=body)],
            structured_content={"status": response.status_code, "body": body},
            is_error=response.status_code >= 500,
        )
