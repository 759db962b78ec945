"""`flakebot status` and `flakebot journal`: runs as the durable journal records them."""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from flakebot.cli import JsonFlag, app, load_settings, out, print_json
from flakebot.errors import ConfigError
from flakebot.home import check_id
from flakebot.journal import Journal
from flakebot.status import RunStatus, run_status, state_of
from messages import RunEvent

FOLLOW_POLL_S = 1.0


@app.command()
def status(
    run: Annotated[str | None, typer.Argument(help="A run id (default: every run).")] = None,
    follow: Annotated[
        bool, typer.Option("--follow", help="With RUN: print its events as they happen.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Runs with their state, step, candidates, attempts, timings and what they hold on disk."""
    settings = load_settings()
    journal = Journal(settings.journal_path)
    try:
        if run is None:
            if follow:
                raise ConfigError("--follow needs a run id", hint="flakebot status RUN --follow")
            rows = journal.runs()
            if as_json:
                statuses = [run_status(settings.home, journal, row, disk=False) for row in rows]
                print_json([dataclasses.asdict(one) for one in statuses])
                return
            if not rows:
                out.print("No runs yet.")
                return
            for row in rows:
                when = datetime.fromtimestamp(row.started_at).strftime("%Y-%m-%d %H:%M")
                state = state_of(settings.home, row)
                out.print(
                    f"{row.run_id}  {state:<8}  {row.step or '-':<8}  {escape(row.tool or '-')}"
                    f"  started {when}"
                )
            return
        if journal.run(check_id(run)) is None:
            raise ConfigError(f"the journal has no run {run!r}", hint="flakebot status lists runs")
        if follow:
            _follow(journal, settings.home, run)
        found = journal.run(run)
        assert found is not None
        one = run_status(settings.home, journal, found)
        if as_json:
            print_json(dataclasses.asdict(one))
        else:
            _print(one)
    finally:
        journal.close()


def _print(one: RunStatus) -> None:
    out.print(
        f"[bold]{one.run_id}[/]  {one.state}  ({one.seconds:.0f} s)  {escape(one.tool or '')}"
    )
    if one.step and one.state in ("running", "killed"):
        out.print(f"  step: {one.step}")
    if one.reason:
        out.print(f"  reason: {escape(one.reason)}")
    for candidate in one.candidates:
        attempts = "" if candidate.attempts is None else f", {candidate.attempts} attempts"
        out.print(
            f"  {candidate.candidate_id}: {candidate.crate} {candidate.version}"
            f" {candidate.outcome}{attempts}"
        )
    if one.store_path:
        out.print(f"  deployed: {one.store_path}")
    for item in one.held:
        size = "gone" if item.bytes is None else f"{item.bytes / 2**20:.1f} MiB"
        out.print(f"  holds {item.kind}: {escape(item.path)} ({size})")


def _follow(journal: Journal, home: Path, run_id: str) -> None:
    """Print the run's events from the start, then new ones, until it is no longer running."""
    seen = 0
    while True:
        for entry in journal.entries(run_id, since=seen):
            seen = entry.seq + 1
            if isinstance(entry.message, RunEvent):
                event = entry.message
                who = f"{event.candidate_id} " if event.candidate_id else ""
                out.print(f"{event.step:<8} {who}{event.event}: {escape(event.detail)}")
        row = journal.run(run_id)
        if row is None or state_of(home, row) != "running":
            return
        time.sleep(FOLLOW_POLL_S)


@app.command("journal")
def journal_command(run: Annotated[str, typer.Argument(help="A run id.")]) -> None:
    """Print a run's journal as JSON lines (every message, in order, with its time)."""
    settings = load_settings()
    journal = Journal(settings.journal_path)
    try:
        if journal.run(check_id(run)) is None:
            raise ConfigError(f"the journal has no run {run!r}", hint="flakebot status lists runs")
        for line in journal.export_jsonl(run):
            print(line)
    finally:
        journal.close()
