"""What `flakebot status` shows: a run's state, step, candidates, attempts, timings and disk.

Everything comes from Flakebot's own records: the durable journal (flakebot.journal) for what
happened, the run's lock (runstate) for whether a process still runs it (a `running` run nobody
holds is `killed`), and its resources record for what it holds on disk now.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from flakebot.journal import Journal, RunRow
from flakebot.runstate import RunRecord
from flakebot.trees import disk_usage
from messages import CandidateResult, CrateCandidate, Deployment, RunEvent

OUTCOMES = {
    "candidate_won": "won",
    "candidate_failed": "failed",
    "candidate_cancelled": "cancelled",
}


@dataclass
class CandidateStatus:
    candidate_id: str
    crate: str
    version: str
    outcome: str = "running"  # running | green | won | failed | cancelled | deployed
    attempts: int | None = None


@dataclass
class Held:
    kind: str
    path: str
    bytes: int | None  # None: gone from disk (or not a path: a service URL)


@dataclass
class RunStatus:
    run_id: str
    state: str  # running | finished | failed | killed
    step: str | None
    tool: str | None
    reason: str | None
    started_at: float
    ended_at: float | None
    seconds: float
    candidates: list[CandidateStatus] = field(default_factory=list)
    store_path: str | None = None
    held: list[Held] = field(default_factory=list)


def state_of(home: Path, row: RunRow) -> str:
    if row.state == "running" and not RunRecord(home, row.run_id).in_progress():
        return "killed"
    return row.state


def run_status(home: Path, journal: Journal, row: RunRow, *, disk: bool = True) -> RunStatus:
    """The status of one run, from its journal entries and its record."""
    state = state_of(home, row)
    end = row.ended_at or (row.updated_at if state == "killed" else time.time())
    status = RunStatus(
        run_id=row.run_id,
        state=state,
        step=row.step,
        tool=row.tool,
        reason=row.reason,
        started_at=row.started_at,
        ended_at=row.ended_at,
        seconds=round(end - row.started_at, 1),
    )
    candidates: dict[str, CandidateStatus] = {}
    for entry in journal.entries(row.run_id):
        message = entry.message
        if isinstance(message, CrateCandidate):
            candidates[message.candidate_id] = CandidateStatus(
                message.candidate_id, message.name, message.version
            )
        elif isinstance(message, CandidateResult) and message.candidate_id in candidates:
            known = candidates[message.candidate_id]
            known.outcome = message.status
            known.attempts = message.attempts
        elif isinstance(message, RunEvent) and message.candidate_id in candidates:
            outcome = OUTCOMES.get(message.event)
            if outcome is not None:
                candidates[message.candidate_id].outcome = outcome
        elif isinstance(message, Deployment):
            status.store_path = message.store_path
            if message.candidate_id in candidates:
                candidates[message.candidate_id].outcome = "deployed"
    status.candidates = list(candidates.values())
    if disk:
        status.held = held(home, row.run_id)
    return status


def held(home: Path, run_id: str) -> list[Held]:
    """What the run's record says it made, with the bytes each still takes on disk."""
    found = []
    for item in RunRecord(home, run_id).items():
        if item.kind == "service":
            found.append(Held(item.kind, item.path, None))
            continue
        found.append(Held(item.kind, item.path, disk_usage(Path(item.path))))
    return found
