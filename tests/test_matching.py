"""Output checks: exact, contains, and regexes matched by RE2 (linear time, Rust-like syntax)."""

from __future__ import annotations

from pathlib import Path

import pytest

from flakebot.errors import SpecError
from flakebot.matching import check_spec_patterns, output_matches, pattern_matches
from flakebot.specs import load_spec
from messages import AcceptanceCase, OutputCheck, ServiceProbe, ServiceSettings, ToolSpec


def test_output_checks_match_as_named() -> None:
    assert output_matches(OutputCheck(match="exact", value="a\n"), "a\n")
    assert not output_matches(OutputCheck(match="exact", value="a"), "a\n")
    assert output_matches(OutputCheck(match="contains", value="6c 61"), "46 6c 61 6b")
    assert output_matches(OutputCheck(match="regex", value=r"^0+\s+46"), "x\n00000000  46")
    assert not output_matches(OutputCheck(match="regex", value=r"^46"), "00 46")


def test_rust_syntax_python_lacks_is_accepted() -> None:
    assert pattern_matches(r"\A[^\x1b]*\z", "plain")  # \z: the end of the text, in Rust and RE2
    assert not pattern_matches(r"\A[^\x1b]*\z", "\x1b[31mred")


def test_a_pattern_that_backtracks_exponentially_in_python_is_answered_by_re2() -> None:
    # Python's re needs about 2**40 steps for this; RE2 is linear in the input.
    assert not pattern_matches(r"^(a+)+$", "a" * 40 + "b")
    assert pattern_matches(r"^(a+)+$", "a" * 40)


@pytest.mark.parametrize("pattern", [r"(a)\1", r"(?=a)b", r"(?<!a)b", "(unclosed"])
def test_patterns_rust_cannot_run_are_refused_with_the_reason(pattern: str) -> None:
    spec = ToolSpec(
        run_id="r",
        name="t",
        summary="t",
        search_queries=["t"],
        acceptance=[AcceptanceCase(name="c", stdout=OutputCheck(match="regex", value=pattern))],
    )
    with pytest.raises(SpecError, match="not a regular expression Flakebot can run"):
        check_spec_patterns(spec)


def test_service_probe_patterns_are_checked_too() -> None:
    spec = ToolSpec(
        run_id="r",
        name="svc",
        summary="t",
        search_queries=["t"],
        tool_kind="service",
        service=ServiceSettings(
            args=["--port", "{port}"],
            probes=[ServiceProbe(name="p", expect_body=OutputCheck(match="regex", value=r"(x)\1"))],
        ),
    )
    with pytest.raises(SpecError):
        check_spec_patterns(spec)


def test_a_spec_file_with_a_backreference_is_refused_when_read(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(
        "name: t\nsummary: t\nsearch_queries: [t]\n"
        "acceptance:\n  - name: c\n    stdout: {match: regex, value: '(a)\\1'}\n"
    )
    with pytest.raises(SpecError, match="backreferences"):
        load_spec(path, "r")
