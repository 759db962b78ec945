"""The coder and its loop: ask the model for edits, apply them, test, feed the results back.

`CodeLoop.run` first installs the spec's acceptance cases and tests the fork as it is; a crate that
already passes gets no edit. Otherwise each attempt asks the model for an EditProposal (shown the
spec, the fork's files, the relevant sources and the last TestReport), applies it safely, commits
it with its outcome, and tests it. The loop ends green, or at `max_attempts`, or when the budget
(tokens, calls, seconds, money) runs out, and the CandidateResult says which. A reply that does
not validate, or edits that cannot apply, are fed back and cost an attempt; they never crash a run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog
import yaml
from pydantic import BaseModel, ConfigDict, Field

from flakebot import acceptance, fork_files
from flakebot.crate_index import CrateIndex
from flakebot.edits import apply_proposal
from flakebot.errors import BudgetExceeded, ModelReplyInvalid, ModelUnavailable
from flakebot.fork_files import UnsafePath
from flakebot.models import CallContext, ChatMessage, Model, Transcript, ask
from flakebot.models.budget import RunBudget
from flakebot.planner import prompt
from flakebot.tester import Tester
from flakebot.workspace import Forker
from messages import (
    CandidateResult,
    DependencyChange,
    EditProposal,
    FileEdit,
    TestReport,
    ToolSpec,
    Workspace,
)
from messages.base import NonEmptyText
from messages.coding import EndedBy

log = structlog.get_logger()

SOURCE_CHARS = 30_000
TOTAL_SOURCE_CHARS = 90_000
TREE_ENTRIES = 300


class EditDraft(BaseModel):
    """What the model is asked for: an EditProposal without the ids the loop supplies."""

    model_config = ConfigDict(extra="forbid")

    summary: NonEmptyText
    edits: list[FileEdit] = Field(default_factory=list)
    dependency_changes: list[DependencyChange] = Field(default_factory=list)


@dataclass(frozen=True)
class AttemptOutcome:
    """What one attempt came to, for progress displays: a report, or why nothing was tested."""

    attempt: int
    summary: str
    report: TestReport | None
    problems: list[str]


class TestRunner(Protocol):
    """Runs the tester somewhere: in this process (LocalTestRunner) or in a tester actor."""

    async def test(
        self, workdir: Path, target_dir: Path, *, run_id: str, candidate_id: str, attempt: int
    ) -> TestReport: ...


@dataclass
class LocalTestRunner:
    """The tester in this process, off the event loop."""

    tester: Tester

    async def test(
        self, workdir: Path, target_dir: Path, *, run_id: str, candidate_id: str, attempt: int
    ) -> TestReport:
        return await asyncio.to_thread(
            self.tester.test,
            workdir,
            target_dir,
            run_id=run_id,
            candidate_id=candidate_id,
            attempt=attempt,
        )


@dataclass
class CodeLoop:
    """Runs the edit-test loop for one candidate."""

    model: Model
    forker: Forker
    tester: TestRunner
    registry: CrateIndex
    budget: RunBudget
    transcript: Transcript
    max_attempts: int = 4
    on_attempt: Callable[[AttemptOutcome], None] | None = None

    def _tell(self, outcome: AttemptOutcome) -> None:
        if self.on_attempt is not None:
            self.on_attempt(outcome)

    async def run(
        self,
        workspace: Workspace,
        spec: ToolSpec,
        *,
        evidence: str | None = None,
        first_attempt: int = 1,
    ) -> CandidateResult:
        """Edit and test until green or a bound. With `evidence` (a later step's failure, e.g. a
        Nix build log), the model is asked to fix that even though the tests pass."""
        root = Path(workspace.path)
        package = root / Path(workspace.manifest_path).parent  # a workspace member, or the root
        bound = log.bind(candidate=workspace.candidate_id)
        bin_name = acceptance.choose_binary(spec, workspace.bin_names, workspace.crate_name)
        self._install_acceptance(package, spec, bin_name)
        self.forker.commit(workspace, f"flakebot: acceptance cases of {spec.name}")
        report = await self._test(workspace, attempt=first_attempt - 1)
        self._tell(AttemptOutcome(first_attempt - 1, "the fork as it is", report, []))
        if report.green and evidence is None:
            bound.info("candidate_green", attempts=0, note="passed before any edit")
            return self._result(workspace, report, "green", attempts=0)
        feedback: list[str] = []
        if evidence is not None:
            feedback = ["The tests pass, but a later step failed; fix this:", evidence[-6_000:]]
        attempt = first_attempt - 1
        last_attempt = first_attempt - 1 + self.max_attempts
        ended_by: EndedBy = "max_attempts"
        detail = ""
        while attempt < last_attempt:
            attempt += 1
            try:
                proposal = await self._propose(workspace, spec, bin_name, report, feedback, attempt)
            except BudgetExceeded as exc:
                ended_by, detail = exc.bound, exc.message  # type: ignore[assignment]
                attempt -= 1
                break
            except ModelReplyInvalid as exc:
                feedback = [f"Your last {len(exc.replies)} replies were not valid JSON edits."]
                self._tell(AttemptOutcome(attempt, "no valid reply", None, [exc.message]))
                continue
            except ModelUnavailable as exc:
                ended_by, detail = "error", exc.message
                break
            problems = apply_proposal(root, proposal, self.registry.versions)
            if problems:
                bound.warning("edits_rejected", attempt=attempt, problems=problems)
                feedback = ["Your last edits were not applied:", *problems]
                self._tell(AttemptOutcome(attempt, proposal.summary, None, problems))
                continue
            feedback = []
            self._install_acceptance(
                package, spec, bin_name
            )  # edits may not change the spec's cases
            report = await self._test(workspace, attempt=attempt)
            commit = self.forker.commit(
                workspace, f"attempt {attempt}: {proposal.summary}\n\n{_outcome(report)}"
            )
            report = report.model_copy(update={"commit": commit})
            self._tell(AttemptOutcome(attempt, proposal.summary, report, []))
            if report.green:
                bound.info("candidate_green", attempts=attempt)
                return self._result(workspace, report, "green", attempts=attempt)
        bound.info("candidate_failed", attempts=attempt, ended_by=ended_by)
        return self._result(workspace, report, ended_by, attempts=attempt, detail=detail)

    def _install_acceptance(self, root: Path, spec: ToolSpec, bin_name: str) -> None:
        has_regex = bool(self.registry.versions("regex"))
        acceptance.install(root, spec, bin_name, registry_has_regex=has_regex)

    async def _test(self, workspace: Workspace, *, attempt: int) -> TestReport:
        return await self.tester.test(
            Path(workspace.path),
            Path(workspace.target_dir),
            run_id=workspace.run_id,
            candidate_id=workspace.candidate_id,
            attempt=attempt,
        )

    async def _propose(
        self,
        workspace: Workspace,
        spec: ToolSpec,
        bin_name: str,
        report: TestReport,
        feedback: list[str],
        attempt: int,
    ) -> EditProposal:
        messages = [
            ChatMessage(role="system", content=prompt("coder")),
            ChatMessage(
                role="user", content=coder_prompt(workspace, spec, bin_name, report, feedback)
            ),
        ]
        draft = await ask(
            self.model,
            messages,
            EditDraft,
            context=CallContext(
                role="coder", step="code", candidate_id=workspace.candidate_id, attempt=attempt
            ),
            budget=self.budget,
            transcript=self.transcript,
        )
        return EditProposal(
            run_id=workspace.run_id,
            candidate_id=workspace.candidate_id,
            attempt=attempt,
            **draft.model_dump(),
        )

    def _result(
        self,
        workspace: Workspace,
        report: TestReport,
        ended_by: EndedBy,
        *,
        attempts: int,
        detail: str = "",
    ) -> CandidateResult:
        repo_head = self.forker.attempts(workspace)[-1].commit
        return CandidateResult(
            run_id=workspace.run_id,
            candidate_id=workspace.candidate_id,
            crate_name=workspace.crate_name,
            crate_version=workspace.crate_version,
            status="green" if ended_by == "green" else "failed",
            ended_by=ended_by,
            attempts=attempts,
            workspace_path=workspace.path,
            head_commit=repo_head,
            last_report=report,
            detail=detail,
        )


def _outcome(report: TestReport) -> str:
    stages = ", ".join(f"{stage.stage} {stage.status}" for stage in report.stages)
    failed = len(report.failed_tests)
    return f"tests: {'green' if report.green else 'red'} ({stages}; {failed} failing tests)"


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
        if stage.status in ("timed_out", "error"):
            lines.append(f"\n{stage.stage} log:\n{stage.log_tail[-2_000:]}")
    return "\n".join(lines)


def coder_prompt(
    workspace: Workspace, spec: ToolSpec, bin_name: str, report: TestReport, feedback: list[str]
) -> str:
    root = Path(workspace.path)
    spec_yaml = yaml.safe_dump(
        spec.model_dump(mode="json", exclude={"kind", "run_id", "protocol_version"}),
        sort_keys=False,
    )
    sections = [
        f"# The tool spec\n{spec_yaml}",
        f"# The fork\n{workspace.crate_name} {workspace.crate_version}; the acceptance cases run "
        f"the binary `{bin_name}`.\nFiles:\n" + "\n".join(_tree(root)),
        "# Relevant sources\n" + _sources(root, report, bin_name),
        "# Last test report\n" + report_summary(report),
    ]
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
