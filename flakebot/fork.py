"""Forking crates: each candidate in its own git workspace (pygit2), made to build offline.

`Forker.fork` makes FLAKEBOT_HOME/workspaces/<run>/<candidate> on branch `flakebot/<run>`. The
first commit is the crate's source (fork_sources): its upstream repository at the release when
that is reachable and matches what was published, else the registry's source (a directory
registry's crate, or a `.crate` downloaded and verified). The second makes it build offline
(fork_offline): Flakebot's `.cargo/config.toml`, a resolved `Cargo.lock`, dev-dependencies the
registry lacks pruned, and a remote registry's dependencies fetched. Every later attempt is one
commit (`commit`), and any can be restored (`reset`).

What the fork is (its crate, registry, target dir and package directory) is saved in the run's
record when it is made, and read back from there (`open`), never from the fork: once a sandboxed
stage has run, the fork's files are the attacker's. Only Flakebot writes `.git` (the sandbox sees
it read-only), and the deployer builds from `export`, a copy of a commit's tree that Flakebot
writes itself, so no git configuration, hook or symlink in the fork reaches a step outside.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pygit2
import structlog

from flakebot import fork_files, fork_sources
from flakebot.acceptance import TEST_PATH
from flakebot.bundle import read_bundle, write_bundle
from flakebot.crates.cargo_toml import package_dir, read_crate
from flakebot.crates.fetch import Fetcher, registry_cache
from flakebot.crates.sparse import SparseRegistry
from flakebot.errors import ForkError
from flakebot.fork_offline import SETUP_PREFIX, make_offline
from flakebot.fork_sources import commit_all
from flakebot.runstate import ForkRecord, RunRecord
from flakebot.sandbox import Sandbox
from flakebot.settings import DEBIAN_REGISTRY, Settings
from messages import ChangedFile, CrateCandidate, PrunedItem, RegistryRef, ScoreParts, Workspace

log = structlog.get_logger()

FLAKEBOT_FILES = {".cargo/config.toml", "Cargo.lock", "flake.nix", TEST_PATH}


@dataclass(frozen=True)
class Attempt:
    commit: str
    message: str


class Forker:
    """Makes and manages the git workspaces of one Flakebot home."""

    def __init__(self, settings: Settings, sandbox: Sandbox, *, clone_timeout: float = 60.0):
        self.settings = settings
        self.sandbox = sandbox
        self.clone_timeout = clone_timeout

    def workspace_path(self, run_id: str, candidate_id: str) -> Path:
        return self.settings.workspaces_dir / run_id / candidate_id

    def target_dir(self, name: str, version: str) -> Path:
        toolchain = hashlib.sha256(self.sandbox.toolchain.version().encode()).hexdigest()[:12]
        return self.settings.home / "targets" / f"{name}-{version}-{toolchain}"

    def fork(self, candidate: CrateCandidate) -> Workspace:
        """Fork `candidate`; an existing fork of it in this run is returned as it is now."""
        path = self.workspace_path(candidate.run_id, candidate.candidate_id)
        branch = f"flakebot/{candidate.run_id}"
        record = RunRecord(self.settings.home, candidate.run_id)
        made = record.fork(candidate.candidate_id)
        if made is not None and (path / ".git").is_dir():
            return self.current(made)
        if path.exists():
            shutil.rmtree(path)  # a fork whose making was interrupted: start again
        path.parent.mkdir(parents=True, exist_ok=True)
        record.add("workspace", path, candidate_id=candidate.candidate_id)
        started = time.monotonic()
        client = None
        try:
            if candidate.registry.source == "local":
                fetcher = None
                start = fork_sources.from_directory(
                    candidate, path, branch, clone_timeout=self.clone_timeout
                )
            else:
                client = SparseRegistry(
                    candidate.registry,
                    user_agent=self.settings.user_agent,
                    saved_config=registry_cache(self.settings.home, candidate.registry)
                    / "config.json",
                )
                fetcher = Fetcher(self.settings.home, client)
                start = fork_sources.from_remote(
                    candidate, path, branch, fetcher=fetcher, clone_timeout=self.clone_timeout
                )
            candidate = candidate.model_copy(update={"version": start.version})
            target = self.target_dir(candidate.name, candidate.version)
            hold_target(record, target, candidate.candidate_id)
            pruned = make_offline(
                candidate,
                path,
                sandbox=self.sandbox,
                target=target,
                home=self.settings.home,
                fetcher=fetcher,
            )
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
        finally:
            if client is not None:
                client.close()
        origin = start.origin
        workspace = self.describe(candidate, path, origin=origin, pruned=pruned)
        cloned = start.source.upstream_repository if origin == "upstream-clone" else None
        workspace = workspace.model_copy(update={"source": start.source, "upstream_url": cloned})
        record.save_fork(candidate, workspace)
        log.info(
            "crate_forked",
            crate=candidate.name,
            version=candidate.version,
            origin=origin,
            pruned=[item.name for item in pruned],
            seconds=round(time.monotonic() - started, 2),
        )
        return workspace

    def describe(
        self,
        candidate: CrateCandidate,
        path: Path,
        *,
        origin: str | None,
        pruned: list[PrunedItem],
    ) -> Workspace:
        """The Workspace message of a fork just made (or of a package that is not a fork)."""
        repo = pygit2.Repository(str(path))
        package = package_dir(path, candidate.name)
        if origin is None:  # a package Flakebot did not fork: what its history says
            origin = (
                "upstream-clone" if "origin" in list(repo.remotes.names()) else "registry-source"
            )
            pruned = _pruned_from_history(repo)
        return Workspace(
            run_id=candidate.run_id,
            candidate_id=candidate.candidate_id,
            crate_name=candidate.name,
            crate_version=candidate.version,
            path=str(path),
            branch=repo.head.shorthand,
            head_commit=str(repo.head.target),
            origin=origin,
            upstream_url=candidate.repository if origin == "upstream-clone" else None,
            registry=candidate.registry,
            target_dir=str(self.target_dir(candidate.name, candidate.version)),
            bin_names=list(read_crate(package).tool_bins),
            manifest_path=str((package / "Cargo.toml").relative_to(path)),
            pruned=pruned,
        )

    def current(self, made: ForkRecord) -> Workspace:
        """A fork's Workspace as recorded when it was made, at the branch's current commit."""
        repo = pygit2.Repository(made.workspace.path)
        return made.workspace.model_copy(update={"head_commit": str(repo.head.target)})

    def open(self, path: Path) -> Workspace:
        """The Workspace of a fork Flakebot made (from its record), or of a package of yours."""
        root = path.resolve()
        run_id, candidate_id = fork_ids(root, self.settings.workspaces_dir)
        made = RunRecord(self.settings.home, run_id).fork(candidate_id)
        if made is not None and Path(made.workspace.path) == root:
            return self.current(made)
        try:
            repo = pygit2.Repository(str(root))
        except pygit2.GitError:
            raise ForkError(
                f"{root} is not a git repository", hint="fork it: flakebot fork CRATE"
            ) from None
        if repo.head_is_unborn:
            raise ForkError(f"{root} has no commits yet", hint="fork it: flakebot fork CRATE")
        record = read_crate(package_dir(root))
        registry = self.settings.registry
        if registry.source != "local":
            registry = RegistryRef(source="local", location=DEBIAN_REGISTRY)
        candidate = CrateCandidate(
            run_id=run_id,
            candidate_id=candidate_id,
            name=record.name,
            version=record.version,
            registry=registry,
            repository=record.repository,
            license=record.license,
            score=0.0,
            score_parts=ScoreParts(relevance=0.0),
        )
        return self.describe(candidate, root, origin=None, pruned=[])

    def commit(self, workspace: Workspace, message: str) -> str:
        """Commit everything in the work tree as one attempt; returns the new commit id."""
        repo = pygit2.Repository(workspace.path)
        return commit_all(repo, message, force=["Cargo.lock"])

    def attempts(self, workspace: Workspace) -> list[Attempt]:
        """The branch's commits, oldest first."""
        repo = pygit2.Repository(workspace.path)
        history = [
            Attempt(commit=str(commit.id), message=commit.message.strip())
            for commit in repo.walk(repo.head.target, pygit2.enums.SortMode.TOPOLOGICAL)
        ]
        return list(reversed(history))

    def reset(self, workspace: Workspace, commit: str) -> None:
        """Put the branch and the work tree back to `commit` (an earlier attempt)."""
        repo = pygit2.Repository(workspace.path)
        target = repo.revparse_single(commit).peel(pygit2.Commit)
        repo.reset(target.id, pygit2.enums.ResetMode.HARD)
        for untracked, status in repo.status().items():
            if status & pygit2.enums.FileStatus.WT_NEW:
                (Path(workspace.path) / untracked).unlink(missing_ok=True)

    def export(self, workspace: Workspace, destination: Path) -> str:
        """Write the tree of the branch's head commit into `destination` (made anew); returns
        the commit. Only committed content, written by Flakebot: regular files with their mode,
        and symlinks only when they point inside the tree; nothing of the work tree or `.git`."""
        repo = pygit2.Repository(workspace.path)
        commit = repo.head.peel(pygit2.Commit)
        if destination.exists():
            shutil.rmtree(destination)
        destination.mkdir(parents=True)
        _export_tree(repo, commit.tree, destination)
        return str(commit.id)

    def changes(self, workspace: Workspace, commit: str) -> list[ChangedFile]:
        """What `commit` changed against the crate as published (the commit the fork's set-up
        started from), Flakebot's own files left out."""
        repo = pygit2.Repository(workspace.path)
        head = repo.revparse_single(commit).peel(pygit2.Commit)
        base = None
        for each in repo.walk(head.id, pygit2.enums.SortMode.TOPOLOGICAL):
            if each.message.startswith(SETUP_PREFIX) and each.parents:
                base = each.parents[0]
        if base is None:
            return []
        diff = repo.diff(base, head)
        diff.find_similar()
        statuses = {"A": "added", "D": "deleted", "M": "modified", "R": "renamed"}
        found = []
        for patch in diff:
            if patch is None:
                continue
            delta = patch.delta
            path = delta.new_file.path or delta.old_file.path
            status = statuses.get(delta.status_char())
            if status is None or path in FLAKEBOT_FILES or path.endswith("/" + TEST_PATH):
                continue
            _, insertions, deletions = patch.line_stats
            found.append(
                ChangedFile(path=path, status=status, insertions=insertions, deletions=deletions)
            )
        return found

    def export_bundle(self, workspace: Workspace, path: Path) -> Path:
        """Write the fork's branch, with its whole history, as a git bundle at `path`."""
        repo = pygit2.Repository(workspace.path)
        return write_bundle(repo, [f"refs/heads/{workspace.branch}"], path)

    def receive(self, candidate: CrateCandidate, workspace: Workspace, bundle: Path) -> Workspace:
        """This node's copy of a fork made on another node (`workspace`, its paths that node's),
        from a bundle of its branch: recorded here as this run's fork, at this home's paths, with
        the branch at `workspace.head_commit` (a ForkError if the bundle's branch is not there).
        A copy received before is brought up to date (the branch moved to the new commit)."""
        path = self.workspace_path(workspace.run_id, workspace.candidate_id)
        record = RunRecord(self.settings.home, workspace.run_id)
        record.add("workspace", path, candidate_id=workspace.candidate_id)
        existed = (path / ".git").is_dir()
        if path.exists() and not existed:
            shutil.rmtree(path)  # a copy whose receiving was interrupted
        path.parent.mkdir(parents=True, exist_ok=True)
        repo = (
            pygit2.Repository(str(path))
            if existed
            else pygit2.init_repository(str(path), initial_head=workspace.branch)
        )
        try:
            refs = read_bundle(bundle, repo)
            if refs.get(f"refs/heads/{workspace.branch}") != workspace.head_commit:
                raise ForkError(
                    f"the bundle's {workspace.branch} is not at {workspace.head_commit}",
                    hint="the fork moved after it was handed over; hand it over again",
                )
            repo.set_head(f"refs/heads/{workspace.branch}")
            repo.checkout_head(strategy=pygit2.enums.CheckoutStrategy.FORCE)  # type: ignore[no-untyped-call]
        except BaseException:
            if not existed:
                shutil.rmtree(path, ignore_errors=True)
            raise
        target = self.target_dir(workspace.crate_name, workspace.crate_version)
        hold_target(record, target, workspace.candidate_id)
        here = workspace.model_copy(update={"path": str(path), "target_dir": str(target)})
        record.save_fork(candidate, here)
        return here

    def fork_verified(self, candidate: CrateCandidate, kept: Workspace, bundle: Path) -> Workspace:
        """Fork `candidate` from the bundle of a verified result (`kept`, an earlier run's fork
        of the same crate, at its green commit): the new branch is at that commit, which must
        be on the bundle's branch; else a ForkError."""
        path = self.workspace_path(candidate.run_id, candidate.candidate_id)
        if path.exists():
            shutil.rmtree(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        record = RunRecord(self.settings.home, candidate.run_id)
        record.add("workspace", path, candidate_id=candidate.candidate_id)
        branch = f"flakebot/{candidate.run_id}"
        repo = pygit2.init_repository(str(path), initial_head=branch)
        try:
            refs = read_bundle(bundle, repo)
            tip, green = refs.get(f"refs/heads/{kept.branch}"), kept.head_commit
            if tip is None or (tip != green and not repo.descendant_of(tip, green)):
                raise ForkError(f"the kept bundle's {kept.branch} does not hold {green}")
            for ref in refs:
                if ref != f"refs/heads/{branch}":
                    repo.references.delete(ref)
            repo.references.create(f"refs/heads/{branch}", pygit2.Oid(hex=kept.head_commit))
            repo.checkout_head(strategy=pygit2.enums.CheckoutStrategy.FORCE)  # type: ignore[no-untyped-call]
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
        target = self.target_dir(candidate.name, candidate.version)
        hold_target(record, target, candidate.candidate_id)
        workspace = kept.model_copy(
            update={
                "run_id": candidate.run_id,
                "candidate_id": candidate.candidate_id,
                "path": str(path),
                "branch": branch,
                "target_dir": str(target),
            }
        )
        record.save_fork(candidate, workspace)
        return workspace


def fork_ids(root: Path, workspaces: Path) -> tuple[str, str]:
    """A fork's run and candidate ids from its place under FLAKEBOT_HOME; made up elsewhere."""
    workspaces = workspaces.resolve()
    if root.is_relative_to(workspaces) and len(root.relative_to(workspaces).parts) == 2:
        run_id, candidate_id = root.relative_to(workspaces).parts
        return run_id, candidate_id
    safe = re.sub(r"[^A-Za-z0-9._-]", "-", root.name).strip("-.")[:64]
    return "local", safe or "package"


def _export_tree(repo: pygit2.Repository, tree: pygit2.Tree, root: Path) -> None:
    """Write `tree`'s files under `root`; a symlink only if it resolves inside the tree (through
    its other links too: fork_files.links_outside)."""
    entries = list(_tree_entries(repo, tree, ""))
    links = {
        path: data.decode("utf-8", errors="replace")
        for path, mode, data in entries
        if mode == _LINK
    }
    outside = set(fork_files.links_outside(links))
    for relative, mode, data in entries:
        if mode == _LINK:
            if relative in outside:
                log.info("export_symlink_skipped", path=relative, target=links[relative])
            else:
                fork_files.write_symlink(root, relative, links[relative])
        else:
            executable = mode == pygit2.enums.FileMode.BLOB_EXECUTABLE
            fork_files.write_bytes(root, relative, data, mode=0o755 if executable else 0o644)


_LINK = pygit2.enums.FileMode.LINK


def _tree_entries(
    repo: pygit2.Repository, tree: pygit2.Tree, prefix: str
) -> Iterator[tuple[str, int, bytes]]:
    for entry in tree:
        relative = f"{prefix}{entry.name}"
        content = repo[entry.id]
        if isinstance(content, pygit2.Tree):
            yield from _tree_entries(repo, content, relative + "/")
        elif isinstance(content, pygit2.Blob):  # a gitlink (submodule) has no content here
            yield relative, entry.filemode, content.data


def _pruned_from_history(repo: pygit2.Repository) -> list[PrunedItem]:
    pruned = []
    for commit in reversed(list(repo.walk(repo.head.target))):
        for line in commit.message.splitlines():
            if line.startswith("pruned: "):
                what, _, rest = line.removeprefix("pruned: ").partition(" ")
                name, _, reason = rest.partition(": ")
                pruned.append(PrunedItem(what=what, name=name, reason=reason))
    return pruned


def hold_target(record: RunRecord, target: Path, candidate_id: str) -> None:
    """The run holds the fork's shared target dir (its candidates' builds, tests and lints)."""
    record.add("target_dir", target, candidate_id=candidate_id)
