"""Acceptance cases as Rust: literals that cannot break out, valid names, the right binary."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from flakebot.acceptance import (
    TEST_PATH,
    acceptance_source,
    choose_binary,
    install,
    rust_string,
    rust_test_name,
)
from flakebot.errors import SpecError
from messages import AcceptanceCase, OutputCheck, ToolSpec
from tests.registry_helpers import make_crate


def spec(*cases: AcceptanceCase, name: str = "hexview") -> ToolSpec:
    return ToolSpec(
        run_id="r", name=name, summary="x", search_queries=["x"], acceptance=list(cases)
    )


@pytest.mark.parametrize(
    ("text", "literal"),
    [
        ("plain", '"plain"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("back\\slash", '"back\\\\slash"'),
        ("line\nnext\ttab\r", '"line\\nnext\\ttab\\r"'),
        ("\x00\x1b[31m", '"\\u{0}\\u{1b}[31m"'),
        ('"); std::process::exit(0); ("', '"\\"); std::process::exit(0); (\\""'),
        ("ünïcode ✓", '"ünïcode ✓"'),
    ],
)
def test_rust_string_escapes(text: str, literal: str) -> None:
    assert rust_string(text) == literal


def test_source_has_one_test_per_case() -> None:
    source = acceptance_source(
        spec(
            AcceptanceCase(name="fn", args=["-x"], stdout=OutputCheck(match="exact", value="a\n")),
            AcceptanceCase(name="finds", stdin="q", stdout=OutputCheck(match="regex", value="^a$")),
            AcceptanceCase(name="fails", exit_code=2, input_files={"d/f.txt": "x"}),
        ),
        "hexyl",
    )
    assert 'const BIN: &str = env!("CARGO_BIN_EXE_hexyl");' in source
    assert "fn case_fn()" in source and "fn case_finds()" in source and "fn case_fails()" in source
    assert 'assert_eq!(stdout, "a\\n"' in source
    assert 'regex::Regex::new("(?m)^a$")' in source
    assert "Some(2)" in source and '("d/f.txt", "x")' in source
    assert source.count("#[test]") == 3


def test_case_names_map_to_distinct_identifiers_no_keyword_can_take() -> None:
    assert rust_test_name(AcceptanceCase(name="match")) == "case_match"
    assert rust_test_name(AcceptanceCase(name="run_case")) == "case_run_case"
    cases = [AcceptanceCase(name=name) for name in ("main", "case_main", "fn", "case_fn")]
    names = [rust_test_name(case) for case in cases]
    assert len(set(names)) == len(names)
    source = acceptance_source(spec(*cases), "tool")
    defined = [line.split("(")[0].removeprefix("fn ") for line in source.splitlines()]
    tests = [name for name in defined if name.startswith("case_")]
    assert sorted(tests) == sorted(names)


def test_choose_binary() -> None:
    assert choose_binary(spec(name="hexyl"), ["hexyl", "other"], "hexyl") == "hexyl"
    assert choose_binary(spec(name="hexview"), ["hx"], "hexyl") == "hx"
    assert choose_binary(spec(name="hexview"), ["a", "hexyl"], "hexyl") == "hexyl"
    # A library crate, or tools that are all something else: the coder writes the spec's binary.
    assert choose_binary(spec(name="sha256sum"), [], "sha2") == "sha256sum"
    assert choose_binary(spec(name="hexview"), ["a", "b"], "hexyl") == "hexview"
    # A binary the coder added is found by the spec's name even if it is not a "tool" by its name.
    assert choose_binary(spec(name="hexview"), [], "clap", all_bins=["hexview"]) == "hexview"


def test_install_adds_regex_and_a_test_entry_when_autotests_is_off(tmp_path: Path) -> None:
    root = make_crate(tmp_path, "tool", "1.0.0", extra_toml="autotests = false\n")
    regex_case = AcceptanceCase(name="m", stdout=OutputCheck(match="regex", value="x"))
    install(root, spec(regex_case), "tool", registry_has_regex=True)
    assert (root / TEST_PATH).is_file()
    manifest = tomllib.loads((root / "Cargo.toml").read_text())
    assert manifest["dev-dependencies"]["regex"] == "1"
    assert manifest["test"] == [{"name": "flakebot_acceptance", "path": TEST_PATH}]
    install(root, spec(regex_case), "tool", registry_has_regex=True)  # idempotent
    assert len(tomllib.loads((root / "Cargo.toml").read_text())["test"]) == 1
    with pytest.raises(SpecError, match="needs the regex crate"):
        install(root, spec(regex_case), "tool", registry_has_regex=False)
