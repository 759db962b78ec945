"""The roles as plain classes, each taking and returning protocol messages.

The Ray actors in `actors/` are thin wrappers around these; everything here runs without Ray.
A role turns its own failures into a StepFailed message that names the step that owns them, so
the supervisor can backtrack instead of crashing.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pygit2
import structlog

from flakebot import manifest as manifests
from flakebot.acceptance import choose_binary
from flakebot.coder import CodeLoop, TestRunner, package_of
from flakebot.crates.cargo_toml import read_crate
from flakebot.crates.fetch import dependency_dir
from flakebot.crates.index import CrateIndex, index_path
from flakebot.deployer import Deployer
from flakebot.errors import DeployError, FlakebotError, ForkError, RoleLost
from flakebot.failures import step_failed
from flakebot.fork import Forker
from flakebot.janitor import Janitor
from flakebot.journal import Journal, RunJournal
from flakebot.models import Budget, Model, NoModel, Transcript, load_model
from flakebot.models.budget import RunBudget
from flakebot.models.journalled import JournalledModel
from flakebot.planner import Planner
from flakebot.prebuild import Prebuild, commit_manifests
from flakebot.run_store import RunStore, Store, fork_here, receive
from flakebot.runstate import RunRecord
from flakebot.sandbox import Sandbox, Toolchain
from flakebot.scout import Scout, candidate_rank
from flakebot.settings import ModelRef, Settings
from flakebot.tool_sandbox import ToolSandbox
from flakebot.verified import VerifiedResult, VerifiedResults, result_key
from messages import (
    CandidateResult,
    CleanupReport,
    CleanupRequest,
    CrateCandidate,
    CrateQuery,
    Deployment,
    RunStarted,
    StepFailed,
    TestReport,
    ToolManifest,
    ToolRequest,
    ToolSpec,
    Workspace,
)

log = structlog.get_logger()

_STOPWORDS = {"the", "and", "for", "with", "that", "this", "from", "into", "tool", "a", "an", "of"}


def _model(
    settings: Settings, model_ref: ModelRef | None, run_id: str, journal: RunJournal | None = None
) -> Model | None:
    """The run's model, its replies journalled (and replayed when the run goes on again)."""
    ref = model_ref or settings.model
    if ref is None:
        return None
    journal = journal or Journal(settings.journal_path)
    return JournalledModel(load_model(ref, settings), journal, run_id)


class PlannerRole:
    def __init__(self, settings: Settings, model_ref: ModelRef | None) -> None:
        self.settings = settings
        self.model_ref = model_ref
        self._models: dict[str, Model | None] = {}  # per run: a retried plan asks anew

    async def plan(self, request: ToolRequest) -> ToolSpec:
        transcript = Transcript(
            self.settings.home / "runs" / request.run_id / "model-transcript.jsonl"
        )
        if request.run_id not in self._models:
            self._models[request.run_id] = _model(self.settings, self.model_ref, request.run_id)
        planner = Planner(self._models[request.run_id], transcript=transcript)
        return await planner.plan(request)

    async def widen(self, spec: ToolSpec) -> ToolSpec:
        """Broader queries: every distinctive word of the queries and the name on its own."""
        words = [spec.name.replace("-", " ")]
        for query in spec.search_queries:
            words += [w for w in re.findall(r"[a-z0-9]+", query.lower()) if w not in _STOPWORDS]
        queries = list(dict.fromkeys([*spec.search_queries, *words]))
        return spec.model_copy(update={"search_queries": queries[:12]})


class ScoutRole:
    def __init__(self, settings: Settings) -> None:
        self.scout = Scout(settings)

    async def scout_crates(self, query: CrateQuery) -> list[CrateCandidate]:
        return await self.scout.scout(query)


@dataclass
class _Prebuilding:
    """A candidate's prebuild as its coder follows it (see DeveloperRole)."""

    spec: ToolSpec
    forker: Forker
    prebuild: Prebuild | None = None


class DeveloperRole:
    """Forks one candidate and runs its edit-test loop; keeps the fork, and the loop (its model,
    registry index and memory), for revisions until the candidate ends.

    With a `store` (a coder on a node other than the run's home: flakebot.run_store), what the
    loop journals goes to the run's home, the fork is handed over there after each test report,
    and a candidate whose fork is not on this node (rescheduled after its node died, or resumed
    elsewhere) goes on from the fork handed over last.

    With `prebuild` (a coder at the run's home, where deploys run), the candidate the scout
    ranked first has its dependencies built by Nix as soon as it is forked, while the loop
    works (flakebot.prebuild): its deploy then compiles only the crate. Only that one, so that
    the candidates of a batch do not all build at once. It builds the fork as its first test
    will leave it (CodeLoop.prepare_export: the acceptance cases, and the lock cargo resolves
    for what they add), and a later commit that changes the manifests (an edit's new
    dependency) starts it again from that commit. A candidate that ends without passing stops
    its prebuild; a green one leaves it to its deploy."""

    def __init__(
        self,
        settings: Settings,
        model_ref: ModelRef | None,
        tester: TestRunner,
        *,
        max_attempts: int = 4,
        budget: RunBudget | None = None,
        store: Store | None = None,
        prebuild: bool = False,
    ) -> None:
        self.settings = settings
        self.model_ref = model_ref
        self.tester = tester
        self.store = store
        self.prebuild = prebuild
        self.journal: RunJournal = store or Journal(settings.journal_path)
        self.budget = budget or Budget()
        self.max_attempts = max_attempts
        self._loops: dict[str, CodeLoop] = {}
        self._prebuilds: dict[str, _Prebuilding] = {}

    def _loop(self, workspace: Workspace) -> CodeLoop:
        known = self._loops.get(workspace.candidate_id)
        if known is None:
            known = self._loops[workspace.candidate_id] = self._new_loop(workspace)
        return known

    def _new_loop(self, workspace: Workspace) -> CodeLoop:
        directory = dependency_dir(self.settings.home, workspace.registry)
        sandbox = Sandbox.for_registry(Toolchain.find(), directory)
        model = _model(self.settings, self.model_ref, workspace.run_id, self.journal) or NoModel()
        index = CrateIndex(directory, index_path(self.settings.home, directory))
        index.refresh()
        return CodeLoop(
            journal=self.journal,
            keeper=self.store,
            model=model,
            forker=Forker(self.settings, sandbox),
            tester=self.tester,
            registry=index,
            budget=self.budget,
            transcript=Transcript(
                self.settings.home / "runs" / workspace.run_id / "model-transcript.jsonl"
            ),
            max_attempts=self.max_attempts,
            on_commit=self._follow_manifests,
        )

    @contextmanager
    def _working(self, run_id: str) -> Iterator[None]:
        """This process is at work on the run (its record says so: a clean of the whole run
        waits for it); a run that has ended already, cancelled and being cleaned, gets nothing
        more done (a coder killed with it may still be starting a call)."""
        with RunRecord(self.settings.home, run_id).working():
            if isinstance(self.journal, Journal):  # at the run's home
                row = self.journal.run(run_id)
                if row is not None and row.state != "running":
                    raise RoleLost(f"run {run_id} has ended ({row.state}): nothing more is done")
            yield

    async def develop(
        self, candidate: CrateCandidate, spec: ToolSpec
    ) -> tuple[Workspace | None, CandidateResult | StepFailed]:
        with self._working(candidate.run_id):
            return await self._develop(candidate, spec)

    async def _develop(
        self, candidate: CrateCandidate, spec: ToolSpec
    ) -> tuple[Workspace | None, CandidateResult | StepFailed]:
        toolchain = Toolchain.find()
        sandbox = Sandbox.for_registry(
            toolchain, dependency_dir(self.settings.home, candidate.registry)
        )
        forker = Forker(self.settings, sandbox)
        ref = self.model_ref or self.settings.model
        key = result_key(spec, None if ref is None else str(ref), candidate, toolchain.version())
        kept = VerifiedResults(self.settings.home).find(key)
        kept_commit = None if kept is None else kept.workspace.head_commit
        path = forker.workspace_path(candidate.run_id, candidate.candidate_id)
        try:
            if not (path / ".git").is_dir():
                self._take_over(forker, candidate.run_id, candidate.candidate_id)
            if kept is not None and path.exists():
                workspace = forker.fork(candidate)  # a restarted coder: the fork made before
            elif kept is not None:
                workspace = self._reuse(forker, candidate, kept)
            else:
                workspace = forker.fork(candidate)
        except FlakebotError as exc:
            return None, step_failed(
                candidate.run_id,
                "fork",
                exc,
                candidate_id=candidate.candidate_id,
                backtrack_to="scout",
            )
        if self.prebuild and candidate_rank(workspace.candidate_id) == 1:
            following = self._prebuilds[candidate.candidate_id] = _Prebuilding(spec, forker)
            await asyncio.to_thread(self._start_prebuild, workspace, following)
        green = False
        try:
            result = await self._loop(workspace).run(workspace, spec)
            green = result.status == "green"
        except FlakebotError as exc:
            return workspace, step_failed(
                candidate.run_id,
                "code",
                exc,
                candidate_id=candidate.candidate_id,
                backtrack_to="scout",
            )
        finally:
            ended = None if green else self._prebuilds.pop(candidate.candidate_id, None)
            if ended is not None and ended.prebuild is not None:  # a green one's is the deploy's
                await asyncio.to_thread(ended.prebuild.stop)
        if kept is not None and result.status == "green" and result.head_commit == kept_commit:
            result = result.model_copy(update={"reused_from": kept.run_id})
        return workspace, result

    def _start_prebuild(self, workspace: Workspace, following: _Prebuilding) -> None:
        """Start building the dependencies of the fork's head commit (see the class)."""
        try:
            deployer = Deployer(self.settings, following.forker.sandbox.toolchain)
            bin_name = workspace.bin_names[0] if workspace.bin_names else workspace.crate_name
            loop = self._loop(workspace)
            following.prebuild = deployer.prebuild(
                workspace,
                following.spec,
                following.forker,
                bin_name=bin_name,
                prepare=lambda root: loop.prepare_export(root, workspace, following.spec),
            )
        except (FlakebotError, OSError) as exc:  # the deploy will build them itself
            log.warning("prebuild_not_started", error=str(exc)[:300])

    def _follow_manifests(self, workspace: Workspace) -> None:
        """After each commit of the loop: (re)start the prebuild when the manifests changed."""
        following = self._prebuilds.get(workspace.candidate_id)
        if following is None:
            return
        if following.prebuild is not None:
            try:
                if commit_manifests(Path(workspace.path)) == following.prebuild.job.manifests:
                    return
            except pygit2.GitError as exc:
                log.warning("prebuild_not_followed", error=str(exc)[:300])
                return
            log.info("prebuild_restarted", candidate=workspace.candidate_id)
            following.prebuild.stop()
        self._start_prebuild(workspace, following)

    def _reuse(self, forker: Forker, candidate: CrateCandidate, kept: VerifiedResult) -> Workspace:
        """The candidate's fork made from a verified result, its green report journalled for
        this run (so the loop does not test it again)."""
        bundle = VerifiedResults(self.settings.home).bundle(kept.key)
        workspace = forker.fork_verified(candidate, kept.workspace, bundle)
        report = kept.report.model_copy(
            update={"run_id": candidate.run_id, "candidate_id": candidate.candidate_id}
        )
        jsonl = self.settings.home / "runs" / candidate.run_id / "journal.jsonl"
        self.journal.append(candidate.run_id, report, jsonl=jsonl)
        log.info("verified_result_reused", key=kept.key, earlier_run=kept.run_id)
        return workspace

    def _take_over(self, forker: Forker, run_id: str, candidate_id: str) -> None:
        """Receive the candidate's fork handed over last to the run's home, when there is one
        and it is not on this node (the candidate was rescheduled, or resumed elsewhere)."""
        if self.store is None:
            return
        kept = self.store.kept_fork(run_id, candidate_id)
        if kept is None:
            return
        made, bundle = kept
        receive(forker, made, bundle)
        log.info("fork_taken_over", candidate=candidate_id, commit=made.workspace.head_commit)

    async def revise(
        self, workspace: Workspace, spec: ToolSpec, evidence: str, after_attempt: int
    ) -> CandidateResult | StepFailed:
        """Fix what a later step (the deploy) found, numbering attempts after `after_attempt`."""
        with self._working(workspace.run_id):
            return await self._revise(workspace, spec, evidence, after_attempt)

    async def _revise(
        self, workspace: Workspace, spec: ToolSpec, evidence: str, after_attempt: int
    ) -> CandidateResult | StepFailed:
        try:
            forker = Forker(self.settings, Sandbox(Toolchain.find()))
            workspace = fork_here(forker, workspace, self.store)
            result = await self._loop(workspace).run(
                workspace, spec, evidence=evidence, first_attempt=after_attempt + 1
            )
        except FlakebotError as exc:
            return step_failed(workspace.run_id, "code", exc, candidate_id=workspace.candidate_id)
        return result


def deployed_binary(workspace: Workspace, spec: ToolSpec) -> str:
    """The binary to deploy: read from the fork as the edits left it (a library crate's coder
    added it), chosen as the acceptance cases chose it."""
    crate = read_crate(package_of(workspace))
    return choose_binary(spec, crate.tool_bins, workspace.crate_name, all_bins=crate.bin_names)


class DeployerRole:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.toolchain = Toolchain.find()
        self.deployer = Deployer(settings, self.toolchain)

    def deploy(self, workspace: Workspace, spec: ToolSpec) -> Deployment | StepFailed:
        forker = Forker(self.settings, Sandbox(self.toolchain))
        try:
            workspace = fork_here(forker, workspace, RunStore(self.settings.home))
            bin_name = deployed_binary(workspace, spec)
            return self.deployer.deploy(workspace, spec, forker, bin_name=bin_name)
        except DeployError as exc:
            return step_failed(
                workspace.run_id,
                "deploy",
                exc,
                candidate_id=workspace.candidate_id,
                backtrack_to="code",
                evidence=exc.log_tail,
            )
        except FlakebotError as exc:
            return step_failed(workspace.run_id, "deploy", exc, candidate_id=workspace.candidate_id)

    def instruct(
        self, workspace: Workspace, spec: ToolSpec, deployment: Deployment
    ) -> ToolManifest:
        forker = Forker(self.settings, Sandbox(self.toolchain))
        workspace = fork_here(forker, workspace, RunStore(self.settings.home))
        made = RunRecord(self.settings.home, workspace.run_id).fork(workspace.candidate_id)
        if made is None:
            raise ForkError(f"the run has no record of the fork {workspace.candidate_id}")
        manifest = manifests.build_manifest(
            spec,
            made.candidate,
            deployment,
            sandbox=ToolSandbox(closure=tuple(self.deployer.nix.closure(deployment.store_path))),
            toolchain=self.toolchain.version(),
            run_command=self.deployer.nix.run_argv(
                f"{deployment.flake_ref}#default", self.deployer.flake_args(workspace.registry)
            ),
            changes=Forker(self.settings, Sandbox(self.toolchain)).changes(
                workspace, deployment.commit
            ),
            source=made.workspace.source,
        )
        manifests.save(self.settings.home, manifest)
        try:
            self._keep(made.candidate, workspace, spec, deployment)
        except (FlakebotError, OSError) as exc:  # the tool is deployed: keeping is a bonus
            log.warning("verified_result_not_kept", error=str(exc)[:300])
        return manifest

    def _keep(
        self,
        candidate: CrateCandidate,
        workspace: Workspace,
        spec: ToolSpec,
        deployment: Deployment,
    ) -> None:
        """Keep the deployed fork and its green report for later runs of the same job."""
        journal = Journal(self.settings.journal_path)
        run_id = workspace.run_id
        started = [
            m for m in journal.messages_of(run_id, "run_started") if isinstance(m, RunStarted)
        ]
        forker = Forker(self.settings, Sandbox(self.toolchain))
        deployed = [attempt.commit for attempt in forker.attempts(workspace)]
        deployed = deployed[: deployed.index(deployment.commit) + 1]  # the deployed history
        green = [
            m
            for m in journal.messages_of(run_id, "test_report", workspace.candidate_id)
            if isinstance(m, TestReport) and m.green and m.commit in deployed
        ]
        if not started or not green:  # not a whole run (flakebot deploy), or no green record
            return
        key = result_key(spec, started[0].model, candidate, self.toolchain.version())
        results = VerifiedResults(self.settings.home)
        bundle = results.directory / f".{key}.{run_id}.bundle"
        results.directory.mkdir(parents=True, exist_ok=True)
        forker.export_bundle(workspace, bundle)
        kept = workspace.model_copy(update={"head_commit": green[-1].commit})
        result = VerifiedResult(key=key, run_id=run_id, workspace=kept, report=green[-1])
        results.save(result, bundle)


class JanitorRole:
    def __init__(self, settings: Settings) -> None:
        self.janitor = Janitor(settings)

    def clean(self, request: CleanupRequest) -> CleanupReport:
        return self.janitor.clean(request)
