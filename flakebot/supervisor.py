"""The supervisor: follows a plan for one request, over whatever runs the roles.

Plan, scout, then race a batch of candidates in parallel (flakebot.race: the first green one
wins, the rest are cancelled and cleaned at once). Deploy the winner, then write the manifest.
When a later step fails for a reason an earlier step owns, the supervisor goes back: a deploy
failure to the winner's coder with the Nix log, a batch with no green candidate to the scout for
the next batch, no candidate at all to the planner to widen the queries. Backtracks are bounded
by the plan, and each is an event saying why. Every message goes through the recorder (the
durable journal) before the next step.

A killed run goes on from its journal (`run(request, history)`, flakebot.resume): a step whose
result is journalled is not done again. The spec is not re-planned, a batch already scouted is
raced again with what was decided of it, a green candidate whose fork is still at its green
commit is not tested again, and a deployment whose store path and GC root are still there is
reused; each reuse is an event. The run goes on at the first step without a saved result.

No run hangs and nothing leaks. Every role call has its step's deadline, a candidate has the code
step's deadline from fork to its last test, and the run has its own. While a step waits, a
`progress_reported` event says for what, at least every `heartbeat_s`. The winner keeps its coder
(its model, index and memory) until it is deployed, for a revision if the deploy fails; then it
is ended too. Whatever makes the run fail, a role's error, a crash or the deadline, becomes one
`step_failed` message (flakebot.failures) that is recorded, every live candidate is ended, the
run is cleaned, and the caller gets RunFailed with that message and the journal's path.

`Roles` is the seam: actors/ implements it with Ray actors (one node per candidate); anything with
the same async methods can drive a run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

import structlog

from flakebot.errors import FlakebotError, RunFailed, StepTimedOut
from flakebot.failures import result_reason, step_failed
from flakebot.matching import check_spec_patterns
from flakebot.race import Developed, Race, Winner
from flakebot.recorder import Recorder
from flakebot.resume import RunHistory
from flakebot.runplan import RunPlan, StepName, default_plan
from messages import (
    CandidateResult,
    CleanupReport,
    CleanupRequest,
    CrateCandidate,
    CrateQuery,
    Deployment,
    RegistryRef,
    RunStarted,
    StepFailed,
    ToolManifest,
    ToolRequest,
    ToolSpec,
    Workspace,
)
from messages.base import Step

log = structlog.get_logger()
A = TypeVar("A")
R = TypeVar("R")


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
class Supervisor:
    roles: Roles
    recorder: Recorder
    registry: RegistryRef
    plan: RunPlan
    candidates: int = 3
    all_candidates: bool = False
    run_timeout: float | None = None
    heartbeat_s: float = 30.0
    started: RunStarted | None = None  # recorded first: how to resume the run
    fork_head: Callable[[str], str | None] = lambda candidate_id: None  # where a fork is now
    still_deployed: Callable[[Deployment], bool] = lambda deployment: _still_deployed(deployment)
    _step: Step = "plan"
    race: Race = field(init=False)

    def __post_init__(self) -> None:
        self.race = Race(
            self.roles,
            self.recorder,
            self.plan,
            all_candidates=self.all_candidates,
            heartbeat_s=self.heartbeat_s,
            fork_head=self.fork_head,
        )

    @property
    def run_id(self) -> str:
        return self.recorder.run_id

    @property
    def deadline(self) -> float:
        return self.run_timeout or self.plan.run_deadline()

    async def run(
        self, request: ToolRequest | ToolSpec, history: RunHistory | None = None
    ) -> ToolManifest:
        """The manifest of the tool built for `request`, or RunFailed saying which step gave up.
        With `history` (a killed run's journal), the run goes on at its first step without a
        saved result."""
        try:
            async with asyncio.timeout(self.deadline) as timer:
                return await self._run(request, history)
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
        for candidate_id in sorted(self.race.live):
            await self.race.end(candidate_id)
        await self.race.clean(None, "failed")

    async def _run(
        self, request: ToolRequest | ToolSpec, history: RunHistory | None
    ) -> ToolManifest:
        events = self.recorder
        if history is None:
            history = RunHistory(self.run_id)
            if self.started is not None:
                events.record(self.started)
            events.record(request)
        else:
            events.event("run", "run_resumed", f"going on from the {history.last_step} step")
        spec = await self._spec(request, history)
        backtracks = history.backtracks
        tried = history.tried()
        batch = history.open_batch
        while True:
            if batch is not None:  # scouted before the run stopped: the same candidates
                found, batch = batch.candidates, None
                names = ", ".join(c.name for c in found)
                events.event("scout", "candidates_reused", names, count=len(found))
            else:
                found = await self._scout(spec, tried)
            if not found:
                backtracks = self._backtrack(
                    backtracks, "plan", "no candidate found: widening the queries"
                )
                widened = await self._call("plan", "widened queries", self.roles.widen, spec)
                events.record(widened)
                if widened.search_queries == spec.search_queries:
                    raise self._failed(
                        "scout", "no crate in the registry matches the request, even widened"
                    )
                spec = widened
                continue
            tried += [candidate.name for candidate in found if candidate.name not in tried]
            self._step = "code"
            winner = await self.race.run(found, spec, history)
            if winner is None:
                backtracks = self._backtrack(
                    backtracks, "scout", "every candidate of the batch failed"
                )
                continue
            deployment, backtracks = await self._deploy(winner, spec, backtracks, history)
            await self.race.end(winner.candidate.candidate_id)  # its coder was kept for revisions
            manifest = history.manifest
            if manifest is None or manifest.store_path != deployment.store_path:
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

    async def _spec(self, request: ToolRequest | ToolSpec, history: RunHistory) -> ToolSpec:
        """The run's spec: the journalled one (planned, or widened last), else planned now."""
        if history.planned and history.spec is not None:
            return history.spec
        if isinstance(request, ToolSpec):
            check_spec_patterns(request)
            spec = request
        else:
            spec = await self._retry("plan", self.roles.plan, request, "the planner")
        self.recorder.record(spec)
        self.recorder.event(
            "plan", "spec_planned", spec.summary, name=spec.name, cases=len(spec.acceptance)
        )
        return spec

    async def _scout(self, spec: ToolSpec, tried: list[str]) -> list[CrateCandidate]:
        preferred = [name for name in spec.preferred_crates if name not in tried]
        query = CrateQuery(
            run_id=self.run_id,
            queries=[*spec.search_queries, *(q for q in preferred if q not in spec.search_queries)],
            registry=self.registry,
            prefer_binary=spec.tool_kind in ("cli", "service"),
            limit=min(self.candidates + len(preferred), 100),  # room for the preferred ones
            exclude=tried,
        )
        self.recorder.record(query)
        found = await self._retry("scout", self.roles.scout, query, "the crate scout")
        found = _preferred_first(found, preferred)[: self.candidates]
        for candidate in found:
            self.recorder.record(candidate)
        self.recorder.event(
            "scout", "candidates_found", ", ".join(c.name for c in found), count=len(found)
        )
        return found

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

    async def _deploy(
        self, winner: Winner, spec: ToolSpec, backtracks: int, history: RunHistory
    ) -> tuple[Deployment, int]:
        retries = self.plan.step("deploy").retries
        candidate_id = winner.candidate.candidate_id
        saved = history.deployment
        if (
            saved is not None
            and saved.candidate_id == candidate_id
            and saved.commit == winner.result.head_commit
            and self.still_deployed(saved)
        ):
            self.recorder.event(
                "deploy", "deployment_reused", saved.store_path, candidate_id=candidate_id
            )
            return saved, backtracks
        for attempt in range(retries + 1):
            # the fork at its green commit: the deployer (at the run's home) checks it has it
            head = winner.result.head_commit or winner.workspace.head_commit
            green = winner.workspace.model_copy(update={"head_commit": head})
            try:
                outcome = await self._call(
                    "deploy", f"nix build of {candidate_id}", self.roles.deploy, green, spec
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
                green,
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


def _still_deployed(deployment: Deployment) -> bool:
    """A journalled deployment whose store path and GC root are still there (a service is
    started again: its process went with the run)."""
    return (
        deployment.service is None
        and Path(deployment.store_path).exists()
        and Path(deployment.gc_root).is_symlink()
    )


def _preferred_first(found: list[CrateCandidate], preferred: list[str]) -> list[CrateCandidate]:
    """The spec's preferred crates first, then the scout's order; ids renumbered to match (the
    first candidate is the one the run bets on: flakebot.tester.niceness)."""
    order = {name: index for index, name in enumerate(preferred)}
    ranked = sorted(found, key=lambda candidate: order.get(candidate.name, len(order)))
    return [
        candidate.model_copy(update={"candidate_id": f"c{rank}-{candidate.name}"})
        for rank, candidate in enumerate(ranked, start=1)
    ]


__all__ = ["Roles", "RunFailed", "Supervisor", "default_plan"]
