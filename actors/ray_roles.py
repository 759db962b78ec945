"""`RayRoles`, the supervisor's seam implemented with the actors of actors.roles, for one run.

The run's home is the node of the supervisor: the planner, the scout, the run's store (its
journal and the forks handed over: flakebot.run_store) and every deploy run there. Each candidate
gets a tester (holding one of its node's cargo slots) and a coder on the tester's node. When a
candidate ends, however it ends, its actors are ended: the coder killed, the tester's cargo
programs killed and waited out (so a candidate's build is gone when its end returns, not when Ray
gets round to it), then the tester killed, which gives the cargo slot back to the node; were the
tester unreachable, bubblewrap's --die-with-parent takes its programs along. The winner's coder
lives on until the deploy, so a revision keeps its model and memory (a new pair if it is gone).
A candidate whose node dies is developed again on another node, from the fork it handed over.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray
import structlog

from actors.roles import (
    RESCHEDULES,
    RESTARTS,
    BudgetActor,
    CoderActor,
    DeployerActor,
    Handle,
    JanitorActor,
    PlannerActor,
    ScoutActor,
    TesterActor,
    answer,
    on_node,
)
from actors.run_store import RunStoreActor
from actors.secrets import SecretRefs
from flakebot.errors import RoleLost
from flakebot.settings import ModelRef
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

log = structlog.get_logger()
NODE_DEATH_WAIT_S = 60.0  # Ray's health checks declare a lost node dead within about 30 s
STOP_PROGRAMS_S = 15.0  # a tester's killed programs exit within this (TesterActor.stop_programs)


def _kill_pair(task: asyncio.Task[_Pair]) -> None:
    if not task.cancelled() and task.exception() is None:
        task.result().kill()


def alive_nodes() -> list[str]:
    nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
    return [str(node["NodeID"]) for node in nodes if node["Alive"]]


def node_alive(node_id: str) -> bool:
    """Does the cluster still count this node alive?"""
    return node_id in alive_nodes()


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


@dataclass
class _Pair:
    """A tester (holding a cargo slot) and a coder on its node, not yet given a candidate."""

    tester: Handle
    coder: Handle
    node_id: str

    def kill(self) -> None:
        for actor in (self.coder, self.tester):
            ray.kill(actor, no_restart=True)


async def _end_pairs(pairs: list[_Pair]) -> None:
    """End these coders and testers: the coders first (so that no test starts), then every
    tester's running programs, waited out (at most STOP_PROGRAMS_S), then the testers."""
    for pair in pairs:
        ray.kill(pair.coder, no_restart=True)
    stopping = [pair.tester.stop_programs.remote() for pair in pairs]
    try:
        await asyncio.wait_for(asyncio.gather(*stopping, return_exceptions=True), STOP_PROGRAMS_S)
    except TimeoutError:
        log.warning("tester_programs_not_stopped", testers=len(pairs))
    for pair in pairs:
        ray.kill(pair.tester, no_restart=True)


@dataclass
class _Candidate:
    node_id: str | None = None
    pairs: list[_Pair] = field(default_factory=list)
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
    home_actors: dict[Any, Handle] = field(default_factory=dict)  # deployer, janitor at home
    home_node: str = ""
    candidates: dict[str, _Candidate] = field(default_factory=dict)
    reschedules: int = RESCHEDULES
    _spawned: int = 0
    _warm: list[asyncio.Task[_Pair]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.home_node = str(ray.get_runtime_context().get_node_id())
        here = on_node(self.home_node)
        self.budget = BudgetActor.options(scheduling_strategy=here).remote()  # type: ignore[attr-defined]

    def _store(self) -> Handle:
        """The run's store at the home: made for the first coder away from home."""
        if self.store is None:
            self.store = RunStoreActor.options(scheduling_strategy=on_node(self.home_node)).remote(
                self.home
            )
        return self.store

    def _name(self, what: str) -> str:
        self._spawned += 1
        return f"flakebot/{self.run_id}/{what}/{self._spawned}"

    def _planner(self) -> Handle:
        if self.planner is None:
            self.planner = PlannerActor.options(  # type: ignore[attr-defined]
                scheduling_strategy=on_node(self.home_node)
            ).remote(self.model_ref, self.secrets)
        return self.planner

    def _scout(self) -> Handle:
        if self.scout_actor is None:
            self.scout_actor = ScoutActor.options(  # type: ignore[attr-defined]
                scheduling_strategy=on_node(self.home_node)
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
        self._trim_warm(len(found))
        if found:  # the deploy will need it: its start overlaps the candidates' builds
            self._at_home(DeployerActor)
        if len(found) > 1:  # and the losers' cleaning
            self._at_home(JanitorActor)
        return found

    def warm(self, request: ToolRequest | ToolSpec, candidates: int) -> None:
        """Start now the actors the run will need, while it plans and scouts: the planner (for
        free text), the scout, and a coder and tester for each of the first `candidates`. Each is
        a process that takes about a second to start; started together, their starts overlap
        instead of adding up. Called from the supervisor's event loop."""
        if isinstance(request, ToolRequest):
            self._planner()
        self._scout()
        for _ in range(candidates - len(self._warm)):
            self._warm.append(asyncio.ensure_future(self._pair(None, "warm")))

    async def _take_warm(self) -> _Pair | None:
        while self._warm:
            try:
                return await self._warm.pop(0)
            except RoleLost as exc:  # it never came up: the next one, or a new pair
                log.warning("warm_pair_lost", error=exc.message)
        return None

    def _trim_warm(self, keep: int) -> None:
        """Give back the cargo slots of warm pairs no candidate will take."""
        while len(self._warm) > max(keep, 0):
            self._warm.pop().add_done_callback(_kill_pair)

    async def _pair(self, node_id: str | None, label: str) -> _Pair:
        # A tester or coder whose worker dies (killed, out of memory) is restarted and its call
        # retried. `test` is idempotent (cargo on the fork's commit), so a lost build costs a
        # rebuild, not the candidate; `develop` goes on from the journal (the fork, its last
        # reported commit, the model replies already given). `ray.kill` (cancelling a
        # candidate) never restarts either.
        options: dict[str, Any] = {
            "name": self._name(f"{label}/tester"),
            "max_restarts": RESTARTS,
            "max_task_retries": RESTARTS,
        }
        if node_id is None and len(alive_nodes()) == 1:
            node_id = self.home_node  # no need to wait for the tester to know where it is
        if node_id is not None:
            options["scheduling_strategy"] = on_node(node_id)
        tester = TesterActor.options(**options).remote(self.registry)  # type: ignore[attr-defined]
        if node_id is None:
            try:
                node_id = str(await answer(tester.node_id.remote(), f"tester of {label}"))
            except RoleLost:
                ray.kill(tester, no_restart=True)
                raise
        coder = CoderActor.options(  # type: ignore[attr-defined]
            scheduling_strategy=on_node(node_id),
            name=self._name(f"{label}/coder"),
            max_restarts=RESTARTS,
            max_task_retries=RESTARTS,
        ).remote(
            self.model_ref,
            tester,
            self.max_attempts,
            self.budget,
            (self.home_node, None if node_id == self.home_node else self._store()),
            self.secrets,
        )
        return _Pair(tester, coder, node_id)

    async def _coder_and_tester(self, candidate_id: str, node_id: str | None) -> Handle:
        """A tester (holding a cargo slot) and a coder on the tester's node; returns the coder.
        Anywhere: a warm pair when one is left. On a given node: a new pair there."""
        known = self.candidates.setdefault(candidate_id, _Candidate(node_id=node_id))
        pair = await self._take_warm() if node_id is None else None
        if pair is None:
            pair = await self._pair(node_id, candidate_id)
        known.pairs.append(pair)
        known.node_id = pair.node_id
        known.coder = pair.coder
        return pair.coder

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
        """Call `call` on an actor of `actor_class` on `node_id`: at the home (None or the home
        node) the run's own, kept for its later calls (each start is a process, about a
        second); elsewhere a fresh one, ended after the call."""
        role = call.rstrip("e") + "er"
        if node_id in (None, self.home_node):
            actor = self._at_home(actor_class)
            try:
                return await answer(getattr(actor, call).remote(*args), role)
            except RoleLost:
                self.home_actors.pop(actor_class, None)  # a new one next time
                raise
        actor = actor_class.options(scheduling_strategy=on_node(node_id)).remote()
        try:
            return await answer(getattr(actor, call).remote(*args), role)
        finally:
            ray.kill(actor, no_restart=True)

    def _at_home(self, actor_class: Any) -> Handle:
        """The run's actor of `actor_class` at its home, started on first use."""
        if actor_class not in self.home_actors:
            self.home_actors[actor_class] = actor_class.options(
                scheduling_strategy=on_node(self.home_node)
            ).remote()
        return self.home_actors[actor_class]

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
        pairs, known.pairs = known.pairs, []
        known.coder = None
        await _end_pairs(pairs)

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
        self._trim_warm(0)
        for known in self.candidates.values():
            for pair in known.pairs:
                pair.kill()
            known.pairs.clear()
        for actor in (self.planner, self.scout_actor, self.budget, self.store):
            if actor is not None:
                ray.kill(actor, no_restart=True)
        for actor in self.home_actors.values():
            ray.kill(actor, no_restart=True)
        self.home_actors.clear()
