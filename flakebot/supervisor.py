"""The supervisor: follows a plan for one request, over whatever runs the roles.

Plan, scout, then develop a batch of candidates in parallel and take their results in completion
order: the first green one wins (with `all_candidates`, the best green one by score), and the rest
are cancelled and cleaned at once. Deploy the winner, then write the manifest. When a later step
fails for a reason an earlier step owns, the supervisor goes back: a deploy failure to the
winner's coder with the Nix log, a batch with no green candidate to the scout for the next batch,
no candidate at all to the planner to widen the queries. Backtracks are bounded by the plan, and
each is an event saying why. Every message goes through the recorder before the next step.

`Roles` is the seam: actors/ implements it with Ray actors (one node per candidate); anything with
the same async methods can drive a run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import structlog

from flakebot.errors import FlakebotError
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
from messages.deploy import CleanupReason

log = structlog.get_logger()
A = TypeVar("A")
R = TypeVar("R")


class RunFailed(FlakebotError):
    """A run ended without a tool; the message says which step gave up and why."""


class Roles(Protocol):
    async def plan(self, request: ToolRequest) -> ToolSpec: ...
    async def widen(self, spec: ToolSpec) -> ToolSpec: ...
    async def scout(self, query: CrateQuery) -> list[CrateCandidate]: ...
    async def develop(
        self, candidate: CrateCandidate, spec: ToolSpec
    ) -> tuple[Workspace | None, CandidateResult | StepFailed]: ...
    async def revise(
        self, workspace: Workspace, spec: ToolSpec, evidence: str
    ) -> CandidateResult | StepFailed: ...
    async def deploy(self, workspace: Workspace, spec: ToolSpec) -> Deployment | StepFailed: ...
    async def instruct(
        self, workspace: Workspace, spec: ToolSpec, deployment: Deployment
    ) -> ToolManifest: ...
    async def cancel(self, candidate_id: str) -> None: ...
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

    @property
    def run_id(self) -> str:
        return self.recorder.run_id

    async def run(self, request: ToolRequest | ToolSpec) -> ToolManifest:
        try:
            return await self._run(request)
        except RunFailed as exc:
            self.recorder.event("run", "run_failed", exc.message)
            await self._clean(None, "failed")
            raise

    async def _run(self, request: ToolRequest | ToolSpec) -> ToolManifest:
        events = self.recorder
        events.record(request)
        spec = (
            request
            if isinstance(request, ToolSpec)
            else await self._retry("plan", self.roles.plan, request)
        )
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
            found = await self._retry("scout", self.roles.scout, query)
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
                spec = await self.roles.widen(spec)
                events.record(spec)
                if spec.search_queries == query.queries:
                    raise RunFailed("no crate in the registry matches the request, even widened")
                continue
            tried += [candidate.name for candidate in found]
            winner = await self._race(found, spec)
            if winner is None:
                backtracks = self._backtrack(
                    backtracks, "scout", "every candidate of the batch failed"
                )
                continue
            deployment, backtracks = await self._deploy(winner, spec, backtracks)
            manifest = await self.roles.instruct(winner.workspace, spec, deployment)
            events.record(manifest)
            events.event(
                "instruct",
                "manifest_written",
                manifest.store_path,
                candidate_id=winner.candidate.candidate_id,
            )
            events.event("run", "run_finished", f"{spec.name} from {winner.candidate.name}")
            return manifest

    def _backtrack(self, backtracks: int, to: str, reason: str) -> int:
        if backtracks >= self.plan.max_backtracks:
            raise RunFailed(f"{reason}, and the plan allows no more backtracks ({backtracks})")
        self.recorder.event("run", "run_backtracked", reason, to=to, count=backtracks + 1)
        return backtracks + 1

    async def _retry(self, step: StepName, call: Callable[[A], Awaitable[R]], argument: A) -> R:
        retries = self.plan.step(step).retries
        for attempt in range(retries + 1):
            try:
                return await call(argument)
            except FlakebotError as exc:
                self.recorder.event(step, "step_failed", exc.message[:500], attempt=attempt + 1)
                if attempt == retries:
                    raise RunFailed(
                        f"the {step} step failed {attempt + 1} times: {exc.message}"
                    ) from None
        raise AssertionError("unreachable")

    async def _race(self, candidates: list[CrateCandidate], spec: ToolSpec) -> Winner | None:
        events = self.recorder
        running: dict[
            asyncio.Task[tuple[Workspace | None, CandidateResult | StepFailed]], CrateCandidate
        ] = {}
        for candidate in candidates:
            events.event(
                "code", "candidate_started", candidate.name, candidate_id=candidate.candidate_id
            )
            running[asyncio.ensure_future(self.roles.develop(candidate, spec))] = candidate
        winners: list[Winner] = []
        while running:
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                candidate = running.pop(task)
                try:
                    workspace, outcome = task.result()
                except Exception as exc:  # a role that crashed: one failed candidate, not a run
                    workspace, outcome = (
                        None,
                        StepFailed(
                            run_id=self.run_id,
                            candidate_id=candidate.candidate_id,
                            step="code",
                            error_type=type(exc).__name__,
                            reason=str(exc)[:4_000] or type(exc).__name__,
                        ),
                    )
                if workspace is not None:
                    events.record(workspace)
                events.record(outcome)
                if isinstance(outcome, CandidateResult) and outcome.status == "green" and workspace:
                    name = "candidate_passed" if self.all_candidates else "candidate_won"
                    detail = f"green after {outcome.attempts} attempts"
                    events.event("code", name, detail, candidate_id=candidate.candidate_id)
                    winners.append(Winner(candidate, workspace, outcome))
                else:
                    reason = (
                        outcome.reason
                        if isinstance(outcome, StepFailed)
                        else f"ended by {outcome.ended_by}"
                    )
                    events.event(
                        "code",
                        "candidate_failed",
                        reason[:500],
                        candidate_id=candidate.candidate_id,
                    )
                    await self._clean(candidate.candidate_id, "failed")
            if winners and not self.all_candidates:
                await self._cancel(running)
                return winners[0]
        if not winners:
            return None
        best = max(winners, key=lambda winner: winner.candidate.score)
        for other in winners:
            if other is not best:
                await self._clean(other.candidate.candidate_id, "superseded")
        return best

    async def _cancel(self, running: dict[asyncio.Task, CrateCandidate]) -> None:  # type: ignore[type-arg]
        for task, candidate in running.items():
            task.cancel()
            await self.roles.cancel(candidate.candidate_id)
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
        for attempt in range(retries + 1):
            outcome = await self.roles.deploy(winner.workspace, spec)
            self.recorder.record(outcome)
            if isinstance(outcome, Deployment):
                self.recorder.event(
                    "deploy",
                    "tool_deployed",
                    outcome.store_path,
                    candidate_id=winner.candidate.candidate_id,
                )
                return outcome, backtracks
            self.recorder.event(
                "deploy",
                "deploy_failed",
                outcome.reason[:500],
                candidate_id=winner.candidate.candidate_id,
            )
            if attempt == retries or outcome.backtrack_to != "code":
                raise RunFailed(f"deploying {winner.candidate.name} failed: {outcome.reason}")
            backtracks = self._backtrack(
                backtracks, "code", "the deploy failed; back to the coder with the Nix log"
            )
            revised = await self.roles.revise(
                winner.workspace, spec, outcome.evidence or outcome.reason
            )
            self.recorder.record(revised)
            if isinstance(revised, StepFailed) or revised.status != "green":
                reason = (
                    revised.reason
                    if isinstance(revised, StepFailed)
                    else f"ended by {revised.ended_by}"
                )
                raise RunFailed(f"the coder could not fix the deploy failure: {reason}")
            winner.result = revised
        raise AssertionError("unreachable")

    async def _clean(self, candidate_id: str | None, reason: CleanupReason) -> None:
        request = CleanupRequest(run_id=self.run_id, candidate_id=candidate_id, reason=reason)
        self.recorder.record(request)
        try:
            self.recorder.record(await self.roles.clean(request))
        except Exception as exc:  # cleaning must not end a run; the janitor can run again later
            log.warning("cleanup_failed", candidate=candidate_id, error=str(exc))


def _preferred_first(found: list[CrateCandidate], preferred: list[str]) -> list[CrateCandidate]:
    order = {name: index for index, name in enumerate(preferred)}
    return sorted(found, key=lambda candidate: order.get(candidate.name, len(order)))


__all__ = ["Roles", "RunFailed", "Supervisor", "default_plan"]
