"""A crate's upstream repository, cloned at the commit its release was packaged from.

A `.crate` published with cargo carries `.cargo_vcs_info.json`: the commit (`git.sha1`) and the
package's directory in the repository (`path_in_vcs`). `clone_release` clones the repository
(pygit2, no hooks, a time limit) and puts the fork's branch at that commit, or, without one, at
the version's tag (`v1.2.3`, `1.2.3`, `name-v1.2.3`). `differences` then checks that the packaged
files are the repository's at that commit, and that the repository builds nothing more (no build
script, no source file under src/ that was not published), so the fork's history is the real one
and what it builds is what was published; any mismatch (an unreachable host, no such commit, a
file that differs or is extra) is a reason, and the caller falls back to the `.crate` and records
it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pygit2
import structlog

from flakebot import fork_files
from flakebot.crates.cargo_toml import package_dir
from flakebot.errors import ManifestError

log = structlog.get_logger()

# Files cargo writes or rewrites when it packages a crate: not compared with the repository.
PACKAGING_FILES = {".cargo_vcs_info.json", "Cargo.toml", "Cargo.toml.orig", "Cargo.lock"}
_PORTS = {"https": 443, "http": 80, "git": 9418}


@dataclass(frozen=True)
class VcsInfo:
    sha1: str | None
    path_in_vcs: str


def vcs_info(crate_dir: Path) -> VcsInfo | None:
    """The release's commit and directory from `.cargo_vcs_info.json`, if the crate has it."""
    text = fork_files.read_text(crate_dir, ".cargo_vcs_info.json")
    if text is None:
        return None
    try:
        info = json.loads(text)
        sha1 = info.get("git", {}).get("sha1")
        path_in_vcs = str(info.get("path_in_vcs", "")).strip("/")
    except (json.JSONDecodeError, AttributeError):
        return None
    if not isinstance(sha1, str) or len(sha1) != 40 or ".." in path_in_vcs.split("/"):
        return VcsInfo(None, "")
    return VcsInfo(sha1.lower(), path_in_vcs)


class UpstreamUnusable(Exception):
    """Why the upstream repository cannot be the fork's start (the caller records it)."""


def reachable(url: str, *, timeout: float) -> bool:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return Path(parsed.path).exists()
    if parsed.scheme not in _PORTS or not parsed.hostname:
        return False
    try:
        port = parsed.port or _PORTS[parsed.scheme]
        socket.create_connection((parsed.hostname, port), timeout=timeout).close()
    except (OSError, ValueError):
        return False
    return True


def clone_release(
    url: str,
    path: Path,
    branch: str,
    *,
    name: str,
    version: str,
    commit: str | None,
    timeout: float,
    allow_file: bool = True,
) -> str:
    """Clone `url` into `path` with `branch` at the release; returns the commit. Raises
    UpstreamUnusable (and leaves nothing at `path`) when it cannot. `allow_file` is False for a
    crate that came off the network: it may not make Flakebot copy a repository of this host."""
    if not allow_file and urlparse(url).scheme not in _PORTS:
        raise UpstreamUnusable(f"{url} is not a network repository (https, http or git)")
    if not reachable(url, timeout=min(5.0, timeout)):
        raise UpstreamUnusable(f"{url} is not reachable")
    deadline = time.monotonic() + timeout

    class Deadline(pygit2.RemoteCallbacks):
        def transfer_progress(self, stats: object) -> None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"cloning {url} took longer than {timeout:g} s")

    # the callback runs only as data arrives: a server that accepts and never answers is
    # bounded by libgit2's own timeouts (milliseconds; process-wide, set for each clone)
    pygit2.settings.server_connect_timeout = int(min(timeout, 30.0) * 1000)
    pygit2.settings.server_timeout = int(timeout * 1000)
    try:
        repo = pygit2.clone_repository(url, str(path), callbacks=Deadline())
    except (pygit2.GitError, TimeoutError, ValueError, KeyError) as exc:
        shutil.rmtree(path, ignore_errors=True)
        raise UpstreamUnusable(f"cloning {url} failed: {exc}") from None
    try:
        target = _release_commit(repo, name=name, version=version, commit=commit)
        repo.branches.local.create(branch, target)
        repo.checkout(f"refs/heads/{branch}")
        repo.set_head(f"refs/heads/{branch}")
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    return str(target.id)


def _release_commit(
    repo: pygit2.Repository, *, name: str, version: str, commit: str | None
) -> pygit2.Commit:
    if commit is not None:
        try:
            found = repo.revparse_single(commit).peel(pygit2.Commit)
        except (KeyError, ValueError, pygit2.GitError):
            raise UpstreamUnusable(
                f"the repository has no commit {commit} (the one the release was packaged from)"
            ) from None
        return found
    for tag in (f"v{version}", version, f"{name}-v{version}", f"{name}-{version}"):
        reference = repo.references.get(f"refs/tags/{tag}")
        if reference is not None:
            tagged: pygit2.Commit = reference.peel(pygit2.Commit)
            return tagged
    raise UpstreamUnusable(f"the crate names no commit and the repository has no tag v{version}")


def differences(
    crate_dir: Path, clone: Path, files: list[str], *, name: str, subdir: str
) -> list[str]:
    """The packaged files that differ from the clone's package directory (Cargo.toml.orig
    against the repository's Cargo.toml; cargo's own packaging files are not compared)."""
    try:
        package = package_dir(clone / subdir if subdir else clone, name)
    except ManifestError as exc:
        return [f"no package {name} in the repository ({exc.message})"]
    relative_package = package.relative_to(clone).as_posix()
    prefix = "" if relative_package == "." else relative_package + "/"
    differing = []
    pairs = [(f, f) for f in files if f not in PACKAGING_FILES]
    if "Cargo.toml.orig" in files:
        pairs.append(("Cargo.toml.orig", "Cargo.toml"))
    for packaged, in_repo in pairs:
        try:
            ours = fork_files.read_bytes(crate_dir, packaged)
            theirs = fork_files.read_bytes(clone, prefix + in_repo)
        except fork_files.UnsafePath:
            differing.append(packaged)
            continue
        if ours is None or ours != theirs:
            differing.append(packaged)
    published = set(files)
    for extra in _built_files(package):
        if extra not in published:
            differing.append(f"{extra} (in the repository, not published)")
    return differing


def _built_files(package: Path) -> list[str]:
    """The package's build script and the files under its src/, relative to it (no symlink
    followed): what the repository holds there beyond the published files would be compiled
    into the tool (a build script run, a binary added) though never published. Tests,
    benches, examples and other files a crate leaves out of its package are kept."""
    found = ["build.rs"] if (package / "build.rs").is_file() else []
    pending = (
        [package / "src"]
        if (package / "src").is_dir() and not (package / "src").is_symlink()
        else []
    )
    while pending:
        directory = pending.pop()
        for entry in os.scandir(directory):
            if entry.is_dir(follow_symlinks=False):
                pending.append(Path(entry.path))
            else:
                found.append(Path(entry.path).relative_to(package).as_posix())
    return sorted(found)
