"""The `flakebot` console script: version, schema, and readable errors instead of tracebacks."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import Cli
from tests.samples import SAMPLES


def test_version(cli: Cli) -> None:
    result = cli("--version")
    assert result.code == 0
    assert result.stdout.startswith("flakebot ") and "protocol v1" in result.stdout


def test_schema_prints_the_union(cli: Cli) -> None:
    result = cli("schema")
    assert result.code == 0
    schema = result.json()
    assert set(schema["discriminator"]["mapping"]) == set(SAMPLES)
    assert "ToolSpec" in schema["$defs"] and "AcceptanceCase" in schema["$defs"]


def test_bad_setting_is_a_message_not_a_traceback(cli: Cli) -> None:
    result = cli("doctor", env={"FLAKEBOT_REGISTRY": "pypi"})
    assert result.code == 2
    assert "error: unknown registry 'pypi'" in result.stderr
    assert "hint: use local, local:DIR, crates-io or crates-io:URL" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_doctor_check_is_named(cli: Cli) -> None:
    result = cli("doctor", "--check", "gpu")
    assert result.code == 2
    assert "unknown check 'gpu'" in result.stderr and "choose from python" in result.stderr


def test_no_command_prints_help(cli: Cli) -> None:
    result = cli()
    assert "doctor" in result.stdout + result.stderr
    assert "schema" in result.stdout + result.stderr


def test_run_free_text_without_a_model_stops_before_starting_ray(cli: Cli) -> None:
    result = cli("run", "a hex viewer", env={"FLAKEBOT_MODEL": ""})
    assert result.code == 2
    assert "a free-text request needs a model" in result.stderr and "Traceback" not in result.stderr
    assert "Ray" not in result.stderr  # refused before any cluster started


def test_run_with_a_bad_spec_file_names_the_field(cli: Cli, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: Bad Name\nsummary: s\nsearch_queries: [x]\n")
    result = cli("run", str(spec))
    assert result.code == 2 and "name: String should match pattern" in result.stderr
