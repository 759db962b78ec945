"""The code step: a batch of candidates raced from fork to their last test.

`Race.run` develops every candidate of a batch at once and takes their results in completion
order: the first green one wins (with `all_candidates`, the best green one by score), and the
rest are cancelled and cleaned at once. A candidate ends the moment it is decided, however it
ends (red, crashed, timed out, cancelled, superseded): its roles are ended (`end` frees what they
hold, a node's cargo slot included) and its files cleaned. Each candidate has the code step's
deadline from fork to its last test, and while the race waits a `progress_reported` event says
for what, at least every `heartbeat_s`.

A resumed run (flakebot.resume) races what its journal left undecided: a candidate that won is
taken as it is when its fork is still at the green commit (not tested again), a failed one stays
failed, and the rest are developed again, each going on from its own journal (flakebot.coder).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

from flakebot.errors import StepTimedOut
from flakebot.failures import result_reason, step_failed
from flakebot.recorder import Recorder
from flakebot.resume import RunHistory
from flakebot.runplan import RunPlan
from messages import (
    CandidateResult,
    CleanupRequest,
    CrateCandidate,
    StepFailed,
    ToolSpec,
    Workspace,
)
from messages.deploy import CleanupReason

if TYPE_CHECKING:
    from flakebot.supervisor import Roles

log = structlog.get_logger()
END_TIMEOUT_S = 60.0
CLEAN_TIMEOUT_S = 900.0

Developed = tuple[Workspace | None, CandidateResult | StepFailed]


@dataclass
class Winner:
    candidate: CrateCandidate
    workspace: Workspace
    result: CandidateResult


@dataclass
class Race:
    """Races one run's batches; knows which candidates are live, to end them all on failure."""

    roles: Roles
    recorder: Recorder
    plan: RunPlan
    all_candidates: bool = False
    heartbeat_s: float = 30.0
    fork_head: Callable[[str], str | None] = lambda candidate_id: None  # where a fork is now
    live: set[str] = field(default_factory=set)

    @property
    def run_id(self) -> str:
        return self.recorder.run_id

    def _progress(self, detail: str, started: float) -> None:
        waited = int(time.monotonic() - started)
        self.recorder.event("code", "progress_reported", f"{detail} ({waited} s)", waited_s=waited)

    async def _develop(self, candidate: CrateCandidate, spec: ToolSpec) -> Developed:
        """One candidate from fork to its last test; never raises but on cancellation."""
        limit = self.plan.step("code").deadline
        try:
            async with asyncio.timeout(limit) as timer:
                return await self.roles.develop(candidate, spec)
        except TimeoutError as exc:
            error: BaseException = (
                StepTimedOut(f"candidate {candidate.candidate_id}", limit)
                if timer.expired()
                else exc
            )
        except Exception as exc:  # a crashed or lost role: one failed candidate, not a run
            error = exc
        return None, step_failed(self.run_id, "code", error, candidate_id=candidate.candidate_id)

    def _decided(
        self, candidates: list[CrateCandidate], history: RunHistory
    ) -> tuple[list[Winner], list[CrateCandidate]]:
        """Of a journalled batch: the green candidates whose fork is still at the green commit
        (not tested again), and the candidates with no result yet (developed, going on from
        their journal). A failed candidate stays failed."""
        reused: list[Winner] = []
        pending: list[CrateCandidate] = []
        for candidate in candidates:
            candidate_id = candidate.candidate_id
            green = history.green(candidate_id)
            head = green[1].head_commit if green is not None else None
            if green is not None and head is not None and self.fork_head(candidate_id) == head:
                workspace, result = green
                self.recorder.event(
                    "code",
                    "candidate_reused",
                    f"green at {head[:12]}, as journalled",
                    candidate_id=candidate_id,
                )
                reused.append(Winner(candidate, workspace, result))
            elif green is not None or (
                candidate_id not in history.ended and candidate_id not in history.results
            ):
                pending.append(candidate)
        return reused, pending

    async def run(
        self, candidates: list[CrateCandidate], spec: ToolSpec, history: RunHistory
    ) -> Winner | None:
        events = self.recorder
        for candidate in candidates:  # failed, and killed before it was cleaned
            candidate_id = candidate.candidate_id
            failed = candidate_id in history.results and history.green(candidate_id) is None
            if failed and candidate_id not in history.ended:
                await self.clean(candidate_id, "failed")
        winners, candidates = self._decided(candidates, history)
        if winners and not self.all_candidates:
            for candidate in candidates:  # never started again: cleaned as cancelled
                await self.end(candidate.candidate_id)
                await self.clean(candidate.candidate_id, "cancelled")
            return winners[0]
        running: dict[asyncio.Task[Developed], CrateCandidate] = {}
        for candidate in candidates:
            events.event(
                "code", "candidate_started", candidate.name, candidate_id=candidate.candidate_id
            )
            self.live.add(candidate.candidate_id)
            running[asyncio.ensure_future(self._develop(candidate, spec))] = candidate
        started = time.monotonic()
        try:
            while running:
                done, _ = await asyncio.wait(
                    running, timeout=self.heartbeat_s, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    waiting = ", ".join(c.candidate_id for c in running.values())
                    self._progress(f"waiting for {waiting}", started)
                    continue
                for task in done:
                    candidate = running.pop(task)
                    workspace, outcome = task.result()
                    if workspace is not None:
                        events.record(workspace)
                    events.record(outcome)
                    green = isinstance(outcome, CandidateResult) and outcome.status == "green"
                    if green and workspace is not None:
                        assert isinstance(outcome, CandidateResult)
                        if outcome.reused_from is not None:
                            events.event(
                                "code",
                                "result_reused",
                                f"the verified result of run {outcome.reused_from}: the same "
                                "spec, model, crate version and toolchain",
                                candidate_id=candidate.candidate_id,
                            )
                        name = "candidate_passed" if self.all_candidates else "candidate_won"
                        detail = f"green after {outcome.attempts} attempts"
                        events.event("code", name, detail, candidate_id=candidate.candidate_id)
                        winners.append(Winner(candidate, workspace, outcome))
                    else:
                        await self.end(candidate.candidate_id)
                        events.event(
                            "code",
                            "candidate_failed",
                            result_reason(outcome)[:500],
                            candidate_id=candidate.candidate_id,
                        )
                        await self.clean(candidate.candidate_id, "failed")
                if winners and not self.all_candidates:
                    await self._cancel(running)
                    running = {}
                    return winners[0]
        finally:
            for task in running:  # the race itself was cancelled or failed: end what runs
                task.cancel()
            for candidate in running.values():
                await self.end(candidate.candidate_id)
        if not winners:
            return None
        best = max(winners, key=lambda winner: winner.candidate.score)
        for other in winners:
            if other is not best:
                await self.end(other.candidate.candidate_id)
                await self.clean(other.candidate.candidate_id, "superseded")
        return best

    async def end(self, candidate_id: str) -> None:
        """End a candidate's roles (they free what they hold); idempotent, never raises."""
        self.live.discard(candidate_id)
        try:
            await asyncio.wait_for(self.roles.end_candidate(candidate_id), END_TIMEOUT_S)
        except Exception as exc:
            log.warning("candidate_end_failed", candidate=candidate_id, error=str(exc))

    async def _cancel(self, running: dict[asyncio.Task[Developed], CrateCandidate]) -> None:
        for task, candidate in running.items():
            task.cancel()
            await self.end(candidate.candidate_id)
            self.recorder.event(
                "code",
                "candidate_cancelled",
                "another candidate won",
                candidate_id=candidate.candidate_id,
            )
            await self.clean(candidate.candidate_id, "cancelled")
        await asyncio.gather(*running, return_exceptions=True)

    async def clean(self, candidate_id: str | None, reason: CleanupReason) -> None:
        request = CleanupRequest(run_id=self.run_id, candidate_id=candidate_id, reason=reason)
        self.recorder.record(request)
        try:
            report = await asyncio.wait_for(self.roles.clean(request), CLEAN_TIMEOUT_S)
        except Exception as exc:  # cleaning must not end a run; the janitor can run again later
            self.recorder.event(
                "clean",
                "cleanup_failed",
                f"{type(exc).__name__}: {exc}"[:500],
                candidate_id=candidate_id,
            )
            log.warning("cleanup_failed", candidate=candidate_id, error=str(exc))
            return
        self.recorder.record(report)
