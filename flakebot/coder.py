"""The coder and its loop: ask the model for edits, apply them, test, feed the results back.

`CodeLoop.run` first installs the spec's acceptance cases and tests the fork as it is; a crate that
already passes gets no edit. Otherwise each attempt asks the model for an EditProposal (see
flakebot.coder_prompt for what it is shown), applies it safely, commits it with its outcome, and
tests it. The loop ends green, or at `max_attempts`, or when the budget (tokens, calls, seconds,
money) runs out, and the CandidateResult says which. A reply that does not validate, or edits
that cannot apply, are fed back and cost an attempt; they never crash a run.

The binary the acceptance cases run is read from the fork before every test, as the edits left
it: a library crate has none at first, its cases fail to compile, and the model is told to write
it. Lints are judged against the unmodified crate: clippy errors the fork had before any edit
(deny-by-default lints in upstream code) are recorded in the fork's history and reported as
warnings from then on; what the edits add must be clean. The loop remembers every attempt of the
candidate (flakebot.coder_prompt.AttemptRecord), rebuilt from the fork's history when it starts.

With the run's journal, every proposal and every test report (with the commit it tested) is
committed to it. A loop that starts on a fork with journalled reports (a resumed run, a coder
whose process died and was restarted) puts the branch back to the last reported commit and goes
on from that report without testing it again; the model's replies after it come from the
journal too (flakebot.models.journalled), so nothing is done or asked twice.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import structlog
from pydantic import BaseModel, ConfigDict, Field

from flakebot import acceptance, fork_files
from flakebot.coder_prompt import (
    AttemptRecord,
    coder_prompt,
    commit_message,
    edits_of,
    history_from_commits,
)
from flakebot.crates.cargo_toml import CrateRecord, read_crate
from flakebot.crates.index import CrateIndex
from flakebot.edits import apply_proposal
from flakebot.errors import BudgetExceeded, ManifestError, ModelReplyInvalid, ModelUnavailable
from flakebot.failures import report_outcome
from flakebot.fork import Forker
from flakebot.journal import RunJournal
from flakebot.models import CallContext, ChatMessage, Model, Transcript, ask
from flakebot.models.budget import RunBudget
from flakebot.planner import prompt
from flakebot.run_store import ForkKeeper
from flakebot.runstate import RunRecord
from flakebot.tester import Tester
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

UPSTREAM_LINTS = "upstream lints: "
LOCK_TIMEOUT_S = 300.0


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
        self,
        workdir: Path,
        target_dir: Path,
        *,
        run_id: str,
        candidate_id: str,
        attempt: int,
        lint_warn: Sequence[str] = (),
    ) -> TestReport: ...


@dataclass
class LocalTestRunner:
    """The tester in this process, off the event loop."""

    tester: Tester

    async def test(
        self,
        workdir: Path,
        target_dir: Path,
        *,
        run_id: str,
        candidate_id: str,
        attempt: int,
        lint_warn: Sequence[str] = (),
    ) -> TestReport:
        return await asyncio.to_thread(
            self.tester.test,
            workdir,
            target_dir,
            run_id=run_id,
            candidate_id=candidate_id,
            attempt=attempt,
            lint_warn=lint_warn,
        )


def upstream_lints(report: TestReport) -> list[str]:
    """The clippy lints that alone failed the fork as published (none if anything else failed
    clippy, or the build did)."""
    stages = {stage.stage: stage for stage in report.stages}
    clippy, build = stages.get("clippy"), stages.get("build")
    if clippy is None or build is None or build.status != "passed" or clippy.status != "failed":
        return []
    errors = [d for d in clippy.diagnostics if d.level == "error"]
    codes = [d.code or "" for d in errors]
    if not errors or not all(code.startswith("clippy::") for code in codes):
        return []
    return sorted(set(codes))


@dataclass
class CodeLoop:
    """Runs the edit-test loop for one candidate (made once per candidate, and reused)."""

    model: Model
    forker: Forker
    tester: TestRunner
    registry: CrateIndex
    budget: RunBudget
    transcript: Transcript
    max_attempts: int = 4
    on_attempt: Callable[[AttemptOutcome], None] | None = None
    history: list[AttemptRecord] = field(default_factory=list)
    lint_warn: list[str] = field(default_factory=list)
    journal: RunJournal | None = None
    keeper: ForkKeeper | None = None  # where the fork is handed over after each report
    on_commit: Callable[[Workspace], None] | None = None  # after each commit, in a thread

    def _journal(self, workspace: Workspace, message: EditProposal | TestReport) -> None:
        if self.journal is not None:
            jsonl = self.forker.settings.home / "runs" / workspace.run_id / "journal.jsonl"
            self.journal.append(workspace.run_id, message, jsonl=jsonl)
        if self.keeper is not None and isinstance(message, TestReport) and message.commit:
            self._hand_over(workspace, message.commit)

    def _hand_over(self, workspace: Workspace, commit: str) -> None:
        """Hand the fork, at the commit just reported, to the run's home (flakebot.run_store)."""
        assert self.keeper is not None
        made = RunRecord(self.forker.settings.home, workspace.run_id).fork(workspace.candidate_id)
        if made is None:
            return  # not a fork this home made: nothing to hand over
        at = workspace.model_copy(update={"head_commit": commit})
        with tempfile.TemporaryDirectory(prefix="flakebot-bundle-") as scratch:
            bundle = self.forker.export_bundle(at, Path(scratch) / "fork.bundle")
            self.keeper.keep_fork(made.candidate, at, bundle.read_bytes())

    async def _committed(self, workspace: Workspace) -> None:
        if self.on_commit is not None:
            await asyncio.to_thread(self.on_commit, workspace)

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
        bound = log.bind(candidate=workspace.candidate_id)
        resumed = self._resume_point(workspace) if evidence is None else None
        self._remember(workspace)
        crate, bin_name = self._binary(package_of(workspace), spec, workspace)
        self._install_acceptance(package_of(workspace), spec, bin_name)
        if resumed is not None:  # its report is journalled: not tested again
            report, attempt = resumed, resumed.attempt
            bound.info("candidate_resumed", attempt=attempt, commit=report.commit)
            self._tell(AttemptOutcome(attempt, "resumed from the journal", report, []))
            if report.green:
                return self._result(workspace, report, "green", attempts=attempt)
        else:
            report = await self._baseline(workspace, spec, first_attempt - 1)
            if report.green and evidence is None:
                bound.info("candidate_green", attempts=0, note="passed before any edit")
                return self._result(workspace, report, "green", attempts=0)
            attempt = first_attempt - 1
        feedback: list[str] = []
        if evidence is not None:
            feedback = ["The tests pass, but a later step failed; fix this:", evidence[-6_000:]]
        last_attempt = first_attempt - 1 + self.max_attempts
        ended_by: EndedBy = "max_attempts"
        detail = ""
        while attempt < last_attempt:
            attempt += 1
            try:
                proposal = await self._propose(
                    workspace, spec, crate, bin_name, report, feedback, attempt
                )
            except BudgetExceeded as exc:
                ended_by, detail = exc.bound, exc.message  # type: ignore[assignment]
                attempt -= 1
                break
            except ModelReplyInvalid as exc:
                feedback = [f"Your last {len(exc.replies)} replies were not valid JSON edits."]
                self.history.append(AttemptRecord(attempt, "no valid reply", (), exc.message))
                self._tell(AttemptOutcome(attempt, "no valid reply", None, [exc.message]))
                continue
            except ModelUnavailable as exc:
                ended_by, detail = "error", exc.message
                break
            problems = apply_proposal(root, proposal, self.registry.versions)
            if problems:
                bound.warning("edits_rejected", attempt=attempt, problems=problems)
                feedback = ["Your last edits were not applied:", *problems]
                outcome = "not applied: " + "; ".join(problems)[:500]
                self.history.append(AttemptRecord(attempt, proposal.summary, (), outcome))
                self._tell(AttemptOutcome(attempt, proposal.summary, None, problems))
                continue
            feedback = []
            package = package_of(workspace)  # checked again: the last test ran in the fork
            crate, bin_name = self._binary(package, spec, workspace)  # as the edits left it
            self._install_acceptance(package, spec, bin_name)  # edits may not change the cases
            report = await self._test(workspace, attempt=attempt)
            record = AttemptRecord(
                attempt, proposal.summary, edits_of(proposal), report_outcome(report)
            )
            self.history.append(record)
            commit = self.forker.commit(workspace, commit_message(record))
            await self._committed(workspace)
            report = report.model_copy(update={"commit": commit})
            self._journal(workspace, report)
            self._tell(AttemptOutcome(attempt, proposal.summary, report, []))
            if report.green:
                bound.info("candidate_green", attempts=attempt)
                return self._result(workspace, report, "green", attempts=attempt)
        bound.info("candidate_failed", attempts=attempt, ended_by=ended_by)
        return self._result(workspace, report, ended_by, attempts=attempt, detail=detail)

    async def _baseline(self, workspace: Workspace, spec: ToolSpec, attempt: int) -> TestReport:
        """Test the fork with the acceptance cases and no edit, and commit the cases (with the
        upstream lints, when clippy failed the crate as published)."""
        baseline = attempt == 0 and not self.history and not self.lint_warn
        report = await self._test(workspace, attempt=attempt)
        if baseline and upstream_lints(report):
            self.lint_warn = upstream_lints(report)
            log.info("upstream_lints_recorded", lints=self.lint_warn)
            report = await self._test(workspace, attempt=attempt)
        lints = f"\n\n{UPSTREAM_LINTS}{', '.join(self.lint_warn)}" if self.lint_warn else ""
        commit = self.forker.commit(workspace, f"flakebot: acceptance cases of {spec.name}{lints}")
        await self._committed(workspace)
        report = report.model_copy(update={"commit": commit})
        self._journal(workspace, report)
        self._tell(AttemptOutcome(attempt, "the fork as it is", report, []))
        return report

    def _resume_point(self, workspace: Workspace) -> TestReport | None:
        """Where an interrupted loop of this candidate goes on (a resumed run, a restarted
        coder): the fork's last commit whose report is in the journal, with the branch put back
        to it. What came after it was never reported, so it is done again, with the journalled
        model replies. None on a first start: the fork is then put back to how it was made."""
        if self.journal is None:
            return None
        reports = {
            message.commit: message
            for message in self.journal.messages_of(
                workspace.run_id, "test_report", workspace.candidate_id
            )
            if isinstance(message, TestReport) and message.commit
        }
        history = self.forker.attempts(workspace)
        for attempt in reversed(history):
            if attempt.commit in reports:
                self.forker.reset(workspace, attempt.commit)
                return reports[attempt.commit]
        made = RunRecord(self.forker.settings.home, workspace.run_id).fork(workspace.candidate_id)
        if made is not None and history and history[-1].commit != made.workspace.head_commit:
            self.forker.reset(workspace, made.workspace.head_commit)  # killed in its first test
        return None

    def _remember(self, workspace: Workspace) -> None:
        """Rebuild the memory of this candidate from the fork's history (a new loop, or a new
        process, after earlier attempts)."""
        messages = [attempt.message for attempt in self.forker.attempts(workspace)]
        if not self.history:
            self.history = history_from_commits(messages)
        if not self.lint_warn:
            for message in messages:
                for line in message.splitlines():
                    if line.startswith(UPSTREAM_LINTS):
                        self.lint_warn = line[len(UPSTREAM_LINTS) :].split(", ")

    def _binary(
        self, package: Path, spec: ToolSpec, workspace: Workspace
    ) -> tuple[CrateRecord, str]:
        try:
            crate = read_crate(package)
        except ManifestError:  # the edits broke Cargo.toml: cargo will say how
            crate = CrateRecord(
                name=workspace.crate_name, version=workspace.crate_version, path=package
            )
        name = acceptance.choose_binary(
            spec, crate.tool_bins, workspace.crate_name, all_bins=crate.bin_names
        )
        return crate, name

    def prepare_export(self, root: Path, workspace: Workspace, spec: ToolSpec) -> None:
        """Make `root`, an export of the fork's head commit, what the fork will be after its
        first test: the acceptance cases installed, and Cargo.lock resolved again when they
        changed Cargo.toml (by cargo in the sandbox, in a copy of which only the lock is
        taken). A prebuild of the export then builds the dependencies its deploy will need."""
        relative = Path(workspace.manifest_path).parent
        package = fork_files.package_root(root, relative.as_posix())  # the export holds links
        manifest = fork_files.read_text(package, "Cargo.toml")
        _, bin_name = self._binary(package, spec, workspace)
        self._install_acceptance(package, spec, bin_name)
        if fork_files.read_text(package, "Cargo.toml") == manifest:
            return
        with tempfile.TemporaryDirectory(prefix="flakebot-lock-") as scratch:
            tree = Path(scratch) / "tree"
            shutil.copytree(root, tree, symlinks=True)
            metadata = ["cargo", "metadata", "--format-version", "1", "--offline"]
            done = self.forker.sandbox.run(
                [*metadata, "--manifest-path", str(tree / relative / "Cargo.toml")],
                workdir=tree,
                target_dir=Path(scratch) / "target",
                timeout=LOCK_TIMEOUT_S,
            )
            lock = fork_files.read_text(tree, "Cargo.lock")
            if done.ok and lock is not None:
                fork_files.write_text(root, "Cargo.lock", lock)
            else:
                log.warning("export_lock_not_resolved", error=done.stderr[-500:])

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
            lint_warn=self.lint_warn,
        )

    async def _propose(
        self,
        workspace: Workspace,
        spec: ToolSpec,
        crate: CrateRecord,
        bin_name: str,
        report: TestReport,
        feedback: list[str],
        attempt: int,
    ) -> EditProposal:
        text = coder_prompt(workspace, spec, crate, bin_name, report, feedback, self.history)
        messages = [
            ChatMessage(role="system", content=prompt("coder")),
            ChatMessage(role="user", content=text),
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
        proposal = EditProposal(
            run_id=workspace.run_id,
            candidate_id=workspace.candidate_id,
            attempt=attempt,
            **draft.model_dump(),
        )
        if self.journal is not None and not any(  # a replayed reply is journalled once
            isinstance(message, EditProposal) and message.attempt == attempt
            for message in self.journal.messages_of(
                workspace.run_id, "edit_proposal", workspace.candidate_id
            )
        ):
            self._journal(workspace, proposal)
        return proposal

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


def package_of(workspace: Workspace) -> Path:
    """The fork's package directory (a workspace member's, or the root), checked from the fork's
    root: a sandboxed stage may have replaced a component of it with a symlink out."""
    parent = Path(workspace.manifest_path).parent.as_posix()
    return fork_files.package_root(Path(workspace.path), parent)
