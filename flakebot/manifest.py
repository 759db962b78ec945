"""The ToolManifest: everything an agent needs to call the tool it asked for.

It is made from the spec, the deployment and the fork: how to run the tool (`nix run` and the store
path), its `--help` text as the built binary prints it, worked examples (each acceptance case run
again against the deployed binary, with the output it gave), an OpenAI function-calling schema and
an MCP tool definition derived from the spec, the service URL, provenance, and how to clean up.
It is saved as JSON and Markdown in FLAKEBOT_HOME/runs/<run>/.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from pydantic import JsonValue

from flakebot.errors import CommandTimedOut, ConfigError
from flakebot.home import run_dir, write_private
from flakebot.shown import fenced, inline_code, visible
from flakebot.tool_sandbox import ToolSandbox
from messages import (
    ChangedFile,
    CrateCandidate,
    CrateSource,
    Deployment,
    Provenance,
    ServiceProbe,
    ToolManifest,
    ToolSpec,
    WorkedExample,
)

EXAMPLE_TIMEOUT_S = 30.0
MAX_OUTPUT_CHARS = 20_000


def parameters_schema(spec: ToolSpec) -> dict[str, JsonValue]:
    """The JSON Schema of one call of the tool: a CLI's arguments, stdin and input files, or the
    HTTP request a service is sent."""
    if spec.tool_kind == "service":
        return request_schema(spec)
    return {
        "type": "object",
        "properties": {
            "args": {
                "type": "array",
                "items": {"type": "string"},
                "description": f"Command-line arguments for {spec.name} (see its --help).",
            },
            "stdin": {"type": "string", "description": "Text given to the tool on standard input."},
            "files": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "Files to create in the working directory first: relative path (no"
                " '..') to content.",
            },
        },
        "required": ["args"],
        "additionalProperties": False,
    }


def request_schema(spec: ToolSpec) -> dict[str, JsonValue]:
    """One HTTP request to a deployed service, shaped as its probes are (messages.ServiceProbe):
    method, path and body."""
    probe = ServiceProbe.model_json_schema()["properties"]
    return {
        "type": "object",
        "properties": {
            "method": {key: probe["method"][key] for key in ("type", "enum", "default")},
            "path": {
                "type": "string",
                "pattern": probe["path"]["pattern"],
                "description": f"The path to request from {spec.name}, from '/'.",
            },
            "body": {"type": "string", "description": "The request body."},
        },
        "required": ["path"],
        "additionalProperties": False,
    }


def function_schema(spec: ToolSpec) -> dict[str, JsonValue]:
    """An OpenAI function-calling tool definition."""
    return {
        "type": "function",
        "function": {
            "name": spec.name.replace("-", "_"),
            "description": spec.summary,
            "parameters": parameters_schema(spec),
        },
    }


def mcp_tool(spec: ToolSpec) -> dict[str, JsonValue]:
    """An MCP tool definition (name, description, inputSchema)."""
    return {"name": spec.name, "description": spec.summary, "inputSchema": parameters_schema(spec)}


def help_text(sandbox: ToolSandbox, bin_path: str) -> str:
    """What the deployed binary prints for --help, run in the tool sandbox."""
    try:
        done = sandbox.run([bin_path, "--help"], timeout=EXAMPLE_TIMEOUT_S)
    except CommandTimedOut:
        return ""
    return (done.stdout or done.stderr).strip()[:MAX_OUTPUT_CHARS]


def worked_examples(spec: ToolSpec, sandbox: ToolSandbox, bin_path: str) -> list[WorkedExample]:
    """Each acceptance case, run again against the deployed binary in the tool sandbox."""
    examples = []
    for case in spec.acceptance:
        argv = [bin_path, *case.args]
        try:
            done = sandbox.run(
                argv, timeout=EXAMPLE_TIMEOUT_S, stdin=case.stdin, files=case.input_files
            )
        except CommandTimedOut:
            continue  # an example that hangs teaches nothing; the tests passed it before
        examples.append(
            WorkedExample(
                name=case.name,
                command=argv,
                stdin=case.stdin,
                input_files=dict(case.input_files),
                stdout=done.stdout[:MAX_OUTPUT_CHARS],
                exit_code=done.returncode,
            )
        )
    return examples


def build_manifest(
    spec: ToolSpec,
    candidate: CrateCandidate,
    deployment: Deployment,
    *,
    sandbox: ToolSandbox,
    toolchain: str,
    run_command: list[str],
    changes: list[ChangedFile] | None = None,
    source: CrateSource | None = None,
) -> ToolManifest:
    """The manifest of a deployment; provenance from the run's record of the crate, not the fork."""
    cli = spec.tool_kind == "cli"
    return ToolManifest(
        run_id=deployment.run_id,
        name=spec.name,
        summary=spec.summary,
        tool_kind=spec.tool_kind,
        run_command=run_command,
        store_path=deployment.store_path,
        bin_path=deployment.bin_path,
        help_text=help_text(sandbox, deployment.bin_path) if cli else "",
        examples=worked_examples(spec, sandbox, deployment.bin_path) if cli else [],
        function_schema=function_schema(spec),
        mcp_tool=mcp_tool(spec),
        service_url=deployment.service.url if deployment.service else None,
        provenance=Provenance(
            crate_name=candidate.name,
            crate_version=candidate.version,
            license=candidate.license,
            repository=candidate.repository,
            registry=candidate.registry,
            fork_commit=deployment.commit,
            toolchain=toolchain,
            nar_hash=deployment.nar_hash,
            source=source,
            changes=changes or [],
        ),
        cleanup_command=["flakebot", "clean", deployment.run_id],
    )


def to_markdown(manifest: ToolManifest) -> str:
    """The manifest as a page an agent (or a person) reads. What others wrote (the crate's
    metadata, the tool's output, the model's paths) is quoted so that it cannot pass for the
    page's own words: blocks in fences it cannot close, lines kept to one (flakebot.shown)."""
    quote = " ".join(_shell_word(part) for part in manifest.run_command)
    run_it = (
        f"{quote} ARGS...\n{manifest.bin_path} ARGS...   # the same binary, straight from the store"
    )
    lines = [
        f"# {manifest.name}",
        "",
        _paragraph(manifest.summary),
        "",
        "## Run it",
        "",
        fenced(run_it, "sh"),
    ]
    if manifest.service_url:
        lines += ["", f"The service listens on {manifest.service_url}."]
    if manifest.help_text:
        lines += ["", "## --help", "", fenced(manifest.help_text, "text")]
    if manifest.examples:
        lines += ["", "## Examples"]
        for example in manifest.examples:
            command = " ".join(_shell_word(part) for part in example.command)
            if example.stdin is not None:
                command = f"printf %s {_shell_word(example.stdin)} | {command}"
            lines += ["", f"### {_line(example.name)}", "", fenced(command, "sh"), ""]
            lines += [f"exit code {example.exit_code}; stdout:", "", fenced(example.stdout, "text")]
    provenance = manifest.provenance
    lines += [
        "",
        "## Provenance",
        "",
        f"- crate: {provenance.crate_name} {provenance.crate_version}"
        f" ({_line(provenance.license or 'licence unknown')})",
        f"- repository: {_line(provenance.repository or 'unknown')}",
        f"- registry: {_line(str(provenance.registry))}",
        f"- fork commit: {provenance.fork_commit}",
        f"- toolchain: {_line(provenance.toolchain)}",
        f"- store path: {manifest.store_path} ({provenance.nar_hash})",
    ]
    source = provenance.source
    if source is not None:
        if source.checksum:
            lines.append(f"- .crate sha256: {source.checksum}")
        if source.upstream_commit:
            upstream = _line(source.upstream_repository or "")
            lines.append(f"- upstream: {upstream} at {source.upstream_commit}")
        elif source.note:
            lines.append(f"- forked from the registry's source: {_line(source.note)}")
    if provenance.changes:
        lines += ["", "## Changes from the published crate", ""]
        lines += [
            f"- {change.status} {inline_code(change.path)}"
            f" (+{change.insertions} -{change.deletions})"
            for change in provenance.changes
        ]
    lines += ["", "## Clean up", "", fenced(" ".join(manifest.cleanup_command), "sh"), ""]
    return "\n".join(lines)


def _line(text: str) -> str:
    """Text of others' on one line of Markdown, its control characters shown."""
    return visible(" ".join(text.splitlines()))


_BLOCK_START = re.compile(r"^(\s*)([#>+*=_~`|<-]|\d+(?=[.)]))")


def _paragraph(text: str) -> str:
    """`_line`, and kept a plain paragraph where it starts a block: a leading `#`, `>`, `-`,
    a fence or a list number would make it a heading, a quote, a list or a code block that
    runs to the page's end."""
    line = _line(text).lstrip()
    match = _BLOCK_START.match(line)
    if match is None:
        return line
    if match.group(2).isdigit():  # "1." -> "1\." : a backslash before a digit is shown
        end = match.end()
        return line[:end] + "\\" + line[end:]
    return "\\" + line


def _shell_word(text: str) -> str:
    if text and all(char.isalnum() or char in "-_./:=@+,#" for char in text):
        return text
    return "'" + text.replace("'", "'\\''") + "'"


def save(home: Path, manifest: ToolManifest) -> Path:
    directory = run_dir(home, manifest.run_id)
    write_private(directory / "manifest.json", manifest.model_dump_json(indent=2))
    write_private(directory / "manifest.md", to_markdown(manifest))
    return directory / "manifest.json"


def load(home: Path, run_id: str) -> ToolManifest:
    path = run_dir(home, run_id) / "manifest.json"
    if not path.exists():
        raise ConfigError(
            f"run {run_id!r} has no manifest", hint="deploy first: flakebot deploy DIR --spec SPEC"
        )
    return ToolManifest.model_validate(json.loads(path.read_text()))
