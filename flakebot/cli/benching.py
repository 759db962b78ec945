"""`flakebot bench`: a suite of tool tasks, N at once, per model, into results and a report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from flakebot.bench.runner import Bench, read_trial_results
from flakebot.bench.suite import SCRIPTED, Trial, load_suite, trials
from flakebot.cli import RegistryOption, app, err, load_settings, out
from flakebot.driver import Flakebot
from flakebot.errors import FlakebotError


@app.command("bench")
def bench_command(
    suite_path: Annotated[Path, typer.Argument(metavar="SUITE", help="A suite file (YAML).")],
    parallel: Annotated[int, typer.Option("--parallel", min=1, max=64, help="Runs at once.")] = 2,
    models: Annotated[
        str,
        typer.Option(
            "--models",
            help="Comma-separated models to compare; `scripted` is each task's own script.",
        ),
    ] = SCRIPTED,
    repeat: Annotated[
        int, typer.Option("--repeat", min=1, max=100, help="Runs per task and model.")
    ] = 1,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", help="Results, report and plots (default: results/SUITE beside it)."),
    ] = None,
    candidates: Annotated[
        int,
        typer.Option("--candidates", min=1, max=16, help="Candidates per run, unless a task says."),
    ] = 1,
    registry: RegistryOption = None,
    address: Annotated[
        str | None, typer.Option("--address", help="Join this Ray cluster (default: RAY_ADDRESS).")
    ] = None,
    floor: Annotated[
        bool, typer.Option("--floor/--no-floor", help="Measure each run's floor after it.")
    ] = True,
) -> None:
    """Run every task of SUITE with every model (--repeat times, --parallel at once) through the
    whole job, check each deployed tool, measure the builds each run cannot avoid (its floor),
    and write DIR/results.jsonl (one line per run), DIR/report.md (a leaderboard per model, a
    table per task) and its plots (a timeline per run, the overhead over the floor per task).

    Run again with the same --out, it runs only what has no result yet. The exit code is 0 when
    every run deployed and passed its checks, 3 when one did not.
    """
    suite = load_suite(suite_path)
    chosen = trials(suite, [m.strip() for m in models.split(",") if m.strip()], repeat)
    directory = out_dir or suite_path.resolve().parent / "results" / suite_path.stem
    directory.mkdir(parents=True, exist_ok=True)
    results_path = directory / "results.jsonl"
    bot = Flakebot(
        registry=registry, candidates=candidates, address=address, settings=load_settings()
    )
    bench = Bench(bot, results_path, parallel=parallel, floor=floor, on_progress=_progress)
    todo = bench.pending(chosen)
    if len(todo) < len(chosen):
        err.print(
            f"[dim]{len(chosen) - len(todo)} of {len(chosen)} runs already in {results_path}[/]"
        )
    started = time.monotonic()
    try:
        bench.run(chosen)
    finally:
        bot.close()
    from flakebot.bench.report import write_report  # matplotlib: only when a report is written

    keys = {trial.key for trial in chosen}
    results = [r for key, r in read_trial_results(results_path).items() if key in keys]
    options = (
        f"--parallel {parallel}, --models {models}, --repeat {repeat}, "
        f"--candidates {candidates}{'' if floor else ', --no-floor'}"
    )
    report = write_report(results, directory, suite=suite.name, options=options)
    passed = sum(result.success for result in results)
    out.print(
        f"{len(chosen)} runs: {passed} succeeded, {len(results) - passed} did not"
        + (f", {len(chosen) - len(results)} not run" if len(results) < len(chosen) else "")
        + f"; {len(todo)} run now in {time.monotonic() - started:.0f} s. Report: {report}"
    )
    if passed < len(chosen):
        raise FlakebotError(
            f"{len(chosen) - passed} of {len(chosen)} runs did not succeed",
            hint=f"the reasons are in {report}; run again with the same --out to retry none "
            "but those never run",
        )


def _progress(trial: Trial, what: str) -> None:
    mark = "·" if what == "started" else ("[green]✓[/]" if what == "success" else "[red]✗[/]")
    name = f"{trial.task.id} · {trial.model} · #{trial.repeat}"
    err.print(f"{mark} {escape(name)} {escape(what[:200])}")
