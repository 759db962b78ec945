"""The ToolManifest: everything an agent needs to call the tool it asked for.

It is made from the spec, the deployment and the fork: how to run the tool (`nix run` and the store
path), its `--help` text as the built binary prints it, worked examples (each acceptance case run
again against the deployed binary, with the output it gave), an OpenAI function-calling schema and
an MCP tool definition derived from the spec, the service URL, provenance, and how to clean up.
It is saved as JSON and Markdown in FLAKEBOT_HOME/runs/<run>/.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pygit2
from pydantic import JsonValue

from flakebot.cargo_toml import read_crate
from flakebot.errors import ConfigError
from flakebot.proc import run
from messages import (
    Deployment,
    Provenance,
    RegistryRef,
    ToolManifest,
    ToolSpec,
    WorkedExample,
    Workspace,
)

EXAMPLE_TIMEOUT_S = 30.0


def parameters_schema(spec: ToolSpec) -> dict[str, JsonValue]:
    """The JSON Schema of one call of the tool: its arguments, stdin and input files."""
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
                "description": "Files to create in the working directory first: path to content.",
            },
        },
        "required": ["args"],
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


def help_text(bin_path: str) -> str:
    done = run([bin_path, "--help"], timeout=EXAMPLE_TIMEOUT_S, env={"PATH": "/usr/bin:/bin"})
    return (done.stdout or done.stderr).strip()


def worked_examples(spec: ToolSpec, bin_path: str) -> list[WorkedExample]:
    """Each acceptance case, run again against the deployed binary."""
    examples = []
    for case in spec.acceptance:
        with tempfile.TemporaryDirectory(prefix="flakebot-example-") as scratch:
            for relative, content in case.input_files.items():
                path = Path(scratch) / relative
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(content)
            argv = [bin_path, *case.args]
            done = run(
                argv,
                timeout=EXAMPLE_TIMEOUT_S,
                cwd=Path(scratch),
                env={"PATH": "/usr/bin:/bin"},
                stdin=case.stdin if case.stdin is not None else "",
            )
        examples.append(
            WorkedExample(
                name=case.name,
                command=argv,
                stdin=case.stdin,
                input_files=dict(case.input_files),
                stdout=done.stdout,
                exit_code=done.returncode,
            )
        )
    return examples


def build_manifest(
    spec: ToolSpec,
    workspace: Workspace,
    deployment: Deployment,
    *,
    registry: RegistryRef,
    toolchain: str,
    run_command: list[str],
) -> ToolManifest:
    record = read_crate(Path(workspace.path) / Path(workspace.manifest_path).parent)
    fork_commit = str(pygit2.Repository(workspace.path).head.target)
    return ToolManifest(
        run_id=workspace.run_id,
        name=spec.name,
        summary=spec.summary,
        tool_kind=spec.tool_kind,
        run_command=run_command,
        store_path=deployment.store_path,
        bin_path=deployment.bin_path,
        help_text=help_text(deployment.bin_path) if spec.tool_kind == "cli" else "",
        examples=worked_examples(spec, deployment.bin_path) if spec.tool_kind == "cli" else [],
        function_schema=function_schema(spec),
        mcp_tool=mcp_tool(spec),
        service_url=deployment.service.url if deployment.service else None,
        provenance=Provenance(
            crate_name=workspace.crate_name,
            crate_version=workspace.crate_version,
            license=record.license,
            repository=record.repository,
            registry=registry,
            fork_commit=fork_commit,
            toolchain=toolchain,
            nar_hash=deployment.nar_hash,
        ),
        cleanup_command=["flakebot", "clean", workspace.run_id],
    )


def to_markdown(manifest: ToolManifest) -> str:
    """The manifest as a page an agent (or a person) reads."""
    quote = " ".join(_shell_word(part) for part in manifest.run_command)
    lines = [
        f"# {manifest.name}",
        "",
        manifest.summary,
        "",
        "## Run it",
        "",
        "```sh",
        f"{quote} ARGS...",
        f"{manifest.bin_path} ARGS...   # the same binary, straight from the store",
        "```",
    ]
    if manifest.service_url:
        lines += ["", f"The service listens on {manifest.service_url}."]
    if manifest.help_text:
        lines += ["", "## --help", "", "```text", manifest.help_text, "```"]
    if manifest.examples:
        lines += ["", "## Examples"]
        for example in manifest.examples:
            lines += ["", f"### {example.name}", "", "```sh"]
            command = " ".join(_shell_word(part) for part in example.command)
            if example.stdin is not None:
                command = f"printf %s {_shell_word(example.stdin)} | {command}"
            lines += [command, "```", "", f"exit code {example.exit_code}; stdout:", "", "```text"]
            lines += [example.stdout.rstrip("\n"), "```"]
    provenance = manifest.provenance
    lines += [
        "",
        "## Provenance",
        "",
        f"- crate: {provenance.crate_name} {provenance.crate_version}"
        f" ({provenance.license or 'licence unknown'})",
        f"- repository: {provenance.repository or 'unknown'}",
        f"- registry: {provenance.registry}",
        f"- fork commit: {provenance.fork_commit}",
        f"- toolchain: {provenance.toolchain}",
        f"- store path: {manifest.store_path} ({provenance.nar_hash})",
        "",
        "## Clean up",
        "",
        "```sh",
        " ".join(manifest.cleanup_command),
        "```",
        "",
    ]
    return "\n".join(lines)


def _shell_word(text: str) -> str:
    if text and all(char.isalnum() or char in "-_./:=@+,#" for char in text):
        return text
    return "'" + text.replace("'", "'\\''") + "'"


def save(home: Path, manifest: ToolManifest) -> Path:
    directory = home / "runs" / manifest.run_id
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "manifest.json").write_text(manifest.model_dump_json(indent=2))
    (directory / "manifest.md").write_text(to_markdown(manifest))
    return directory / "manifest.json"


def load(home: Path, run_id: str) -> ToolManifest:
    path = home / "runs" / run_id / "manifest.json"
    if not path.exists():
        raise ConfigError(
            f"run {run_id!r} has no manifest", hint="deploy first: flakebot deploy DIR --spec SPEC"
        )
    return ToolManifest.model_validate(json.loads(path.read_text()))
