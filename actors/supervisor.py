"""The supervisor actor: runs one request's plan with the role actors, and answers progress polls.

It is made from the run's RunStarted message (model, registry, plan, candidates: recorded first
in the journal, so `flakebot resume` makes the same supervisor again). `run` drives
flakebot.supervisor.Supervisor over RayRoles and returns the manifest or the step_failed message
the run ended with (never raises for a failed run), from the start or, with `resume`, from the
run's journal; `events(since)` returns
the recorder's events from `since` on, so a driver shows progress while the run goes on (an async
actor serves both at once). While `run` runs, this process holds the run's lock: `flakebot clean
--all` leaves the run alone, and a crash releases the lock with the process.
"""

from __future__ import annotations

import ray

from actors.ray_roles import RayRoles
from actors.secrets import SecretRefs
from flakebot.errors import RunBusy, RunFailed
from flakebot.journal import Journal
from flakebot.logs import bind_context
from flakebot.recorder import Recorder
from flakebot.resume import RunHistory, fork_head
from flakebot.runplan import RunPlan
from flakebot.runstate import RunRecord
from flakebot.settings import Settings, parse_model
from flakebot.supervisor import Supervisor
from messages import RunEvent, RunStarted, StepFailed, ToolManifest, ToolRequest, ToolSpec


@ray.remote(num_cpus=0)
class SupervisorActor:
    def __init__(self, started: RunStarted, secrets: SecretRefs | None = None) -> None:
        started = RunStarted.model_validate(started)
        run_id = started.run_id
        bind_context(actor="supervisor", run_id=run_id)
        settings = Settings.from_env()
        self.settings = settings
        self.record = RunRecord(settings.home, run_id)
        self.journal = Journal(settings.journal_path)
        self.recorder = Recorder(
            run_id, self.record.directory / "journal.jsonl", journal=self.journal
        )
        plan = RunPlan.model_validate(started.plan)
        self.candidates = started.candidates
        model_ref = parse_model(started.model) if started.model else None
        code_step = plan.step("code")
        self.roles = RayRoles(
            run_id,
            model_ref,
            str(settings.home),
            started.registry,
            secrets=secrets or [],
            max_attempts=code_step.max_attempts or 4,
        )
        self.supervisor = Supervisor(
            roles=self.roles,
            recorder=self.recorder,
            registry=started.registry,
            plan=plan,
            candidates=started.candidates,
            all_candidates=started.all_candidates,
            run_timeout=started.run_timeout_s,
            heartbeat_s=started.heartbeat_s,
            started=started,
            fork_head=lambda candidate_id: fork_head(settings.home, run_id, candidate_id),
        )

    async def run(
        self, request: ToolRequest | ToolSpec, resume: bool = False
    ) -> ToolManifest | StepFailed:
        """The run's manifest, or the step_failed message it ended with; the run is marked in
        progress (its lock held by this process) until then. With `resume`, the run goes on
        from its journal."""
        run_id = self.record.run_id
        try:
            with self.record.active(wait=not resume):
                history = None
                if resume:  # the driver checked that it can go on; this process now holds it
                    messages = [entry.message for entry in self.journal.entries(run_id)]
                    history = RunHistory.of(run_id, messages)
                    self.recorder.go_on_from(messages)
                else:
                    self.roles.warm(request, self.candidates)
                return await self.supervisor.run(request, history)
        except RunBusy as exc:  # another process resumed it first: leave the run alone
            return StepFailed(run_id=run_id, step="plan", error_type="RunBusy", reason=exc.message)
        except RunFailed as exc:
            return exc.failure
        finally:
            self.roles.shutdown()

    def deadline(self) -> float:
        return self.supervisor.deadline

    def events(self, since: int = 0) -> list[RunEvent]:
        return self.recorder.events(since)
