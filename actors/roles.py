"""Ray actors over the plain roles, and `RayRoles`, the supervisor's seam implemented with them.

One scout actor serves the whole run (it owns the crates.io rate limit). Each candidate gets a
tester actor holding one `cargo` resource (so a node runs no more cargo builds than it offers
slots, one per core) and a coder actor pinned to the same node, since the fork lives on that
node's disk; the deployer and the janitor for that candidate are pinned there too. Cancelling a
candidate kills its actors: bubblewrap's --die-with-parent takes the cargo processes with them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from flakebot.errors import BudgetExceeded
from flakebot.logs import bind_context
from flakebot.models import Budget, Usage
from flakebot.roles import DeployerRole, DeveloperRole, JanitorRole, PlannerRole, ScoutRole
from flakebot.sandbox import Sandbox, Toolchain
from flakebot.settings import ModelRef, Settings
from flakebot.tester import Tester
from messages import (
    CandidateResult,
    CleanupReport,
    CleanupRequest,
    CrateCandidate,
    CrateQuery,
    Deployment,
    StepFailed,
    TestReport,
    ToolManifest,
    ToolRequest,
    ToolSpec,
    Workspace,
)

# Ray's decorated classes and handles are not typed for mypy: handles are Any here, and the
# `.remote`/`.options` calls on actor classes carry `type: ignore[attr-defined]`.
Handle = Any


@ray.remote(num_cpus=0)
class PlannerActor:
    def __init__(self, model_ref: ModelRef | None) -> None:
        bind_context(actor="planner")
        self.role = PlannerRole(Settings.from_env(), model_ref)

    async def plan(self, request: ToolRequest) -> ToolSpec:
        bind_context(run_id=request.run_id)
        return await self.role.plan(ToolRequest.model_validate(request))

    async def widen(self, spec: ToolSpec) -> ToolSpec:
        return await self.role.widen(ToolSpec.model_validate(spec))


@ray.remote(num_cpus=0)
class ScoutActor:
    def __init__(self) -> None:
        bind_context(actor="scout")
        self.role = ScoutRole(Settings.from_env())

    async def scout(self, query: CrateQuery) -> list[CrateCandidate]:
        bind_context(run_id=query.run_id)
        return await self.role.scout_crates(CrateQuery.model_validate(query))


@ray.remote(num_cpus=0, resources={"cargo": 1})
class TesterActor:
    """Runs cargo for one candidate; holds one of its node's cargo slots while it lives."""

    def __init__(self, read_only: list[str]) -> None:
        bind_context(actor="tester")
        self.tester = Tester(Sandbox(Toolchain.find(), read_only=tuple(Path(p) for p in read_only)))

    def node_id(self) -> str:
        return str(ray.get_runtime_context().get_node_id())

    async def test(
        self, workdir: str, target_dir: str, run_id: str, candidate_id: str, attempt: int
    ) -> TestReport:
        bind_context(run_id=run_id, candidate=candidate_id)
        return await asyncio.to_thread(
            self.tester.test,
            Path(workdir),
            Path(target_dir),
            run_id=run_id,
            candidate_id=candidate_id,
            attempt=attempt,
        )


@ray.remote(num_cpus=0)
class BudgetActor:
    """The run's one budget, shared by every candidate's coder."""

    def __init__(self) -> None:
        self.budget = Budget()

    def exceeded(self) -> tuple[str, str] | None:
        return self.budget.exceeded()

    def record(self, model: str, usage: Usage) -> None:
        self.budget.record(model, Usage.model_validate(usage))

    def spent(self) -> dict[str, float]:
        return self.budget.spent()


@dataclass
class SharedBudget:
    """A RunBudget backed by the run's BudgetActor."""

    actor: Handle

    async def acheck(self) -> None:
        reached: tuple[str, str] | None = await self.actor.exceeded.remote()
        if reached is not None:
            raise BudgetExceeded(*reached)

    async def arecord(self, model: str, usage: Usage) -> None:
        await self.actor.record.remote(model, usage)


@dataclass
class RemoteTestRunner:
    """The coder's TestRunner, calling the candidate's tester actor."""

    tester: Handle

    async def test(
        self, workdir: Path, target_dir: Path, *, run_id: str, candidate_id: str, attempt: int
    ) -> TestReport:
        report: TestReport = await self.tester.test.remote(
            str(workdir), str(target_dir), run_id, candidate_id, attempt
        )
        return report


@ray.remote(num_cpus=0)
class CoderActor:
    def __init__(
        self, model_ref: ModelRef | None, tester: Handle, max_attempts: int, budget: Handle
    ) -> None:
        bind_context(actor="coder")
        self.role = DeveloperRole(
            Settings.from_env(),
            model_ref,
            RemoteTestRunner(tester),
            max_attempts=max_attempts,
            budget=SharedBudget(budget),
        )

    async def develop(
        self, candidate: CrateCandidate, spec: ToolSpec
    ) -> tuple[Workspace | None, CandidateResult | StepFailed]:
        bind_context(run_id=candidate.run_id, candidate=candidate.candidate_id)
        return await self.role.develop(
            CrateCandidate.model_validate(candidate), ToolSpec.model_validate(spec)
        )

    async def revise(
        self, workspace: Workspace, spec: ToolSpec, evidence: str
    ) -> CandidateResult | StepFailed:
        return await self.role.revise(
            Workspace.model_validate(workspace), ToolSpec.model_validate(spec), evidence
        )


@ray.remote(num_cpus=0)
class DeployerActor:
    def __init__(self) -> None:
        bind_context(actor="deployer")
        self.role = DeployerRole(Settings.from_env())

    async def deploy(self, workspace: Workspace, spec: ToolSpec) -> Deployment | StepFailed:
        bind_context(run_id=workspace.run_id, candidate=workspace.candidate_id)
        return await asyncio.to_thread(
            self.role.deploy, Workspace.model_validate(workspace), ToolSpec.model_validate(spec)
        )

    async def instruct(
        self, workspace: Workspace, spec: ToolSpec, deployment: Deployment
    ) -> ToolManifest:
        return await asyncio.to_thread(
            self.role.instruct, workspace, spec, Deployment.model_validate(deployment)
        )


@ray.remote(num_cpus=0)
class JanitorActor:
    def __init__(self) -> None:
        bind_context(actor="janitor")
        self.role = JanitorRole(Settings.from_env())

    async def clean(self, request: CleanupRequest) -> CleanupReport:
        bind_context(run_id=request.run_id)
        return await asyncio.to_thread(self.role.clean, CleanupRequest.model_validate(request))


def _on(node_id: str) -> NodeAffinitySchedulingStrategy:
    return NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)


@dataclass
class _Candidate:
    node_id: str
    tester: Handle
    coder: Handle


@dataclass
class RayRoles:
    """Roles for one run, as Ray actors."""

    model_ref: ModelRef | None
    read_only: list[str] = field(default_factory=list)
    max_attempts: int = 4
    planner: Handle | None = None
    scout_actor: Handle | None = None
    budget: Handle | None = None
    candidates: dict[str, _Candidate] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.budget = BudgetActor.remote()  # type: ignore[attr-defined]
        self.planner = PlannerActor.remote(self.model_ref)  # type: ignore[attr-defined]
        self.scout_actor = ScoutActor.remote()  # type: ignore[attr-defined]

    async def plan(self, request: ToolRequest) -> ToolSpec:
        spec: ToolSpec = await self.planner.plan.remote(request)  # type: ignore[union-attr]
        return spec

    async def widen(self, spec: ToolSpec) -> ToolSpec:
        widened: ToolSpec = await self.planner.widen.remote(spec)  # type: ignore[union-attr]
        return widened

    async def scout(self, query: CrateQuery) -> list[CrateCandidate]:
        found: list[CrateCandidate] = await self.scout_actor.scout.remote(query)  # type: ignore[union-attr]
        return found

    async def develop(
        self, candidate: CrateCandidate, spec: ToolSpec
    ) -> tuple[Workspace | None, CandidateResult | StepFailed]:
        tester = TesterActor.remote(self.read_only)  # type: ignore[attr-defined]
        node_id: str = await tester.node_id.remote()
        coder = CoderActor.options(scheduling_strategy=_on(node_id)).remote(  # type: ignore[attr-defined]
            self.model_ref, tester, self.max_attempts, self.budget
        )
        self.candidates[candidate.candidate_id] = _Candidate(node_id, tester, coder)
        outcome: tuple[Workspace | None, CandidateResult | StepFailed] = await coder.develop.remote(
            candidate, spec
        )
        return outcome

    async def revise(
        self, workspace: Workspace, spec: ToolSpec, evidence: str
    ) -> CandidateResult | StepFailed:
        coder = self.candidates[workspace.candidate_id].coder
        revised: CandidateResult | StepFailed = await coder.revise.remote(workspace, spec, evidence)
        return revised

    def _node_of(self, candidate_id: str | None) -> NodeAffinitySchedulingStrategy | str:
        known = self.candidates.get(candidate_id or "")
        return _on(known.node_id) if known else "DEFAULT"

    async def deploy(self, workspace: Workspace, spec: ToolSpec) -> Deployment | StepFailed:
        deployer = DeployerActor.options(  # type: ignore[attr-defined]
            scheduling_strategy=self._node_of(workspace.candidate_id)
        ).remote()
        try:
            outcome: Deployment | StepFailed = await deployer.deploy.remote(workspace, spec)
            return outcome
        finally:
            ray.kill(deployer)

    async def instruct(
        self, workspace: Workspace, spec: ToolSpec, deployment: Deployment
    ) -> ToolManifest:
        deployer = DeployerActor.options(  # type: ignore[attr-defined]
            scheduling_strategy=self._node_of(workspace.candidate_id)
        ).remote()
        try:
            manifest: ToolManifest = await deployer.instruct.remote(workspace, spec, deployment)
            return manifest
        finally:
            ray.kill(deployer)

    async def cancel(self, candidate_id: str) -> None:
        known = self.candidates.get(candidate_id)
        if known is not None:
            ray.kill(known.coder)
            ray.kill(known.tester)

    async def clean(self, request: CleanupRequest) -> CleanupReport:
        janitor = JanitorActor.options(  # type: ignore[attr-defined]
            scheduling_strategy=self._node_of(request.candidate_id)
        ).remote()
        try:
            report: CleanupReport = await janitor.clean.remote(request)
            return report
        finally:
            ray.kill(janitor)

    def shutdown(self) -> None:
        for known in self.candidates.values():
            ray.kill(known.coder)
            ray.kill(known.tester)
        for actor in (self.planner, self.scout_actor, self.budget):
            if actor is not None:
                ray.kill(actor)
