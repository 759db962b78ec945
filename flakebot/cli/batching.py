"""`flakebot batch`: many requests at once on the cluster, one result line each (flakebot.batch)."""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from flakebot.batch import (
    Batch,
    BatchResult,
    Job,
    Progress,
    default_out,
    read_requests,
    read_results,
)
from flakebot.cli import RegistryOption, app, err, load_settings, out
from flakebot.cli.coding import ModelOption
from flakebot.driver import Flakebot
from flakebot.errors import FlakebotError
from messages import RunEvent

MILESTONES = {"candidates_found", "candidate_won", "tool_deployed", "result_reused"}


@app.command("batch")
def batch_command(
    requests: Annotated[
        Path, typer.Argument(help="A JSON Lines file: one request per line.", exists=False)
    ],
    out_path: Annotated[
        Path | None,
        typer.Option("--out", help="The results file (default: REQUESTS.results.jsonl beside it)."),
    ] = None,
    parallel: Annotated[
        int, typer.Option("--parallel", min=1, max=64, help="Requests running at once.")
    ] = 2,
    model: ModelOption = None,
    candidates: Annotated[
        int, typer.Option("--candidates", min=1, max=16, help="Candidates per request.")
    ] = 3,
    registry: RegistryOption = None,
    address: Annotated[
        str | None, typer.Option("--address", help="Join this Ray cluster (default: RAY_ADDRESS).")
    ] = None,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="Run the requests that failed before again.")
    ] = False,
) -> None:
    """Run every request of REQUESTS at once (--parallel at a time) and write one result line
    per request: its manifest, or the step that failed, why, and its journal.

    A line is free text, a spec file, or an object with "id", "request" or "spec", and
    optionally "model", "registry", "candidates", "all_candidates" and "timeout".

    Run again, the batch skips the requests that already have a result. Progress goes to
    stderr and the summary to stdout. The exit code is 0 when every request deployed, 3 when
    one did not.
    """
    settings = load_settings()
    jobs = read_requests(requests)
    results_path = out_path or default_out(requests)
    bot = Flakebot(
        model=model, registry=registry, candidates=candidates, address=address, settings=settings
    )
    batch = Batch(
        bot, results_path, parallel=parallel, retry_failed=retry_failed, on_progress=_progress(jobs)
    )
    todo, kept = batch.pending(jobs)
    if kept:
        err.print(f"[dim]{len(kept)} of {len(jobs)} requests already done in {results_path}[/]")
    started = time.monotonic()
    try:
        batch.run(jobs)
    finally:
        bot.close()
    _summary(jobs, results_path, len(todo), time.monotonic() - started)


def _progress(jobs: list[Job]) -> Progress:
    """Prints what happens: a line per request started and ended, and its milestones."""
    total = len(jobs)
    ended = Counter[str]()

    def show(what: str, job: Job, detail: BatchResult | RunEvent | None) -> None:
        if not sys.stderr.isatty():
            line = {"batch": what, "id": job.id}
            if isinstance(detail, RunEvent):
                line.update(event=detail.event, step=detail.step, run_id=detail.run_id)
            elif isinstance(detail, BatchResult):
                line.update(status=detail.status, run_id=detail.run_id)
            sys.stderr.write(json.dumps(line) + "\n")
            sys.stderr.flush()
            return
        if what == "started":
            err.print(f"[dim]·[/] {job.id} started")
        elif isinstance(detail, RunEvent) and detail.event in MILESTONES:
            what = detail.event.replace("_", " ")
            err.print(f"[dim]·[/] {job.id} {what}: {escape(detail.detail)}")
        elif isinstance(detail, BatchResult):
            ended[detail.status] += 1
            mark = "[green]✓[/]" if detail.status == "deployed" else "[red]✗[/]"
            first = (detail.reason or "").strip().splitlines()
            why = f": {escape(first[0][:160])}" if first else ""
            err.print(
                f"{mark} [{sum(ended.values())}/{total}] {job.id} {detail.status}"
                f" in {detail.seconds:.0f} s{why}"
            )

    return show


def _summary(jobs: list[Job], results_path: Path, ran: int, seconds: float) -> None:
    results = read_results(results_path)
    ids = {job.id for job in jobs}
    counts = Counter(result.status for key, result in results.items() if key in ids)
    missing = len(ids) - sum(counts.values())
    out.print(
        f"{len(jobs)} requests: {counts['deployed']} deployed, {counts['failed']} failed"
        + (f", {missing} not run" if missing else "")
        + f"; {ran} run now in {seconds:.0f} s. Results: {results_path}"
    )
    for key, result in sorted(results.items()):
        if key in ids and result.status == "failed":
            reason = (result.reason or "").strip().splitlines()[0][:200] if result.reason else ""
            out.print(f"  ✗ {key}: {result.step} step: {reason}", markup=False)
    if counts["failed"] or missing:
        raise FlakebotError(
            f"{counts['failed'] + missing} of {len(jobs)} requests did not deploy",
            hint=f"the reasons and journals are in {results_path}; --retry-failed runs them again",
        )
