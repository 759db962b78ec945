"""The first commit of a fork: the crate's source, from upstream when possible.

From a directory registry (Debian's, `cargo vendor` output) the source is the crate's directory;
from a crates.io-protocol registry it is the `.crate`, downloaded and verified against the index
(crates.fetch) and unpacked safely (crates.crate_file). Either way, when the crate names a
repository, the fork is a clone of it at the release (upstream.clone_release): the commit in
`.cargo_vcs_info.json`, else the version's tag. A clone is kept only when the packaged files are
the repository's at that commit; otherwise the fork is the published source, committed as
`upstream: ...`, and the reason is recorded in the CrateSource that the manifest's provenance
shows.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pygit2
import structlog

from flakebot.crates.cargo_toml import read_crate
from flakebot.crates.crate_file import unpack
from flakebot.crates.fetch import Fetcher, package_checksum
from flakebot.errors import ForkError, ManifestError
from flakebot.upstream import UpstreamUnusable, clone_release, differences, vcs_info
from messages import CrateCandidate, CrateSource

log = structlog.get_logger()

AUTHOR = pygit2.Signature("Flakebot", "flakebot@localhost")
IGNORED_FROM_REGISTRY = shutil.ignore_patterns(".cargo-checksum.json", ".git", "target")
MAX_FILE_BYTES = (
    64 * 1024 * 1024
)  # the largest file a fork's commit takes (bundle.MAX_OBJECT_BYTES)


@dataclass(frozen=True)
class Started:
    """What the fork's first commit is made of."""

    origin: str  # upstream-clone | registry-source
    version: str
    source: CrateSource


def from_directory(
    candidate: CrateCandidate, path: Path, branch: str, *, clone_timeout: float
) -> Started:
    """Start a fork from a directory registry's crate."""
    crate_dir = registry_source(Path(candidate.registry.location), candidate)
    checksum = package_checksum(crate_dir)
    files = _files(crate_dir)
    return _start(
        candidate, crate_dir, files, path, branch, candidate.version, checksum, clone_timeout
    )


def from_remote(
    candidate: CrateCandidate,
    path: Path,
    branch: str,
    *,
    fetcher: Fetcher,
    clone_timeout: float,
) -> Started:
    """Start a fork from a crates.io-protocol registry: download, verify, unpack."""
    downloaded = fetcher.crate(candidate.name, candidate.version)
    entry = downloaded.entry
    staging = path.parent / f".{path.name}.crate"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        files = unpack(downloaded.data, entry.name, entry.vers, staging)
        return _start(
            candidate, staging, files, path, branch, entry.vers, entry.cksum, clone_timeout
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _start(
    candidate: CrateCandidate,
    crate_dir: Path,
    files: list[str],
    path: Path,
    branch: str,
    version: str,
    checksum: str | None,
    clone_timeout: float,
) -> Started:
    source = CrateSource(registry=candidate.registry, checksum=checksum)
    repository = candidate.repository or _repository(crate_dir)
    if repository:
        info = vcs_info(crate_dir)
        try:
            commit = clone_release(
                repository,
                path,
                branch,
                name=candidate.name,
                version=version,
                commit=info.sha1 if info else None,
                timeout=clone_timeout,
                allow_file=candidate.registry.source == "local",
            )
            differing = differences(
                crate_dir, path, files, name=candidate.name, subdir=info.path_in_vcs if info else ""
            )
            if differing:
                shutil.rmtree(path)
                shown = ", ".join(differing[:5]) + (" ..." if len(differing) > 5 else "")
                raise UpstreamUnusable(
                    f"the published files differ from {repository} at {commit[:12]}: {shown}"
                )
        except UpstreamUnusable as exc:
            log.info("upstream_unusable", url=repository, reason=str(exc))
            source = source.model_copy(update={"upstream_repository": repository, "note": str(exc)})
        else:
            return Started(
                "upstream-clone",
                version,
                source.model_copy(
                    update={"upstream_repository": repository, "upstream_commit": commit}
                ),
            )
    shutil.copytree(crate_dir, path, ignore=IGNORED_FROM_REGISTRY, symlinks=True)
    repo = pygit2.init_repository(str(path), initial_head=branch)
    commit_all(repo, f"upstream: {candidate.name} {version} from {candidate.registry}")
    if not repository:
        source = source.model_copy(update={"note": "the crate names no repository"})
    return Started("registry-source", version, source)


def registry_source(registry: Path, candidate: CrateCandidate) -> Path:
    for directory in (
        registry / f"{candidate.name}-{candidate.version}",
        registry / candidate.name,
    ):
        if (directory / "Cargo.toml").is_file():
            return directory
    raise ForkError(
        f"{registry} has no source for {candidate.name} {candidate.version}",
        hint="re-run the search; the registry may have changed since",
    )


def _repository(crate_dir: Path) -> str | None:
    try:
        return read_crate(crate_dir).repository
    except ManifestError:
        return None


def _files(crate_dir: Path) -> list[str]:
    return sorted(
        path.relative_to(crate_dir).as_posix()
        for path in crate_dir.rglob("*")
        if (path.is_file() or path.is_symlink())
        and path.name != ".cargo-checksum.json"
        and path.relative_to(crate_dir).parts[0] not in (".git", "target")
    )


def commit_all(repo: pygit2.Repository, message: str, *, force: Sequence[str] = ()) -> str:
    """Commit everything in the work tree (deletions too); `force` adds ignored paths.

    ForkError, committing nothing, for a file larger than MAX_FILE_BYTES: a build script can
    make a sparse file of 64 GB that takes no disk, which git would read, store, and every
    bundle of the fork would carry (and inflate back into memory where it is read)."""
    index = repo.index
    changes = repo.status()
    added = (
        pygit2.enums.FileStatus.WT_NEW
        | pygit2.enums.FileStatus.WT_MODIFIED
        | pygit2.enums.FileStatus.WT_TYPECHANGE  # a tracked symlink replaced by a file
    )
    for path in [path for path, status in changes.items() if status & added] + list(force):
        with contextlib.suppress(OSError):
            size = os.lstat(os.path.join(repo.workdir, path)).st_size
            if size > MAX_FILE_BYTES:
                raise ForkError(
                    f"{path} in the fork is {size} bytes, more than {MAX_FILE_BYTES}: "
                    "it is not committed (a build script or an edit made it)",
                    hint="write large outputs to the target dir, not into the crate",
                )
    deleted = [
        path for path, status in changes.items() if status & pygit2.enums.FileStatus.WT_DELETED
    ]
    index.add_all()
    for path in deleted:
        if path in index:
            index.remove(path)
    for path in force:
        if (Path(repo.workdir) / path).exists():
            index.add(path)
    index.write()
    tree = index.write_tree()
    parents = [] if repo.head_is_unborn else [repo.head.target]
    commit = repo.create_commit("HEAD", AUTHOR, AUTHOR, message + "\n", tree, parents)
    return str(commit)
