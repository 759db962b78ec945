"""The supervisor's plan logic on plain roles in this process: backtracking and its bound.

The roles here answer from tables instead of running cargo and Nix (test_run.py runs the real
ones through Ray); what is under test is which step the supervisor goes back to, and when it stops.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from flakebot.errors import RoleLost
from flakebot.recorder import Recorder
from flakebot.runplan import default_plan
from flakebot.supervisor import RunFailed, Supervisor
from messages import (
    CandidateResult,
    CleanupReport,
    CleanupRequest,
    CrateCandidate,
    CrateQuery,
    Deployment,
    Provenance,
    RegistryRef,
    ScoreParts,
    StageResult,
    StepFailed,
    TestReport,
    ToolManifest,
    ToolRequest,
    ToolSpec,
    Workspace,
)

REGISTRY = RegistryRef(source="local", location="/registry")
COMMIT = "a" * 40
STORE = "/nix/store/" + "b" * 32 + "-tool-1.0.0"
SPEC = ToolSpec(run_id="r", name="tool", summary="A tool.", search_queries=["hex viewer"])


def candidate(name: str, rank: int) -> CrateCandidate:
    return CrateCandidate(
        run_id="r",
        candidate_id=f"c{rank}-{name}",
        name=name,
        version="1.0.0",
        registry=REGISTRY,
        score=1.0 / rank,
        score_parts=ScoreParts(relevance=1.0),
    )


def workspace(c: CrateCandidate) -> Workspace:
    return Workspace(
        run_id="r",
        candidate_id=c.candidate_id,
        crate_name=c.name,
        crate_version="1.0.0",
        path=f"/w/{c.candidate_id}",
        branch="flakebot/r",
        head_commit=COMMIT,
        origin="registry-source",
        registry=REGISTRY,
        target_dir="/t",
    )


def result(c: CrateCandidate, green: bool) -> CandidateResult:
    stage = StageResult(stage="build", status="passed" if green else "failed", duration_s=1.0)
    report = TestReport(
        run_id="r", candidate_id=c.candidate_id, attempt=1, stages=[stage], sandboxed=True
    )
    return CandidateResult(
        run_id="r",
        candidate_id=c.candidate_id,
        crate_name=c.name,
        crate_version="1.0.0",
        status="green" if green else "failed",
        ended_by="green" if green else "max_attempts",
        attempts=1,
        workspace_path=f"/w/{c.candidate_id}",
        head_commit=COMMIT,
        last_report=report,
    )


@dataclass
class TableRoles:
    """Scout batches, which crates go green, and deploy outcomes, from tables."""

    batches: list[list[str]]
    green: set[str]
    deploy_failures: int = 0
    delays: dict[str, float] = field(default_factory=dict)
    crash: dict[str, Exception] = field(default_factory=dict)  # role (or crate) -> what it raises
    calls: list[str] = field(default_factory=list)

    def _maybe_crash(self, role: str) -> None:
        if role in self.crash:
            raise self.crash[role]

    async def plan(self, request: ToolRequest) -> ToolSpec:
        self.calls.append("plan")
        self._maybe_crash("plan")
        return SPEC

    async def widen(self, spec: ToolSpec) -> ToolSpec:
        self.calls.append("widen")
        return spec.model_copy(update={"search_queries": [*spec.search_queries, "hex"]})

    async def scout(self, query: CrateQuery) -> list[CrateCandidate]:
        self._maybe_crash("scout")
        self.calls.append(f"scout exclude={query.exclude}")
        names = self.batches.pop(0) if self.batches else []
        return [candidate(name, rank) for rank, name in enumerate(names, start=1)]

    async def develop(
        self, c: CrateCandidate, spec: ToolSpec
    ) -> tuple[Workspace | None, CandidateResult | StepFailed]:
        await asyncio.sleep(self.delays.get(c.name, 0.0))
        self._maybe_crash(c.name)
        self.calls.append(f"developed {c.name}")
        return workspace(c), result(c, c.name in self.green)

    async def revise(
        self, ws: Workspace, spec: ToolSpec, evidence: str, after_attempt: int
    ) -> CandidateResult | StepFailed:
        self.calls.append(f"revise with {evidence}")
        return result(candidate(ws.crate_name, 1), True)

    async def deploy(self, ws: Workspace, spec: ToolSpec) -> Deployment | StepFailed:
        self.calls.append(f"deploy {ws.candidate_id}")
        self._maybe_crash("deploy")
        if self.deploy_failures:
            self.deploy_failures -= 1
            return StepFailed(
                run_id="r",
                candidate_id=ws.candidate_id,
                step="deploy",
                error_type="DeployError",
                reason="nix build failed",
                evidence="NIX LOG",
                retryable=True,
                backtrack_to="code",
            )
        return Deployment(
            run_id="r",
            candidate_id=ws.candidate_id,
            flake_ref="path:/w",
            system="x86_64-linux",
            commit=COMMIT,
            store_path=STORE,
            bin_path=f"{STORE}/bin/tool",
            nar_hash="sha256-x",
            gc_root="/g",
        )

    async def instruct(self, ws: Workspace, spec: ToolSpec, deployment: Deployment) -> ToolManifest:
        self.calls.append(f"instruct {ws.candidate_id}")
        self._maybe_crash("instruct")
        return ToolManifest(
            run_id="r",
            name=spec.name,
            summary=spec.summary,
            tool_kind="cli",
            run_command=["nix", "run"],
            store_path=STORE,
            bin_path=deployment.bin_path,
            help_text="",
            function_schema={},
            mcp_tool={},
            provenance=Provenance(
                crate_name=ws.crate_name,
                crate_version="1.0.0",
                license=None,
                repository=None,
                registry=REGISTRY,
                fork_commit=COMMIT,
                toolchain="rustc",
                nar_hash="sha256-x",
            ),
            cleanup_command=["flakebot", "clean", "r"],
        )

    async def end_candidate(self, candidate_id: str) -> None:
        self.calls.append(f"end {candidate_id}")

    async def clean(self, request: CleanupRequest) -> CleanupReport:
        self.calls.append(f"clean {request.candidate_id} {request.reason}")
        self._maybe_crash("clean")
        return CleanupReport(run_id="r", candidate_id=request.candidate_id, reason=request.reason)


def supervise(
    roles: TableRoles,
    *,
    max_backtracks: int = 4,
    code_timeout: float | None = None,
    recorder: Recorder | None = None,
    **options: object,
) -> tuple[Supervisor, Recorder]:
    plan = default_plan().model_copy(update={"max_backtracks": max_backtracks})
    if code_timeout is not None:
        steps = [
            step.model_copy(update={"timeout_s": code_timeout}) if step.step == "code" else step
            for step in plan.steps
        ]
        plan = plan.model_copy(update={"steps": steps})
    recorder = recorder or Recorder("r")
    supervisor = Supervisor(
        roles=roles,
        recorder=recorder,
        registry=REGISTRY,
        plan=plan,
        candidates=2,
        **options,  # type: ignore[arg-type]
    )
    return supervisor, recorder


def events(recorder: Recorder) -> list[tuple[str, str]]:
    return [(event.event, event.detail) for event in recorder.events()]


def test_first_green_wins_and_the_slower_one_is_cancelled_and_cleaned() -> None:
    roles = TableRoles(batches=[["slow", "fast"]], green={"slow", "fast"}, delays={"slow": 5.0})
    supervisor, _ = supervise(roles)
    started = datetime.now(UTC)
    manifest = asyncio.run(supervisor.run(SPEC))
    assert manifest.provenance.crate_name == "fast"
    assert (datetime.now(UTC) - started).total_seconds() < 4
    assert "end c1-slow" in roles.calls and "clean c1-slow cancelled" in roles.calls
    assert "developed slow" not in roles.calls


def test_a_failed_batch_goes_back_to_the_scout_excluding_what_was_tried() -> None:
    roles = TableRoles(batches=[["a", "b"], ["c"]], green={"c"})
    supervisor, recorder = supervise(roles)
    manifest = asyncio.run(supervisor.run(SPEC))
    assert manifest.provenance.crate_name == "c"
    assert "scout exclude=['a', 'b']" in roles.calls
    assert ("run_backtracked", "every candidate of the batch failed") in events(recorder)
    assert "clean c1-a failed" in roles.calls and "clean c2-b failed" in roles.calls


def test_no_candidate_goes_back_to_the_planner_to_widen() -> None:
    roles = TableRoles(batches=[[], ["a"]], green={"a"})
    supervisor, recorder = supervise(roles)
    asyncio.run(supervisor.run(SPEC))
    assert roles.calls[1] == "widen"
    assert ("run_backtracked", "no candidate found: widening the queries") in events(recorder)


def test_a_deploy_failure_goes_back_to_the_coder_with_the_log() -> None:
    roles = TableRoles(batches=[["a"]], green={"a"}, deploy_failures=1)
    supervisor, recorder = supervise(roles)
    asyncio.run(supervisor.run(SPEC))
    assert "revise with NIX LOG" in roles.calls
    backtracks = [e for e in recorder.events() if e.event == "run_backtracked"]
    assert backtracks[0].data["to"] == "code"


def test_backtracks_are_bounded_and_a_failed_run_is_cleaned() -> None:
    roles = TableRoles(batches=[["a"], ["b"], ["c"], ["d"]], green=set())
    supervisor, recorder = supervise(roles, max_backtracks=2)
    with pytest.raises(RunFailed, match="no more backtracks"):
        asyncio.run(supervisor.run(SPEC))
    assert len([e for e in recorder.events() if e.event == "run_backtracked"]) == 2
    assert roles.calls[-1] == "clean None failed"
    assert recorder.events()[-1].event == "run_failed"
    kinds = [message.kind for message in recorder.messages()]
    assert kinds[0] == "tool_spec" and "crate_query" in kinds and "candidate_result" in kinds


@pytest.mark.parametrize("role", ["plan", "scout", "deploy", "instruct"])
def test_a_role_that_crashes_fails_the_run_at_its_step_and_the_run_is_cleaned(role: str) -> None:
    roles = TableRoles(batches=[["a"]], green={"a"}, crash={role: RuntimeError(f"{role} broke")})
    supervisor, recorder = supervise(roles)
    request = ToolRequest(run_id="r", text="a hex viewer")
    with pytest.raises(RunFailed) as caught:
        asyncio.run(supervisor.run(request))
    failure = caught.value.failure
    assert failure.step == role and failure.error_type == "RuntimeError"
    assert f"RuntimeError: {role} broke" in failure.reason
    assert "Traceback" in failure.evidence  # a crash keeps its traceback, in the journal
    assert roles.calls[-1] == "clean None failed"
    assert recorder.events()[-1].event == "run_failed"
    assert caught.value.message.startswith(f"run r failed in the {role} step")


def test_a_crashed_candidate_fails_with_its_reason_and_the_run_goes_on() -> None:
    roles = TableRoles(
        batches=[["a", "b"]], green={"b"}, crash={"a": RuntimeError("develop crashed")}
    )
    supervisor, recorder = supervise(roles)
    manifest = asyncio.run(supervisor.run(SPEC))
    assert manifest.provenance.crate_name == "b"
    failed = [e for e in recorder.events() if e.event == "candidate_failed"]
    assert failed[0].candidate_id == "c1-a" and "RuntimeError: develop crashed" in failed[0].detail
    assert "end c1-a" in roles.calls and "end c2-b" in roles.calls  # every candidate ended


def test_a_janitor_that_crashes_is_recorded_and_does_not_end_the_run() -> None:
    roles = TableRoles(batches=[["a", "b"]], green={"b"}, crash={"clean": RuntimeError("disk")})
    supervisor, recorder = supervise(roles)
    manifest = asyncio.run(supervisor.run(SPEC))
    assert manifest.provenance.crate_name == "b"
    (problem,) = [e for e in recorder.events() if e.event == "cleanup_failed"]
    assert "RuntimeError: disk" in problem.detail


def test_a_lost_candidate_and_one_that_never_answers_fail_and_the_next_batch_wins() -> None:
    roles = TableRoles(
        batches=[["lost", "hangs"], ["good"]],
        green={"good", "hangs"},
        delays={"hangs": 3_600.0},
        crash={"lost": RoleLost("the coder of c1-lost died: ActorDiedError")},
    )
    supervisor, recorder = supervise(roles, code_timeout=0.5)
    started = time.monotonic()
    manifest = asyncio.run(supervisor.run(SPEC))
    assert manifest.provenance.crate_name == "good"
    assert time.monotonic() - started < 10
    failed = {e.candidate_id: e.detail for e in recorder.events() if e.event == "candidate_failed"}
    assert "died" in failed["c1-lost"]
    assert "did not finish within 0.5 s" in failed["c2-hangs"]
    assert {"end c1-lost", "end c2-hangs", "end c1-good"} <= set(roles.calls)


def test_the_run_deadline_ends_a_run_whose_candidates_never_answer() -> None:
    roles = TableRoles(batches=[["a", "b"]], green=set(), delays={"a": 3_600.0, "b": 3_600.0})
    supervisor, recorder = supervise(roles, run_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(RunFailed) as caught:
        asyncio.run(supervisor.run(SPEC))
    assert time.monotonic() - started < 10
    assert caught.value.failure.error_type == "RunTimedOut"
    assert caught.value.failure.step == "code"
    assert "end c1-a" in roles.calls and "end c2-b" in roles.calls
    assert roles.calls[-1] == "clean None failed"
    assert "passed its deadline of 1 s in the code step" in recorder.events()[-1].detail


def test_progress_is_reported_while_a_step_waits() -> None:
    roles = TableRoles(batches=[["a"]], green={"a"}, delays={"a": 0.45})
    supervisor, recorder = supervise(roles, heartbeat_s=0.1)
    asyncio.run(supervisor.run(SPEC))
    progress = [e for e in recorder.events() if e.event == "progress_reported"]
    assert len(progress) >= 2 and all("waiting for c1-a" in e.detail for e in progress)


def test_a_cancelled_run_ends_its_candidates_and_is_cleaned() -> None:
    roles = TableRoles(batches=[["a"]], green=set(), delays={"a": 3_600.0})
    supervisor, recorder = supervise(roles)

    async def cancel_soon() -> None:
        task = asyncio.ensure_future(supervisor.run(SPEC))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_soon())
    assert "end c1-a" in roles.calls and roles.calls[-1] == "clean None failed"
    assert recorder.events()[-1].event == "run_failed"
