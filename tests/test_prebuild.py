"""Dependencies built ahead of the deploy (flakebot.prebuild) with real Nix builds.

- the stand-in's dependencies-only derivation sees only the manifests: its path stays when a
  source file changes and moves when Cargo.lock does, and it stands in an empty file for every
  target cargo loads (workspace members, path dependencies, declared and discovered targets);
- a prebuild that fails (as on real nixpkgs), is stopped mid-build, or whose starter is killed
  (as Ray kills a coder) leaves no process, no chroot and nothing the janitor misses, and the
  deploy then builds the dependencies itself;
- a deploy after a prebuild compiles only the crate, as its Nix log says;
- the coder of the scout's first candidate starts its prebuild from the manifests its first test
  will leave (a regex check's dev-dependency, locked), and starts it again when a commit changes
  them; other candidates do not prebuild;
- cleaning a run removes its dependencies' store path, unless another run's prebuild holds it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from flakebot.coder import LocalTestRunner
from flakebot.deployer import Deployer
from flakebot.flake_template import render_flake
from flakebot.fork import Forker
from flakebot.janitor import Janitor
from flakebot.nix import EXPERIMENTAL, Nix, current_system, offline_options
from flakebot.prebuild import Prebuild, PrebuildStatus, commit_manifests, prebuild_dir
from flakebot.proc import run
from flakebot.roles import DeveloperRole
from flakebot.runstate import RunRecord
from flakebot.sandbox import Sandbox, Toolchain
from flakebot.settings import Settings
from flakebot.tester import Tester
from messages import (
    AcceptanceCase,
    CandidateResult,
    CleanupRequest,
    OutputCheck,
    RegistryRef,
    ToolSpec,
    Workspace,
)
from tests.conftest import candidate
from tests.registry_helpers import copy_crates, make_crate

pytestmark = pytest.mark.slow
STORE = Path("/nix/store")
DEPS = f"packages.{current_system()}.default.flakebotDeps"

WORKSPACE_FILES = {
    "Cargo.toml": """[package]
name = "wsapp"
version = "0.1.0"
edition = "2021"

[workspace]
members = ["crates/*"]

[dependencies]
helper = { path = "crates/helper" }

[[bin]]
name = "named"
path = "tools/named.rs"

[[test]]
name = "custom"
path = "checks/custom.rs"

[[example]]
name = "demo"
""",
    "Cargo.lock": "version = 3\n",
    "build.rs": "fn main() {}\n",
    "src/main.rs": 'fn main() { println!("one"); }\n',
    "src/bin/extra.rs": "fn main() {}\n",
    "src/bin/tool/main.rs": "fn main() {}\n",
    "tools/named.rs": "fn main() {}\n",
    "checks/custom.rs": "",
    "examples/demo.rs": "fn main() {}\n",
    "docs/notes.md": "notes\n",
    "crates/helper/Cargo.toml": '[package]\nname = "helper"\nversion = "0.1.0"\n\n'
    '[lib]\npath = "src/helper.rs"\n',
    "crates/helper/src/helper.rs": "pub fn help() {}\n",
    "crates/helper/tests/fixture/Cargo.toml": "not toml at all [",  # cargo never loads it
}


def store() -> set[str]:
    return set(os.listdir(STORE))


def nix_eval(installable: str, extra_args: list[str]) -> object:
    argv = ["nix", *EXPERIMENTAL, "eval", *offline_options(()), *extra_args, "--json"]
    done = run([*argv, installable], timeout=120).check()
    return json.loads(done.stdout)


def test_the_deps_derivation_sees_only_the_manifests(tmp_path: Path, settings: Settings) -> None:
    flake = tmp_path / "wsapp"
    for relative, text in WORKSPACE_FILES.items():
        (flake / relative).parent.mkdir(parents=True, exist_ok=True)
        (flake / relative).write_text(text)
    fields = {"pname": "wsapp", "version": "0.1.0", "bin_name": "wsapp", "description": "W."}
    (flake / "flake.nix").write_text(render_flake(**fields))
    deployer = Deployer(settings, Toolchain.find())
    extra = deployer.flake_args(RegistryRef(source="local", location=str(tmp_path / "registry")))
    nix, ref = Nix(), f"path:{flake}"
    made: list[str] = []

    def deps_drv() -> str:
        drv = nix.derivation(f"{ref}#{DEPS}", extra)
        made.extend([drv, nix.source_path(ref, extra)])
        return drv

    before = store()
    try:
        first = deps_drv()
        made.append(nix.source_path(extra[extra.index("nixpkgs") + 1]))  # the stand-in's copy
        mains = nix_eval(f"{ref}#{DEPS}.mains", extra)
        assert isinstance(mains, str) and set(mains.split("\n")) == {
            "src/main.rs", "src/bin/extra.rs", "src/bin/tool/main.rs", "build.rs",
            "tools/named.rs", "checks/custom.rs", "examples/demo.rs",
        }  # fmt: skip
        assert nix_eval(f"{ref}#{DEPS}.libs", extra) == "crates/helper/src/helper.rs"
        source = Path(str(nix_eval(f"{ref}#{DEPS}.src", extra)))
        made.append(str(source))
        kept = {str(path.relative_to(source)) for path in source.rglob("*")}
        assert kept == {"Cargo.toml", "Cargo.lock", "crates", "crates/helper",
                        "crates/helper/Cargo.toml"}  # fmt: skip

        (flake / "src/main.rs").write_text('fn main() { println!("two"); }\n')
        (flake / "crates/helper/src/helper.rs").write_text("pub fn help() { todo!() }\n")
        (flake / "src/new.rs").write_text("pub fn new() {}\n")
        (flake / "tests").mkdir()
        (flake / "tests/acceptance.rs").write_text("#[test] fn t() {}\n")
        assert deps_drv() == first  # the sources changed, the manifests did not

        (flake / "Cargo.lock").write_text("version = 3\n# another lock\n")
        assert deps_drv() != first
    finally:
        closures = [path for drv in made if drv.endswith(".drv") for path in nix.closure(drv)]
        nix.delete(sorted({*made, *closures} & {str(STORE / name) for name in store() - before}))


SLOW = """fn main() {
    let marker = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("slow");
    while marker.exists() {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
"""
SLOW_SCRIPT = "slowdep-[0-9a-f]+/build-script-build"
REGEX_CRATES = ("regex-1.7.1", "regex-syntax-0.6.27", "aho-corasick-0.7.19", "memchr-2.5.0")
HEXCAT_MAIN = """fn main() {
    let pid = unsafe { libc::getpid() };
    println!("hexcat {:x} {}", pid, env!("HEXCAT_BUILT"));
}
"""


@dataclass
class Story:
    """One crate taken through a failed, a stopped and a finished prebuild, then deployed."""

    settings: Settings
    forker: Forker
    deployer: Deployer
    workspace: Workspace
    spec: ToolSpec
    failed: PrebuildStatus | None
    stopped: PrebuildStatus | None
    stopped_drv: str
    stopped_left: list[str]  # what ran or stayed in the store after the stop
    built: PrebuildStatus | None
    built_seconds: float
    deploy_log: str
    deps_log: str
    store_before: set[str]


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Story]:
    root = tmp_path_factory.mktemp("prebuild")
    registry = copy_crates(root / "registry", "libc-0.2.139")
    slow = make_crate(registry, "slowdep", "0.1.0", files={"src/lib.rs": "", "build.rs": SLOW})
    make_crate(
        registry,
        "hexcat",
        "0.1.0",
        description=f"cats hex ({root.name}, {time.time()})",
        extra_toml='edition = "2021"\n\n[dependencies]\nlibc = "0.2"\nslowdep = "0.1"\n',
        files={
            "src/main.rs": HEXCAT_MAIN,
            "build.rs": 'fn main() { println!("cargo:rustc-env=HEXCAT_BUILT=yes"); }\n',
        },
    )
    settings = Settings.from_env({"FLAKEBOT_HOME": str(root / "home")})
    toolchain = Toolchain.find()
    forker = Forker(settings, Sandbox(toolchain, read_only=(registry,)))
    local = RegistryRef(source="local", location=str(registry))
    spec = ToolSpec(run_id="p1", name="hexcat", summary="Cats.", search_queries=["hexcat"])
    before = store()
    workspace = forker.fork(
        candidate("hexcat", "0.1.0", "c1-hexcat", local).model_copy(update={"run_id": "p1"})
    )
    deployer = Deployer(settings, toolchain)
    nix = deployer.nix

    # Stopped while it builds (the crate's description is new each session: a cold build),
    # in slowdep's build script, which waits while its marker file is there.
    (slow / "slow").write_text("")
    try:
        stopping = deployer.prebuild(workspace, spec, forker, bin_name="hexcat")
        deadline = time.monotonic() + 120
        while not run(["pgrep", "-f", SLOW_SCRIPT], timeout=30).stdout:
            assert time.monotonic() < deadline and stopping.poll() == "running"
            time.sleep(0.2)
        stopping.stop()
    finally:
        (slow / "slow").unlink()
    stopped = stopping.status()
    stopped_drv = nix.derivation(f"{stopping.job.flake}#{DEPS}", stopping.job.extra_args)
    left = [f"{stopped_drv}.chroot"] if Path(f"{stopped_drv}.chroot").exists() else []
    for running in (stopping.job.flake, SLOW_SCRIPT):
        left += run(["pgrep", "-f", running], timeout=30).stdout.split()

    # As on real nixpkgs, where the package has no flakebotDeps: the prebuild fails.
    wrong = stopping.job.model_copy(update={"attribute": DEPS.replace("flakebotDeps", "noDeps")})
    failed = Prebuild.start(wrong)
    failed.wait(120)
    failed_status = failed.status()

    started = time.monotonic()
    built = deployer.prebuild(workspace, spec, forker, bin_name="hexcat")
    built.wait(600)
    built_seconds = time.monotonic() - started
    deployment = deployer.deploy(workspace, spec, forker, bin_name="hexcat")
    final_drv = run([nix.nix_store, "--query", "--deriver", deployment.store_path], timeout=60)
    logs = []
    for drv in (final_drv.stdout.strip(), stopped_drv):
        done = run(["nix", *EXPERIMENTAL, "log", drv], timeout=60).check()
        logs.append(done.stdout)
    yield Story(
        settings,
        forker,
        deployer,
        workspace,
        spec,
        failed_status,
        stopped,
        stopped_drv,
        left,
        built.status(),
        built_seconds,
        logs[0],
        logs[1],
        before,
    )
    Janitor(settings).clean_all(force=True)


def test_a_prebuild_that_fails_or_is_stopped_leaves_nothing_running(story: Story) -> None:
    assert story.failed is not None and story.failed.state == "failed"
    assert "noDeps" in story.failed.detail
    assert story.stopped is not None and story.stopped.state == "stopped"
    assert story.stopped_left == []  # no chroot, no runner, nix or builder of that flake
    assert story.built is not None and story.built.state == "built"
    assert story.built.store_path is not None and story.built.store_path.endswith("-deps")


def compiled(build_log: str) -> list[str]:
    """The packages cargo compiled, as its log says."""
    return re.findall(r"Compiling (\S+)", re.sub(r"\x1b\[[0-9;]*m", "", build_log))


def test_a_deploy_after_a_prebuild_compiles_only_the_crate(story: Story) -> None:
    assert sorted(compiled(story.deps_log)) == ["hexcat", "libc", "slowdep"]  # hexcat: dummies
    assert compiled(story.deploy_log) == ["hexcat"]
    done = run([story.settings.gcroots_dir / "p1" / "c1-hexcat" / "bin" / "hexcat"], timeout=30)
    assert done.ok and done.stdout.startswith("hexcat ") and done.stdout.endswith(" yes\n")


def test_the_first_candidates_coder_prebuilds_and_follows_its_manifests(story: Story) -> None:
    registry = Path(story.workspace.registry.location)
    copy_crates(registry, *REGEX_CRATES)  # the regex check adds it as a dev-dependency
    sandbox = Sandbox(Toolchain.find(), read_only=(registry,))
    role = DeveloperRole(story.settings, None, LocalTestRunner(Tester(sandbox)), prebuild=True)
    says = OutputCheck(match="regex", value="^hexcat [0-9a-f]+ yes")
    spec = story.spec.model_copy(
        update={"run_id": "p4", "acceptance": [AcceptanceCase(name="says", stdout=says)]}
    )
    first, second = (
        candidate("hexcat", "0.1.0", name, story.workspace.registry).model_copy(
            update={"run_id": "p4"}
        )
        for name in ("c1-hexcat", "c2-hexcat")
    )
    workspace, result = asyncio.run(role.develop(first, spec))
    assert workspace is not None and isinstance(result, CandidateResult)
    assert result.status == "green"
    started = role._prebuilds["c1-hexcat"].prebuild  # left running for the deploy
    assert started is not None and started.wait(300) == "built"
    assert "regex" in (Path(started.job.directory) / "flake" / "Cargo.lock").read_text()
    fork = Path(workspace.path)
    assert started.job.manifests == commit_manifests(fork)  # as the first test left them

    (fork / "src" / "main.rs").write_text(HEXCAT_MAIN.replace("hexcat ", "hexcat: "))
    story.forker.commit(workspace, "an edit of the sources")
    role._follow_manifests(workspace)
    assert role._prebuilds["c1-hexcat"].prebuild is started  # the same dependencies
    with (fork / "Cargo.toml").open("a") as manifest:
        manifest.write("\n[profile.release]\ndebug = false\n")
    story.forker.commit(workspace, "an edit of the manifest")
    role._follow_manifests(workspace)
    again = role._prebuilds["c1-hexcat"].prebuild
    assert again is not None and again is not started and again.wait(300) == "built"
    assert again.job.manifests == commit_manifests(fork) != started.job.manifests

    asyncio.run(role.develop(second, spec))  # not the scout's first: no prebuild
    assert not prebuild_dir(story.settings.home, "p4", "c2-hexcat").exists()
    Janitor(story.settings).clean(CleanupRequest(run_id="p4"))


def test_clean_removes_the_deps_unless_another_run_holds_them(story: Story) -> None:
    assert story.built is not None and story.built.store_path is not None
    deps = Path(story.built.store_path)
    recorded = [item.path for item in RunRecord(story.settings.home, "p1").items("store_path")]
    assert str(deps) in recorded
    second = story.forker.fork(
        candidate("hexcat", "0.1.0", "c1-hexcat", story.workspace.registry).model_copy(
            update={"run_id": "p2"}
        )
    )
    again = story.deployer.prebuild(second, story.spec, story.forker, bin_name="hexcat")
    assert again.wait(300) == "built"  # found built: nothing compiles
    janitor = Janitor(story.settings)
    first = janitor.clean(CleanupRequest(run_id="p1"))
    assert first.failures == [] and deps.exists()  # run p2's prebuild holds them
    assert not prebuild_dir(story.settings.home, "p1", "c1-hexcat").exists()
    last = janitor.clean(CleanupRequest(run_id="p2"))
    assert last.failures == [] and not deps.exists()
    assert not (story.settings.home / "prebuilds" / "p2").exists()
    left = store() - story.store_before
    assert not [name for name in left if "hexcat" in name]  # chroots and locks included


STARTS_A_PREBUILD = """
import sys, time
from pathlib import Path
from flakebot.coder import LocalTestRunner
from flakebot.deployer import Deployer
from flakebot.fork import Forker
from flakebot.roles import DeveloperRole
from flakebot.runstate import RunRecord
from flakebot.sandbox import Sandbox, Toolchain
from flakebot.settings import Settings
from flakebot.tester import Tester
from messages import ToolSpec
settings = Settings.from_env({"FLAKEBOT_HOME": sys.argv[1]})
toolchain = Toolchain.find()
forker = Forker(settings, Sandbox(toolchain, read_only=(Path(sys.argv[2]),)))
made = RunRecord(settings.home, "p3").fork("c1-orphan")
spec = ToolSpec(run_id="p3", name="orphan", summary="Orphan.", search_queries=["orphan"])
Deployer(settings, toolchain).prebuild(made.workspace, spec, forker, bin_name="orphan")
print("started", flush=True)
time.sleep(600)
"""


def test_a_prebuild_whose_starter_dies_stops_and_records_what_it_built(story: Story) -> None:
    """A coder killed with its candidate (as Ray kills an actor) takes no build along."""
    registry = Path(story.workspace.registry.location)
    make_crate(
        registry,
        "orphan",
        "0.1.0",
        extra_toml='edition = "2021"\n\n[dependencies]\nslowdep = "0.1"\n',
        files={"src/main.rs": "fn main() {}\n"},
    )
    story.forker.fork(
        candidate("orphan", "0.1.0", "c1-orphan", story.workspace.registry).model_copy(
            update={"run_id": "p3"}
        )
    )
    home, marker = story.settings.home, registry / "slowdep-0.1.0" / "slow"
    marker.write_text("")
    try:
        starter = subprocess.Popen(
            [sys.executable, "-c", STARTS_A_PREBUILD, str(home), str(registry)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert starter.stdout is not None
        assert "started\n" in iter(starter.stdout.readline, "")  # after its log lines
        deadline = time.monotonic() + 120
        while not run(["pgrep", "-f", SLOW_SCRIPT], timeout=30).stdout:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        starter.kill()
        starter.wait()
        starter.stdout.close()
        directory = prebuild_dir(home, "p3", "c1-orphan")
        while not (directory / "status.json").exists():
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        marker.unlink()
    status = PrebuildStatus.model_validate_json((directory / "status.json").read_text())
    assert status.state == "stopped"
    assert not run(["pgrep", "-f", SLOW_SCRIPT], timeout=30).stdout
    recorded = [item.path for item in RunRecord(home, "p3").items("store_path")]
    assert any(path.endswith("-orphan-0.1.0-deps.drv") for path in recorded)
    assert Janitor(story.settings).clean(CleanupRequest(run_id="p3")).failures == []
    assert not [name for name in store() - story.store_before if "orphan" in name]
