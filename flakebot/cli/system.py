"""System commands: `flakebot doctor`, `flakebot schema`, and `flakebot up` / `down` (a local
cluster kept running between runs: flakebot.cluster)."""

from __future__ import annotations

import os
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from flakebot import cluster
from flakebot.cli import JsonFlag, app, err, load_settings, out, print_json
from flakebot.doctor import CHECK_NAMES, CheckName, Doctor, DoctorReport
from flakebot.errors import ConfigError
from flakebot.worker_pool import WARM_WORKERS
from messages import json_schema


@app.command()
def doctor(
    as_json: JsonFlag = False,
    check: Annotated[
        list[str] | None,
        typer.Option("--check", help=f"Run only these checks: {', '.join(CHECK_NAMES)}."),
    ] = None,
) -> None:
    """Check that cargo, clippy, Nix, bubblewrap, the crate registry and Ray work here."""
    settings = load_settings()
    only = _check_names(check) if check else CHECK_NAMES
    if as_json:
        report = Doctor(settings).run(only)
    else:
        with err.status("checking cargo, Nix, bubblewrap, the registry and Ray..."):
            report = Doctor(settings).run(only)
    if as_json:
        payload = {"healthy": report.healthy, "checks": report.model_dump(mode="json")["checks"]}
        print_json(payload)
    else:
        _print_report(report)
    if not report.healthy:
        raise typer.Exit(1)


def _check_names(names: list[str]) -> tuple[CheckName, ...]:
    chosen: list[CheckName] = []
    for name in names:
        match = [known for known in CHECK_NAMES if known == name]
        if not match:
            raise ConfigError(
                f"unknown check {name!r}", hint=f"choose from {', '.join(CHECK_NAMES)}"
            )
        chosen.extend(match)
    return tuple(chosen)


def _print_report(report: DoctorReport) -> None:
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    table.add_column("check")
    table.add_column("status")
    table.add_column("detail", overflow="fold")
    marks = {"ok": "[green]ok[/]", "warn": "[yellow]warn[/]", "fail": "[red]FAIL[/]"}
    for check in report.checks:
        detail = escape(check.detail)
        if check.hint is not None:
            detail += f"\n[dim]fix: {escape(check.hint)}[/]"
        table.add_row(check.name, marks[check.status], detail)
    out.print(table)
    if report.healthy:
        out.print("[green]Everything Flakebot needs is here.[/]")
    else:
        failed = [check.name for check in report.checks if check.status == "fail"]
        out.print(f"[red]Missing or broken: {', '.join(failed)}.[/] Follow the hints above.")


@app.command()
def schema() -> None:
    """Print the JSON Schema of every protocol message (one discriminated union)."""
    print_json(json_schema())


@app.command()
def up(
    cores: Annotated[
        int | None,
        typer.Option("--cores", min=1, max=512, help="CPUs and cargo slots (default: all)."),
    ] = None,
    warm_workers: Annotated[
        int,
        typer.Option(
            "--warm-workers",
            min=0,
            max=256,
            help="Ray workers kept started between runs, for a run's actors (about 80 MB "
            "each; 12 is a three-candidate run's; 0: none).",
        ),
    ] = WARM_WORKERS,
) -> None:
    """Start a local Ray cluster and keep it running: every run on this FLAKEBOT_HOME joins it
    instead of starting Ray itself (about 5 s saved per run), and takes its actors' worker
    processes from a pool kept started between runs. `flakebot down` stops it."""
    settings = load_settings()
    already = cluster.running(settings.home)
    with err.status("starting Ray..."):
        running = already or cluster.start(settings.home, cores=cores, warm_workers=warm_workers)
    pool = ""
    if not already and running.warm_workers:
        from flakebot.driver import keep_workers  # imports Ray: only here

        with err.status("starting the worker pool..."):
            try:
                # Ray starts at most min(CPUs declared, CPUs here) workers at once
                batch = min(running.cores, os.cpu_count() or 1)
                keep_workers(settings, running.warm_workers, batch=batch)
                pool = f", {running.warm_workers} workers kept started"
            except Exception as exc:  # the cluster works without it: runs start their own
                err.print(f"warning: no worker pool: {type(exc).__name__}: {exc}"[:300])
    state = "already up" if already else "up"
    out.print(
        f"cluster {state} at {running.address} ({running.cores} cores{pool}); runs on "
        f"{escape(str(settings.home))} join it. Stop it with `flakebot down`."
    )


@app.command()
def down() -> None:
    """Stop the cluster `flakebot up` started for this FLAKEBOT_HOME."""
    settings = load_settings()
    stopped = cluster.stop(settings.home)
    out.print("no cluster was up" if stopped is None else f"cluster at {stopped.address} stopped")
