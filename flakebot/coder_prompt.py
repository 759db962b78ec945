"""What the coder's model is shown: the spec, the fork, the crate's API, its memory, the last test.

Each part is bounded, so a big crate or a long run cannot blow up a prompt:

- the tool spec, and which binary the acceptance cases run (and, when the crate lacks it, that
  the model must create it);
- the fork's files, its features, and the sources that matter now (Cargo.toml, the binary, the
  files the errors and failing tests point at, the library root);
- the library's public API, parsed from its source (flakebot.crate_api), with the crate docs
  where its usage examples are; larger when the binary must still be written;
- every earlier attempt of this candidate (what it tried, what it edited, how it came out), so a
  fix that failed is not tried again; rebuilt from the fork's history, which only Flakebot writes;
- the last test report: compiler errors with file and line, failing tests with their output.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from flakebot import fork_files
from flakebot.acceptance import binary_note
from flakebot.crate_api import public_api
from flakebot.crates.cargo_toml import CrateRecord
from flakebot.fork_files import UnsafePath
from messages import EditProposal, TestReport, ToolSpec, Workspace

SOURCE_CHARS = 30_000
TOTAL_SOURCE_CHARS = 90_000
TREE_ENTRIES = 300
API_CHARS_TO_WRITE_A_BINARY = 14_000
API_CHARS = 5_000
README_CHARS = 3_000
HISTORY_CHARS = 6_000
ATTEMPT_PREFIX = "attempt "


@dataclass(frozen=True)
class AttemptRecord:
    """One earlier attempt, as the model is reminded of it."""

    attempt: int
    summary: str
    edits: tuple[str, ...]
    outcome: str

    def render(self) -> str:
        edited = f" ({', '.join(self.edits)})" if self.edits else ""
        return f"- attempt {self.attempt}: {self.summary}{edited}\n  -> {self.outcome}"


def edits_of(proposal: EditProposal) -> tuple[str, ...]:
    done = [f"{edit.op} {edit.path}" for edit in proposal.edits]
    done += [f"{change.action} dependency {change.crate}" for change in proposal.dependency_changes]
    return tuple(done)


def commit_message(record: AttemptRecord) -> str:
    """The attempt's commit message. Its history is read back from these lines (and Flakebot's
    own, `upstream lints:` and `pruned:`), so what the model or a test wrote stays on the one
    line it belongs to: a newline in a summary or a compiler message would forge a line."""
    lines = [
        f"{ATTEMPT_PREFIX}{record.attempt}: {_one_line(record.summary)}",
        "",
        f"outcome: {_one_line(record.outcome)}",
    ]
    if record.edits:
        lines.append(f"edits: {_one_line('; '.join(record.edits))}")
    return "\n".join(lines)


def _one_line(text: str) -> str:
    return " ".join(text.splitlines())


def history_from_commits(messages: list[str]) -> list[AttemptRecord]:
    """The attempts recorded in the fork's history (commit messages Flakebot wrote)."""
    found = []
    for message in messages:
        first, _, body = message.partition("\n")
        number, colon, summary = first.removeprefix(ATTEMPT_PREFIX).partition(": ")
        if not first.startswith(ATTEMPT_PREFIX) or not colon or not number.isdigit():
            continue
        fields = dict(
            line.split(": ", 1)
            for line in body.splitlines()
            if line.startswith(("outcome: ", "edits: "))
        )
        edits = tuple(part for part in fields.get("edits", "").split("; ") if part)
        found.append(AttemptRecord(int(number), summary, edits, fields.get("outcome", "?")))
    return found


def render_history(history: list[AttemptRecord]) -> str:
    """Earlier attempts, newest kept when the bound is reached."""
    lines: list[str] = []
    used = 0
    for record in reversed(history):
        text = record.render()
        if used + len(text) > HISTORY_CHARS:
            lines.append(f"- ... {len(history) - len(lines)} earlier attempts not shown")
            break
        lines.append(text)
        used += len(text)
    return "\n".join(reversed(lines))


def report_summary(report: TestReport) -> str:
    """The last TestReport as the model reads it: what failed, where, and the output."""
    lines = [f"Result of attempt {report.attempt}: {'GREEN' if report.green else 'RED'}."]
    for stage in report.stages:
        lines.append(f"- {stage.stage}: {stage.status} ({stage.duration_s:.1f} s)")
    errors = report.errors[:10]
    if errors:
        lines.append("\nCompiler errors:")
        lines += [(error.rendered or error.message).strip()[:3_000] for error in errors]
    failed = report.failed_tests[:10]
    if failed:
        lines.append("\nFailing tests:")
        for test in failed:
            lines.append(f"--- {test.name}\n{test.output.strip()[:2_000]}")
    for stage in report.stages:
        if stage.status in ("timed_out", "error") or (
            stage.status == "failed" and not stage.diagnostics and not stage.tests
        ):
            lines.append(f"\n{stage.stage} log:\n{stage.log_tail[-2_000:]}")
    return "\n".join(lines)


def coder_prompt(
    workspace: Workspace,
    spec: ToolSpec,
    crate: CrateRecord,
    bin_name: str,
    report: TestReport,
    feedback: list[str],
    history: list[AttemptRecord],
) -> str:
    root = Path(workspace.path)
    package = fork_files.package_root(root, Path(workspace.manifest_path).parent.as_posix())
    spec_yaml = yaml.safe_dump(
        spec.model_dump(mode="json", exclude={"kind", "run_id", "protocol_version"}),
        sort_keys=False,
    )
    missing = bin_name not in crate.bin_names
    features = ", ".join(sorted(crate.features)) or "none"
    sections = [
        f"# The tool spec\n{spec_yaml}",
        f"# The fork\n{workspace.crate_name} {workspace.crate_version}: "
        f"{binary_note(bin_name, crate.tool_bins, crate.bin_names)}\n"
        f"Its features: {features}.\nFiles:\n" + "\n".join(_tree(root)),
    ]
    api = public_api(package, workspace.crate_name.replace("-", "_")) if crate.has_lib else None
    if api is not None:
        bound = API_CHARS_TO_WRITE_A_BINARY if missing else API_CHARS
        text = api.render(bound)
        if len(api.docs) < 500 and crate.readme:
            text = f"README:\n{crate.readme[:README_CHARS]}\n\n{text}"
        sections.append("# The crate's public API (from its source)\n" + text)
    sections.append("# Relevant sources\n" + _sources(package, report, bin_name))
    if history:
        sections.append(
            "# Your earlier attempts (do not repeat a fix that failed)\n" + render_history(history)
        )
    sections.append("# Last test report\n" + report_summary(report))
    if feedback:
        sections.append("# Problems with your previous reply\n" + "\n".join(feedback))
    return "\n\n".join(sections)


def _tree(root: Path) -> list[str]:
    entries = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if relative.parts[0] in (".git", "target") or path.is_symlink() or not path.is_file():
            continue
        entries.append(str(relative))
        if len(entries) >= TREE_ENTRIES:
            entries.append("...")
            break
    return entries


def _sources(root: Path, report: TestReport, bin_name: str) -> str:
    wanted = ["Cargo.toml", "src/main.rs", f"src/bin/{bin_name}.rs", f"src/bin/{bin_name}/main.rs"]
    wanted += [error.file for error in report.errors if error.file]
    for test in report.failed_tests:
        for token in test.output.split():
            if token.startswith("src/") and ".rs:" in token:
                wanted.append(token.split(":", 1)[0])
    wanted.append("src/lib.rs")
    shown: list[str] = []
    total = 0
    for relative in dict.fromkeys(wanted):
        try:
            text = fork_files.read_text(root, relative, limit=SOURCE_CHARS * 8)
        except UnsafePath:
            continue  # a symlink or a special file: nothing of the host reaches the model
        if text is None:
            continue
        text = text[:SOURCE_CHARS]
        if total + len(text) > TOTAL_SOURCE_CHARS:
            break
        total += len(text)
        shown.append(f"## {relative}\n```\n{text}\n```")
    return "\n\n".join(shown)
