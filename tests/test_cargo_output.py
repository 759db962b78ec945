"""Reading cargo's output: JSON diagnostics and libtest's human format, paired per test binary."""

from __future__ import annotations

import json

from flakebot.cargo_output import parse_diagnostics, parse_test_results, target_label


def message(level: str, text: str, code: str | None = None, file: str | None = None) -> str:
    spans = (
        [{"file_name": file, "line_start": 7, "column_start": 3, "is_primary": True}]
        if file
        else []
    )
    return json.dumps(
        {
            "reason": "compiler-message",
            "message": {
                "level": level,
                "message": text,
                "code": {"code": code} if code else None,
                "spans": spans,
                "rendered": f"{level}: {text}",
            },
        }
    )


def test_diagnostics_skip_summaries_and_duplicates() -> None:
    stdout = "\n".join(
        [
            json.dumps({"reason": "compiler-artifact"}),
            message("error", "mismatched types", "E0308", "src/lib.rs"),
            message("error", "mismatched types", "E0308", "src/lib.rs"),
            message("warning", "unused variable: `x`", "unused_variables", "src/main.rs"),
            message("error", "aborting due to 1 previous error"),
            message("warning", "2 warnings emitted"),
            "not json",
        ]
    )
    found = parse_diagnostics(stdout)
    assert [(d.level, d.code, d.file, d.line, d.column) for d in found] == [
        ("error", "E0308", "src/lib.rs", 7, 3),
        ("warning", "unused_variables", "src/main.rs", 7, 3),
    ]


STDOUT = """
running 2 tests
test squeezer::tests::a ... ok
test tests::b ... FAILED

failures:

---- tests::b stdout ----
thread 'tests::b' panicked at src/lib.rs:9:5:
assertion `left == right` failed: planted
  left: 2
 right: 3
{"a": 1}

failures:
    tests::b

test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out

{"reason":"build-finished","success":true}
running 1 test
test slow ... ignored, takes minutes

test result: ok. 0 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out

running 1 test
test src/lib.rs - f (line 3) ... ok

test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out
"""
STDERR = """
   Compiling hexyl v0.8.0 (/w)
    Finished `test` profile [unoptimized + debuginfo] target(s) in 1.00s
     Running unittests src/lib.rs (/t/debug/deps/hexyl-1)
error: test failed, to rerun pass `--lib`
     Running tests/flakebot_acceptance.rs (/t/debug/deps/flakebot_acceptance-2)
   Doc-tests hexyl
"""


def test_results_are_named_by_binary_with_failure_output() -> None:
    results = parse_test_results(STDOUT, STDERR)
    assert [(r.name, r.status) for r in results] == [
        ("lib::squeezer::tests::a", "passed"),
        ("lib::tests::b", "failed"),
        ("flakebot_acceptance::slow", "ignored"),
        ("doc::src/lib.rs - f (line 3)", "passed"),
    ]
    failed = results[1]
    assert failed.output.startswith("thread 'tests::b' panicked")
    assert "right: 3" in failed.output and "failures:" not in failed.output
    assert '{"a": 1}' in failed.output  # a JSON tool's output, not one of cargo's messages


def test_target_labels() -> None:
    assert target_label("src/lib.rs") == "lib"
    assert target_label("src/main.rs") == "bin"
    assert target_label("src/bin/hexyl.rs") == "bin:hexyl"
    assert target_label("tests/cli.rs") == "cli"
    assert target_label("tests/suite/main.rs") == "suite"


def test_lines_a_test_printed_in_cargos_shape_but_not_its_types_are_skipped() -> None:
    """A test prints what it likes on stdout, where cargo's JSON goes: the tester must not crash."""
    hostile = [
        '{"reason": "compiler-message", "message": "x"}',
        '{"reason": "compiler-message", "message": {"level": "error", "spans": "x"}}',
        '{"reason": "compiler-message", "message": {"level": "error", "spans": [1]}}',
        '{"reason": "compiler-message", "message": {"level": "error", "code": 3, "spans": []}}',
        "[1]",
        '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}",
        '{"a": ' + "9" * 5_000 + "}",  # past Python's int digits limit: a ValueError
    ]
    real = json.dumps(
        {
            "reason": "compiler-message",
            "message": {
                "level": "error",
                "message": "mismatched types",
                "code": {"code": "E0308"},
                "spans": [{"is_primary": True, "file_name": "src/main.rs", "line_start": 3}],
                "rendered": "error[E0308]",
            },
        }
    )
    found = parse_diagnostics("\n".join([*hostile, real]))
    assert [(each.message, each.file, each.line) for each in found] == [
        ("mismatched types", "src/main.rs", 3)
    ]
