"""Spec files: YAML or JSON in, a ToolSpec out, or an error naming each bad field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flakebot.errors import SpecError
from flakebot.specs import load_spec

ROOT = Path(__file__).resolve().parent.parent


def test_example_spec_loads() -> None:
    spec = load_spec(ROOT / "examples" / "hexview.yaml", "r1")
    assert (spec.run_id, spec.name, spec.kind) == ("r1", "hexview", "tool_spec")


def test_json_spec_and_supplied_fields_are_replaced(tmp_path: Path) -> None:
    path = tmp_path / "spec.json"
    body = {"name": "t", "summary": "s", "search_queries": ["q"], "run_id": "other", "kind": "x"}
    path.write_text(json.dumps(body))
    spec = load_spec(path, "r2")
    assert spec.run_id == "r2" and spec.kind == "tool_spec"


def test_every_bad_field_is_named(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(
        "name: Bad Name\nsummary: s\nsearch_queries: []\n"
        "acceptance:\n  - name: ok\n    stdout: {match: fuzzy, value: x}\n"
    )
    with pytest.raises(SpecError) as caught:
        load_spec(path, "r1")
    message = caught.value.message
    assert "name: String should match pattern" in message
    assert "search_queries: List should have at least 1 item" in message
    assert "acceptance.0.stdout.match: Input should be 'exact', 'contains' or 'regex'" in message
    assert caught.value.hint is not None and "examples/hexview.yaml" in caught.value.hint


@pytest.mark.parametrize(
    ("text", "problem"),
    [("name: [unclosed", "is not valid YAML"), ("- a list", "should hold a mapping")],
)
def test_unreadable_specs(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(SpecError, match=problem):
        load_spec(path, "r1")
    with pytest.raises(SpecError, match="cannot read spec file"):
        load_spec(tmp_path / "missing.yaml", "r1")
