"""The protocol: every kind round-trips through JSON; bad input is rejected, naming the field."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

import messages as m
from tests.samples import GREEN_REPORT, MALFORMED, REPORT, RUN, SAMPLES, SPEC

KINDS = sorted(SAMPLES)
ROOT = Path(__file__).resolve().parent.parent


def _kind(message_type: type[m.Message]) -> str:
    default = message_type.model_fields["kind"].default
    assert isinstance(default, str)
    return default


def test_every_kind_in_the_union_has_a_sample_and_a_malformed_case() -> None:
    union_kinds = {_kind(message_type) for message_type in m.MESSAGE_TYPES}
    assert union_kinds == set(SAMPLES) == set(MALFORMED)
    assert len(union_kinds) == 15


@pytest.mark.parametrize("kind", KINDS)
def test_json_round_trip(kind: str) -> None:
    sample = SAMPLES[kind]
    text = m.dump_message(sample)  # type: ignore[arg-type]
    raw = json.loads(text)
    assert raw["kind"] == kind
    assert raw["protocol_version"] == 1
    assert raw["run_id"] == RUN
    back = m.parse_message(text)
    assert back == sample
    assert type(back) is type(sample)


@pytest.mark.parametrize("kind", KINDS)
def test_malformed_value_is_rejected_naming_the_field(kind: str) -> None:
    field, bad_value = MALFORMED[kind]
    data = SAMPLES[kind].model_dump(mode="json")
    data[field] = bad_value
    with pytest.raises(ValidationError) as caught:
        m.parse_message(json.dumps(data))
    locations = [error["loc"] for error in caught.value.errors()]
    assert any(loc[:2] == (kind, field) for loc in locations), locations
    assert field in str(caught.value)


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_field_is_rejected_naming_the_field(kind: str) -> None:
    data = SAMPLES[kind].model_dump(mode="json")
    data["colour"] = "red"
    with pytest.raises(ValidationError) as caught:
        m.parse_message(json.dumps(data))
    (error,) = caught.value.errors()
    assert error["type"] == "extra_forbidden"
    assert error["loc"] == (kind, "colour")


@pytest.mark.parametrize("kind", KINDS)
def test_messages_are_frozen_and_pickle(kind: str) -> None:
    sample = SAMPLES[kind]
    with pytest.raises(ValidationError):
        sample.run_id = "other"
    assert pickle.loads(pickle.dumps(sample)) == sample


def test_unknown_kind_is_rejected_naming_the_tag() -> None:
    with pytest.raises(ValidationError) as caught:
        m.parse_message('{"kind": "tool_wish", "run_id": "r1", "text": "x"}')
    (error,) = caught.value.errors()
    assert error["type"] == "union_tag_invalid"
    assert "tool_wish" in str(caught.value)


def test_missing_kind_is_rejected() -> None:
    with pytest.raises(ValidationError) as caught:
        m.parse_message('{"run_id": "r1", "text": "x"}')
    assert caught.value.errors()[0]["type"] == "union_tag_not_found"


def test_other_protocol_version_is_rejected() -> None:
    data = SAMPLES["tool_request"].model_dump(mode="json") | {"protocol_version": 2}
    with pytest.raises(ValidationError) as caught:
        m.parse_message(json.dumps(data))
    assert caught.value.errors()[0]["loc"] == ("tool_request", "protocol_version")


@pytest.mark.parametrize(
    "path", ["../outside.rs", "src/../../etc/passwd", "/etc/passwd", "C:/x", "a\\b", "", "."]
)
def test_edit_paths_must_stay_inside_the_fork(path: str) -> None:
    with pytest.raises(ValidationError) as caught:
        m.WriteFile(path=path, content="x")
    assert caught.value.errors()[0]["loc"] == ("path",)


@pytest.mark.parametrize(
    "path",
    [
        "src/a.rs`\n\n## Clean up",
        "src/a\x1b[2J.rs",
        "src/\u202egnp.rs",
        "src/a\x85.rs",
        "src/\u061c.rs",
        "src/a\U000e0041.rs",  # a tag character: invisible text a model still reads
    ],
)
def test_edit_paths_have_no_control_characters(path: str) -> None:
    """A newline would forge a line of a commit message (which is read back) or a manifest."""
    with pytest.raises(ValidationError, match="control or format characters"):
        m.WriteFile(path=path, content="x")


def test_edit_paths_are_normalised() -> None:
    assert m.WriteFile(path="src/./bin//main.rs", content="").path == "src/bin/main.rs"


def test_acceptance_input_files_must_stay_inside_the_case_dir() -> None:
    with pytest.raises(ValidationError, match=r"must not contain '\.\.'"):
        m.AcceptanceCase(name="x", input_files={"../secret": "x"})


def test_service_spec_needs_settings_with_a_port() -> None:
    base = SPEC.model_dump() | {"tool_kind": "service"}
    with pytest.raises(ValidationError, match="needs 'service'"):
        m.ToolSpec.model_validate(base)
    with pytest.raises(ValidationError, match=r"\{port\}"):
        m.ServiceSettings(args=["--listen", "127.0.0.1"])
    spec = m.ToolSpec.model_validate(
        base | {"service": {"args": ["--port", "{port}"], "probes": [{"name": "health"}]}}
    )
    assert spec.service is not None and spec.service.probes[0].expect_status == 200


def test_cli_spec_rejects_service_settings_and_duplicate_cases() -> None:
    with pytest.raises(ValidationError, match="only to tool_kind 'service'"):
        m.ToolSpec.model_validate(SPEC.model_dump() | {"service": {"args": ["{port}"]}})
    case = {"name": "same"}
    with pytest.raises(ValidationError, match="repeated: \\['same'\\]"):
        m.ToolSpec.model_validate(SPEC.model_dump() | {"acceptance": [case, case]})


def test_dependency_changes_are_checked() -> None:
    with pytest.raises(ValidationError, match="needs version_req"):
        m.DependencyChange(action="add", crate="anyhow")
    with pytest.raises(ValidationError):
        m.DependencyChange(action="add", crate="any how", version_req="1")
    with pytest.raises(ValidationError):
        m.DependencyChange(action="add", crate="anyhow", version_req="1; rm -rf /")


def test_report_green_ignores_skipped_stages_and_lists_failures() -> None:
    assert not REPORT.green
    assert [d.code for d in REPORT.errors] == ["E0308"]
    assert [t.name for t in REPORT.failed_tests] == ["acceptance::dumps_stdin"]
    assert GREEN_REPORT.green
    only_skipped = m.StageResult(stage="clippy", status="skipped", duration_s=0)
    assert not REPORT.model_copy(update={"stages": [only_skipped]}).green


def test_green_result_needs_a_green_report() -> None:
    data = SAMPLES["candidate_result"].model_dump() | {"last_report": REPORT.model_dump()}
    with pytest.raises(ValidationError, match="green last_report"):
        m.CandidateResult.model_validate(data)
    with pytest.raises(ValidationError, match="ended_by 'green'"):
        m.CandidateResult.model_validate(data | {"status": "failed", "ended_by": "green"})


def test_manifest_service_url_goes_with_service_kind() -> None:
    data = SAMPLES["tool_manifest"].model_dump()
    with pytest.raises(ValidationError, match="service_url"):
        m.ToolManifest.model_validate(data | {"service_url": "http://127.0.0.1:8080"})


def test_cleanup_report_adds_up_bytes() -> None:
    report = m.CleanupReport(
        run_id=RUN,
        reason="requested",
        removed=[
            m.RemovedItem(what="workspace", path="/a", bytes_freed=10),
            m.RemovedItem(what="target_dir", path="/b", bytes_freed=32),
        ],
    )
    assert report.bytes_freed == 42


def test_example_spec_is_a_valid_tool_spec() -> None:
    data = yaml.safe_load((ROOT / "examples" / "hexview.yaml").read_text())
    spec = m.ToolSpec.model_validate(data | {"run_id": RUN})
    assert spec.name == "hexview"
    assert {case.name for case in spec.acceptance} >= {"dumps_stdin", "missing_file_fails"}


def test_json_schema_covers_every_kind() -> None:
    schema = m.json_schema()
    mapping = schema["discriminator"]["mapping"]  # type: ignore[index,call-overload]
    assert set(mapping) == set(SAMPLES)
    assert schema["title"] == "Flakebot protocol v1"
