"""Fork commands: `flakebot fork` and `flakebot test`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import pygit2
import typer
from rich.markup import escape

from flakebot import acceptance
from flakebot.cli import JsonFlag, RegistryOption, app, load_settings, out, print_json
from flakebot.coder import package_of
from flakebot.crates.cargo_toml import package_dir, read_crate
from flakebot.crates.fetch import dependency_dir
from flakebot.crates.index import CrateIndex, index_path
from flakebot.crates.sparse import SparseRegistry, pick_version
from flakebot.errors import ConfigError
from flakebot.fork import Forker, fork_ids, hold_target
from flakebot.home import check_id
from flakebot.runstate import RunRecord
from flakebot.sandbox import Sandbox, Toolchain
from flakebot.settings import DEBIAN_REGISTRY, Settings, parse_registry
from flakebot.specs import load_spec
from flakebot.tester import Tester
from messages import CrateCandidate, RegistryRef, ScoreParts, TestReport

NoSandbox = Annotated[
    bool,
    typer.Option(
        "--no-sandbox", help="Run cargo without bubblewrap (unsafe: crate code runs unconfined)."
    ),
]


@app.command()
def fork(
    crate: Annotated[str, typer.Argument(help="The crate to fork, e.g. hexyl.")],
    version: Annotated[str | None, typer.Option("--version", help="Default: the newest.")] = None,
    registry: RegistryOption = None,
    run: Annotated[str | None, typer.Option("--run", help="Run id (default: a new one).")] = None,
    no_sandbox: NoSandbox = False,
    as_json: JsonFlag = False,
) -> None:
    """Fork a crate into a git workspace that builds offline (pruning what the registry lacks)."""
    settings = load_settings()
    source = parse_registry(registry) if registry else settings.registry
    run_id = check_id(run) if run else time.strftime("fork-%Y%m%d-%H%M%S")
    if source.source == "local":
        candidate = _local_candidate(settings, source, crate, version, run_id)
    else:
        index = SparseRegistry(source, user_agent=settings.user_agent)
        try:
            entry = pick_version(index.entries(crate), version, what=f"{crate} in {source}")
        finally:
            index.close()
        candidate = CrateCandidate(
            run_id=run_id,
            candidate_id=f"c1-{entry.name}",
            name=entry.name,
            version=entry.vers,
            registry=source,
            score=1.0,
            score_parts=ScoreParts(relevance=1.0),
        )
    sandbox = Sandbox.for_registry(
        Toolchain.find(), dependency_dir(settings.home, source), enabled=not no_sandbox
    )
    forker = Forker(settings, sandbox)
    workspace = forker.fork(candidate)
    if as_json:
        print_json(workspace)
        return
    out.print(
        f"Forked {workspace.crate_name} {workspace.crate_version} into {escape(workspace.path)}"
    )
    if workspace.source is not None and workspace.source.checksum:
        out.print(f"  .crate sha256 {workspace.source.checksum}")
    if workspace.source is not None and workspace.source.note:
        out.print(f"  [dim]not from upstream: {escape(workspace.source.note)}[/]")
    out.print(f"  branch {workspace.branch} at {workspace.head_commit[:12]} ({workspace.origin})")
    out.print(f"  binaries: {', '.join(workspace.bin_names) or 'none'}")
    for item in workspace.pruned:
        out.print(f"  [yellow]pruned[/] {item.what} {escape(item.name)}: {escape(item.reason)}")


def _local_candidate(
    settings: Settings, source: RegistryRef, crate: str, version: str | None, run_id: str
) -> CrateCandidate:
    directory = Path(source.location)
    crate_index = CrateIndex(directory, index_path(settings.home, directory))
    try:
        crate_index.refresh()
        versions = crate_index.versions(crate)
    finally:
        crate_index.close()
    if not versions:
        raise ConfigError(f"{directory} has no crate named {crate!r}", hint="flakebot search WORDS")
    chosen = next((found for found in versions if version in (None, found.version)), None)
    if chosen is None:
        available = ", ".join(found.version for found in versions)
        raise ConfigError(f"{crate} {version} is not in {directory}; it has {available}")
    return CrateCandidate(
        run_id=run_id,
        candidate_id=f"c1-{chosen.name}",
        name=chosen.name,
        version=chosen.version,
        description=chosen.description,
        license=chosen.license,
        repository=chosen.repository,
        registry=source,
        bin_names=list(chosen.bin_names),
        has_lib=chosen.has_lib,
        score=1.0,
        score_parts=ScoreParts(relevance=1.0),
    )


@app.command("test")
def test_command(
    directory: Annotated[Path, typer.Argument(help="A fork (or any cargo package) to test.")],
    spec: Annotated[
        Path | None, typer.Option("--spec", help="A tool spec whose acceptance cases to run.")
    ] = None,
    attempt: Annotated[int, typer.Option("--attempt", min=0)] = 0,
    no_sandbox: NoSandbox = False,
    as_json: JsonFlag = False,
) -> None:
    """Build, test and lint a fork in the sandbox; with --spec, its acceptance cases too."""
    settings = load_settings()
    root = directory.resolve()
    if not (root / "Cargo.toml").is_file():
        raise ConfigError(f"{root} has no Cargo.toml", hint="pass a fork made by `flakebot fork`")
    toolchain = Toolchain.find()
    run_id, candidate_id = fork_ids(root, settings.workspaces_dir)
    made = RunRecord(settings.home, run_id).fork(candidate_id)
    if made is not None and Path(made.workspace.path) == root:
        registry = dependency_dir(settings.home, made.workspace.registry)
        package = package_of(made.workspace)
        name, version = made.candidate.name, made.candidate.version
    else:  # a package of yours, not a fork: its facts are read before anything of it runs
        registry = Path(
            settings.registry.location if settings.registry.source == "local" else DEBIAN_REGISTRY
        )
        package = package_dir(root)
        crate = read_crate(package)
        name, version = crate.name, crate.version
    sandbox = Sandbox.for_registry(toolchain, registry, enabled=not no_sandbox)
    forker = Forker(settings, sandbox)
    target_dir = forker.target_dir(name, version)
    hold_target(RunRecord(settings.home, run_id), target_dir, candidate_id)
    if spec is not None:
        tool_spec = load_spec(spec, run_id)
        crate = read_crate(package)
        bin_name = acceptance.choose_binary(
            tool_spec, crate.tool_bins, name, all_bins=crate.bin_names
        )
        has_regex = any(registry.glob("regex-1.*/Cargo.toml"))
        acceptance.install(package, tool_spec, bin_name, registry_has_regex=has_regex)
    commit = _head(root)
    report = Tester(sandbox).test(
        root,
        target_dir,
        run_id=run_id,
        candidate_id=candidate_id,
        attempt=attempt,
        commit=commit,
    )
    if as_json:
        print_json(report)
    else:
        _print_report(report)
    if not report.green:
        raise typer.Exit(1)


def _head(root: Path) -> str | None:
    try:
        repo = pygit2.Repository(str(root))
    except pygit2.GitError:
        return None
    return None if repo.head_is_unborn else str(repo.head.target)


def _print_report(report: TestReport) -> None:
    marks = {"passed": "[green]passed[/]", "failed": "[red]failed[/]", "skipped": "[dim]skipped[/]",
             "timed_out": "[red]timed out[/]", "error": "[red]error[/]"}  # fmt: skip
    for stage in report.stages:
        tests = ""
        if stage.tests:
            passed = sum(test.status == "passed" for test in stage.tests)
            tests = f", {passed}/{len(stage.tests)} tests passed"
        out.print(f"{stage.stage:<7} {marks[stage.status]} in {stage.duration_s:.1f} s{tests}")
        for diagnostic in stage.diagnostics:
            if diagnostic.level == "error":
                where = f"{diagnostic.file}:{diagnostic.line}" if diagnostic.file else ""
                code = f"[{diagnostic.code}] " if diagnostic.code else ""
                out.print(
                    f"  [red]error[/] {escape(code)}{escape(where)} {escape(diagnostic.message)}"
                )
        for test in stage.tests:
            if test.status == "failed":
                out.print(f"  [red]FAILED[/] {escape(test.name)}")
                for line in test.output.splitlines()[:12]:
                    out.print(f"    {escape(line)}")
        warnings = sum(d.level == "warning" for d in stage.diagnostics)
        if warnings:
            out.print(f"  [dim]{warnings} warnings[/]")
    verdict = "[green]green[/]" if report.green else "[red]red[/]"
    out.print(f"{verdict}{' (sandboxed)' if report.sandboxed else ' (NOT sandboxed)'}")
