"""The Python driver API: `Flakebot(...).build(request) -> ToolManifest`.

It checks the machine first (cargo, nix, bwrap, the registry, a writable home: milliseconds, before
Ray starts), starts a local Ray cluster (or joins one with `address`, or the one `flakebot up`
keeps running for this home: flakebot.cluster), runs each request's plan in
a supervisor actor, and relays the run's events while it goes. `build` blocks; `abuild` is the
async variant; `resume(run_id)` goes on with a killed run from its journal, with the options it
was started with (its RunStarted message); `build_many` runs several requests at once and
returns, for each, its manifest or the RunFailed it ended with, whatever went wrong. A request is
free text, a spec file (YAML/JSON), or a ToolSpec. A failed run raises RunFailed: the step that
failed, the reason and the journal. The driver waits for a run no longer than its deadline (plus
a margin for the supervisor itself); a supervisor that dies or never answers is a failed run too,
and on a local cluster the driver then cleans what the run left.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import structlog
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.roles import Handle, answer
from actors.secrets import hand_over
from actors.supervisor import SupervisorActor
from actors.worker_pool import start_keeper
from flakebot import cluster as local_cluster
from flakebot.doctor import require_ready
from flakebot.errors import ConfigError, FlakebotError, RunFailed
from flakebot.failures import step_failed
from flakebot.home import ensure_home, run_dir
from flakebot.janitor import Janitor
from flakebot.journal import Journal
from flakebot.planner import looks_like_spec_file
from flakebot.resume import check_resumable
from flakebot.runplan import RunPlan, default_plan, load_plan
from flakebot.settings import Settings, parse_model, parse_registry
from flakebot.specs import load_spec
from messages import (
    CleanupRequest,
    RunEvent,
    RunStarted,
    StepFailed,
    ToolManifest,
    ToolRequest,
    ToolSpec,
)
from messages.base import Step

log = structlog.get_logger()

Request = str | Path | ToolSpec
PASSED_ENV = ("FLAKEBOT_HOME", "FLAKEBOT_REGISTRY", "FLAKEBOT_CONTACT", "FLAKEBOT_LOG_LEVEL",
              "FLAKEBOT_FORBID_REAL_MODELS", "FLAKEBOT_LEASE_TTL", "PATH", "HOME")  # fmt: skip
SUPERVISOR_MARGIN_S = 120.0
SPEC_PATH = re.compile(r"^\S+\.(?:ya?ml|json)$")  # a request that is only a spec file's path


def _present_token(env: dict[str, str]) -> None:
    """Make this process present a cluster's token when it joins. Ray reads its authentication
    settings once, at import: they are read again after the environment changes (Ray 2.60's own
    way, as `ray.init` does when it turns token mode on for a local cluster)."""
    os.environ.update(env)
    from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def new_run_id() -> str:
    return time.strftime("run-%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def _keep_stdout_ours() -> None:
    """Ray's driver prints the cluster's error messages (a killed candidate's task "will be
    retried", a worker's death) to stdout, where the manifest and `--json` go, even with
    log_to_driver off. They go to the log (stderr) instead: the run reports its own failures."""
    worker = getattr(getattr(ray, "_private", None), "worker", None)
    if worker is None or not hasattr(worker, "print_to_stdstream"):
        return

    def to_log(data: dict[str, Any], ignore_prefix: bool = False) -> None:
        for line in data.get("lines") or []:
            log.debug("ray_message", source=str(data.get("pid")), message=str(line)[:2_000])

    worker.print_to_stdstream = to_log


@dataclass
class Flakebot:
    """Builds tools: `Flakebot(model="scripted:FILE").build("examples/hexview.yaml")`."""

    model: str | None = None
    registry: str | None = None
    candidates: int = 3
    address: str | None = None
    plan: Path | None = None
    all_candidates: bool = False
    timeout: float | None = None
    heartbeat_s: float = 30.0
    settings: Settings = field(default_factory=Settings.from_env)
    _started_ray: bool = False
    _joined: bool = False

    def connect(self) -> None:
        """Join the cluster at `address` (or RAY_ADDRESS, as `ray job submit` sets it), or start
        a local one. A joined cluster's nodes keep their own environment (their FLAKEBOT_HOME,
        HOME and PATH); only Flakebot's options travel. No secret travels this way: the job's
        runtime environment is stored in the cluster's job table (see flakebot.secrets)."""
        _keep_stdout_ours()
        if ray.is_initialized():
            return
        address = self.address or os.environ.get("RAY_ADDRESS") or None
        up = None if address else local_cluster.running(self.settings.home)
        if up is not None:  # `flakebot up` for this home: join it, its nodes share the home
            _present_token(up.client_env())
            address = up.address
        names = local_cluster.JOB_ENV if address else PASSED_ENV
        env = {name: os.environ[name] for name in names if name in os.environ}
        if up is not None:
            env = up.job_env(env)
        if not address:
            env["FLAKEBOT_HOME"] = str(self.settings.home)
            env["GROQ_API_KEY"] = env["GROQ_API_KEY_FILE"] = ""  # handed over: actors.secrets
        self._joined = bool(address) and up is None  # a cluster whose nodes have other homes
        # Only what this run changes: with no runtime environment, a kept cluster's idle
        # workers are used (a worker for another environment is a new process: ~0.5 s an actor).
        runtime_env = {"env_vars": env} if env else None
        if address:
            ray.init(
                address=address,
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
        text = str(request)
        if not text.strip():
            raise ConfigError("the request is empty", hint='describe the tool: "a hex viewer"')
        if SPEC_PATH.match(text):  # one word naming a spec file that is not there: a typo
            raise ConfigError(
                f"there is no spec file {text!r}",
                hint="check the path, or describe the tool in words",
            )
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ConfigError(
                "the request is neither a spec file nor UTF-8 text",
                hint="pass a path to an existing spec file, or describe the tool in words",
            ) from None
        return ToolRequest(run_id=run_id, text=text)

    async def abuild(
        self,
        request: Request,
        *,
        on_event: Callable[[RunEvent], None] | None = None,
        run_id: str | None = None,
    ) -> ToolManifest:
        run_id = run_id or new_run_id()
        message = self._request(request, run_id)
        model_ref = parse_model(self.model) if self.model else self.settings.model
        if isinstance(message, ToolRequest) and model_ref is None:
            raise ConfigError(
                "a free-text request needs a model to plan it",
                hint="pass --model (groq:NAME, openai:URL#NAME, scripted:FILE) or a spec file",
            )
        if model_ref is not None and model_ref.script is not None:  # resumable from anywhere
            model_ref = model_ref.model_copy(update={"script": model_ref.script.resolve()})
        registry = parse_registry(self.registry) if self.registry else self.settings.registry
        plan = self._plan()
        started = RunStarted(
            run_id=run_id,
            model=None if model_ref is None else str(model_ref),
            registry=registry,
            candidates=self.candidates,
            all_candidates=self.all_candidates,
            plan=plan.model_dump(mode="json"),
            run_timeout_s=self.timeout,
            heartbeat_s=self.heartbeat_s,
        )
        return await self._start(started, message, on_event, resume=False)

    async def aresume(
        self, run_id: str, *, on_event: Callable[[RunEvent], None] | None = None
    ) -> ToolManifest:
        """Go on with a killed run from its journal, with the options it was started with: the
        steps whose results are saved are not done again. RunFailed if it then fails;
        ConfigError if it cannot go on (unknown, still running, finished or failed)."""
        ensure_home(self.settings.home)
        history = check_resumable(Journal(self.settings.journal_path), self.settings.home, run_id)
        assert history.started is not None and history.request is not None  # checked
        return await self._start(history.started, history.request, on_event, resume=True)

    async def _start(
        self,
        started: RunStarted,
        message: ToolRequest | ToolSpec,
        on_event: Callable[[RunEvent], None] | None,
        *,
        resume: bool,
    ) -> ToolManifest:
        run_id = started.run_id
        ensure_home(self.settings.home)
        require_ready(self.settings.model_copy(update={"registry": started.registry}))
        self.connect()
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        # the run's home: this node, whose FLAKEBOT_HOME holds the journal the driver reads
        supervisor = SupervisorActor.options(scheduling_strategy=here).remote(  # type: ignore[attr-defined]
            started, hand_over(self.settings)
        )
        plan = RunPlan.model_validate(started.plan)
        deadline = (started.run_timeout_s or plan.run_deadline()) + SUPERVISOR_MARGIN_S
        try:
            outcome = await self._follow(supervisor, message, run_id, deadline, on_event, resume)
        finally:
            ray.kill(supervisor, no_restart=True)
        if isinstance(outcome, StepFailed):
            raise RunFailed(outcome, journal=run_dir(self.settings.home, run_id) / "journal.jsonl")
        return outcome

    async def _follow(
        self,
        supervisor: Handle,
        message: ToolRequest | ToolSpec,
        run_id: str,
        deadline: float,
        on_event: Callable[[RunEvent], None] | None,
        resume: bool = False,
    ) -> ToolManifest | StepFailed:
        """Relay the run's events until it ends, the supervisor dies, or the deadline passes."""
        running = supervisor.run.remote(message, resume)
        started = time.monotonic()
        seen = 0
        step: Step = "plan"
        try:
            while True:
                finished, _ = ray.wait([running], timeout=0)
                events: list[RunEvent] = await answer(supervisor.events.remote(seen), "supervisor")
                for event in events:
                    seen = event.seq + 1
                    if event.step != "run":
                        step = event.step
                    if on_event is not None:
                        on_event(event)
                if finished:
                    result: ToolManifest | StepFailed = await answer(running, "supervisor")
                    return result
                if time.monotonic() - started > deadline:
                    reason = (
                        f"the run did not end within {deadline:g} s; its supervisor was stopped"
                    )
                    return self._abandoned(run_id, step, "RunTimedOut", reason)
                await asyncio.sleep(0.5)
        except FlakebotError as exc:  # the supervisor itself died
            return self._abandoned(run_id, step, type(exc).__name__, exc.message)

    def _abandoned(self, run_id: str, step: Step, kind: str, reason: str) -> StepFailed:
        """A run whose supervisor could not finish it: what the driver can still clean, it does."""
        if not self._joined:  # a local cluster shares this FLAKEBOT_HOME
            try:
                Janitor(self.settings).clean(CleanupRequest(run_id=run_id, reason="failed"))
            except Exception as exc:
                log.warning("cleanup_failed", run_id=run_id, error=str(exc))
        return StepFailed(run_id=run_id, step=step, error_type=kind, reason=reason)

    def build(
        self,
        request: Request,
        *,
        on_event: Callable[[RunEvent], None] | None = None,
        run_id: str | None = None,
    ) -> ToolManifest:
        return asyncio.run(self.abuild(request, on_event=on_event, run_id=run_id))

    def resume(
        self, run_id: str, *, on_event: Callable[[RunEvent], None] | None = None
    ) -> ToolManifest:
        return asyncio.run(self.aresume(run_id, on_event=on_event))

    def build_many(self, requests: Sequence[Request]) -> list[ToolManifest | RunFailed]:
        """Run every request at once; each result is its manifest or the RunFailed it ended with,
        whatever went wrong with it (one request's failure never loses another's result)."""

        async def one(request: Request) -> ToolManifest | RunFailed:
            run_id = new_run_id()
            try:
                return await self.abuild(request, run_id=run_id)
            except RunFailed as exc:
                return exc
            except Exception as exc:  # a bad request, or a machine that is not ready
                return RunFailed(step_failed(run_id, "plan", exc))

        async def all_of() -> list[ToolManifest | RunFailed]:
            return list(await asyncio.gather(*(one(request) for request in requests)))

        return asyncio.run(all_of())


def keep_workers(
    settings: Settings, size: int, batch: int, timeout: float = 60.0
) -> dict[str, Any]:
    """Start the worker pool's keeper (flakebot.worker_pool) on the cluster `flakebot up` keeps
    for this home; its state once it answers."""
    bot = Flakebot(settings=settings)
    bot.connect()
    try:
        state: dict[str, Any] = ray.get(
            start_keeper(settings.home, size, batch).state.remote(), timeout=timeout
        )
        return state
    finally:
        bot.close()
