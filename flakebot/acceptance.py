"""Acceptance cases compiled into the fork: `tests/flakebot_acceptance.rs`, one #[test] a case.

Each test runs the built binary (`env!("CARGO_BIN_EXE_<bin>")`) in a fresh directory holding the
case's input files, feeds it the case's stdin, and checks the exit code and stdout. The file uses
only std, except that a `regex` expectation needs the `regex` crate as a dev-dependency, which is
added when the registry has it. Strings from the spec become Rust string literals by escaping,
never by pasting, so no case can break out of its literal.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import tomlkit
from tomlkit.items import AoT, Table

from flakebot import fork_files
from flakebot.errors import ForkError, SpecError
from messages import AcceptanceCase, ToolSpec

TEST_NAME = "flakebot_acceptance"
TEST_PATH = f"tests/{TEST_NAME}.rs"

_HELPER = r"""
fn run_case(
    name: &str,
    args: &[&str],
    stdin: Option<&str>,
    files: &[(&str, &str)],
) -> (String, Option<i32>, String) {
    let dir = std::env::temp_dir().join(format!("flakebot-{}-{}", name, std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the case's directory");
    for (path, content) in files {
        let file = dir.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent).expect("create an input file's directory");
        }
        std::fs::write(&file, content).expect("write an input file");
    }
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the tool's binary starts");
    {
        let mut input = child.stdin.take().expect("stdin is piped");
        if let Some(text) = stdin {
            let _ = input.write_all(text.as_bytes()); // the tool may exit without reading
        }
    }
    let output = child.wait_with_output().expect("the tool's binary finishes");
    let _ = std::fs::remove_dir_all(&dir);
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
"""


def rust_string(text: str) -> str:
    """A Rust string literal holding exactly `text`."""
    escaped = []
    for char in text:
        if char == "\\":
            escaped.append("\\\\")
        elif char == '"':
            escaped.append('\\"')
        elif char == "\n":
            escaped.append("\\n")
        elif char == "\r":
            escaped.append("\\r")
        elif char == "\t":
            escaped.append("\\t")
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            escaped.append(f"\\u{{{ord(char):x}}}")
        else:
            escaped.append(char)
    return '"' + "".join(escaped) + '"'


def needs_regex(spec: ToolSpec) -> bool:
    return any(case.stdout is not None and case.stdout.match == "regex" for case in spec.acceptance)


def rust_test_name(case: AcceptanceCase) -> str:
    """The #[test] function's name: `case_` and the case's name.

    Case names are unique in a spec and match `[a-z][a-z0-9_]*`, so the prefix makes every name a
    distinct Rust identifier that no keyword (`fn`, `match`) and no item of the file (`main`,
    `run_case`, `BIN`) can be: a case `main` next to a case `case_main` gives `case_main` and
    `case_case_main`."""
    return f"case_{case.name}"


def _case_test(case: AcceptanceCase) -> str:
    args = ", ".join(rust_string(arg) for arg in case.args)
    stdin = "None" if case.stdin is None else f"Some({rust_string(case.stdin)})"
    files = ", ".join(
        f"({rust_string(path)}, {rust_string(text)})" for path, text in case.input_files.items()
    )
    call = f"run_case({rust_string(case.name)}, &[{args}], {stdin}, &[{files}])"
    exit_message = f"exit code of {case.name}; stderr:\\n{{stderr}}"
    lines = [
        "#[test]",
        f"fn {rust_test_name(case)}() {{",
        f"    let (stdout, code, stderr) = {call};",
        f'    assert_eq!(code, Some({case.exit_code}), "{exit_message}");',
    ]
    check = case.stdout
    if check is not None:
        expected = rust_string(check.value)
        if check.match == "exact":
            lines.append(f'    assert_eq!(stdout, {expected}, "stdout of {case.name}");')
        elif check.match == "contains":
            lines.append(
                f'    assert!(stdout.contains({expected}), "stdout of {case.name} should contain '
                f'{{:?}}, got:\\n{{stdout}}", {expected});'
            )
        else:
            pattern = rust_string("(?m)" + check.value)
            lines.append(
                f'    let pattern = regex::Regex::new({pattern}).expect("a valid pattern");'
            )
            lines.append(
                f'    assert!(pattern.is_match(&stdout), "stdout of {case.name} should match '
                f'{{:?}}, got:\\n{{stdout}}", {pattern});'
            )
    lines.append("}")
    return "\n".join(lines)


def acceptance_source(spec: ToolSpec, bin_name: str) -> str:
    """The whole test file for `spec`'s cases, running binary `bin_name`."""
    header = (
        f"//! Acceptance cases of the tool spec `{spec.name}`, written by flakebot; do not edit.\n"
        "//! Regenerated before every test run from the spec.\n"
        "#![allow(unused_variables)]\n\n"
        "use std::io::Write;\nuse std::process::{Command, Stdio};\n\n"
        f'const BIN: &str = env!("CARGO_BIN_EXE_{bin_name}");\n'
    )
    return (
        header + _HELPER + "\n" + "\n\n".join(_case_test(case) for case in spec.acceptance) + "\n"
    )


def choose_binary(
    spec: ToolSpec, tool_bins: Sequence[str], crate_name: str, *, all_bins: Sequence[str] = ()
) -> str:
    """The binary the acceptance cases run (and the one deployed), read from the fork as it is.

    One named after the spec, if the crate builds it; else the crate's tool named after the crate;
    else its only tool. Otherwise the spec's name: a library crate, or a crate whose tools are
    all something else, gets that binary from the coder (`src/bin/<name>.rs`), and until then its
    acceptance cases fail to compile, which is what the coder is told."""
    if spec.name in tool_bins or spec.name in all_bins:
        return spec.name
    if crate_name in tool_bins:
        return crate_name
    if len(tool_bins) == 1:
        return tool_bins[0]
    return spec.name


def binary_note(bin_name: str, tool_bins: Sequence[str], all_bins: Sequence[str]) -> str:
    """What the coder is told about the binary the acceptance cases run."""
    if bin_name in all_bins:
        return f"the acceptance cases run the binary `{bin_name}`."
    have = ", ".join(f"`{name}`" for name in all_bins) or "none"
    return (
        f"the acceptance cases run the binary `{bin_name}`, which the crate does not have yet "
        f"(its binaries: {have}). Create it: `src/bin/{bin_name}.rs` with a `main` that uses the "
        "crate's library (add dependencies you need, such as an argument parser, from the "
        "registry as dependency changes)."
    )


def install(root: Path, spec: ToolSpec, bin_name: str, *, registry_has_regex: bool) -> Path:
    """Write the acceptance test into the package at `root`, with what it needs in Cargo.toml.

    The package is a fork's, which a sandboxed stage may have changed: both files are written
    without following symlinks (flakebot.fork_files)."""
    fork_files.write_text(root, TEST_PATH, acceptance_source(spec, bin_name))
    try:
        document = tomlkit.parse(fork_files.read_text(root, "Cargo.toml") or "")
    except tomlkit.exceptions.ParseError as exc:
        raise ForkError(f"the fork's Cargo.toml does not parse: {exc}") from None
    changed = False
    if needs_regex(spec):
        if not registry_has_regex:
            raise SpecError(
                "a regex stdout check needs the regex crate, which the registry lacks",
                hint="use 'contains' or 'exact' checks, or install librust-regex-dev",
            )
        dev = document.get("dev-dependencies")
        if not isinstance(dev, Table):
            dev = tomlkit.table()
            document["dev-dependencies"] = dev
        if "regex" not in dev:
            dev["regex"] = "1"
            changed = True
    package = document.get("package")
    if isinstance(package, Table) and package.get("autotests") is False:
        tests = document.get("test")
        entries = tests if isinstance(tests, AoT) else tomlkit.aot()
        if not any(entry.get("name") == TEST_NAME for entry in entries):
            entry = tomlkit.table()
            entry["name"] = TEST_NAME
            entry["path"] = TEST_PATH
            entries.append(entry)
            document["test"] = entries
            changed = True
    if changed:
        fork_files.write_text(root, "Cargo.toml", tomlkit.dumps(document))
    return root / TEST_PATH
