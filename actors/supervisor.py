"""The supervisor actor: runs one request's plan with the role actors, and answers progress polls.

`run` drives flakebot.supervisor.Supervisor over RayRoles; `events(since)` returns the recorder's
events from `since` on, so a driver shows progress while the run goes on (an async actor serves
both at once).
"""

from __future__ import annotations

from pathlib import Path

import ray

from actors.roles import RayRoles
from flakebot.errors import FlakebotError
from flakebot.logs import bind_context
from flakebot.recorder import Recorder
from flakebot.runplan import RunPlan
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
    ) -> None:
        bind_context(actor="supervisor", run_id=run_id)
        settings = Settings.from_env()
        self.recorder = Recorder(run_id, settings.home / "runs" / run_id / "journal.jsonl")
        directory = Path(registry.location)
        read_only = (
            []
            if registry.source != "local" or directory.is_relative_to("/usr")
            else [str(directory)]
        )
        code_step = plan.step("code")
        self.roles = RayRoles(
            model_ref, read_only=read_only, max_attempts=code_step.max_attempts or 4
        )
        self.supervisor = Supervisor(
            roles=self.roles,
            recorder=self.recorder,
            registry=registry,
            plan=plan,
            candidates=candidates,
            all_candidates=all_candidates,
        )

    async def run(self, request: ToolRequest | ToolSpec) -> ToolManifest | StepFailed:
        try:
            return await self.supervisor.run(request)
        except FlakebotError as exc:
            return StepFailed(
                run_id=self.recorder.run_id,
                step="deploy" if "deploy" in exc.message else "code",
                error_type=type(exc).__name__,
                reason=exc.message[:4_000],
            )
        finally:
            self.roles.shutdown()

    def events(self, since: int = 0) -> list[RunEvent]:
        return self.recorder.events(since)
