"""The Python driver API: `Flakebot(...).build(request) -> ToolManifest`.

It starts a local Ray cluster (or joins one with `address`), runs each request's plan in a
supervisor actor, and relays the run's events while it goes. `build` blocks; `abuild` is the
async variant; `build_many` runs several requests at once and returns each one's manifest or
failure. A request is free text, a spec file (YAML/JSON), or a ToolSpec.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import ray
import structlog

from actors.supervisor import SupervisorActor
from flakebot.errors import ConfigError, FlakebotError
from flakebot.planner import looks_like_spec_file
from flakebot.runplan import RunPlan, default_plan, load_plan
from flakebot.settings import Settings, parse_model, parse_registry
from flakebot.specs import load_spec
from messages import RunEvent, StepFailed, ToolManifest, ToolRequest, ToolSpec

log = structlog.get_logger()

Request = str | Path | ToolSpec
PASSED_ENV = ("FLAKEBOT_HOME", "FLAKEBOT_REGISTRY", "FLAKEBOT_CONTACT", "FLAKEBOT_LOG_LEVEL",
              "FLAKEBOT_FORBID_REAL_MODELS", "FLAKEBOT_LEASE_TTL", "PATH", "HOME")  # fmt: skip


class BuildFailed(FlakebotError):
    """A run ended without a tool."""

    def __init__(self, failure: StepFailed, journal: Path) -> None:
        super().__init__(
            f"run {failure.run_id} failed: {failure.reason}",
            hint=f"the run's history is in {journal}",
        )
        self.failure = failure


def new_run_id() -> str:
    return time.strftime("run-%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


@dataclass
class Flakebot:
    """Builds tools: `Flakebot(model="scripted:FILE").build("examples/hexview.yaml")`."""

    model: str | None = None
    registry: str | None = None
    candidates: int = 3
    address: str | None = None
    plan: Path | None = None
    all_candidates: bool = False
    settings: Settings = field(default_factory=Settings.from_env)
    _started_ray: bool = False

    def _connect(self) -> None:
        if ray.is_initialized():
            return
        env = {name: os.environ[name] for name in PASSED_ENV if name in os.environ}
        env["FLAKEBOT_HOME"] = str(self.settings.home)
        runtime_env = {
            "env_vars": env,
            "worker_process_setup_hook": "flakebot.logs.setup_worker_logging",
        }
        if self.address:
            ray.init(
                address=self.address,
                runtime_env=runtime_env,
                logging_level=logging.WARNING,
                log_to_driver=False,
            )
        else:
            cores = os.cpu_count() or 2
            ray.init(
                num_cpus=cores,
                resources={"cargo": cores},
                include_dashboard=False,
                runtime_env=runtime_env,
                logging_level=logging.WARNING,
                log_to_driver=False,
            )
        self._started_ray = True

    def close(self) -> None:
        if self._started_ray and ray.is_initialized():
            ray.shutdown()
        self._started_ray = False

    def _plan(self) -> RunPlan:
        return load_plan(self.plan) if self.plan else default_plan()

    def _request(self, request: Request, run_id: str) -> ToolRequest | ToolSpec:
        if isinstance(request, ToolSpec):
            return request.model_copy(update={"run_id": run_id})
        if isinstance(request, Path) or looks_like_spec_file(str(request)):
            return load_spec(Path(request), run_id)
        if not str(request).strip():
            raise ConfigError("the request is empty", hint='describe the tool: "a hex viewer"')
        return ToolRequest(run_id=run_id, text=str(request))

    async def abuild(
        self, request: Request, *, on_event: Callable[[RunEvent], None] | None = None
    ) -> ToolManifest:
        run_id = new_run_id()
        message = self._request(request, run_id)
        model_ref = parse_model(self.model) if self.model else self.settings.model
        if isinstance(message, ToolRequest) and model_ref is None:
            raise ConfigError(
                "a free-text request needs a model to plan it",
                hint="pass --model (groq:NAME, openai:URL#NAME, scripted:FILE) or a spec file",
            )
        self._connect()
        registry = parse_registry(self.registry) if self.registry else self.settings.registry
        supervisor = SupervisorActor.remote(  # type: ignore[attr-defined]
            run_id, model_ref, registry, self._plan(), self.candidates, self.all_candidates
        )
        running = supervisor.run.remote(message)
        seen = 0
        try:
            while True:
                done, _ = ray.wait([running], timeout=0)
                events: list[RunEvent] = await supervisor.events.remote(seen)
                for event in events:
                    seen = event.seq + 1
                    if on_event is not None:
                        on_event(event)
                if done:
                    break
                await asyncio.sleep(0.5)
            outcome: ToolManifest | StepFailed = await running
        finally:
            ray.kill(supervisor)
        if isinstance(outcome, StepFailed):
            raise BuildFailed(outcome, self.settings.home / "runs" / run_id / "journal.jsonl")
        return outcome

    def build(
        self, request: Request, *, on_event: Callable[[RunEvent], None] | None = None
    ) -> ToolManifest:
        return asyncio.run(self.abuild(request, on_event=on_event))

    def build_many(self, requests: Sequence[Request]) -> list[ToolManifest | BuildFailed]:
        """Run every request at once; each result is its manifest or its failure."""

        async def all_of() -> list[ToolManifest | BuildFailed]:
            outcomes = await asyncio.gather(
                *(self.abuild(r) for r in requests), return_exceptions=True
            )
            results: list[ToolManifest | BuildFailed] = []
            for outcome in outcomes:
                if isinstance(outcome, ToolManifest | BuildFailed):
                    results.append(outcome)
                else:
                    raise outcome
            return results

        return asyncio.run(all_of())
