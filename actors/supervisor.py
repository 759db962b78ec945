"""The supervisor actor: runs one request's plan with the role actors, and answers progress polls.

`run` drives flakebot.supervisor.Supervisor over RayRoles and returns the manifest or the
step_failed message the run ended with (never raises for a failed run); `events(since)` returns
the recorder's events from `since` on, so a driver shows progress while the run goes on (an async
actor serves both at once). While `run` runs, this process holds the run's lock: `flakebot clean
--all` leaves the run alone, and a crash releases the lock with the process.
"""

from __future__ import annotations

import ray

from actors.roles import RayRoles
from flakebot.crates.fetch import dependency_dir
from flakebot.errors import RunFailed
from flakebot.journal import Journal
from flakebot.logs import bind_context
from flakebot.recorder import Recorder
from flakebot.runplan import RunPlan
from flakebot.runstate import RunRecord
from flakebot.settings import ModelRef, Settings
from flakebot.supervisor import Supervisor
from messages import RegistryRef, RunEvent, StepFailed, ToolManifest, ToolRequest, ToolSpec


@ray.remote(num_cpus=0)
class SupervisorActor:
    def __init__(
        self,
        run_id: str,
        model_ref: ModelRef | None,
        registry: RegistryRef,
        plan: RunPlan,
        candidates: int,
        all_candidates: bool,
        run_timeout: float | None = None,
        heartbeat_s: float = 30.0,
    ) -> None:
        bind_context(actor="supervisor", run_id=run_id)
        settings = Settings.from_env()
        self.record = RunRecord(settings.home, run_id)
        self.recorder = Recorder(
            run_id,
            self.record.directory / "journal.jsonl",
            journal=Journal(settings.journal_path),
        )
        directory = dependency_dir(settings.home, registry)  # what the testers' cargo reads
        read_only = [] if directory.is_relative_to("/usr") else [str(directory)]
        code_step = plan.step("code")
        self.roles = RayRoles(
            run_id, model_ref, read_only=read_only, max_attempts=code_step.max_attempts or 4
        )
        self.supervisor = Supervisor(
            roles=self.roles,
            recorder=self.recorder,
            registry=registry,
            plan=plan,
            candidates=candidates,
            all_candidates=all_candidates,
            run_timeout=run_timeout,
            heartbeat_s=heartbeat_s,
        )

    async def run(self, request: ToolRequest | ToolSpec) -> ToolManifest | StepFailed:
        """The run's manifest, or the step_failed message it ended with; the run is marked in
        progress (its lock held by this process) until then."""
        try:
            with self.record.active():
                return await self.supervisor.run(request)
        except RunFailed as exc:
            return exc.failure
        finally:
            self.roles.shutdown()

    def deadline(self) -> float:
        return self.supervisor.deadline

    def events(self, since: int = 0) -> list[RunEvent]:
        return self.recorder.events(since)
