"""Ray actors over the plain roles, and `RayRoles`, the supervisor's seam implemented with them.

One scout actor serves the whole run (it owns the crates.io rate limit). Each candidate gets a
tester actor holding one `cargo` resource (so a node runs no more cargo builds than it offers
slots, one per core) and a coder actor pinned to the same node, since the fork lives on that
node's disk; the deployer and the janitor for that candidate are pinned there too. When a
candidate ends, however it ends, its actors are killed: the cargo slot goes back to the node,
and bubblewrap's --die-with-parent takes the cargo processes with them. The winner's coder lives
on until the deploy, so a revision keeps its model and memory (a new pair on the same node if
it is gone). Ray's errors become Flakebot's
(`answer`): what a role raised is re-raised as itself, a dead actor or node is RoleLost.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import structlog
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.run_store import RemoteRunStore, RunStoreActor
from actors.secrets import SecretRefs, received
from flakebot.crates.fetch import dependency_dir
from flakebot.errors import BudgetExceeded, RoleLost
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
log = structlog.get_logger()


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
NODE_DEATH_WAIT_S = 60.0  # Ray's health checks declare a lost node dead within about 30 s


@ray.remote(num_cpus=0, resources={"cargo": 1})
class TesterActor:
    """Runs cargo for one candidate; holds one of its node's cargo slots while it lives."""

    def __init__(self, registry: RegistryRef) -> None:
        bind_context(actor="tester")
        directory = dependency_dir(Settings.from_env().home, registry)  # this node's copy
        self.tester = Tester(Sandbox.for_registry(Toolchain.find(), directory))

    def node_id(self) -> str:
        return str(ray.get_runtime_context().get_node_id())

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
    hands its fork over there after each test report (flakebot.run_store)."""

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


def _on(node_id: str) -> NodeAffinitySchedulingStrategy:
    return NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)


def node_alive(node_id: str) -> bool:
    """Does the cluster still count this node alive?"""
    nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
    return any(node["NodeID"] == node_id and node["Alive"] for node in nodes)


async def node_died(node_id: str, *, wait: float) -> bool:
    """Is the node dead, or declared dead within `wait` seconds? An actor on a node that just
    went away is unreachable some seconds before the cluster's health checks declare the node
    dead."""
    deadline = time.monotonic() + wait
    while node_alive(node_id):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.5)
    return True


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


@dataclass
class _Candidate:
    node_id: str | None = None
    actors: list[Handle] = field(default_factory=list)
    coder: Handle | None = None


@dataclass
class RayRoles:
    """Roles for one run, as Ray actors. A candidate's coder and tester live exactly as long as
    the candidate: `end_candidate` kills them, which gives their node's cargo slot back.

    Made in the supervisor's process: that node is the run's home, where the planner, the scout,
    the run's store (journal and forks handed over) and every deploy run."""

    run_id: str
    model_ref: ModelRef | None
    home: str
    registry: RegistryRef
    secrets: SecretRefs = field(default_factory=list)  # the model's key: actors.secrets
    max_attempts: int = 4
    planner: Handle | None = None
    scout_actor: Handle | None = None
    budget: Handle | None = None
    store: Handle | None = None
    home_node: str = ""
    candidates: dict[str, _Candidate] = field(default_factory=dict)
    reschedules: int = RESCHEDULES
    _spawned: int = 0

    def __post_init__(self) -> None:
        self.home_node = str(ray.get_runtime_context().get_node_id())
        here = _on(self.home_node)
        self.budget = BudgetActor.options(scheduling_strategy=here).remote()  # type: ignore[attr-defined]
        self.store = RunStoreActor.options(scheduling_strategy=here).remote(self.home)

    def _name(self, what: str) -> str:
        self._spawned += 1
        return f"flakebot/{self.run_id}/{what}/{self._spawned}"

    def _planner(self) -> Handle:
        if self.planner is None:
            self.planner = PlannerActor.options(  # type: ignore[attr-defined]
                scheduling_strategy=_on(self.home_node)
            ).remote(self.model_ref, self.secrets)
        return self.planner

    def _scout(self) -> Handle:
        if self.scout_actor is None:
            self.scout_actor = ScoutActor.options(  # type: ignore[attr-defined]
                scheduling_strategy=_on(self.home_node)
            ).remote()
        return self.scout_actor

    async def _on_planner(self, call: Callable[[Handle], Any]) -> Any:
        try:
            return await answer(call(self._planner()), "planner")
        except RoleLost:
            self.planner = None  # a new one next time
            raise

    async def plan(self, request: ToolRequest) -> ToolSpec:
        spec: ToolSpec = await self._on_planner(lambda actor: actor.plan.remote(request))
        return spec

    async def widen(self, spec: ToolSpec) -> ToolSpec:
        widened: ToolSpec = await self._on_planner(lambda actor: actor.widen.remote(spec))
        return widened

    async def scout(self, query: CrateQuery) -> list[CrateCandidate]:
        try:
            found: list[CrateCandidate] = await answer(
                self._scout().scout.remote(query), "crate scout"
            )
        except RoleLost:
            self.scout_actor = None
            raise
        return found

    async def _coder_and_tester(self, candidate_id: str, node_id: str | None) -> Handle:
        """A tester (holding a cargo slot) and a coder on the tester's node; returns the coder."""
        known = self.candidates.setdefault(candidate_id, _Candidate(node_id=node_id))
        # A tester or coder whose worker dies (killed, out of memory) is restarted and its call
        # retried. `test` is idempotent (cargo on the fork's commit), so a lost build costs a
        # rebuild, not the candidate; `develop` goes on from the journal (the fork, its last
        # reported commit, the model replies already given). `ray.kill` (cancelling a
        # candidate) never restarts either.
        options: dict[str, Any] = {
            "name": self._name(f"{candidate_id}/tester"),
            "max_restarts": RESTARTS,
            "max_task_retries": RESTARTS,
        }
        if node_id is not None:
            options["scheduling_strategy"] = _on(node_id)
        tester = TesterActor.options(**options).remote(self.registry)  # type: ignore[attr-defined]
        known.actors.append(tester)
        known.node_id = await answer(tester.node_id.remote(), f"tester of {candidate_id}")
        coder = CoderActor.options(  # type: ignore[attr-defined]
            scheduling_strategy=_on(known.node_id),
            name=self._name(f"{candidate_id}/coder"),
            max_restarts=RESTARTS,
            max_task_retries=RESTARTS,
        ).remote(
            self.model_ref,
            tester,
            self.max_attempts,
            self.budget,
            (self.home_node, self.store),
            self.secrets,
        )
        known.actors.append(coder)
        known.coder = coder
        return coder

    async def develop(
        self, candidate: CrateCandidate, spec: ToolSpec
    ) -> tuple[Workspace | None, CandidateResult | StepFailed]:
        """Develop on a new coder and tester, wherever a cargo slot is free. When their node dies,
        the candidate goes on with a new pair on another node, from the fork it handed over."""
        candidate_id = candidate.candidate_id
        for tries in itertools.count():
            coder = await self._coder_and_tester(candidate_id, None)
            try:
                outcome: tuple[Workspace | None, CandidateResult | StepFailed] = await answer(
                    coder.develop.remote(candidate, spec), f"coder of {candidate_id}"
                )
                return outcome
            except RoleLost as exc:
                lost = self.candidates[candidate_id].node_id
                unreachable = "ActorUnavailableError" in exc.message  # perhaps its node died
                if (
                    tries >= self.reschedules
                    or lost is None
                    or not await node_died(lost, wait=NODE_DEATH_WAIT_S if unreachable else 0.0)
                ):
                    raise
                log.warning("candidate_rescheduled", candidate=candidate_id, lost_node=lost)
                await self.end_candidate(candidate_id)
                self.candidates[candidate_id].node_id = None
        raise AssertionError("unreachable")

    async def revise(
        self, workspace: Workspace, spec: ToolSpec, evidence: str, after_attempt: int
    ) -> CandidateResult | StepFailed:
        known = self.candidates.get(workspace.candidate_id)
        node_id = known.node_id if known is not None else None
        coder = known.coder if known is not None and known.coder is not None else None
        if coder is None:  # ended, or never here: a new pair on the fork's node
            coder = await self._coder_and_tester(workspace.candidate_id, node_id)
        revised: CandidateResult | StepFailed = await answer(
            coder.revise.remote(workspace, spec, evidence, after_attempt),
            f"coder of {workspace.candidate_id}",
        )
        return revised

    async def _once(self, actor_class: Any, node_id: str | None, call: str, *args: Any) -> Any:
        """Call `call` on a fresh actor on `node_id` (the home when None), and end the actor."""
        node = _on(node_id or self.home_node)
        actor = actor_class.options(scheduling_strategy=node).remote()
        try:
            return await answer(getattr(actor, call).remote(*args), call.rstrip("e") + "er")
        finally:
            ray.kill(actor, no_restart=True)

    async def deploy(self, workspace: Workspace, spec: ToolSpec) -> Deployment | StepFailed:
        """Deploy at the run's home; a fork made on another node is received there first."""
        outcome: Deployment | StepFailed = await self._once(
            DeployerActor, None, "deploy", workspace, spec
        )
        return outcome

    async def instruct(
        self, workspace: Workspace, spec: ToolSpec, deployment: Deployment
    ) -> ToolManifest:
        manifest: ToolManifest = await self._once(
            DeployerActor, None, "instruct", workspace, spec, deployment
        )
        known = self.candidates.get(workspace.candidate_id)
        if (
            known
            and known.node_id
            and known.node_id != self.home_node
            and node_alive(known.node_id)
        ):
            # the home holds the deployed fork now: the worker's copy is not needed any more
            request = CleanupRequest(
                run_id=self.run_id, candidate_id=workspace.candidate_id, reason="superseded"
            )
            try:
                await self._once(JanitorActor, known.node_id, "clean", request)
            except RoleLost as exc:
                log.warning(
                    "worker_fork_not_cleaned", candidate=workspace.candidate_id, error=str(exc)
                )
        return manifest

    async def end_candidate(self, candidate_id: str) -> None:
        known = self.candidates.get(candidate_id)
        if known is None:
            return
        for actor in known.actors:
            ray.kill(actor, no_restart=True)
        known.actors.clear()
        known.coder = None

    async def clean(self, request: CleanupRequest) -> CleanupReport:
        """Clean on every live node that holds part of it: a candidate's node (its fork, its
        target dir) and the home (a fork received there, the deployment, the forks handed over);
        the whole run on all of them. One report, what each node removed and failed to."""
        if request.candidate_id is not None:
            known = self.candidates.get(request.candidate_id)
            nodes = {self.home_node, *([known.node_id] if known and known.node_id else [])}
        else:
            nodes = {self.home_node, *(c.node_id for c in self.candidates.values() if c.node_id)}
        reports: list[CleanupReport] = []
        for node in sorted(nodes, key=lambda node: node == self.home_node):  # the home last
            if node != self.home_node and not node_alive(node):
                continue  # its disk went with it
            reports.append(await self._once(JanitorActor, node, "clean", request))
        return reports[-1].model_copy(
            update={
                "removed": [item for report in reports for item in report.removed],
                "failures": [item for report in reports for item in report.failures],
            }
        )

    def shutdown(self) -> None:
        for known in self.candidates.values():
            for actor in known.actors:
                ray.kill(actor, no_restart=True)
            known.actors.clear()
        for actor in (self.planner, self.scout_actor, self.budget, self.store):
            if actor is not None:
                ray.kill(actor, no_restart=True)
