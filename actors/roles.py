"""Ray actors over the plain roles, and `answer`, which turns Ray's errors into Flakebot's.

One scout actor serves the whole run (it owns the crates.io rate limit). Each candidate gets a
tester actor holding one `cargo` resource (so a node runs no more cargo builds than it offers
slots, one per core) and a coder actor pinned to the same node, where the fork lives. The
planner and every model-calling actor get the model's key through actors.secrets. What a role
raised is re-raised as itself by `answer`; a dead actor or node is RoleLost. actors.ray_roles
puts these together for one run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.run_store import RemoteRunStore
from actors.secrets import SecretRefs, received
from flakebot.crates.fetch import dependency_dir
from flakebot.errors import BudgetExceeded, RoleLost
from flakebot.logs import bind_context
from flakebot.models import Budget, Usage
from flakebot.proc import stop_running
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
    RegistryRef,
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
    def __init__(self, model_ref: ModelRef | None, secrets: SecretRefs) -> None:
        bind_context(actor="planner")
        self.role = PlannerRole(received(Settings.from_env(), secrets), model_ref)

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


RESTARTS = 2  # a tester's or coder's worker process may die this often
RESCHEDULES = 2  # a candidate may lose its node this often, and go on on another


@ray.remote(num_cpus=0, resources={"cargo": 1})
class TesterActor:
    """Runs cargo for one candidate; holds one of its node's cargo slots while it lives."""

    def __init__(self, registry: RegistryRef) -> None:
        bind_context(actor="tester")
        directory = dependency_dir(Settings.from_env().home, registry)  # this node's copy
        self.tester = Tester(Sandbox.for_registry(Toolchain.find(), directory))

    def node_id(self) -> str:
        return str(ray.get_runtime_context().get_node_id())

    async def stop_programs(self) -> int:
        """Kill the cargo programs this tester runs, with all they started, wait until they
        have exited, and start no more (flakebot.proc.stop_running); how many there were. Its
        candidate is ending, and this actor with it."""
        return await asyncio.to_thread(stop_running, for_good=True)

    async def test(
        self,
        workdir: str,
        target_dir: str,
        run_id: str,
        candidate_id: str,
        attempt: int,
        lint_warn: list[str],
    ) -> TestReport:
        bind_context(run_id=run_id, candidate=candidate_id)
        return await asyncio.to_thread(
            self.tester.test,
            Path(workdir),
            Path(target_dir),
            run_id=run_id,
            candidate_id=candidate_id,
            attempt=attempt,
            lint_warn=lint_warn,
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
        self,
        workdir: Path,
        target_dir: Path,
        *,
        run_id: str,
        candidate_id: str,
        attempt: int,
        lint_warn: Sequence[str] = (),
    ) -> TestReport:
        report: TestReport = await answer(
            self.tester.test.remote(
                str(workdir), str(target_dir), run_id, candidate_id, attempt, list(lint_warn)
            ),
            f"tester of {candidate_id}",
        )
        return report


@ray.remote(num_cpus=0)
class CoderActor:
    """A candidate's coder. On a node other than the run's home, it journals to the home and
    hands its fork over there after each test report (flakebot.run_store); at the home, where
    deploys run, it starts the first candidate's dependency build early (flakebot.prebuild)."""

    def __init__(
        self,
        model_ref: ModelRef | None,
        tester: Handle,
        max_attempts: int,
        budget: Handle,
        home: tuple[str, Handle],
        secrets: SecretRefs,
    ) -> None:
        bind_context(actor="coder")
        home_node, store = home
        away = ray.get_runtime_context().get_node_id() != home_node
        self.role = DeveloperRole(
            received(Settings.from_env(), secrets),
            model_ref,
            RemoteTestRunner(tester),
            max_attempts=max_attempts,
            budget=SharedBudget(budget),
            store=RemoteRunStore(store) if away else None,
            prebuild=not away,
        )

    async def develop(
        self, candidate: CrateCandidate, spec: ToolSpec
    ) -> tuple[Workspace | None, CandidateResult | StepFailed]:
        bind_context(run_id=candidate.run_id, candidate=candidate.candidate_id)
        return await self.role.develop(
            CrateCandidate.model_validate(candidate), ToolSpec.model_validate(spec)
        )

    async def revise(
        self, workspace: Workspace, spec: ToolSpec, evidence: str, after_attempt: int
    ) -> CandidateResult | StepFailed:
        bind_context(run_id=workspace.run_id, candidate=workspace.candidate_id)
        return await self.role.revise(
            Workspace.model_validate(workspace),
            ToolSpec.model_validate(spec),
            evidence,
            after_attempt,
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


def on_node(node_id: str) -> NodeAffinitySchedulingStrategy:
    return NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)


async def answer(ref: Any, role: str) -> Any:
    """A remote call's result; Ray's errors become ours: a crash is re-raised as what the role
    raised (with the remote traceback as a note), a dead actor or node is RoleLost."""
    try:
        return await ref
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause
        if isinstance(cause, Exception):
            cause.add_note(f"raised in the {role}:\n{exc}")
            raise cause from None
        raise RoleLost(f"the {role} failed: {str(exc).strip().splitlines()[0]}") from None
    except ray.exceptions.RayError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise RoleLost(f"the {role} died: {type(exc).__name__}: {first}"[:500]) from None
