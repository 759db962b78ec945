"""Tool spec files: YAML or JSON that a person writes, read into a validated ToolSpec.

A spec file is a ToolSpec without `kind`, `run_id` or `protocol_version` (the run supplies them).
Anything wrong is reported per field, with the path into the file (`acceptance.1.stdout.match`),
so the person can fix the file without reading a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from pydantic import ValidationError

from flakebot.errors import SpecError
from messages import ToolSpec

_SUPPLIED = ("kind", "run_id", "protocol_version")


def describe_errors(error: ValidationError) -> str:
    """One line per problem: `field.path: message`."""
    lines = []
    for problem in error.errors():
        location = ".".join(str(part) for part in problem["loc"]) or "(top level)"
        lines.append(f"  {location}: {problem['msg']}")
    return "\n".join(lines)


def load_spec(path: Path, run_id: str) -> ToolSpec:
    """Read the spec file at `path` for run `run_id`; SpecError names every bad field."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"cannot read spec file {path}: {exc.strerror}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise SpecError(
            f"{path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}"
        ) from None
    if not isinstance(data, dict):
        raise SpecError(f"{path} should hold a mapping (name, summary, search_queries, ...)")
    data = {key: value for key, value in data.items() if key not in _SUPPLIED}
    data |= {"kind": "tool_spec", "run_id": run_id}
    try:
        return ToolSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(
            f"{path} is not a valid tool spec:\n{describe_errors(exc)}",
            hint="see examples/hexview.yaml for a complete spec",
        ) from None
