"""The edit-test loop: the coder's proposed edits, the tester's report, a candidate's outcome."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints, model_validator

from messages.base import (
    CandidateId,
    CrateName,
    CrateVersion,
    FeatureName,
    Message,
    NonEmptyText,
    Part,
    RelativePath,
    RunId,
    VersionReq,
)

CommitId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{40}$")]


class WriteFile(Part):
    """Create a file or replace its whole content."""

    op: Literal["write"] = "write"
    path: RelativePath
    content: str


class ReplaceInFile(Part):
    """Replace one exact occurrence of `search` with `replace` in an existing file."""

    op: Literal["replace"] = "replace"
    path: RelativePath
    search: Annotated[str, StringConstraints(min_length=1)]
    replace: str


class DeleteFile(Part):
    """Delete a file."""

    op: Literal["delete"] = "delete"
    path: RelativePath


FileEdit = Annotated[WriteFile | ReplaceInFile | DeleteFile, Field(discriminator="op")]


class DependencyChange(Part):
    """Add or remove a dependency in Cargo.toml; applied with a TOML library, never a shell."""

    action: Literal["add", "remove"]
    crate: CrateName
    version_req: VersionReq | None = None
    features: list[FeatureName] = Field(default_factory=list)
    section: Literal["dependencies", "dev-dependencies", "build-dependencies"] = "dependencies"

    @model_validator(mode="after")
    def _add_needs_version(self) -> DependencyChange:
        if self.action == "add" and self.version_req is None:
            raise ValueError("adding a dependency needs version_req (e.g. '^1.0')")
        if self.action == "remove" and (self.version_req is not None or self.features):
            raise ValueError("removing a dependency takes only crate and section")
        return self


class EditProposal(Message):
    """One attempt's edits to a fork, as data."""

    kind: Literal["edit_proposal"] = "edit_proposal"
    candidate_id: CandidateId
    attempt: int = Field(ge=1)
    summary: NonEmptyText
    edits: list[FileEdit] = Field(default_factory=list)
    dependency_changes: list[DependencyChange] = Field(default_factory=list)


class Diagnostic(Part):
    """One compiler or clippy message."""

    level: Literal[
        "error", "warning", "note", "help", "failure-note", "error: internal compiler error"
    ]
    code: str | None = Field(default=None, description="e.g. E0308 or clippy::needless_return")
    message: str
    file: str | None = None
    line: int | None = Field(default=None, ge=1)
    column: int | None = Field(default=None, ge=1)
    rendered: str | None = None


class TestCaseResult(Part):
    """One test function's outcome."""

    __test__ = False  # not a pytest test class

    name: str
    status: Literal["passed", "failed", "ignored"]
    duration_s: float | None = Field(default=None, ge=0)
    output: str = Field(default="", description="Captured output of a failed test.")


Stage = Literal["build", "test", "clippy"]
StageStatus = Literal["passed", "failed", "timed_out", "skipped", "error"]


class StageResult(Part):
    """One cargo invocation in the sandbox."""

    stage: Stage
    status: StageStatus
    duration_s: float = Field(ge=0)
    exit_code: int | None = None
    diagnostics: list[Diagnostic] = Field(default_factory=list)
    tests: list[TestCaseResult] = Field(default_factory=list)
    log_tail: str = Field(default="", description="The end of stderr, for what JSON missed.")


class TestReport(Message):
    """What the tester found for one attempt of one candidate."""

    __test__ = False  # not a pytest test class

    kind: Literal["test_report"] = "test_report"
    candidate_id: CandidateId
    attempt: int = Field(ge=0, description="0 is the untouched fork.")
    commit: CommitId | None = None
    stages: list[StageResult] = Field(min_length=1)
    sandboxed: bool

    @property
    def green(self) -> bool:
        """Every stage that ran passed; a skipped stage (clippy when absent) does not count."""
        ran = [stage for stage in self.stages if stage.status != "skipped"]
        return bool(ran) and all(stage.status == "passed" for stage in ran)

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for stage in self.stages for d in stage.diagnostics if d.level == "error"]

    @property
    def failed_tests(self) -> list[TestCaseResult]:
        return [t for stage in self.stages for t in stage.tests if t.status == "failed"]


EndedBy = Literal[
    "green",
    "max_attempts",
    "token_budget",
    "call_budget",
    "time_budget",
    "money_budget",
    "cancelled",
    "error",
]


class CandidateResult(Message):
    """How a candidate's edit-test loop ended."""

    kind: Literal["candidate_result"] = "candidate_result"
    candidate_id: CandidateId
    crate_name: CrateName
    crate_version: CrateVersion
    status: Literal["green", "failed", "cancelled"]
    ended_by: EndedBy
    attempts: int = Field(ge=0)
    workspace_path: str
    head_commit: CommitId | None = None
    last_report: TestReport | None = None
    score: float = Field(default=0.0, ge=0)
    detail: str = ""
    reused_from: RunId | None = Field(
        default=None, description="The earlier run whose verified result this is, if reused."
    )

    @model_validator(mode="after")
    def _status_agrees(self) -> CandidateResult:
        if (self.status == "green") != (self.ended_by == "green"):
            raise ValueError("status 'green' goes with ended_by 'green' and only with it")
        if self.status == "cancelled" and self.ended_by != "cancelled":
            raise ValueError("status 'cancelled' goes with ended_by 'cancelled'")
        if self.status == "green" and (self.last_report is None or not self.last_report.green):
            raise ValueError("a green candidate needs a green last_report")
        return self
