"""Batches: many requests at once on one cluster, one result line each, resumable.

A requests file is JSON Lines, one request per line (blank lines are skipped):

    {"id": "hexview", "request": "examples/hexview.yaml"}
    {"id": "sum", "request": "a tool that sums numbers", "model": "groq:llama-3.3-70b-versatile"}
    {"id": "inline", "spec": {"name": "hexview", "summary": "...", ...}}
    "a hex viewer that prints plain ASCII"

`request` is free text or a spec file (a relative path is read from the requests file's
directory). `spec` is a spec given inline. `model`, `registry`, `candidates`, `all_candidates` and
`timeout` override the batch's options for that one request. `id` names the request in the
results. Without one, the id is a digest of the line, so a re-run matches it again. Every line is
checked before anything runs, and a bad line is named with its number.

Each finished request appends one line to the results file and syncs it:

    {"id": ..., "status": "deployed", "run_id": ..., "seconds": ..., "manifest": {...}}
    {"id": ..., "status": "failed", "run_id": ..., "seconds": ..., "step": ..., "error_type": ...,
     "reason": ..., "journal": ...}

A re-run of the same batch skips every id already in the results file (`retry_failed` runs the
failed ones again), so a batch that was killed goes on where it stopped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from flakebot.driver import Flakebot, Request, new_run_id
from flakebot.errors import ConfigError, RunFailed
from flakebot.failures import step_failed
from flakebot.home import append_private
from messages import RunEvent, ToolManifest, ToolSpec


class BatchRequest(BaseModel):
    """One line of a requests file."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(default="", pattern=r"^$|^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    request: str | None = None
    spec: dict[str, Any] | None = None
    model: str | None = None
    registry: str | None = None
    candidates: int | None = Field(default=None, ge=1, le=16)
    all_candidates: bool | None = None
    timeout: float | None = Field(default=None, gt=0)


class BatchResult(BaseModel):
    """One line of a results file."""

    model_config = ConfigDict(extra="ignore")

    id: str
    status: Literal["deployed", "failed"]
    run_id: str
    seconds: float
    manifest: dict[str, Any] | None = None
    step: str | None = None
    error_type: str | None = None
    reason: str | None = None
    journal: str | None = None


@dataclass(frozen=True)
class Job:
    """A checked request: what to build and with which options."""

    id: str
    line: int
    what: Request
    options: dict[str, Any]


def read_requests(path: Path) -> list[Job]:
    """Every request of the file, checked; a ConfigError naming the first bad line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"cannot read the requests file {path}: {exc}",
            hint="pass a JSON Lines file, one request per line",
        ) from None
    jobs: list[Job] = []
    seen: dict[str, int] = {}
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        job = _job(path, number, text)
        if job.id in seen:
            raise ConfigError(
                f"{path}:{number}: the id {job.id!r} is already used on line {seen[job.id]}",
                hint="give every request its own id",
            )
        seen[job.id] = number
        jobs.append(job)
    if not jobs:
        raise ConfigError(f"{path} holds no request", hint='one per line: {"request": "..."}')
    return jobs


def _job(path: Path, number: int, text: str) -> Job:
    where = f"{path}:{number}"
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where} is not JSON: {exc.msg}", hint="one value per line") from None
    if isinstance(raw, str):
        raw = {"request": raw}
    try:
        line = BatchRequest.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'line'}: {error['msg']}"
            for error in exc.errors()
        )
        raise ConfigError(f"{where}: {problems}", hint="see `flakebot batch --help`") from None
    if (line.request is None) == (line.spec is None):
        raise ConfigError(f"{where}: give one of request or spec", hint='{"request": "..."}')
    what: Request
    if line.spec is not None:
        try:
            what = ToolSpec.model_validate({"run_id": "pending", **line.spec})
        except ValidationError as exc:
            first = exc.errors()[0]
            raise ConfigError(
                f"{where}: the spec's {'.'.join(str(p) for p in first['loc'])}: {first['msg']}",
                hint="the spec has the fields of a spec file",
            ) from None
    else:
        assert line.request is not None
        candidate = path.parent / line.request
        what = candidate if _is_file(candidate) else line.request
    options = line.model_dump(exclude={"id", "request", "spec"}, exclude_none=True)
    digest = hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()[:12]
    return Job(id=line.id or f"request-{digest}", line=number, what=what, options=options)


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a long free-text request is not a path
        return False


def read_results(path: Path) -> dict[str, BatchResult]:
    """The results already written, by id (a damaged or cut-off line is not a result)."""
    done: dict[str, BatchResult] = {}
    if not path.exists():
        return done
    for text in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            result = BatchResult.model_validate_json(text)
        except ValidationError:
            continue
        done[result.id] = result
    return done


Progress = Callable[[str, Job, "BatchResult | RunEvent | None"], None]


@dataclass
class Batch:
    """Runs jobs with `bot` (its options the defaults), `parallel` at once, into `out`."""

    bot: Flakebot
    out: Path
    parallel: int = 2
    retry_failed: bool = False
    on_progress: Progress | None = None

    def pending(self, jobs: list[Job]) -> tuple[list[Job], dict[str, BatchResult]]:
        """The jobs still to run, and the results kept from an earlier run of the batch."""
        done = read_results(self.out)
        if self.retry_failed:
            done = {key: result for key, result in done.items() if result.status == "deployed"}
        return [job for job in jobs if job.id not in done], done

    def run(self, jobs: list[Job]) -> list[BatchResult]:
        return asyncio.run(self.arun(jobs))

    async def arun(self, jobs: list[Job]) -> list[BatchResult]:
        """Run what is pending; returns this run's results (the file holds them all)."""
        todo, _ = self.pending(jobs)
        if todo:
            end_cut_line(self.out)
            self.bot.connect()  # once, for every job: they share the cluster
        gate = asyncio.Semaphore(self.parallel)
        results: list[BatchResult] = []

        async def one(job: Job) -> None:
            async with gate:
                result = await self._run(job)
            results.append(result)
            append_private(self.out, result.model_dump_json(exclude_none=True))
            self._tell("finished", job, result)

        await asyncio.gather(*(one(job) for job in todo))
        return results

    async def _run(self, job: Job) -> BatchResult:
        bot = dataclasses.replace(self.bot, **job.options, _started_ray=False)  # joins self.bot's
        run_id = new_run_id()
        self._tell("started", job, None)
        started = time.monotonic()

        def relay(event: RunEvent) -> None:
            self._tell("event", job, event)

        try:
            manifest: ToolManifest = await bot.abuild(job.what, run_id=run_id, on_event=relay)
        except RunFailed as exc:
            return self._failed(job, run_id, started, exc)
        except Exception as exc:  # a bad request, or a machine that is not ready
            return self._failed(job, run_id, started, RunFailed(step_failed(run_id, "plan", exc)))
        return BatchResult(
            id=job.id,
            status="deployed",
            run_id=run_id,
            seconds=round(time.monotonic() - started, 2),
            manifest=manifest.model_dump(mode="json"),
        )

    def _failed(self, job: Job, run_id: str, started: float, exc: RunFailed) -> BatchResult:
        failure = exc.failure
        return BatchResult(
            id=job.id,
            status="failed",
            run_id=run_id,
            seconds=round(time.monotonic() - started, 2),
            step=failure.step,
            error_type=failure.error_type,
            reason=failure.reason,
            journal=None if exc.journal is None else str(exc.journal),
        )

    def _tell(self, what: str, job: Job, detail: BatchResult | RunEvent | None) -> None:
        if self.on_progress is not None:
            self.on_progress(what, job, detail)


def default_out(requests: Path) -> Path:
    """Where results go when no --out is given: beside the requests file."""
    return requests.with_name(requests.stem + ".results.jsonl")


def end_cut_line(path: Path) -> None:
    """A batch killed while writing left its last line cut: end it, so the next result starts
    on a line of its own (the cut one is not a result, and its request runs again)."""
    if path.exists() and path.stat().st_size:
        with path.open("rb") as handle:
            handle.seek(-1, 2)
            if handle.read(1) != b"\n":
                append_private(path, "")
