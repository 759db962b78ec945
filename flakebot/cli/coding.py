"""Model commands: `flakebot plan` and `flakebot code`."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from flakebot.cli import JsonFlag, app, load_settings, out, print_json
from flakebot.coder import AttemptOutcome, CodeLoop, LocalTestRunner
from flakebot.crates.fetch import dependency_dir
from flakebot.crates.index import CrateIndex, index_path
from flakebot.errors import ConfigError
from flakebot.fork import Forker
from flakebot.models import Budget, Model, Transcript, load_model
from flakebot.planner import Planner, looks_like_spec_file
from flakebot.sandbox import Sandbox, Toolchain
from flakebot.settings import Settings, parse_model
from flakebot.specs import load_spec
from flakebot.tester import Tester
from messages import ToolRequest

ModelOption = Annotated[
    str | None,
    typer.Option(
        "--model", help="groq:NAME, openai:URL#NAME or scripted:FILE (default: FLAKEBOT_MODEL)."
    ),
]


def _model(option: str | None, settings: Settings, *, required: bool) -> Model | None:
    ref = parse_model(option) if option else settings.model
    if ref is None:
        if required:
            raise ConfigError(
                "no model is configured",
                hint="pass --model groq:NAME, openai:URL#NAME or scripted:FILE, or set "
                "FLAKEBOT_MODEL",
            )
        return None
    return load_model(ref, settings)


def _transcript(settings: Settings, run_id: str) -> Transcript:
    return Transcript(settings.home / "runs" / run_id / "model-transcript.jsonl")


@app.command()
def plan(
    request: Annotated[str, typer.Argument(help="What the tool should do, or a spec file.")],
    model: ModelOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Turn a request (free text, or a YAML/JSON spec file) into a validated tool spec."""
    settings = load_settings()
    run_id = time.strftime("plan-%Y%m%d-%H%M%S")
    if looks_like_spec_file(request):
        spec = Planner(None).plan_file(Path(request), run_id)
    else:
        if not request.strip():
            raise ConfigError("the request is empty", hint='describe the tool: "a hex viewer"')
        planner = Planner(
            _model(model, settings, required=True), transcript=_transcript(settings, run_id)
        )
        spec = asyncio.run(planner.plan(ToolRequest(run_id=run_id, text=request)))
    if as_json:
        print_json(spec)
        return
    out.print(f"[bold]{spec.name}[/] ({spec.tool_kind}): {escape(spec.summary)}")
    out.print(f"  search: {escape('; '.join(spec.search_queries))}")
    for requirement in spec.requirements:
        out.print(f"  needs: {escape(requirement)}")
    for case in spec.acceptance:
        out.print(f"  case {case.name}: args {escape(str(case.args))}, exit {case.exit_code}")


@app.command()
def code(
    directory: Annotated[Path, typer.Argument(help="A fork made by `flakebot fork`.")],
    spec: Annotated[Path, typer.Option("--spec", help="The tool spec to meet.")],
    model: ModelOption = None,
    max_attempts: Annotated[int, typer.Option("--max-attempts", min=1, max=50)] = 4,
    as_json: JsonFlag = False,
) -> None:
    """Run the edit-test loop on a fork until its tests and the spec's cases pass, or a bound."""
    settings = load_settings()
    chosen = _model(model, settings, required=True)
    assert chosen is not None
    toolchain = Toolchain.find()
    workspace = Forker(settings, Sandbox(toolchain)).open(directory)
    registry = dependency_dir(settings.home, workspace.registry)
    sandbox = Sandbox.for_registry(toolchain, registry)
    forker = Forker(settings, sandbox)
    tool_spec = load_spec(spec, workspace.run_id)
    crate_index = CrateIndex(registry, index_path(settings.home, registry))
    crate_index.refresh()

    def show(outcome: AttemptOutcome) -> None:
        if as_json:
            return
        if outcome.report is None:
            out.print(
                f"attempt {outcome.attempt}: [yellow]not applied[/] {escape(outcome.summary)}"
            )
            for problem in outcome.problems:
                out.print(f"  {escape(problem)}")
            return
        verdict = "[green]green[/]" if outcome.report.green else "[red]red[/]"
        failing = len(outcome.report.failed_tests)
        errors = len(outcome.report.errors)
        out.print(
            f"attempt {outcome.attempt}: {verdict} {escape(outcome.summary)} "
            f"({errors} errors, {failing} failing tests)"
        )

    loop = CodeLoop(
        model=chosen,
        forker=forker,
        tester=LocalTestRunner(Tester(sandbox)),
        registry=crate_index,
        budget=Budget(),
        transcript=_transcript(settings, workspace.run_id),
        max_attempts=max_attempts,
        on_attempt=show,
    )
    try:
        result = asyncio.run(loop.run(workspace, tool_spec))
    finally:
        crate_index.close()
    if as_json:
        print_json(result)
    else:
        verdict = "[green]green[/]" if result.status == "green" else f"[red]{result.status}[/]"
        out.print(
            f"{verdict} after {result.attempts} attempts (ended by {result.ended_by}); "
            f"head {str(result.head_commit)[:12]}"
        )
        if result.detail:
            out.print(f"  {escape(result.detail)}")
    if result.status != "green":
        raise typer.Exit(1)
