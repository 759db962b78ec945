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
from flakebot.matching import check_spec_patterns
from flakebot.shown import printable
from messages import ToolSpec

_SUPPLIED = ("kind", "run_id", "protocol_version")
MAX_SPEC_BYTES = 1024 * 1024


def describe_errors(error: ValidationError) -> str:
    """One line per problem: `field.path: message`."""
    lines = []
    for problem in error.errors():
        location = ".".join(str(part) for part in problem["loc"]) or "(top level)"
        lines.append(f"  {location}: {problem['msg']}")
    return "\n".join(lines)


def load_spec(path: Path, run_id: str) -> ToolSpec:
    """Read the spec file at `path` for run `run_id`; SpecError names every bad field."""
    shown = printable(str(path))
    try:
        raw = path.read_bytes()[: MAX_SPEC_BYTES + 1]
    except OSError as exc:
        raise SpecError(f"cannot read spec file {shown}: {exc.strerror}") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(f"{shown} is larger than {MAX_SPEC_BYTES // 1024} KiB; is it a spec?")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError(
            f"{shown} is not UTF-8 text; a spec is a YAML or JSON file",
            hint="see examples/hexview.yaml for a complete spec",
        ) from None
    language = "JSON" if path.suffix == ".json" else "YAML"
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise SpecError(f"{shown} is not valid {language}: {exc}") from None
    except RecursionError:
        raise SpecError(f"{shown} is nested too deeply to be a tool spec") from None
    if not isinstance(data, dict):
        raise SpecError(f"{shown} should hold a mapping (name, summary, search_queries, ...)")
    data = {key: value for key, value in data.items() if key not in _SUPPLIED}
    data |= {"kind": "tool_spec", "run_id": run_id}
    try:
        spec = ToolSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(
            f"{shown} is not a valid tool spec:\n{describe_errors(exc)}",
            hint="see examples/hexview.yaml for a complete spec",
        ) from None
    except RecursionError:
        raise SpecError(f"{shown} is nested too deeply to be a tool spec") from None
    check_spec_patterns(spec)
    return spec
