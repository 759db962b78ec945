"""Forks as git workspaces: one commit per attempt, reset, and bundles that move a fork."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pygit2
import pytest

from flakebot.errors import ForkError
from flakebot.fork import Forker
from flakebot.runstate import RunRecord
from flakebot.sandbox import Sandbox, Toolchain
from flakebot.settings import Settings
from messages import CrateCandidate, RegistryRef, ScoreParts, Workspace
from tests.conftest import candidate
from tests.registry_helpers import DEBIAN_REGISTRY, make_crate, tag_upstream

DEBIAN = RegistryRef(source="local", location=str(DEBIAN_REGISTRY))


@pytest.fixture
def forker(settings: Settings) -> Forker:
    return Forker(settings, Sandbox(Toolchain.find()))


def hexyl(candidate_id: str = "c1-hexyl", run_id: str = "r1") -> CrateCandidate:
    return CrateCandidate(
        run_id=run_id,
        candidate_id=candidate_id,
        name="hexyl",
        version="0.8.0",
        registry=DEBIAN,
        repository="https://github.com/sharkdp/hexyl",
        score=1.0,
        score_parts=ScoreParts(relevance=1.0),
    )


def test_fork_layout_branch_and_setup_commit(forker: Forker, settings: Settings) -> None:
    workspace = forker.fork(hexyl())
    assert Path(workspace.path) == settings.workspaces_dir / "r1" / "c1-hexyl"
    assert workspace.branch == "flakebot/r1"
    repo = pygit2.Repository(workspace.path)
    assert str(repo.head.target) == workspace.head_commit
    tree = repo.head.peel(pygit2.Commit).tree
    assert "Cargo.lock" in tree and ".cargo" in tree and ".cargo-checksum.json" not in tree
    assert not repo.status()  # everything committed
    assert Path(workspace.target_dir).parent == settings.home / "targets"
    assert workspace.target_dir.split("/")[-1].startswith("hexyl-0.8.0-")
    assert forker.fork(hexyl()) == workspace  # forking again returns the same fork


def test_attempts_commit_and_reset(forker: Forker) -> None:
    workspace = forker.fork(hexyl())
    root = Path(workspace.path)
    setup = workspace.head_commit
    (root / "src" / "extra.rs").write_text("pub fn added() {}\n")
    (root / "README.md").unlink()
    first = forker.commit(workspace, "attempt 1: add extra.rs\n\ntests: red")
    assert [a.commit for a in forker.attempts(workspace)][-2:] == [setup, first]
    assert forker.attempts(workspace)[-1].message.startswith("attempt 1: add extra.rs")
    forker.reset(workspace, setup)
    assert not (root / "src" / "extra.rs").exists() and (root / "README.md").exists()
    assert str(pygit2.Repository(workspace.path).head.target) == setup


def test_bundle_moves_a_fork_to_another_home(forker: Forker, tmp_path: Path) -> None:
    workspace = forker.fork(hexyl())
    (Path(workspace.path) / "NOTES.md").write_text("an attempt\n")
    head = forker.commit(workspace, "attempt 1")
    moved = workspace.model_copy(update={"head_commit": head})
    bundle = forker.export_bundle(moved, tmp_path / "fork.bundle")
    verified = subprocess.run(
        ["git", "bundle", "verify", str(bundle)], capture_output=True, text=True, check=False
    )
    assert verified.returncode == 0, verified.stderr

    other = Forker(
        Settings.from_env({"FLAKEBOT_HOME": str(tmp_path / "other-node")}), forker.sandbox
    )
    target = other.receive(hexyl(), moved, bundle)
    assert target.path == str(other.workspace_path("r1", "c1-hexyl"))
    assert target.target_dir.startswith(str(tmp_path / "other-node"))
    repo = pygit2.Repository(target.path)
    assert str(repo.head.target) == head and repo.head.shorthand == "flakebot/r1"
    assert (Path(target.path) / "NOTES.md").read_text() == "an attempt\n"
    assert (Path(target.path) / "src" / "lib.rs").read_bytes() == (
        Path(workspace.path) / "src" / "lib.rs"
    ).read_bytes()
    assert len(list(repo.walk(repo.head.target))) == 3
    made = RunRecord(other.settings.home, "r1").fork("c1-hexyl")
    assert made is not None and made.workspace == target  # recorded at this home's paths

    # the fork moves on where it was made: received again, the copy follows
    (Path(workspace.path) / "NOTES.md").write_text("attempt 2\n")
    second = forker.commit(workspace, "attempt 2")
    moved = workspace.model_copy(update={"head_commit": second})
    forker.export_bundle(moved, bundle)
    again = other.receive(hexyl(), moved, bundle)
    assert str(pygit2.Repository(again.path).head.target) == second
    assert (Path(again.path) / "NOTES.md").read_text() == "attempt 2\n"
    # a bundle whose branch is not at the commit it was sent for is refused
    with pytest.raises(ForkError, match="is not at"):
        other.receive(hexyl(), moved.model_copy(update={"head_commit": head}), bundle)


def fork_upstream(
    forker: Forker, tmp_path: Path, name: str, version: str, files: dict[str, str]
) -> tuple[Forker, Workspace, str, Path]:
    """Fork a crate whose repository (`files`, tagged v<version>) is reachable by file:// URL;
    returns the forker, the fork, the upstream release commit and the upstream directory."""
    upstream = make_crate(tmp_path / "upstream-src", name, version, files=files)
    commit = tag_upstream(upstream, version)
    registry = tmp_path / "registry"
    make_crate(registry, name, version, files={"src/main.rs": "fn main() {}\n"})
    local = RegistryRef(source="local", location=str(registry))
    chosen = candidate(name, version, f"c1-{name}", local).model_copy(
        update={"run_id": "r1", "repository": f"file://{upstream}"}
    )
    confined = Forker(forker.settings, Sandbox(forker.sandbox.toolchain, read_only=(registry,)))
    return confined, confined.fork(chosen), commit, upstream


def test_upstream_clone_from_a_file_url(forker: Forker, tmp_path: Path) -> None:
    confined, workspace, commit, upstream = fork_upstream(
        forker, tmp_path, "tiny", "0.2.0", {"src/main.rs": "fn main() {}\n"}
    )
    assert workspace.origin == "upstream-clone" and workspace.upstream_url == f"file://{upstream}"
    history = confined.attempts(workspace)
    assert history[0].commit == commit and history[-1].message.startswith("flakebot:")


def test_missing_normal_dependency_cannot_be_pruned(forker: Forker, tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    make_crate(registry, "needy", "1.0.0", extra_toml='[dependencies]\nghost = "1"\n')
    candidate = CrateCandidate(
        run_id="r1",
        candidate_id="c1-needy",
        name="needy",
        version="1.0.0",
        registry=RegistryRef(source="local", location=str(registry)),
        score=1.0,
        score_parts=ScoreParts(relevance=1.0),
    )
    confined = Forker(forker.settings, Sandbox(forker.sandbox.toolchain, read_only=(registry,)))
    with pytest.raises(ForkError, match="needs ghost") as caught:
        confined.fork(candidate)
    assert caught.value.hint is not None and "librust-ghost-dev" in caught.value.hint
    assert not Path(confined.workspace_path("r1", "c1-needy")).exists()


def test_a_crates_own_cargo_config_is_replaced_whole(forker: Forker, tmp_path: Path) -> None:
    files = {
        "src/main.rs": "fn main() {}\n",
        ".cargo/config": '[target.x86_64-unknown-linux-gnu]\nrunner = "touch /tmp/pwned"\n',
        ".cargo/config.toml": '[source.crates-io]\nreplace-with = "elsewhere"\n',
    }
    _, workspace, _, _ = fork_upstream(forker, tmp_path, "cfgd", "0.1.0", files)
    assert workspace.origin == "upstream-clone"
    cargo = Path(workspace.path) / ".cargo"
    assert sorted(entry.name for entry in cargo.iterdir()) == ["config.toml"]
    config = (cargo / "config.toml").read_text()
    assert "Written by flakebot" in config and str(tmp_path / "registry") in config
    assert "runner" not in config


def test_an_upstream_that_builds_more_than_was_published_is_not_cloned(
    forker: Forker, tmp_path: Path
) -> None:
    """The repository adds a build script and a binary that the published crate lacks: a fork of
    it would run and build code that was never published, under the published name."""
    files = {
        "src/main.rs": "fn main() {}\n",
        "build.rs": "fn main() { /* never published */ }\n",
        "src/bin/extra.rs": "fn main() {}\n",
        "tests/upstream_only.rs": "#[test]\nfn t() {}\n",
    }
    _, workspace, _, _ = fork_upstream(forker, tmp_path, "extra", "0.1.0", files)
    assert workspace.origin == "registry-source"
    note = workspace.source.note if workspace.source else ""
    assert "build.rs (in the repository, not published)" in note
    assert "src/bin/extra.rs (in the repository, not published)" in note
    assert not (Path(workspace.path) / "build.rs").exists()
