"""What a run already did, read back from its journal: where `flakebot resume` goes on.

A run's journal is the supervisor's record of every step's input and output, in order (and the
coders' proposals and test reports, and, in their own table, the model's replies). `RunHistory`
reads it back into the saved result of each step: how the run was started, the request, the
spec (planned or widened last), the crate batches with what was decided of each candidate, the
backtracks taken, the last deployment and the manifest. The supervisor then skips every step
whose result is saved and goes on at the first that has none (flakebot.supervisor).

`check_resumable` says whether a run can go on, and if not, why, in words for the user: a run
still running, finished or failed (a failed run was cleaned) is not resumed; a killed one is.
A fork is reused only when it is still there at the commit the journal names (`fork_head`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pygit2

from flakebot.errors import ConfigError, RunBusy
from flakebot.journal import Journal
from flakebot.runstate import RunRecord
from messages import (
    AnyMessage,
    CandidateResult,
    CrateCandidate,
    CrateQuery,
    Deployment,
    RunEvent,
    RunStarted,
    StepFailed,
    ToolManifest,
    ToolRequest,
    ToolSpec,
    Workspace,
)

ENDED_EVENTS = {"candidate_failed", "candidate_cancelled"}


@dataclass
class Batch:
    """One scouting round: the query and the candidates it found."""

    query: CrateQuery
    candidates: list[CrateCandidate] = field(default_factory=list)
    closed: bool = False  # the run backtracked past it


@dataclass
class RunHistory:
    """A run's saved step results, from its journal."""

    run_id: str
    started: RunStarted | None = None
    request: ToolRequest | ToolSpec | None = None
    spec: ToolSpec | None = None
    planned: bool = False  # the spec_planned event is journalled
    batches: list[Batch] = field(default_factory=list)
    workspaces: dict[str, Workspace] = field(default_factory=dict)
    results: dict[str, CandidateResult | StepFailed] = field(default_factory=dict)
    won: list[str] = field(default_factory=list)  # green candidates, in the order they won
    ended: set[str] = field(default_factory=set)  # failed, cancelled or superseded
    backtracks: int = 0
    deployment: Deployment | None = None
    manifest: ToolManifest | None = None
    last_step: str = "plan"

    @classmethod
    def of(cls, run_id: str, messages: list[AnyMessage]) -> RunHistory:
        history = cls(run_id)
        for message in messages:
            history._read(message)
        return history

    def _read(self, message: AnyMessage) -> None:
        match message:
            case RunStarted():
                self.started = message
            case ToolRequest():
                self.request = message
            case ToolSpec():
                if self.request is None:
                    self.request = message
                self.spec = message
            case CrateQuery():
                self.batches.append(Batch(message))
            case CrateCandidate() if self.batches:
                self.batches[-1].candidates.append(message)
            case Workspace():
                self.workspaces[message.candidate_id] = message
            case CandidateResult():
                self.results[message.candidate_id] = message
            case StepFailed() if message.candidate_id is not None and message.step != "deploy":
                self.results[message.candidate_id] = message
            case Deployment():
                self.deployment = message
            case ToolManifest():
                self.manifest = message
            case RunEvent():
                self._read_event(message)

    def _read_event(self, event: RunEvent) -> None:
        if event.step != "run":
            self.last_step = event.step
        if event.event == "spec_planned":
            self.planned = True
        elif event.event in ("candidate_won", "candidate_passed") and event.candidate_id:
            self.won.append(event.candidate_id)
        elif event.event in ENDED_EVENTS and event.candidate_id:
            self.ended.add(event.candidate_id)
        elif event.event == "run_backtracked":
            self.backtracks = int(event.data.get("count") or self.backtracks + 1)
            if self.batches and event.data.get("to") in ("scout", "plan"):
                self.batches[-1].closed = True

    @property
    def open_batch(self) -> Batch | None:
        """The batch the run was racing when it stopped, if it was not done with it."""
        if self.batches and not self.batches[-1].closed and self.batches[-1].candidates:
            return self.batches[-1]
        return None

    def tried(self) -> list[str]:
        return [candidate.name for batch in self.batches for candidate in batch.candidates]

    def green(self, candidate_id: str) -> tuple[Workspace, CandidateResult] | None:
        """A candidate that won, its workspace and green result, as journalled."""
        result = self.results.get(candidate_id)
        workspace = self.workspaces.get(candidate_id)
        if candidate_id not in self.won or workspace is None:
            return None
        if not isinstance(result, CandidateResult) or result.status != "green":
            return None
        return workspace, result


def fork_head(home: Path, run_id: str, candidate_id: str) -> str | None:
    """The commit a fork Flakebot made in this run is at now; None if it is gone."""
    made = RunRecord(home, run_id).fork(candidate_id)
    if made is None or not (Path(made.workspace.path) / ".git").is_dir():
        return None
    try:
        repo = pygit2.Repository(made.workspace.path)
        return str(repo.head.target)
    except pygit2.GitError:
        return None


def check_resumable(journal: Journal, home: Path, run_id: str) -> RunHistory:
    """The run's history, if it can go on; else a ConfigError saying why and what to do."""
    row = journal.run(run_id)
    if row is None:
        raise ConfigError(
            f"there is no run {run_id} in the journal", hint="list the runs: flakebot status"
        )
    if row.state == "finished":
        raise ConfigError(
            f"run {run_id} finished; there is nothing to resume",
            hint=f"its manifest: flakebot status {run_id}",
        )
    if row.state == "failed":
        where = f" in the {row.step} step" if row.step else ""
        raise ConfigError(
            f"run {run_id} failed{where} and was cleaned: {row.reason}",
            hint="start it again with flakebot run",
        )
    if RunRecord(home, run_id).in_progress():
        raise RunBusy(
            f"run {run_id} is still running", hint=f"follow it: flakebot status {run_id} --follow"
        )
    history = RunHistory.of(run_id, [entry.message for entry in journal.entries(run_id)])
    if history.started is None or history.request is None:
        raise ConfigError(
            f"run {run_id} has no record of how it was started, so it cannot go on",
            hint="start it again with flakebot run",
        )
    return history
