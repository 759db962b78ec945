"""Reading what cargo prints: compiler diagnostics from `--message-format=json`, and test results
from libtest's (stable) human output.

`cargo test` runs one test binary after another; on stderr it names each (`Running unittests
src/lib.rs (...)`, `Running tests/cli.rs (...)`, `Doc-tests hexyl`) and on stdout each binary
prints a block from `running N tests` to `test result:`. Pairing the k-th name with the k-th block
gives every test a qualified name (`lib::squeezer::tests::three_same_lines`), and each failure's
captured output comes from the block's `---- name stdout ----` sections.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import PurePosixPath

from messages import Diagnostic, TestCaseResult

_RUNNING = re.compile(r"^\s+(?:Running (?:unittests )?(?P<path>\S+)|Doc-tests (?P<doc>\S+))")
_RESULT_LINE = re.compile(r"^test (?P<name>.+?) \.\.\. (?P<status>ok|FAILED|ignored(?:, .*)?)$")
_FAILURE_HEADER = re.compile(r"^---- (?P<name>.+?) (?:stdout|stderr) ----$")
_SUMMARY_ONLY = re.compile(r"^(aborting due to|\d+ warnings? emitted|\d+ errors?)", re.I)
_LEVELS = {"error", "warning", "note", "help", "failure-note", "error: internal compiler error"}


def parse_diagnostics(cargo_stdout: str) -> list[Diagnostic]:
    """Compiler messages from cargo's JSON lines, without summaries and duplicates."""
    found: list[Diagnostic] = []
    seen: set[tuple[str, str | None, int | None, str]] = set()
    for line in cargo_stdout.splitlines():
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):  # not JSON, a 5000-digit number, nested too deep
            continue
        try:
            diagnostic = _diagnostic(record)
        except (AttributeError, TypeError, ValueError):
            continue  # a line shaped like cargo's but not: a test may print anything
        if diagnostic is None:
            continue
        key = (diagnostic.message, diagnostic.file, diagnostic.line, str(diagnostic.level))
        if key not in seen:
            seen.add(key)
            found.append(diagnostic)
    return found


def _diagnostic(record: object) -> Diagnostic | None:
    """One compiler message (None for other records); AttributeError, TypeError or ValueError
    for a record that is not shaped as cargo's are."""
    if not isinstance(record, dict) or record.get("reason") != "compiler-message":
        return None
    message = record.get("message") or {}
    level = message.get("level")
    text = str(message.get("message", ""))
    spans = message.get("spans") or []
    if level not in _LEVELS or (not spans and _SUMMARY_ONLY.match(text)):
        return None
    primary = next((span for span in spans if span.get("is_primary")), None)
    return Diagnostic(
        level=level,
        code=(message.get("code") or {}).get("code"),
        message=text,
        file=primary.get("file_name") if primary else None,
        line=primary.get("line_start") if primary else None,
        column=primary.get("column_start") if primary else None,
        rendered=message.get("rendered"),
    )


def target_label(path: str) -> str:
    """A short name for a test binary: lib, bin:NAME, the test file's stem, or doc."""
    pure = PurePosixPath(path)
    if pure.as_posix() in ("src/lib.rs",):
        return "lib"
    if pure.as_posix() == "src/main.rs":
        return "bin"
    if len(pure.parts) >= 2 and pure.parts[-2] == "bin":
        return f"bin:{pure.stem}"
    if pure.name == "main.rs" and len(pure.parts) >= 2:
        return pure.parts[-2]
    return pure.stem


def _cargo_message(line: str) -> bool:
    return line.startswith('{"reason":')


def parse_test_results(cargo_stdout: str, cargo_stderr: str) -> list[TestCaseResult]:
    """Every test's outcome, named `<target>::<test>`, with failure output attached."""
    labels = []
    for line in cargo_stderr.splitlines():
        match = _RUNNING.match(line)
        if match:
            labels.append("doc" if match["doc"] else target_label(match["path"]))
    # cargo's own JSON messages are interleaved; a test's output may start with `{` too (a JSON
    # tool's stdout quoted in an assertion) and is kept
    blocks = _blocks(line for line in cargo_stdout.splitlines() if not _cargo_message(line))
    results: list[TestCaseResult] = []
    for index, block in enumerate(blocks):
        label = labels[index] if index < len(labels) else f"binary{index}"
        outputs = _failure_outputs(block)
        for line in block:
            match = _RESULT_LINE.match(line)
            if not match:
                continue
            name = match["name"]
            status = match["status"]
            results.append(
                TestCaseResult(
                    name=f"{label}::{name}",
                    status="passed"
                    if status == "ok"
                    else "failed"
                    if status == "FAILED"
                    else "ignored",
                    output=outputs.get(name, "") if status == "FAILED" else "",
                )
            )
    return results


def _blocks(lines: Iterable[str]) -> list[list[str]]:
    blocks: list[list[str]] = []
    current: list[str] | None = None
    for line in lines:
        if line.startswith("running ") and line.rstrip().endswith(("tests", "test")):
            current = []
            blocks.append(current)
        elif current is not None:
            current.append(line)
            if line.startswith("test result:"):
                current = None
    return blocks


def _failure_outputs(block: list[str]) -> dict[str, str]:
    outputs: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in block:
        header = _FAILURE_HEADER.match(line)
        if header:
            current = outputs.setdefault(header["name"], [])
            continue
        if current is not None:
            if line.strip() == "failures:" or line.startswith("test result:"):
                current = None
                continue
            current.append(line)
    return {name: "\n".join(lines).strip() for name, lines in outputs.items()}
