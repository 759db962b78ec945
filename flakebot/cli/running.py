"""`flakebot run`: the whole job for one request, through Ray; `flakebot resume`: a killed one."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from flakebot import manifest as manifests
from flakebot.cli import (
    JsonFlag,
    RegistryOption,
    app,
    err,
    interrupted,
    load_settings,
    out,
    print_json,
)
from flakebot.cli.coding import ModelOption
from flakebot.driver import Flakebot, new_run_id
from flakebot.journal import Journal
from flakebot.settings import Settings
from messages import RunEvent, ToolManifest, dump_message

MARKS = {
    "run_backtracked": "[yellow]↩[/]",
    "candidate_failed": "[red]✗[/]",
    "candidate_cancelled": "[dim]⊘[/]",
    "candidate_won": "[green]✓[/]",
    "tool_deployed": "[green]✓[/]",
    "deploy_failed": "[red]✗[/]",
    "run_failed": "[red]✗[/]",
    "cleanup_failed": "[yellow]![/]",
    "progress_reported": "[dim]…[/]",
    "run_resumed": "[cyan]↻[/]",
    "candidate_reused": "[green]✓[/]",
    "deployment_reused": "[green]✓[/]",
}


@app.command("run")
def run_command(
    request: Annotated[str, typer.Argument(help="What the tool should do, or a spec file.")],
    model: ModelOption = None,
    candidates: Annotated[
        int, typer.Option("--candidates", min=1, max=16, help="Candidates in parallel.")
    ] = 3,
    registry: RegistryOption = None,
    address: Annotated[str | None, typer.Option("--address", help="Join this Ray cluster.")] = None,
    plan: Annotated[Path | None, typer.Option("--plan", help="A plan file (YAML).")] = None,
    all_candidates: Annotated[
        bool, typer.Option("--all-candidates", help="Deploy the best green candidate.")
    ] = False,
    timeout: Annotated[
        float | None,
        typer.Option(
            "--timeout", min=1, help="Seconds the run may take (default: sized for the plan)."
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Plan, scout, fork, code and test in parallel, deploy, and print the tool's manifest.

    Progress goes to stderr (readable lines on a terminal, run_event JSON lines otherwise); the
    manifest goes to stdout (Markdown, or the tool_manifest message with --json). A failed run
    prints the step that failed, why, and its journal, and exits 3.
    """
    settings = load_settings()
    bot = Flakebot(
        model=model,
        registry=registry,
        candidates=candidates,
        address=address,
        plan=plan,
        all_candidates=all_candidates,
        timeout=timeout,
        settings=settings,
    )
    run_id = new_run_id()
    try:
        manifest = bot.build(request, on_event=show, run_id=run_id)
    except KeyboardInterrupt:
        _stopped(settings, run_id)
        raise
    finally:
        bot.close()
    _print(manifest, as_json=as_json)


@app.command("resume")
def resume_command(
    run_id: Annotated[str, typer.Argument(help="The run to go on with (see flakebot status).")],
    as_json: JsonFlag = False,
) -> None:
    """Go on with a killed run from its journal, with the options it was started with.

    Steps whose results are journalled are not done again: the spec is not re-planned, forks
    are reused at their commit, green reports are not rerun, a deployed store path is reused,
    and journalled model replies are not asked for again. Prints what `flakebot run` prints.
    """
    settings = load_settings()
    bot = Flakebot(settings=settings)
    try:
        manifest = bot.resume(run_id, on_event=show)
    except KeyboardInterrupt:
        _stopped(settings, run_id)
        raise
    finally:
        bot.close()
    _print(manifest, as_json=as_json)


def _stopped(settings: Settings, run_id: str) -> None:
    """After Ctrl-C: what the user can do with the run (said after `error: interrupted`)."""
    journal = Journal(settings.journal_path)
    try:
        row = journal.run(run_id)
    finally:
        journal.close()
    if row is not None and row.state == "running":
        interrupted["hint"] = (
            f"run {run_id} stopped: `flakebot resume {run_id}` goes on with it, "
            f"`flakebot clean {run_id}` removes what it made"
        )


def show(event: RunEvent) -> None:
    """One event on stderr: a readable line on a terminal, a run_event JSON line otherwise."""
    if sys.stderr.isatty():
        who = f"[bold]{event.candidate_id}[/] " if event.candidate_id else ""
        mark = MARKS.get(event.event, "·")
        what = event.event.replace("_", " ")
        err.print(f"{mark} {event.step:<8} {who}{what}: {escape(event.detail)}")
    else:
        sys.stderr.write(dump_message(event) + "\n")
        sys.stderr.flush()


def _print(manifest: ToolManifest, *, as_json: bool) -> None:
    if as_json:
        print_json(manifest)
    else:
        out.print(manifests.to_markdown(manifest), markup=False)
