"""Deploy commands: `flakebot deploy`, `flakebot manifest` and `flakebot clean`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from flakebot import manifest as manifests
from flakebot.cli import JsonFlag, app, load_settings, out, print_json
from flakebot.crates.cargo_toml import package_dir, read_crate
from flakebot.errors import ConfigError
from flakebot.fork import Forker
from flakebot.janitor import Janitor
from flakebot.roles import DeployerRole, deployed_binary
from flakebot.runstate import RunRecord
from flakebot.sandbox import Sandbox, Toolchain
from flakebot.specs import load_spec
from messages import CleanupReport, CleanupRequest, ToolSpec


@app.command()
def deploy(
    directory: Annotated[Path, typer.Argument(help="A fork made by `flakebot fork`.")],
    spec: Annotated[Path | None, typer.Option("--spec", help="The tool spec it meets.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Build a fork as a Nix flake, root it, and write the tool's manifest."""
    settings = load_settings()
    toolchain = Toolchain.find()
    forker = Forker(settings, Sandbox(toolchain))
    workspace = forker.open(directory)
    tool_spec = (
        load_spec(spec, workspace.run_id)
        if spec
        else _spec_from_crate(workspace.path, workspace.run_id)
    )
    role = DeployerRole(settings)
    bin_name = deployed_binary(workspace, tool_spec)
    deployment = role.deployer.deploy(workspace, tool_spec, forker, bin_name=bin_name)
    manifest = role.instruct(workspace, tool_spec, deployment)
    saved = settings.home / "runs" / workspace.run_id / "manifest.json"
    if as_json:
        print_json({"deployment": deployment, "manifest": manifest})
        return
    out.print(f"Deployed {tool_spec.name}: {deployment.store_path}")
    out.print(f"  run: {escape(deployment.bin_path)} ARGS")
    if deployment.service:
        out.print(f"  service: {deployment.service.url} (pid {deployment.service.pid})")
    out.print(f"  manifest: {saved} (and manifest.md)")


def _spec_from_crate(path: str, run_id: str) -> ToolSpec:
    record = read_crate(package_dir(Path(path)))
    name = re.sub(r"[^a-z0-9_-]", "-", (record.bin_names or (record.name,))[0].lower())
    if not name[:1].isalpha():
        name = f"tool-{name}"
    return ToolSpec(
        run_id=run_id,
        name=name[:64],
        summary=record.description or f"{record.name} {record.version}",
        search_queries=[record.name],
    )


@app.command()
def manifest(
    run: Annotated[str, typer.Argument(help="The run id.")],
    as_json: JsonFlag = False,
) -> None:
    """Print a deployed run's tool manifest (Markdown, or JSON with --json)."""
    settings = load_settings()
    loaded = manifests.load(settings.home, run)
    if as_json:
        print_json(loaded)
    else:
        out.print(manifests.to_markdown(loaded), markup=False)


@app.command()
def clean(
    run: Annotated[str | None, typer.Argument(help="The run to clean.")] = None,
    all_runs: Annotated[bool, typer.Option("--all", help="Clean every run.")] = False,
    expired: Annotated[
        bool, typer.Option("--expired", help="Clean runs older than FLAKEBOT_LEASE_TTL.")
    ] = False,
    keep_deployment: Annotated[
        bool, typer.Option("--keep-deployment", help="Keep the built tool, its root and service.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Clean runs that are still in progress too.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Remove what runs made: services, GC roots, store paths, workspaces, unused target dirs.

    Runs still in progress are left alone (and named) unless --force."""
    settings = load_settings()
    chosen = sum([run is not None, all_runs, expired])
    if chosen != 1:
        raise ConfigError("name one run, or pass --all or --expired", hint="flakebot clean RUN")
    janitor = Janitor(settings)
    skipped: list[str] = []
    if run is not None:
        record = RunRecord(settings.home, run)  # validates the id
        if not record.exists():
            raise ConfigError(f"there is no run {run!r} in {settings.home}")
        if record.in_progress() and not force:
            raise ConfigError(
                f"run {run} is still in progress", hint="wait for it, or pass --force to clean it"
            )
        request = CleanupRequest(run_id=run, keep_deployment=keep_deployment)
        reports = [janitor.clean(request)]
    elif all_runs:
        reports, skipped = janitor.clean_all(force=force)
    else:
        reports, skipped = janitor.clean_expired(settings.lease_ttl, force=force)
    if as_json:
        print_json({"reports": reports, "skipped_in_progress": skipped})
    else:
        _print_reports(reports)
        for run_id in skipped:
            out.print(f"{run_id}: [yellow]still in progress, left alone[/] (--force cleans it)")
    if any(report.failures for report in reports):
        raise typer.Exit(1)


def _print_reports(reports: list[CleanupReport]) -> None:
    if not reports:
        out.print("Nothing cleaned.")
    for report in reports:
        freed = report.bytes_freed / 1024**2
        out.print(f"{report.run_id}: removed {len(report.removed)} items, freed {freed:.1f} MiB")
        for item in report.removed:
            out.print(f"  [dim]{item.what}[/] {escape(item.path)}")
        for failure in report.failures:
            out.print(f"  [red]kept[/] {escape(failure.path)}: {escape(failure.reason)}")
