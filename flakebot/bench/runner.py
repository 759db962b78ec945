"""Runs a suite's trials through the actor system, `parallel` at once, one result line each.

A trial is a whole `flakebot run` of one task with one model. When it deploys, the bench runs the
task's checks against the deployed tool (in the tool sandbox, as an agent would run it),
measures the floor of the run (flakebot.bench.floor) with no other run of the bench going on (runs
wait to start meanwhile), and then cleans the run, timing the clean, and forgets the verified
result it kept, so that a repeat runs the whole job again.
Everything about the run itself (stages, attempts, model calls and tokens) comes from its journal
and model transcript. Each result is appended to the results file as one JSON line and synced; a
re-run skips the trials already there, as a batch does.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from flakebot.batch import end_cut_line
from flakebot.bench.floor import FloorMeter
from flakebot.bench.suite import Trial
from flakebot.bench.timeline import RUN_LANE, Span, first_test, read_journal, spans, stage_seconds
from flakebot.driver import Flakebot, new_run_id
from flakebot.errors import CommandTimedOut, RunFailed
from flakebot.home import append_private, run_dir
from flakebot.janitor import Janitor
from flakebot.matching import output_matches
from flakebot.models.base import Usage
from flakebot.models.budget import default_prices
from flakebot.nix import Nix
from flakebot.tool_sandbox import ToolSandbox
from flakebot.verified import VerifiedResults
from messages import AcceptanceCase, CleanupRequest, Deployment, ToolManifest, Workspace

CHECK_TIMEOUT_S = 30.0


class CheckResult(BaseModel):
    name: str
    passed: bool
    detail: str = ""


class TrialResult(BaseModel):
    """One line of a bench's results file."""

    model_config = ConfigDict(extra="ignore")

    key: str
    task: str
    kind: str
    model: str
    repeat: int
    status: Literal["deployed", "failed"]
    success: bool = Field(description="Deployed, and every check of the deployed tool passed.")
    run_id: str
    seconds: float = Field(description="The run, from the request to its manifest.")
    attempts: int | None = None
    model_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None
    stages: dict[str, float] = Field(default_factory=dict)
    spans: list[dict[str, Any]] = Field(default_factory=list)
    first_cargo_s: float | None = None
    winner: str | None = None
    checks: list[CheckResult] = Field(default_factory=list)
    floor_cargo_s: float | None = None
    floor_nix_s: float | None = None
    floor_s: float | None = None
    overhead: float | None = Field(default=None, description="seconds / floor_s")
    step: str | None = None
    error_type: str | None = None
    reason: str | None = None


def read_trial_results(path: Path) -> dict[str, TrialResult]:
    done: dict[str, TrialResult] = {}
    if not path.exists():
        return done
    for text in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            result = TrialResult.model_validate_json(text)
        except ValidationError:
            continue  # a line cut by a kill: its trial runs again
        done[result.key] = result
    return done


Progress = Callable[[Trial, str], None]


@dataclass
class _Quiet:
    """The bench's runs share the machine; a floor is measured with none of them going on (runs
    wait to start while a floor waits, so it is not starved)."""

    condition: asyncio.Condition = field(default_factory=asyncio.Condition)
    busy: int = 0
    waiting: int = 0
    measuring: bool = False

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with self.condition:
            await self.condition.wait_for(lambda: not self.waiting and not self.measuring)
            self.busy += 1
        try:
            yield
        finally:
            async with self.condition:
                self.busy -= 1
                self.condition.notify_all()

    @contextlib.asynccontextmanager
    async def alone(self) -> AsyncIterator[None]:
        async with self.condition:
            self.waiting += 1
            await self.condition.wait_for(lambda: not self.busy and not self.measuring)
            self.waiting -= 1
            self.measuring = True
        try:
            yield
        finally:
            async with self.condition:
                self.measuring = False
                self.condition.notify_all()


@dataclass
class Bench:
    """Runs trials with `bot` (its options the defaults), `parallel` at once, into `out`."""

    bot: Flakebot
    out: Path
    parallel: int = 2
    floor: bool = True
    on_progress: Progress | None = None
    _quiet: _Quiet = field(default_factory=_Quiet)

    def pending(self, trials: list[Trial]) -> list[Trial]:
        done = read_trial_results(self.out)
        return [trial for trial in trials if trial.key not in done]

    def run(self, trials: list[Trial]) -> list[TrialResult]:
        return asyncio.run(self.arun(trials))

    async def arun(self, trials: list[Trial]) -> list[TrialResult]:
        todo = self.pending(trials)
        if todo:
            end_cut_line(self.out)
            self.bot.connect()  # once: every trial shares the cluster
        gate = asyncio.Semaphore(self.parallel)
        self._quiet = _Quiet()  # made in this event loop
        results: list[TrialResult] = []

        async def one(trial: Trial) -> None:
            async with gate:
                self._tell(trial, "started")
                result = await self._trial(trial)
            results.append(result)
            append_private(self.out, result.model_dump_json(exclude_none=True))
            self._tell(trial, "success" if result.success else f"failed: {_why(result)}")

        await asyncio.gather(*(one(trial) for trial in todo))
        return results

    async def _trial(self, trial: Trial) -> TrialResult:
        options: dict[str, Any] = {"model": trial.model_ref(), "_started_ray": False}
        if trial.task.candidates is not None:
            options["candidates"] = trial.task.candidates
        if trial.task.timeout is not None:
            options["timeout"] = trial.task.timeout
        bot = dataclasses.replace(self.bot, **options)
        run_id = new_run_id()
        base = {
            "key": trial.key,
            "task": trial.task.id,
            "kind": trial.task.kind,
            "model": trial.model,
            "repeat": trial.repeat,
            "run_id": run_id,
        }
        started = time.monotonic()
        try:
            async with self._quiet.running():
                started = time.monotonic()
                manifest = await bot.abuild(trial.request(), run_id=run_id)
        except Exception as exc:  # RunFailed, or a request the machine cannot run
            seconds = time.monotonic() - started
            record = self._record(run_id, seconds)
            failure = exc.failure if isinstance(exc, RunFailed) else None
            await asyncio.to_thread(self._clean, run_id)
            return TrialResult(
                **base,
                **record,
                status="failed",
                success=False,
                seconds=round(seconds, 3),
                step=failure.step if failure else "plan",
                error_type=failure.error_type if failure else type(exc).__name__,
                reason=failure.reason if failure else str(exc),
            )
        seconds = time.monotonic() - started
        record = self._record(run_id, seconds)
        checks = await asyncio.to_thread(run_checks, manifest, trial.task.checks)
        floor: dict[str, float | None] = {}
        if self.floor:
            async with self._quiet.alone():
                floor = await asyncio.to_thread(self._floor, run_id, manifest, seconds)
        clean_s = await asyncio.to_thread(self._clean, run_id)
        record["stages"]["clean"] = round(clean_s, 3)
        end = max((span["end"] for span in record["spans"]), default=seconds)
        record["spans"].append(Span(RUN_LANE, "clean", end, end + clean_s).as_dict())
        return TrialResult(
            **base,
            **record,
            **floor,
            status="deployed",
            success=all(check.passed for check in checks),
            seconds=round(seconds, 3),
            checks=checks,
        )

    def _record(self, run_id: str, seconds: float) -> dict[str, Any]:
        """What the run's journal and transcript say about it."""
        directory = run_dir(self.bot.settings.home, run_id)
        journal = directory / "journal.jsonl"
        rows = read_journal(journal) if journal.exists() else []
        found = spans(rows)
        winner = next(
            (m["candidate_id"] for _, m in rows if m["kind"] == "deployment"),
            None,
        )
        attempts = [
            int(m["attempt"])
            for _, m in rows
            if m["kind"] == "test_report" and m["candidate_id"] == winner
        ]
        record: dict[str, Any] = {
            "stages": stage_seconds(found),
            "spans": [span.as_dict() for span in found],
            "first_cargo_s": _rounded(first_test(found)),
            "winner": winner,
            "attempts": max(attempts) if attempts else None,
        }
        record.update(_model_use(directory / "model-transcript.jsonl"))
        return record

    def _floor(self, run_id: str, manifest: ToolManifest, seconds: float) -> dict[str, Any]:
        rows = read_journal(run_dir(self.bot.settings.home, run_id) / "journal.jsonl")
        deployment = next(
            Deployment.model_validate(m) for _, m in reversed(rows) if m["kind"] == "deployment"
        )
        workspace = next(
            Workspace.model_validate(m)
            for _, m in reversed(rows)
            if m["kind"] == "workspace" and m["candidate_id"] == deployment.candidate_id
        )
        floor = FloorMeter.here(self.bot.settings).measure(workspace, deployment)
        return {
            "floor_cargo_s": floor.cargo_s,
            "floor_nix_s": floor.nix_s,
            "floor_s": round(floor.total_s, 3),
            "overhead": round(seconds / floor.total_s, 3) if floor.total_s else None,
        }

    def _clean(self, run_id: str) -> float:
        started = time.monotonic()
        Janitor(self.bot.settings).clean(CleanupRequest(run_id=run_id, reason="requested"))
        seconds = time.monotonic() - started
        # A repeat measures the whole job again, not a reuse of this run's verified result.
        VerifiedResults(self.bot.settings.home).forget_run(run_id)
        return seconds

    def _tell(self, trial: Trial, what: str) -> None:
        if self.on_progress is not None:
            self.on_progress(trial, what)


def run_checks(manifest: ToolManifest, checks: list[AcceptanceCase]) -> list[CheckResult]:
    """Each check run against the deployed tool in the tool sandbox, as an agent would."""
    if not checks:
        return []
    sandbox = ToolSandbox(tuple(Nix().closure(manifest.store_path)))
    results = []
    for case in checks:
        try:
            done = sandbox.run(
                [manifest.bin_path, *case.args],
                timeout=CHECK_TIMEOUT_S,
                stdin=case.stdin,
                files=case.input_files,
            )
        except CommandTimedOut:
            results.append(CheckResult(name=case.name, passed=False, detail="timed out"))
            continue
        problems = []
        if done.returncode != case.exit_code:
            problems.append(f"exit code {done.returncode}, expected {case.exit_code}")
        if case.stdout is not None and not output_matches(case.stdout, done.stdout):
            problems.append(f"stdout {done.stdout[:200]!r} does not {case.stdout.match} "
                            f"{case.stdout.value[:200]!r}")  # fmt: skip
        results.append(CheckResult(name=case.name, passed=not problems, detail="; ".join(problems)))
    return results


def _model_use(transcript: Path) -> dict[str, Any]:
    """Model calls, tokens and (when the price of every model used is known) dollars."""
    calls = prompt = completion = 0
    cost: float | None = 0.0
    prices = default_prices()
    if transcript.exists():
        for text in transcript.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(text)
            except json.JSONDecodeError:
                continue
            calls += 1
            usage = Usage(
                prompt_tokens=int(row.get("prompt_tokens") or 0),
                completion_tokens=int(row.get("completion_tokens") or 0),
            )
            prompt += usage.prompt_tokens
            completion += usage.completion_tokens
            price = prices.get(str(row.get("model")))
            cost = None if price is None or cost is None else cost + price.cost(usage)
    return {
        "model_calls": calls,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "cost_usd": None if cost is None else round(cost, 6),
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _why(result: TrialResult) -> str:
    if result.status == "failed":
        return f"{result.step}: {result.reason}"
    failed = [check.name for check in result.checks if not check.passed]
    return f"checks failed: {', '.join(failed)}"
