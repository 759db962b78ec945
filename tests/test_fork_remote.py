"""Forks from crates.io-protocol registries on loopback, with real cargo and git: Debian's registry
served by `registry serve`, a static registry on a plain file server, and an upstream repository
served by `git daemon`."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pygit2
import pytest

from flakebot.crates.crate_file import CrateRejected, pack
from flakebot.crates.fetch import dependency_dir
from flakebot.crates.mirror import MirrorServer
from flakebot.crates.sparse import SparseRegistry
from flakebot.fork import Forker
from flakebot.sandbox import Sandbox, Toolchain
from flakebot.settings import Settings
from messages import CrateCandidate, RegistryRef, ScoreParts
from tests.registry_helpers import (
    DEBIAN_REGISTRY,
    StaticRegistry,
    crate_tarball,
    make_crate,
)

pytestmark = pytest.mark.slow


def remote_candidate(
    registry: RegistryRef, name: str, version: str, *, candidate_id: str = "c1"
) -> CrateCandidate:
    return CrateCandidate(
        run_id="remote",
        candidate_id=f"{candidate_id}-{name}",
        name=name,
        version=version,
        registry=registry,
        score=0.5,
        score_parts=ScoreParts(relevance=1.0),
    )


def remote_forker(settings: Settings, registry: RegistryRef) -> Forker:
    sandbox = Sandbox.for_registry(Toolchain.find(), dependency_dir(settings.home, registry))
    return Forker(settings, sandbox, clone_timeout=20)


@pytest.fixture(scope="module")
def debian_mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MirrorServer]:
    with MirrorServer(DEBIAN_REGISTRY, tmp_path_factory.mktemp("mirror-home")) as server:
        yield server


def test_a_fork_downloads_verifies_and_locks_with_the_registrys_checksums(
    settings: Settings, debian_mirror: MirrorServer
) -> None:
    registry = RegistryRef(source="crates-io", location=debian_mirror.url)
    index = SparseRegistry(registry, user_agent="test")
    workspace = remote_forker(settings, registry).fork(remote_candidate(registry, "hexyl", "0.8.0"))
    assert workspace.origin == "registry-source" and workspace.source is not None
    assert workspace.source.checksum == index.entries("hexyl")[0].cksum
    assert workspace.source.upstream_repository == "https://github.com/sharkdp/hexyl"
    assert workspace.source.note and "not reachable" in workspace.source.note
    root = Path(workspace.path)
    lock = tomllib.loads((root / "Cargo.lock").read_text())
    locked = {p["name"]: p for p in lock["package"] if "source" in p}
    assert {"clap", "ansi_term", "atty"} <= set(locked)
    for name in ("clap", "libc"):  # the registry's real checksums, not placeholders
        entry = next(e for e in index.entries(name) if e.vers == locked[name]["version"])
        assert locked[name]["checksum"] == entry.cksum
    vendor = dependency_dir(settings.home, registry)
    config = (root / ".cargo/config.toml").read_text()
    assert f'directory = "{vendor}"' in config and "offline = true" in config
    clap = vendor / f"clap-{locked['clap']['version']}"
    assert (
        json.loads((clap / ".cargo-checksum.json").read_text())["package"]
        == (locked["clap"]["checksum"])
    )
    downloads = debian_mirror.mirror.downloads
    again = remote_forker(settings, registry).fork(
        remote_candidate(registry, "hexyl", "0.8.0", candidate_id="c2")
    )
    assert Path(again.path) != root
    assert debian_mirror.mirror.downloads == downloads  # the crate and its deps came from cache
    index.close()


def test_a_crate_whose_tarball_escapes_its_directory_is_refused(
    settings: Settings, tmp_path: Path
) -> None:
    manifest = {"package": {"name": "sneaky", "version": "0.1.0"}}
    data = crate_tarball(
        "sneaky",
        "0.1.0",
        {
            "Cargo.toml": b'[package]\nname = "sneaky"\nversion = "0.1.0"\n',
            "src/lib.rs": b"",
            "../../../../escaped-by-sneaky": b"owned",
        },
    )
    with StaticRegistry(tmp_path / "static") as static:
        static.publish("sneaky", "0.1.0", data, manifest)
        registry = RegistryRef(source="crates-io", location=static.url)
        candidate = remote_candidate(registry, "sneaky", "0.1.0")
        with pytest.raises(CrateRejected) as caught:
            remote_forker(settings, registry).fork(candidate)
    assert "a path outside its directory" in caught.value.message
    assert "escaped-by-sneaky" in caught.value.message
    assert not list(settings.home.rglob("escaped-by-sneaky")) and not list(
        tmp_path.rglob("escaped*")
    )
    assert not (settings.workspaces_dir / "remote" / candidate.candidate_id).exists()


@pytest.fixture
def git_daemon(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """`git daemon` serving tmp_path/repos on a free loopback port."""
    base = tmp_path / "repos"
    base.mkdir()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    daemon = subprocess.Popen(
        ["git", "daemon", "--export-all", "--reuseaddr", f"--base-path={base}",
         "--listen=127.0.0.1", f"--port={port}", str(base)],
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    yield base, port
    daemon.terminate()
    daemon.wait(timeout=10)


def commit_tree(repo: pygit2.Repository, message: str) -> str:
    author = pygit2.Signature("Upstream", "up@example.org")
    repo.index.add_all()
    repo.index.write()
    parents = [] if repo.head_is_unborn else [repo.head.target]
    tree = repo.index.write_tree()
    return str(repo.create_commit("HEAD", author, author, message, tree, parents))


def publish_from_upstream(
    static: StaticRegistry, work: Path, url: str, commit: str, *, changed_lib: bool = False
) -> None:
    """Package the upstream tree as cargo would: Cargo.toml.orig, .cargo_vcs_info.json."""
    crate = work / "packaged" / "upstreamed-0.1.0"
    shutil.copytree(work / "checkout", crate, ignore=shutil.ignore_patterns(".git"))
    (crate / "Cargo.toml.orig").write_text((crate / "Cargo.toml").read_text())
    (crate / "Cargo.toml").write_text(
        "# normalised by cargo publish\n" + (crate / "Cargo.toml").read_text()
    )
    vcs = {"git": {"sha1": commit}, "path_in_vcs": ""}
    (crate / ".cargo_vcs_info.json").write_text(json.dumps(vcs))
    if changed_lib:
        (crate / "src/lib.rs").write_text("pub fn added_after_the_commit() {}\n")
    manifest = {"package": {"name": "upstreamed", "version": "0.1.0", "repository": url}}
    static.publish("upstreamed", "0.1.0", pack(crate, "upstreamed", "0.1.0"), manifest)


@pytest.mark.parametrize("changed_lib", [False, True])
def test_a_fork_clones_upstream_at_the_commit_the_crate_was_packaged_from(
    settings: Settings, tmp_path: Path, git_daemon: tuple[Path, int], changed_lib: bool
) -> None:
    base, port = git_daemon
    url = f"git://127.0.0.1:{port}/upstreamed"
    checkout = tmp_path / "checkout"
    make_crate(
        tmp_path,
        "upstreamed",
        "0.1.0",
        extra_toml=f'repository = "{url}"\n',
        files={"src/lib.rs": "pub fn released() {}\n"},
    )
    (tmp_path / "upstreamed-0.1.0" / ".cargo-checksum.json").unlink()
    (tmp_path / "upstreamed-0.1.0").rename(checkout)
    repo = pygit2.init_repository(str(checkout), initial_head="main")
    commit_tree(repo, "first")
    (checkout / "src/lib.rs").write_text("pub fn released() {}\npub fn documented() {}\n")
    released = commit_tree(repo, "release 0.1.0")
    author = pygit2.Signature("Upstream", "up@example.org")
    first = str(repo.head.peel(pygit2.Commit).parents[0].id)
    repo.create_tag("v0.1.0", first, pygit2.enums.ObjectType.COMMIT, author, "a misplaced tag")
    with StaticRegistry(tmp_path / "static") as static:
        publish_from_upstream(static, tmp_path, url, released, changed_lib=changed_lib)
        (checkout / "src/lib.rs").write_text("pub fn unreleased() {}\n")
        commit_tree(repo, "after the release")  # upstream moved on since
        shutil.move(str(checkout / ".git"), str(base / "upstreamed"))
        registry = RegistryRef(source="crates-io", location=static.url)
        workspace = remote_forker(settings, registry).fork(
            remote_candidate(registry, "upstreamed", "0.1.0")
        )
    source = workspace.source
    assert source is not None and source.upstream_repository == url
    fork = pygit2.Repository(workspace.path)
    first_commit = list(fork.walk(fork.head.target))[-1]
    if changed_lib:
        assert workspace.origin == "registry-source" and source.upstream_commit is None
        assert source.note and "src/lib.rs" in source.note and released[:12] in source.note
        assert first_commit.message.startswith("upstream: upstreamed 0.1.0")
        return
    assert workspace.origin == "upstream-clone" and source.upstream_commit == released
    assert workspace.upstream_url == url
    history = [str(c.id) for c in fork.walk(fork.head.target)]
    assert released in history and first in history  # the real history, not the tag's
    assert (Path(workspace.path) / "src/lib.rs").read_text() == (
        "pub fn released() {}\npub fn documented() {}\n"
    )


def test_a_crate_from_the_network_cannot_make_flakebot_clone_a_local_repository(
    settings: Settings, tmp_path: Path
) -> None:
    private = tmp_path / "private"
    make_crate(tmp_path, "nosy", "0.1.0", files={"src/lib.rs": ""})
    (tmp_path / "nosy-0.1.0").rename(private)
    commit_tree(pygit2.init_repository(str(private), initial_head="main"), "private")
    data = crate_tarball(
        "nosy", "0.1.0", {"Cargo.toml": (private / "Cargo.toml").read_bytes(), "src/lib.rs": b""}
    )
    url = f"file://{private}"
    manifest = {"package": {"name": "nosy", "version": "0.1.0", "repository": url}}
    with StaticRegistry(tmp_path / "static") as static:
        static.publish("nosy", "0.1.0", data, manifest)
        registry = RegistryRef(source="crates-io", location=static.url)
        candidate = remote_candidate(registry, "nosy", "0.1.0").model_copy(
            update={"repository": url}
        )
        workspace = remote_forker(settings, registry).fork(candidate)
    assert workspace.origin == "registry-source" and workspace.source is not None
    assert workspace.source.note and "not a network repository" in workspace.source.note
    assert "origin" not in list(pygit2.Repository(workspace.path).remotes.names())
