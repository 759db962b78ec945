"""The supervisor: follows a plan for one request, over whatever runs the roles.

Plan, scout, then develop a batch of candidates in parallel and take their results in completion
order: the first green one wins (with `all_candidates`, the best green one by score), and the rest
are cancelled and cleaned at once. Deploy the winner, then write the manifest. When a later step
fails for a reason an earlier step owns, the supervisor goes back: a deploy failure to the
winner's coder with the Nix log, a batch with no green candidate to the scout for the next batch,
no candidate at all to the planner to widen the queries. Backtracks are bounded by the plan, and
each is an event saying why. Every message goes through the recorder before the next step.

No run hangs and nothing leaks. Every role call has its step's deadline, a candidate has the code
step's deadline from fork to its last test, and the run has its own. While a step waits, a
`progress_reported` event says for what, at least every `heartbeat_s`. A candidate ends the
moment it is decided, however it ends (red, crashed, timed out, cancelled, superseded): its roles
are ended (`end_candidate` frees what they hold, a node's cargo slot included) and its files
cleaned. The winner keeps its coder (its model, index and memory) until it is deployed, for a
revision if the deploy fails; then it is ended too.
Whatever makes the run fail, a role's error, a crash or the deadline, becomes one `step_failed`
message (flakebot.failures) that is recorded, every live candidate is ended, the run is cleaned,
and the caller gets RunFailed with that message and the journal's path.

`Roles` is the seam: actors/ implements it with Ray actors (one node per candidate); anything with
the same async methods can drive a run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import structlog

from flakebot.errors import FlakebotError, RunFailed, StepTimedOut
from flakebot.failures import result_reason, step_failed
from flakebot.matching import check_spec_patterns
from flakebot.recorder import Recorder
from flakebot.runplan import RunPlan, StepName, default_plan
from messages import (
    CandidateResult,
    CleanupReport,
    CleanupRequest,
    CrateCandidate,
    CrateQuery,
    Deployment,
    RegistryRef,
    StepFailed,
    ToolManifest,
    ToolRequest,
    ToolSpec,
    Workspace,
)
from messages.base import Step
from messages.deploy import CleanupReason

log = structlog.get_logger()
A = TypeVar("A")
R = TypeVar("R")
END_TIMEOUT_S = 60.0
CLEAN_TIMEOUT_S = 900.0

Developed = tuple[Workspace | None, CandidateResult | StepFailed]


class Roles(Protocol):
    async def plan(self, request: ToolRequest) -> ToolSpec: ...
    async def widen(self, spec: ToolSpec) -> ToolSpec: ...
    async def scout(self, query: CrateQuery) -> list[CrateCandidate]: ...
    async def develop(self, candidate: CrateCandidate, spec: ToolSpec) -> Developed: ...
    async def revise(
        self, workspace: Workspace, spec: ToolSpec, evidence: str, after_attempt: int
    ) -> CandidateResult | StepFailed: ...
    async def deploy(self, workspace: Workspace, spec: ToolSpec) -> Deployment | StepFailed: ...
    async def instruct(
        self, workspace: Workspace, spec: ToolSpec, deployment: Deployment
    ) -> ToolManifest: ...
    async def end_candidate(self, candidate_id: str) -> None: ...
    async def clean(self, request: CleanupRequest) -> CleanupReport: ...


@dataclass
class Winner:
    candidate: CrateCandidate
    workspace: Workspace
    result: CandidateResult


@dataclass
class Supervisor:
    roles: Roles
    recorder: Recorder
    registry: RegistryRef
    plan: RunPlan
    candidates: int = 3
    all_candidates: bool = False
    run_timeout: float | None = None
    heartbeat_s: float = 30.0
    _step: Step = "plan"
    _live: set[str] = field(default_factory=set)

    @property
    def run_id(self) -> str:
        return self.recorder.run_id

    @property
    def deadline(self) -> float:
        return self.run_timeout or self.plan.run_deadline()

    async def run(self, request: ToolRequest | ToolSpec) -> ToolManifest:
        """The manifest of the tool built for `request`, or RunFailed saying which step gave up."""
        try:
            async with asyncio.timeout(self.deadline) as timer:
                return await self._run(request)
        except RunFailed as exc:
            failure = exc.failure
        except TimeoutError as exc:
            if not timer.expired():
                failure = step_failed(self.run_id, self._step, exc)
            else:
                failure = StepFailed(
                    run_id=self.run_id,
                    step=self._step,
                    error_type="RunTimedOut",
                    reason=f"the run passed its deadline of {self.deadline:g} s "
                    f"in the {self._step} step",
                )
        except asyncio.CancelledError:
            cancelled = StepFailed(
                run_id=self.run_id,
                step=self._step,
                error_type="CancelledError",
                reason="the run was cancelled",
            )
            await asyncio.shield(self._fail(cancelled))
            raise
        except Exception as exc:  # a role crashed (our bug, or the machine): still one failure
            failure = step_failed(self.run_id, self._step, exc)
        await self._fail(failure)
        raise RunFailed(failure, journal=self.recorder.path)

    async def _fail(self, failure: StepFailed) -> None:
        self.recorder.record(failure)
        self.recorder.event("run", "run_failed", failure.reason[:500], failed_step=failure.step)
        for candidate_id in sorted(self._live):
            await self._end(candidate_id)
        await self._clean(None, "failed")

    async def _run(self, request: ToolRequest | ToolSpec) -> ToolManifest:
        events = self.recorder
        events.record(request)
        if isinstance(request, ToolSpec):
            check_spec_patterns(request)
            spec = request
        else:
            spec = await self._retry("plan", self.roles.plan, request, "the planner")
        events.record(spec)
        events.event(
            "plan", "spec_planned", spec.summary, name=spec.name, cases=len(spec.acceptance)
        )
        backtracks = 0
        tried: list[str] = []
        while True:
            query = CrateQuery(
                run_id=self.run_id,
                queries=spec.search_queries,
                registry=self.registry,
                prefer_binary=spec.tool_kind in ("cli", "service"),
                limit=self.candidates,
                exclude=tried,
            )
            events.record(query)
            found = await self._retry("scout", self.roles.scout, query, "the crate scout")
            found = _preferred_first(found, spec.preferred_crates)
            for candidate in found:
                events.record(candidate)
            events.event(
                "scout", "candidates_found", ", ".join(c.name for c in found), count=len(found)
            )
            if not found:
                backtracks = self._backtrack(
                    backtracks, "plan", "no candidate found: widening the queries"
                )
                widened = await self._call("plan", "widened queries", self.roles.widen, spec)
                events.record(widened)
                if widened.search_queries == query.queries:
                    raise self._failed(
                        "scout", "no crate in the registry matches the request, even widened"
                    )
                spec = widened
                continue
            tried += [candidate.name for candidate in found]
            winner = await self._race(found, spec)
            if winner is None:
                backtracks = self._backtrack(
                    backtracks, "scout", "every candidate of the batch failed"
                )
                continue
            deployment, backtracks = await self._deploy(winner, spec, backtracks)
            await self._end(winner.candidate.candidate_id)  # its coder was kept for revisions
            manifest = await self._call(
                "instruct",
                "the tool's manifest",
                self.roles.instruct,
                winner.workspace,
                spec,
                deployment,
            )
            events.record(manifest)
            events.event(
                "instruct",
                "manifest_written",
                manifest.store_path,
                candidate_id=winner.candidate.candidate_id,
            )
            events.event("run", "run_finished", f"{spec.name} from {winner.candidate.name}")
            return manifest

    def _failed(self, step: Step, reason: str, *, candidate_id: str | None = None) -> RunFailed:
        failure = StepFailed(
            run_id=self.run_id,
            candidate_id=candidate_id,
            step=step,
            error_type="RunFailed",
            reason=reason,
        )
        return RunFailed(failure, journal=self.recorder.path)

    def _backtrack(self, backtracks: int, to: str, reason: str) -> int:
        if backtracks >= self.plan.max_backtracks:
            step: Step = "code" if to == "scout" else "plan" if to == "plan" else "deploy"
            raise self._failed(
                step, f"{reason}, and the plan allows no more backtracks ({backtracks})"
            )
        self.recorder.event("run", "run_backtracked", reason, to=to, count=backtracks + 1)
        return backtracks + 1

    async def _call(
        self, step: StepName, what: str, call: Callable[..., Awaitable[R]], *args: object
    ) -> R:
        """Await `call(*args)`, a role's answer, within the step's deadline, reporting progress
        while it waits."""
        self._step = step
        limit = self.plan.step(step).deadline
        task = asyncio.ensure_future(call(*args))
        started = time.monotonic()
        try:
            while True:
                left = limit - (time.monotonic() - started)
                if left <= 0:
                    raise StepTimedOut(f"the {step} step ({what})", limit)
                done, _ = await asyncio.wait({task}, timeout=min(self.heartbeat_s, left))
                if done:
                    return task.result()
                self._progress(step, f"waiting for {what}", started)
        finally:
            if not task.done():
                task.cancel()

    def _progress(self, step: str, detail: str, started: float) -> None:
        waited = int(time.monotonic() - started)
        self.recorder.event(step, "progress_reported", f"{detail} ({waited} s)", waited_s=waited)

    async def _retry(
        self, step: StepName, call: Callable[[A], Awaitable[R]], argument: A, what: str
    ) -> R:
        retries = self.plan.step(step).retries
        for attempt in range(retries + 1):
            try:
                return await self._call(step, what, call, argument)
            except FlakebotError as exc:
                self.recorder.event(step, "step_failed", exc.message[:500], attempt=attempt + 1)
                if attempt == retries:
                    failure = step_failed(self.run_id, step, exc, attempt=attempt + 1)
                    raise RunFailed(failure, journal=self.recorder.path) from None
        raise AssertionError("unreachable")

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

    async def _race(self, candidates: list[CrateCandidate], spec: ToolSpec) -> Winner | None:
        self._step = "code"
        events = self.recorder
        running: dict[asyncio.Task[Developed], CrateCandidate] = {}
        for candidate in candidates:
            events.event(
                "code", "candidate_started", candidate.name, candidate_id=candidate.candidate_id
            )
            self._live.add(candidate.candidate_id)
            running[asyncio.ensure_future(self._develop(candidate, spec))] = candidate
        winners: list[Winner] = []
        started = time.monotonic()
        try:
            while running:
                done, _ = await asyncio.wait(
                    running, timeout=self.heartbeat_s, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    waiting = ", ".join(c.candidate_id for c in running.values())
                    self._progress("code", f"waiting for {waiting}", started)
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
                        name = "candidate_passed" if self.all_candidates else "candidate_won"
                        detail = f"green after {outcome.attempts} attempts"
                        events.event("code", name, detail, candidate_id=candidate.candidate_id)
                        winners.append(Winner(candidate, workspace, outcome))
                    else:
                        await self._end(candidate.candidate_id)
                        events.event(
                            "code",
                            "candidate_failed",
                            result_reason(outcome)[:500],
                            candidate_id=candidate.candidate_id,
                        )
                        await self._clean(candidate.candidate_id, "failed")
                if winners and not self.all_candidates:
                    await self._cancel(running)
                    running = {}
                    return winners[0]
        finally:
            for task in running:  # the race itself was cancelled or failed: end what runs
                task.cancel()
            for candidate in running.values():
                await self._end(candidate.candidate_id)
        if not winners:
            return None
        best = max(winners, key=lambda winner: winner.candidate.score)
        for other in winners:
            if other is not best:
                await self._end(other.candidate.candidate_id)
                await self._clean(other.candidate.candidate_id, "superseded")
        return best

    async def _end(self, candidate_id: str) -> None:
        """End a candidate's roles (they free what they hold); idempotent, never raises."""
        self._live.discard(candidate_id)
        try:
            await asyncio.wait_for(self.roles.end_candidate(candidate_id), END_TIMEOUT_S)
        except Exception as exc:
            log.warning("candidate_end_failed", candidate=candidate_id, error=str(exc))

    async def _cancel(self, running: dict[asyncio.Task[Developed], CrateCandidate]) -> None:
        for task, candidate in running.items():
            task.cancel()
            await self._end(candidate.candidate_id)
            self.recorder.event(
                "code",
                "candidate_cancelled",
                "another candidate won",
                candidate_id=candidate.candidate_id,
            )
            await self._clean(candidate.candidate_id, "cancelled")
        await asyncio.gather(*running, return_exceptions=True)

    async def _deploy(
        self, winner: Winner, spec: ToolSpec, backtracks: int
    ) -> tuple[Deployment, int]:
        retries = self.plan.step("deploy").retries
        candidate_id = winner.candidate.candidate_id
        for attempt in range(retries + 1):
            try:
                outcome = await self._call(
                    "deploy",
                    f"nix build of {candidate_id}",
                    self.roles.deploy,
                    winner.workspace,
                    spec,
                )
            except FlakebotError as exc:
                outcome = step_failed(self.run_id, "deploy", exc, candidate_id=candidate_id)
            self.recorder.record(outcome)
            if isinstance(outcome, Deployment):
                self.recorder.event(
                    "deploy", "tool_deployed", outcome.store_path, candidate_id=candidate_id
                )
                return outcome, backtracks
            self.recorder.event(
                "deploy", "deploy_failed", outcome.reason[:500], candidate_id=candidate_id
            )
            if attempt == retries or outcome.backtrack_to != "code":
                raise RunFailed(outcome, journal=self.recorder.path)
            backtracks = self._backtrack(
                backtracks, "code", "the deploy failed; back to the coder with the Nix log"
            )
            revised = await self._call(
                "code",
                f"the coder of {candidate_id} to fix the deploy",
                self.roles.revise,
                winner.workspace,
                spec,
                outcome.evidence or outcome.reason,
                winner.result.attempts,
            )
            self.recorder.record(revised)
            if isinstance(revised, StepFailed) or revised.status != "green":
                raise self._failed(
                    "code",
                    f"the coder could not fix the deploy failure: {result_reason(revised)}",
                    candidate_id=candidate_id,
                )
            winner.result = revised
        raise AssertionError("unreachable")

    async def _clean(self, candidate_id: str | None, reason: CleanupReason) -> None:
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


def _preferred_first(found: list[CrateCandidate], preferred: list[str]) -> list[CrateCandidate]:
    order = {name: index for index, name in enumerate(preferred)}
    return sorted(found, key=lambda candidate: order.get(candidate.name, len(order)))


__all__ = ["Roles", "RunFailed", "Supervisor", "default_plan"]
