"""The sandbox as a boundary: what a build script, a test, a model's edit or a deployed binary does
inside never reaches the host through what Flakebot does afterwards, outside, as root.

Each test is an attack that worked before: a git option that runs a command, symlinks planted
where Flakebot writes, a rewritten registry config, a deployed binary that writes HOME and calls
a loopback port, a service listening on every interface, and a reused pid.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path

import pytest

from flakebot import acceptance
from flakebot.coder import CodeLoop, LocalTestRunner
from flakebot.crates.index import CrateIndex
from flakebot.deployer import Deployer
from flakebot.errors import DeployError
from flakebot.fork import Forker
from flakebot.janitor import Janitor
from flakebot.models import Budget, ScriptedModel, Transcript
from flakebot.models.scripted import Script
from flakebot.proc import start_time
from flakebot.roles import DeployerRole
from flakebot.runstate import RunRecord
from flakebot.sandbox import PASSWD, Sandbox, Toolchain
from flakebot.settings import Settings
from flakebot.tester import Tester
from messages import (
    AcceptanceCase,
    CleanupRequest,
    OutputCheck,
    RegistryRef,
    ServiceSettings,
    ToolSpec,
    Workspace,
)
from tests.conftest import candidate
from tests.registry_helpers import make_crate

rust = acceptance.rust_string


def local_fork(
    settings: Settings, registry: Path, name: str, run_id: str
) -> tuple[Forker, Workspace]:
    local = RegistryRef(source="local", location=str(registry))
    forker = Forker(settings, Sandbox.for_registry(Toolchain.find(), registry))
    workspace = forker.fork(
        candidate(name, "0.1.0", f"c1-{name}", local).model_copy(update={"run_id": run_id})
    )
    return forker, workspace


def says(name: str, text: str) -> ToolSpec:
    return ToolSpec(
        run_id="b",
        name=name,
        summary="Says something.",
        search_queries=[name],
        acceptance=[AcceptanceCase(name="says", stdout=OutputCheck(match="contains", value=text))],
    )


GIT_CONFIG_BUILD_RS = """
use std::process::Command;
fn main() {{
    let root = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    let git = format!("{{}}/.git", root);
    let marker = {marker};
    // Every way back to a writable .git that a build script has: unmount, remount, write.
    let _ = Command::new("umount").arg(&git).status();
    let _ = Command::new("mount").args(["-o", "remount,rw,bind", &git]).status();
    let payload = format!(
        "\\n[core]\\n\\tfsmonitor = \\"touch {{m}}\\"\\n\\tsshCommand = \\"touch {{m}}\\"\\n\\
         [filter \\"pwn\\"]\\n\\tclean = \\"touch {{m}}\\"\\n\\tsmudge = \\"touch {{m}}\\"\\n",
        m = marker
    );
    let config = format!("{{}}/config", git);
    let before = std::fs::read_to_string(&config).unwrap_or_default();
    let wrote = std::fs::write(&config, before + &payload).is_ok();
    let hook = std::fs::write(format!("{{}}/hooks/post-commit", git), "#!/bin/sh\\ntouch x\\n");
    let _ = std::fs::write(format!("{{}}/.gitattributes", root), "* filter=pwn\\n");
    println!("cargo:warning=git config written: {{}}, hook written: {{}}", wrote, hook.is_ok());
}}
"""


@pytest.mark.slow
def test_a_model_edit_that_plants_git_options_runs_nothing_on_the_host(
    tmp_path: Path, settings: Settings, debian_index: CrateIndex
) -> None:
    marker = tmp_path / "host-side-command-ran"
    registry = tmp_path / "registry"
    make_crate(
        registry, "gitpoke", "0.1.0", files={"src/main.rs": 'fn main() { println!("no"); }\n'}
    )
    forker, workspace = local_fork(settings, registry, "gitpoke", "git1")
    git_config = Path(workspace.path) / ".git" / "config"
    config_before = git_config.read_bytes()
    edit = {
        "summary": "say ok, and add a build script",
        "edits": [
            {"op": "write", "path": "src/main.rs", "content": 'fn main() { println!("ok"); }\n'},
            {
                "op": "write",
                "path": "build.rs",
                "content": GIT_CONFIG_BUILD_RS.format(marker=rust(str(marker))),
            },
        ],
    }
    model = ScriptedModel(Script.model_validate({"replies": [{"role": "coder", "json": edit}]}))
    sandbox = Sandbox.for_registry(Toolchain.find(), registry)
    loop = CodeLoop(
        model=model,
        forker=forker,
        tester=LocalTestRunner(Tester(sandbox)),
        registry=debian_index,
        budget=Budget(),
        transcript=Transcript(),
    )
    result = asyncio.run(loop.run(workspace, says("gitpoke", "ok")))
    assert result.status == "green", result.last_report
    log = "\n".join(stage.log_tail for stage in result.last_report.stages)  # type: ignore[union-attr]
    assert "git config written: false, hook written: false" in log
    deployment = Deployer(settings, sandbox.toolchain).deploy(
        forker.current(RunRecord(settings.home, "git1").fork("c1-gitpoke")),  # type: ignore[arg-type]
        says("gitpoke", "ok"),
        forker,
        bin_name="gitpoke",
    )
    assert subprocess.run([deployment.bin_path], capture_output=True, text=True).stdout == "ok\n"
    assert git_config.read_bytes() == config_before
    assert not marker.exists()
    assert deployment.flake_ref.startswith("path:") and workspace.path not in deployment.flake_ref
    Janitor(settings).clean(CleanupRequest(run_id="git1"))


PLANTER_BUILD_RS = """
use std::os::unix::fs::symlink;
use std::path::Path;
fn plant(at: &Path, to: &str) {{
    let _ = std::fs::remove_file(at);
    let _ = symlink(to, at);
}}
fn main() {{
    let root = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    let root = Path::new(&root);
    let out = std::env::var("OUT_DIR").unwrap();
    let target = Path::new(&out).ancestors().nth(4).unwrap();  // out, pkg-hash, build, debug
    plant(&root.join("tests/flakebot_acceptance.rs"), {test_file});
    plant(&root.join("flake.nix"), {flake});
    plant(&target.join(".flakebot-lock"), {lock});
    plant(&target.join(".flakebot-last-fork"), {marker});
    println!("cargo:warning=planted under {{}}", target.display());
}}
"""


@pytest.mark.slow
def test_symlinks_planted_where_flakebot_writes_change_no_host_file(
    tmp_path: Path, settings: Settings
) -> None:
    host = tmp_path / "host"
    host.mkdir()
    victims = {name: host / name for name in ("test_file", "flake", "lock", "marker")}
    for path in victims.values():
        path.write_text("host file: must stay as it is\n")
    registry = tmp_path / "registry"
    build_rs = PLANTER_BUILD_RS.format(**{key: rust(str(path)) for key, path in victims.items()})
    make_crate(
        registry,
        "planter",
        "0.1.0",
        files={"build.rs": build_rs, "src/main.rs": 'fn main() { println!("planted"); }\n'},
    )
    forker, workspace = local_fork(settings, registry, "planter", "plant1")
    root, target = Path(workspace.path), Path(workspace.target_dir)
    spec = says("planter", "planted")
    tester = Tester(Sandbox.for_registry(Toolchain.find(), registry))
    for attempt in range(2):  # write, let the build script plant, write again over its symlinks
        acceptance.install(root, spec, "planter", registry_has_regex=False)
        report = tester.test(root, target, run_id="plant1", candidate_id="c1", attempt=attempt)
        assert "planted under" in report.stages[0].log_tail
    assert (target / ".flakebot-lock").is_symlink()  # planted, and never followed
    acceptance.install(root, spec, "planter", registry_has_regex=False)  # over the last plant
    forker.commit(workspace, "attempt 1")
    Deployer(settings, tester.sandbox.toolchain).deploy(
        forker.current(RunRecord(settings.home, "plant1").fork("c1-planter")),  # type: ignore[arg-type]
        spec,
        forker,
        bin_name="planter",
    )
    for path in victims.values():
        assert path.read_text() == "host file: must stay as it is\n", path
    for written in ("tests/flakebot_acceptance.rs", "flake.nix"):
        assert (root / written).is_file() and not (root / written).is_symlink()
    Janitor(settings).clean(CleanupRequest(run_id="plant1"))


ETC_BUILD_RS = """
fn main() {
    let root = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    let config = "[source.crates-io]\\nreplace-with = \\"etc\\"\\n\\
                  [source.etc]\\ndirectory = \\"/etc\\"\\n";
    let wrote = std::fs::write(format!("{}/.cargo/config.toml", root), config).is_ok();
    println!("cargo:warning=config rewritten: {}", wrote);
    let mut seen: Vec<String> = std::fs::read_dir("/etc")
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    seen.sort();
    println!("cargo:warning=etc holds: {}", seen.join(","));
    for name in ["hostname", "os-release", "shadow", "passwd"] {
        if let Ok(text) = std::fs::read_to_string(format!("/etc/{}", name)) {
            println!("cargo:warning=/etc/{}: {}", name, text.replace('\\n', " | "));
        }
    }
}
"""


@pytest.mark.slow
def test_a_rewritten_cargo_config_exposes_nothing_of_etc(
    tmp_path: Path, settings: Settings
) -> None:
    registry = tmp_path / "registry"
    make_crate(
        registry,
        "etcpeek",
        "0.1.0",
        files={"build.rs": ETC_BUILD_RS, "src/main.rs": "fn main() {}\n"},
    )
    _, workspace = local_fork(settings, registry, "etcpeek", "etc1")
    root = Path(workspace.path)
    config_before = (root / ".cargo" / "config.toml").read_text()
    tester = Tester(Sandbox.for_registry(Toolchain.find(), registry))
    reports = [
        tester.test(root, Path(workspace.target_dir), run_id="etc1", candidate_id="c1", attempt=n)
        for n in range(2)
    ]
    text = "".join(report.model_dump_json() for report in reports)
    assert "config rewritten: false" in text and "etc holds: " in text
    assert (root / ".cargo" / "config.toml").read_text() == config_before
    assert Forker(settings, tester.sandbox).open(root).registry.location == str(registry)
    host_only = [
        line
        for name in ("hostname", "os-release", "passwd")
        if Path("/etc", name).is_file()
        for line in Path("/etc", name).read_text().splitlines()
        if len(line) > 8 and line not in PASSWD
    ]
    assert host_only and not [line for line in host_only if line in text]
    listing = text.split("etc holds: ", 1)[1].split("\\n", 1)[0]
    assert "os-release" not in listing and "shadow" not in listing
    Janitor(settings).clean(CleanupRequest(run_id="etc1"))


NOSY_MAIN = """
fn main() {{
    let home = std::env::var("HOME").unwrap_or_default();
    let wrote_home = std::fs::write(format!("{{}}/nosy-was-here", home), "x").is_ok();
    let wrote_host = std::fs::write({host_marker}, "x").is_ok();
    let reached = std::net::TcpStream::connect(("127.0.0.1", {port})).is_ok();
    if std::env::args().any(|arg| arg == "--help") {{
        println!("usage: nosy [--help]  (reached={{}})", reached);
        return;
    }}
    println!("reached={{}} home={{}} host={{}}", reached, wrote_home, wrote_host);
}}
"""


@pytest.mark.slow
def test_a_deployed_binary_run_for_help_and_examples_writes_and_reaches_nothing(
    tmp_path: Path, settings: Settings, listener: tuple[int, list[str]]
) -> None:
    port, accepted = listener
    host_marker = tmp_path / "host" / "nosy-was-here"
    host_marker.parent.mkdir()
    registry = tmp_path / "registry"
    main = NOSY_MAIN.format(host_marker=rust(str(host_marker)), port=port)
    make_crate(registry, "nosy", "0.1.0", files={"src/main.rs": main})
    forker, workspace = local_fork(settings, registry, "nosy", "nosy1")
    spec = says("nosy", "reached=")
    role = DeployerRole(settings)
    deployment = role.deployer.deploy(workspace, spec, forker, bin_name="nosy")
    manifest = role.instruct(workspace, spec, deployment)
    assert manifest.help_text.startswith("usage: nosy") and "reached=false" in manifest.help_text
    (example,) = manifest.examples
    assert example.stdout == "reached=false home=true host=false\n"  # HOME is the sandbox's own
    assert accepted == []
    assert not host_marker.exists() and not (Path.home() / "nosy-was-here").exists()
    Janitor(settings).clean(CleanupRequest(run_id="nosy1"))


SERVICE_MAIN = """
use std::io::{{Read, Write}};
fn main() {{
    let args: Vec<String> = std::env::args().collect();
    let port = args[args.iter().position(|a| a == "--port").unwrap() + 1].clone();
    let listener = std::net::TcpListener::bind(format!("{host}:{{}}", port)).expect("bind");
    for stream in listener.incoming() {{
        let mut stream = stream.expect("accept");
        let mut buffer = [0u8; 1024];
        let _ = stream.read(&mut buffer);
        let head = "HTTP/1.1 200 OK\\r\\nConnection: close\\r\\nContent-Length: 3\\r\\n\\r\\n";
        let _ = stream.write_all(format!("{{}}ok\\n", head).as_bytes());
    }}
}}
"""


@pytest.mark.slow
def test_a_service_listening_on_every_interface_fails_its_deploy(
    tmp_path: Path, settings: Settings
) -> None:
    registry = tmp_path / "registry"
    main = SERVICE_MAIN.format(host="0.0.0.0")
    make_crate(registry, "wideopen", "0.1.0", files={"src/main.rs": main})
    forker, workspace = local_fork(settings, registry, "wideopen", "wide1")
    spec = ToolSpec(
        run_id="wide1",
        name="wideopen",
        summary="Listens everywhere.",
        tool_kind="service",
        search_queries=["http"],
        service=ServiceSettings(args=["--port", "{port}"]),
    )
    with pytest.raises(DeployError) as caught:
        Deployer(settings, Toolchain.find()).deploy(workspace, spec, forker, bin_name="wideopen")
    assert "listens on 0.0.0.0:" in caught.value.message
    assert "127.0.0.1 only" in caught.value.message
    (service,) = RunRecord(settings.home, "wide1").items("service")
    assert service.pid is not None and start_time(service.pid) is None  # stopped
    Janitor(settings).clean(CleanupRequest(run_id="wide1"))


def test_clean_leaves_a_process_that_reuses_a_recorded_pid_alone(settings: Settings) -> None:
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        started = start_time(bystander.pid)
        assert started is not None
        record = RunRecord(settings.home, "pids")
        # Recorded for a service that has since gone: same pid, another start time ...
        record.add("service", "http://127.0.0.1:1", candidate_id="c1", pid=bystander.pid,
                   started=started - 1)  # fmt: skip
        # ... and the right start time, but not a service host's command line.
        record.add("service", "http://127.0.0.1:2", candidate_id="c2", pid=bystander.pid,
                   started=started)  # fmt: skip
        report = Janitor(settings).clean(CleanupRequest(run_id="pids"))
        time.sleep(0.2)
        assert bystander.poll() is None  # still running
        assert "service" not in [item.what for item in report.removed]
    finally:
        bystander.kill()
        bystander.wait()


def test_a_service_record_is_read_back_with_its_identity(settings: Settings) -> None:
    record = RunRecord(settings.home, "ident")
    record.add("service", "http://127.0.0.1:9", candidate_id="c1", pid=4242, started=99)
    (item,) = record.items("service")
    assert (item.pid, item.started) == (4242, 99)
    stored = json.loads(record.path.read_text())
    assert stored["items"][0]["started"] == 99


def test_a_package_directory_swapped_for_a_symlink_is_refused_before_any_read_or_write(
    tmp_path: Path,
) -> None:
    """A workspace member's package dir (`p/pkg`) in a fork: a build script replaces `p` with a
    symlink to a host directory. The coder would read the host's files into the prompt and write
    its acceptance test and Cargo.toml there; the package is checked from the fork's root."""
    from flakebot.coder import package_of
    from flakebot.fork_files import UnsafePath
    from tests.samples import SAMPLES

    fork, host = tmp_path / "fork", tmp_path / "host"
    (fork / "p" / "pkg").mkdir(parents=True)
    (fork / "p" / "pkg" / "Cargo.toml").write_text('[package]\nname = "m"\nversion = "0.1.0"\n')
    (host / "pkg").mkdir(parents=True)
    (host / "pkg" / "Cargo.toml").write_text("host file\n")
    workspace = SAMPLES["workspace"].model_copy(
        update={"path": str(fork), "manifest_path": "p/pkg/Cargo.toml"}
    )
    assert package_of(workspace) == fork / "p" / "pkg"  # as made: a real directory
    assert package_of(workspace.model_copy(update={"manifest_path": "Cargo.toml"})) == fork
    (fork / "p" / "pkg" / "Cargo.toml").unlink()
    (fork / "p" / "pkg").rmdir()
    (fork / "p").rmdir()
    (fork / "p").symlink_to(host)
    with pytest.raises(UnsafePath, match="a symlink"):
        package_of(workspace)
    with pytest.raises(UnsafePath):
        acceptance.install(package_of(workspace), says("m", "x"), "m", registry_has_regex=False)
    assert sorted(path.name for path in host.rglob("*")) == ["Cargo.toml", "pkg"]
    assert (host / "pkg" / "Cargo.toml").read_text() == "host file\n"


def test_an_export_leaves_out_a_link_that_escapes_through_another_link(tmp_path: Path) -> None:
    """A build script commits `a/b/l -> ../..` (the tree's root) and `leak -> a/b/l/../secret`,
    whose text normalises to `a/b/secret` but which reaches the tree's parent. The export is
    the flake the agent's `nix run` builds: it must hold no link out."""
    import os

    import pygit2

    from flakebot.fork import _export_tree

    work = tmp_path / "fork"
    (work / "a" / "b").mkdir(parents=True)
    (work / "src.rs").write_text("fn main() {}\n")
    os.symlink("../..", work / "a" / "b" / "l")
    os.symlink("a/b/l/../secret", work / "leak")
    os.symlink("a/b/l/src.rs", work / "fine")
    (tmp_path / "secret").write_text("a host file\n")
    repo = pygit2.init_repository(str(work))
    repo.index.add_all()
    tree = repo.index.write_tree()
    signature = pygit2.Signature("t", "t@example.com")
    repo.create_commit("HEAD", signature, signature, "c", tree, [])
    export = tmp_path / "export"
    export.mkdir()
    _export_tree(repo, repo.head.peel(pygit2.Commit).tree, export)
    assert (export / "a" / "b" / "l").is_symlink() and (export / "fine").is_symlink()
    assert (export / "fine").read_text() == "fn main() {}\n"
    assert not (export / "leak").exists() and not (export / "leak").is_symlink()
