"""Deploying forks with real Nix builds: the flake, the manifest, services, and the janitor."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from flakebot import manifest as manifests
from flakebot.deployer import Deployer
from flakebot.errors import DeployError
from flakebot.flake_template import render_flake
from flakebot.fork import Forker
from flakebot.janitor import Janitor
from flakebot.nix import Nix
from flakebot.proc import run, start_time
from flakebot.runstate import RunRecord
from flakebot.sandbox import Sandbox, Toolchain
from flakebot.settings import Settings
from flakebot.tool_sandbox import ToolSandbox
from messages import (
    AcceptanceCase,
    CleanupFailure,
    CleanupReport,
    CleanupRequest,
    Deployment,
    OutputCheck,
    RegistryRef,
    RemovedItem,
    ServiceProbe,
    ServiceSettings,
    ToolManifest,
    ToolSpec,
    Workspace,
)
from tests.conftest import Cli, candidate
from tests.registry_helpers import DEBIAN_REGISTRY, make_crate

pytestmark = pytest.mark.slow
STORE = Path("/nix/store")
SPEC = ToolSpec(
    run_id="d1",
    name="hexview",
    summary="A hex viewer.",
    search_queries=["hex viewer"],
    acceptance=[
        AcceptanceCase(
            name="plain",
            args=["--color", "never", "--border", "ascii"],
            stdin="Flakebot",
            stdout=OutputCheck(match="contains", value="46 6c 61 6b"),
        ),
        AcceptanceCase(
            name="reads_a_file", args=["--color", "never", "f.bin"], input_files={"f.bin": "hi"}
        ),
    ],
)


@dataclass
class Deployed:
    settings: Settings
    forker: Forker
    deployer: Deployer
    workspace: Workspace
    deployment: Deployment
    manifest: ToolManifest
    store_before: set[str]


def store() -> set[str]:
    return set(os.listdir(STORE))


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    settings = Settings.from_env({"FLAKEBOT_HOME": str(tmp_path_factory.mktemp("deploy-home"))})
    toolchain = Toolchain.find()
    forker = Forker(settings, Sandbox(toolchain))
    before = store()
    workspace = forker.fork(
        candidate("hexyl", "0.8.0", "c1-hexyl").model_copy(update={"run_id": "d1"})
    )
    deployer = Deployer(settings, toolchain)
    deployment = deployer.deploy(workspace, SPEC, forker, bin_name="hexyl")
    made = RunRecord(settings.home, "d1").fork("c1-hexyl")
    assert made is not None
    manifest = manifests.build_manifest(
        SPEC,
        made.candidate,
        deployment,
        sandbox=ToolSandbox(closure=tuple(deployer.nix.closure(deployment.store_path))),
        toolchain=toolchain.version(),
        run_command=deployer.nix.run_argv(
            f"{deployment.flake_ref}#default",
            deployer.flake_args(RegistryRef(source="local", location=str(DEBIAN_REGISTRY))),
        ),
    )
    yield Deployed(settings, forker, deployer, workspace, deployment, manifest, before)
    Janitor(settings).clean_all(force=True)  # whatever the tests left


def test_the_flake_is_standard_nixpkgs_form_and_parses() -> None:
    text = render_flake(
        pname="hex-view", version="1.0.0", bin_name="hexyl", description='say "hi" ${x}'
    )
    assert (
        "pkgs.rustPlatform.buildRustPackage" in text
        and "cargoLock.lockFile = ./Cargo.lock;" in text
    )
    assert 'inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.05";' in text
    assert 'meta.mainProgram = "hexyl";' in text and 'say \\"hi\\" \\${x}' in text
    parsed = run(["nix-instantiate", "--parse", "-"], timeout=60, stdin=text)
    assert parsed.ok, parsed.stderr


def test_hexyl_deploys_and_runs(deployed: Deployed) -> None:
    deployment = deployed.deployment
    assert deployment.store_path.startswith("/nix/store/") and deployment.store_path.endswith(
        "-hexview-0.8.0"
    )
    assert deployment.nar_hash.startswith("sha256-")
    assert Path(deployment.gc_root).resolve() == Path(deployment.store_path)
    done = run([deployment.bin_path, "--color", "never"], timeout=30, stdin="AB")
    assert done.ok and "41 42" in done.stdout
    via_nix = run(
        [*deployed.manifest.run_command, "--color", "never", "--border", "none"],
        timeout=300,
        stdin="Hi",
    )
    assert via_nix.ok, via_nix.stderr
    assert "48 69" in via_nix.stdout


def test_manifest_examples_reproduce_their_output(deployed: Deployed) -> None:
    manifest = deployed.manifest
    assert [example.name for example in manifest.examples] == ["plain", "reads_a_file"]
    assert "A command-line hex viewer" in manifest.help_text
    assert (
        manifest.provenance.crate_name == "hexyl"
        and manifest.provenance.nar_hash == deployed.deployment.nar_hash
    )
    assert manifest.provenance.toolchain.startswith("rustc ")
    assert manifest.function_schema["function"]["name"] == "hexview"  # type: ignore[index,call-overload]
    assert manifest.mcp_tool["inputSchema"]["required"] == ["args"]  # type: ignore[index,call-overload]
    for example in manifest.examples:
        scratch = deployed.settings.home / f"replay-{example.name}"
        scratch.mkdir()
        for relative, content in example.input_files.items():
            (scratch / relative).write_text(content)
        again = run(example.command, timeout=30, cwd=scratch, stdin=example.stdin or "")
        assert (again.stdout, again.returncode) == (example.stdout, example.exit_code)
    assert "68 69" in manifest.examples[1].stdout
    markdown = manifests.to_markdown(manifest)
    assert "## Examples" in markdown and manifest.store_path in markdown
    manifests.save(deployed.settings.home, manifest)
    assert manifests.load(deployed.settings.home, "d1") == manifest


def test_two_deploys_give_the_same_store_path(deployed: Deployed) -> None:
    started = time.monotonic()
    again = deployed.deployer.deploy(deployed.workspace, SPEC, deployed.forker, bin_name="hexyl")
    assert again.store_path == deployed.deployment.store_path
    assert again.nar_hash == deployed.deployment.nar_hash
    assert time.monotonic() - started < 60
    stray = Path(deployed.workspace.path) / "NOTES.txt"
    stray.write_text("an untracked file the build must not see\n")
    assert (
        deployed.deployer.deploy(
            deployed.workspace, SPEC, deployed.forker, bin_name="hexyl"
        ).store_path
        == again.store_path
    )
    stray.unlink()


def test_a_failing_build_is_a_deploy_error_with_the_log(tmp_path: Path, settings: Settings) -> None:
    toolchain = Toolchain.find()
    forker = Forker(settings, Sandbox(toolchain))
    workspace = forker.fork(candidate("hexyl", "0.8.0", "c9-broken"))
    squeezer = Path(workspace.path) / "src" / "squeezer.rs"
    squeezer.write_text(squeezer.read_text() + 'pub const BROKEN: u32 = "x";\n')
    forker.commit(workspace, "attempt 1: break it")
    before = store()
    with pytest.raises(DeployError) as caught:
        Deployer(settings, toolchain).deploy(workspace, SPEC, forker, bin_name="hexyl")
    assert "nix build of c9-broken failed" in caught.value.message
    assert "E0308" in caught.value.log_tail or "mismatched types" in caught.value.log_tail
    report = Janitor(settings).clean(CleanupRequest(run_id=workspace.run_id))
    assert report.failures == []
    assert store() <= before | set()  # what the failed build added is gone again


SERVICE_MAIN = r"""
use std::io::{Read, Write};
use std::net::TcpListener;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let at = args.iter().position(|a| a == "--port").expect("--port");
    let port = args[at + 1].clone();
    let listener = TcpListener::bind(format!("127.0.0.1:{}", port)).expect("bind");
    for stream in listener.incoming() {
        let mut stream = stream.expect("accept");
        let mut buffer = [0u8; 1024];
        let read = stream.read(&mut buffer).unwrap_or(0);
        let request = String::from_utf8_lossy(&buffer[..read]);
        let health = request.starts_with("GET /health ");
        let body = if health { "ok\n" } else { "hello from tinyhttp\n" };
        let head = "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: ";
        let reply = format!("{}{}\r\n\r\n{}", head, body.len(), body);
        let _ = stream.write_all(reply.as_bytes());
    }
}
"""


@pytest.fixture
def service_deployed(tmp_path: Path, settings: Settings) -> Iterator[tuple[Deployed, set[str]]]:
    registry = tmp_path / "registry"
    make_crate(registry, "tinyhttp", "0.1.0", files={"src/main.rs": SERVICE_MAIN})
    local = RegistryRef(source="local", location=str(registry))
    toolchain = Toolchain.find()
    forker = Forker(settings, Sandbox(toolchain, read_only=(registry,)))
    spec = ToolSpec(
        run_id="s1",
        name="tinyhttp",
        summary="A tiny HTTP service.",
        tool_kind="service",
        search_queries=["http"],
        service=ServiceSettings(
            args=["--port", "{port}"],
            health_path="/health",
            probes=[
                ServiceProbe(name="root", expect_body=OutputCheck(match="contains", value="hello"))
            ],
        ),
    )
    before = store()
    workspace = forker.fork(
        candidate("tinyhttp", "0.1.0", "c1-tinyhttp", local).model_copy(update={"run_id": "s1"})
    )
    deployer = Deployer(settings, toolchain)
    deployment = deployer.deploy(workspace, spec, forker, bin_name="tinyhttp")
    yield Deployed(settings, forker, deployer, workspace, deployment, None, before), before  # type: ignore[arg-type]
    Janitor(settings).clean(CleanupRequest(run_id="s1"))


def test_a_service_deploys_answers_and_is_stopped_by_clean(
    service_deployed: tuple[Deployed, set[str]],
) -> None:
    deployed, before = service_deployed
    service = deployed.deployment.service
    assert service is not None and service.url == f"http://127.0.0.1:{service.port}"
    assert httpx.get(service.url + "/health", timeout=5).text == "ok\n"
    assert "hello" in httpx.get(service.url + "/", timeout=5).text
    report = Janitor(deployed.settings).clean(CleanupRequest(run_id="s1"))
    assert "service" in [item.what for item in report.removed]
    assert start_time(service.pid) is None  # the service host is gone (or a zombie of init's)
    with pytest.raises(httpx.ConnectError):
        httpx.get(service.url + "/health", timeout=2)
    assert store() == before
    assert not Path(deployed.workspace.path).exists()


def test_clean_removes_every_path_the_run_made_and_no_other(
    deployed: Deployed, tmp_path: Path
) -> None:
    settings = deployed.settings
    # Something unrooted in the store that is not ours: clean must leave it.
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "flake.nix").write_text(
        "{ outputs = { self }: { packages.x86_64-linux.default = derivation {\n"
        '  name = "not-flakebots"; system = "x86_64-linux"; builder = "/bin/sh";\n'
        '  args = [ "-c" "echo ${toString self.lastModified} > $out" ];\n'
        "}; }; }\n"
    )
    nix = Nix()
    others_before_clean = store()
    nix.build(f"path:{probe}")
    foreign_paths = store() - others_before_clean
    try:
        # A second run that builds the very same tool shares its store path.
        second = deployed.forker.fork(
            candidate("hexyl", "0.8.0", "c1-hexyl").model_copy(update={"run_id": "d2"})
        )
        again = deployed.deployer.deploy(second, SPEC, deployed.forker, bin_name="hexyl")
        assert again.store_path == deployed.deployment.store_path

        janitor = Janitor(settings)
        first = janitor.clean(CleanupRequest(run_id="d1"))
        assert first.failures == []  # the shared path is run d2's too: left for it
        assert (
            Path(deployed.deployment.store_path).exists()
            and not Path(deployed.workspace.path).exists()
        )
        assert first.bytes_freed > 0

        last = janitor.clean(CleanupRequest(run_id="d2"))  # the last holder: now it goes
        assert last.failures == [] and not Path(deployed.deployment.store_path).exists()
        assert janitor.clean(CleanupRequest(run_id="d1")).removed == []  # idempotent

        assert foreign_paths and all((STORE / name).exists() for name in foreign_paths)
        assert store() - foreign_paths == deployed.store_before
        assert not (settings.home / "targets").exists() or not any(
            (settings.home / "targets").iterdir()
        )
    finally:
        nix.delete(sorted(str(STORE / name) for name in foreign_paths))


def test_expired_leases_are_cleaned(settings: Settings) -> None:
    record = RunRecord(settings.home, "old")
    workspace = settings.workspaces_dir / "old" / "c1"
    workspace.mkdir(parents=True)
    (workspace / "file").write_text("x" * 100)
    record.add("workspace", workspace, candidate_id="c1")
    janitor = Janitor(settings)
    assert janitor.clean_expired(ttl_seconds=3600) == ([], [])
    (report,), skipped = janitor.clean_expired(ttl_seconds=0)
    assert skipped == []
    assert report.reason == "expired" and report.bytes_freed == 100
    assert not workspace.exists() and not record.exists()


def test_cli_deploy_manifest_clean(cli: Cli, deployed: Deployed) -> None:
    env = {"FLAKEBOT_HOME": str(deployed.settings.home)}
    fork = cli("fork", "hexyl", "--run", "cli-d", "--json", env=env).json()
    spec = Path(__file__).resolve().parent.parent / "examples" / "hexview.yaml"
    deployed_cli = cli("deploy", fork["path"], "--spec", str(spec), "--json", env=env)
    assert deployed_cli.code == 0, deployed_cli.stderr
    shown = cli("manifest", "cli-d", env=env)
    assert shown.code == 0 and shown.stdout.startswith("# hexview")
    cleaned = cli("clean", "cli-d", "--json", env=env)
    assert cleaned.code == 0, cleaned.stderr
    assert not Path(fork["path"]).exists()
    missing = cli("manifest", "cli-d", env=env)
    assert missing.code == 2 and "has no manifest" in missing.stderr
    both = cli("clean", "x", "--all", env=env)
    assert both.code == 2 and "name one run" in both.stderr


def test_the_deployer_on_a_machine_with_no_nix_store_yet(
    cli: Cli, tmp_path: Path, home: Path
) -> None:
    """A fresh machine: /nix is empty (a tmpfs here); the first build makes the store."""
    registry = tmp_path / "registry"
    says_fresh = 'fn main() { println!("fresh"); }\n'
    make_crate(registry, "fresh", "0.1.0", files={"src/main.rs": says_fresh})
    fork = cli("fork", "fresh", "--registry", f"local:{registry}", "--run", "fresh1", "--json")
    assert fork.code == 0, fork.stderr
    fork_path = str(fork.json()["path"])  # type: ignore[index]
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: fresh\nsummary: Says fresh.\nsearch_queries: [fresh]\n")
    flakebot = Path(sys.executable).with_name("flakebot")
    fresh_nix = ["bwrap", "--dev-bind", "/", "/", "--tmpfs", "/nix", "--", str(flakebot)]
    env = {**os.environ, "FLAKEBOT_HOME": str(home), "FLAKEBOT_REGISTRY": f"local:{registry}"}
    done = run(
        [*fresh_nix, "deploy", fork_path, "--spec", str(spec), "--json"], timeout=600, env=env
    )
    assert done.ok, done.stderr
    deployed = json.loads(done.stdout)
    assert deployed["deployment"]["store_path"].startswith("/nix/store/")
    assert deployed["manifest"]["name"] == "fresh"
    Janitor(Settings.from_env({"FLAKEBOT_HOME": str(home)})).clean(CleanupRequest(run_id="fresh1"))


HOLDS_THE_RUN = """
import sys, time
from pathlib import Path
from flakebot.runstate import RunRecord
with RunRecord(Path(sys.argv[1]), "busy").active():
    print("holding", flush=True)
    time.sleep(120)
"""


def test_clean_all_leaves_a_run_in_progress_alone_unless_forced(
    cli: Cli, settings: Settings
) -> None:
    for run_id in ("busy", "done"):
        workspace = settings.workspaces_dir / run_id / "c1"
        workspace.mkdir(parents=True)
        RunRecord(settings.home, run_id).add("workspace", workspace, candidate_id="c1")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDS_THE_RUN, str(settings.home)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
        assert RunRecord(settings.home, "busy").in_progress()
        assert not RunRecord(settings.home, "done").in_progress()
        env = {"FLAKEBOT_HOME": str(settings.home)}
        cleaned = cli("clean", "--all", env=env)
        assert cleaned.code == 0, cleaned.stderr
        assert "busy: still in progress, left alone" in cleaned.stdout
        assert (settings.workspaces_dir / "busy" / "c1").exists()
        assert not (settings.workspaces_dir / "done").exists()
        one = cli("clean", "busy", env=env)
        assert one.code == 2 and "still in progress" in one.stderr
        forced = cli("clean", "--all", "--force", "--json", env=env)
        assert forced.code == 0 and forced.json()["skipped_in_progress"] == []  # type: ignore[index]
        assert not (settings.workspaces_dir / "busy").exists()
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()  # type: ignore[union-attr]
    assert not RunRecord(settings.home, "busy").in_progress()  # a dead process holds nothing


def test_clean_all_tries_a_run_again_once_the_run_holding_its_paths_is_gone(
    settings: Settings,
) -> None:
    # Runs of one home share store paths: run a's path is referenced by one of run b's, so Nix
    # keeps it until b is cleaned. clean --all passes over a again.
    calls: list[str] = []

    class Ordered(Janitor):
        def clean(self, request: CleanupRequest) -> CleanupReport:
            calls.append(request.run_id)
            held = request.run_id == "a" and "b" not in calls
            path = f"/nix/store/{request.run_id}"
            return CleanupReport(
                run_id=request.run_id,
                reason=request.reason,
                removed=[] if held else [RemovedItem(what="store_path", path=path, bytes_freed=1)],
                failures=[CleanupFailure(path=path, reason="still in use")] if held else [],
            )

    for run_id in ("a", "b"):
        RunRecord(settings.home, run_id).add(
            "workspace", settings.workspaces_dir / run_id, candidate_id=None
        )
    reports, skipped = Ordered(settings).clean_all()
    assert calls == ["a", "b", "a"] and skipped == []
    assert [(r.run_id, len(r.removed), r.failures) for r in reports] == [("a", 1, []), ("b", 1, [])]


def test_a_store_path_held_for_a_moment_by_an_exiting_process_is_deleted_after_a_wait(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flakebot import janitor as janitor_module
    from flakebot.errors import CommandFailed

    monkeypatch.setattr(janitor_module, "IN_USE_WAITS_S", (0.01, 0.01, 0.01))

    class HeldTwice:  # as `nix-store --delete` is while a process still uses the path
        def __init__(self) -> None:
            self.refusals = 2

        def delete(self, paths: list[str]) -> None:
            if self.refusals:
                self.refusals -= 1
                raise CommandFailed(["nix-store", "--delete", *paths], 1, "still alive")
            for path in paths:
                Path(path).unlink()

    def clean_with(refusals: int) -> CleanupReport:
        path = settings.home / f"held-{refusals}"
        path.write_text("x")
        RunRecord(settings.home, f"r{refusals}").add("store_path", path, candidate_id=None)
        janitor = Janitor(settings)
        held = HeldTwice()
        held.refusals = refusals
        janitor._nix = held  # type: ignore[assignment]
        return janitor.clean(CleanupRequest(run_id=f"r{refusals}", reason="requested"))

    waited = clean_with(2)
    assert len(waited.removed) == 1 and waited.failures == []
    held_on = clean_with(9)  # more than the waits: reported, not waited on for ever
    assert held_on.removed == [] and [f.reason for f in held_on.failures] == [
        "still in use (rooted or referenced elsewhere)"
    ]
