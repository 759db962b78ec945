"""Forking crates: each candidate in its own git workspace (pygit2), made to build offline.

`Forker.fork` makes FLAKEBOT_HOME/workspaces/<run>/<candidate> on branch `flakebot/<run>`: a clone
of the crate's upstream repository when it is reachable (https or file://, with a time limit) and
has a tag for the version, otherwise the registry's published source committed as `upstream`. A
second commit makes it build offline: `.cargo/config.toml` points cargo at the local registry and
`Cargo.lock` is resolved there. When resolution fails on a dev-dependency the registry lacks, that
dev-dependency and the tests, benches and examples that use it are pruned, recorded, and
resolution runs again. Every later attempt is one commit (`commit`), and any can be restored
(`reset`).

What the fork is (its crate, registry, target dir and package directory) is saved in the run's
record when it is made, and read back from there (`open`), never from the fork: once a sandboxed
stage has run, the fork's files are the attacker's. Only Flakebot writes `.git` (the sandbox sees
it read-only), and the deployer builds from `export`, a copy of a commit's tree that Flakebot
writes itself, so no git configuration, hook or symlink in the fork reaches a step outside.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import shutil
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pygit2
import structlog

from flakebot import fork_files
from flakebot.acceptance import TEST_PATH
from flakebot.bundle import read_bundle, write_bundle
from flakebot.crates.cargo_toml import package_dir, read_crate
from flakebot.crates.pruning import prune_dev_dependency, unresolved_dependency
from flakebot.errors import ForkError, ManifestError
from flakebot.runstate import ForkRecord, RunRecord
from flakebot.sandbox import Sandbox
from flakebot.settings import DEBIAN_REGISTRY, Settings
from messages import ChangedFile, CrateCandidate, PrunedItem, RegistryRef, ScoreParts, Workspace

log = structlog.get_logger()

AUTHOR = pygit2.Signature("Flakebot", "flakebot@localhost")
IGNORED_FROM_REGISTRY = shutil.ignore_patterns(".cargo-checksum.json", ".git", "target")
LOCK_TIMEOUT_S = 300.0
SETUP_PREFIX = "flakebot: build offline against "
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
        if candidate.registry.source != "local":
            raise ForkError(
                f"{candidate.name} {candidate.version} comes from {candidate.registry}; forks are "
                "made from a local registry's sources or a reachable upstream repository",
                hint="use --registry local (Debian's crate sources) or a `cargo vendor` directory",
            )
        source = _registry_source(Path(candidate.registry.location), candidate)
        path.parent.mkdir(parents=True, exist_ok=True)
        record.add("workspace", path, candidate_id=candidate.candidate_id)
        record.add(
            "target_dir",
            self.target_dir(candidate.name, candidate.version),
            candidate_id=candidate.candidate_id,
        )
        started = time.monotonic()
        origin = "registry-source"
        if candidate.repository and self._clone_upstream(candidate, path, branch):
            origin = "upstream-clone"
        else:
            shutil.copytree(source, path, ignore=IGNORED_FROM_REGISTRY, symlinks=True)
            repo = pygit2.init_repository(str(path), initial_head=branch)
            _commit_all(
                repo, f"upstream: {candidate.name} {candidate.version} from {candidate.registry}"
            )
        try:
            pruned = self._make_offline(candidate, path)
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
        workspace = self.describe(candidate, path, origin=origin, pruned=pruned)
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

    def _clone_upstream(self, candidate: CrateCandidate, path: Path, branch: str) -> bool:
        url = candidate.repository or ""
        if not _reachable(url, timeout=min(5.0, self.clone_timeout)):
            log.info("upstream_unreachable", url=url)
            return False
        deadline = time.monotonic() + self.clone_timeout

        class Deadline(pygit2.RemoteCallbacks):
            def transfer_progress(self, stats: object) -> None:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"cloning {url} took longer than its time limit")

        try:
            repo = pygit2.clone_repository(url, str(path), callbacks=Deadline())
        except (pygit2.GitError, TimeoutError, ValueError) as exc:
            log.info("upstream_clone_failed", url=url, error=str(exc))
            shutil.rmtree(path, ignore_errors=True)
            return False
        for tag in (
            f"v{candidate.version}",
            candidate.version,
            f"{candidate.name}-v{candidate.version}",
        ):
            reference = repo.references.get(f"refs/tags/{tag}")
            if reference is not None:
                commit = reference.peel(pygit2.Commit)
                repo.branches.local.create(branch, commit)
                repo.checkout(f"refs/heads/{branch}")
                try:
                    package_dir(path, candidate.name)  # at the root, or a workspace member
                except ManifestError:
                    break
                return True
        log.info(
            "upstream_unusable", url=url, version=candidate.version, reason="no tag or package"
        )
        shutil.rmtree(path, ignore_errors=True)
        return False

    def _make_offline(self, candidate: CrateCandidate, path: Path) -> list[PrunedItem]:
        registry = Path(candidate.registry.location).resolve()
        # The crate's own cargo configuration (an upstream repository may carry one: aliases,
        # runners, rustflags, other sources) is replaced by Flakebot's, whole: never followed.
        existing = fork_files.kind(path, ".cargo")
        if existing == "dir":
            shutil.rmtree(path / ".cargo")  # rmtree does not follow symlinks inside
        elif existing is not None:
            fork_files.remove(path, ".cargo")
        fork_files.write_text(
            path,
            ".cargo/config.toml",
            "# Written by flakebot: build offline against a local directory registry.\n"
            '[source.crates-io]\nreplace-with = "flakebot-local"\n\n'
            f"[source.flakebot-local]\ndirectory = {_toml_string(str(registry))}\n\n"
            "[net]\noffline = true\n",
        )
        fork_files.remove(path, "Cargo.lock")
        pruned: list[PrunedItem] = []
        target = self.target_dir(candidate.name, candidate.version)
        for _ in range(64):
            done = self.sandbox.run(
                ["cargo", "generate-lockfile", "--offline"],
                workdir=path,
                target_dir=target,
                timeout=LOCK_TIMEOUT_S,
            )
            if done.ok:
                break
            missing = unresolved_dependency(done.stderr)
            if missing is None:
                raise ForkError(
                    f"{candidate.name} {candidate.version} does not resolve offline:\n"
                    + done.stderr.strip()[-2_000:]
                )
            removed = prune_dev_dependency(
                package_dir(path, candidate.name), missing, reason=f"{missing} is not in {registry}"
            )
            if not removed:
                raise ForkError(
                    f"{candidate.name} {candidate.version} needs {missing}, which {registry} lacks "
                    "(not only as a dev-dependency, so it cannot be pruned)",
                    hint="try another candidate, or install the crate's sources "
                    f"(apt-get install librust-{missing.replace('_', '-')}-dev)",
                )
            pruned.extend(removed)
        else:
            raise ForkError(f"{candidate.name} {candidate.version}: resolution did not settle")
        repo = pygit2.Repository(str(path))
        summary = f"pruned {len(pruned)}" if pruned else "nothing pruned"
        body = "\n".join(f"pruned: {item.what} {item.name}: {item.reason}" for item in pruned)
        _commit_all(
            repo,
            f"{SETUP_PREFIX}{registry} ({summary})\n\n{body}".rstrip(),
            force=["Cargo.lock", ".cargo/config.toml"],
        )
        return pruned

    def commit(self, workspace: Workspace, message: str) -> str:
        """Commit everything in the work tree as one attempt; returns the new commit id."""
        repo = pygit2.Repository(workspace.path)
        return _commit_all(repo, message, force=["Cargo.lock"])

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
        _export_tree(repo, commit.tree, destination, "")
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

    def import_bundle(self, workspace: Workspace, bundle: Path) -> Workspace:
        """Recreate `workspace` (made on another node) here from its bundle."""
        path = Path(workspace.path)
        if path.exists():
            raise ForkError(f"{path} already exists; remove it before importing a bundle")
        repo = pygit2.init_repository(str(path), initial_head=workspace.branch)
        try:
            refs = read_bundle(bundle, repo)
            if refs.get(f"refs/heads/{workspace.branch}") != workspace.head_commit:
                raise ForkError(
                    f"the bundle's {workspace.branch} is not at {workspace.head_commit}",
                    hint="export the bundle again from the node that holds the fork",
                )
            repo.checkout_head(strategy=pygit2.enums.CheckoutStrategy.FORCE)  # type: ignore[no-untyped-call]
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
        return workspace


def fork_ids(root: Path, workspaces: Path) -> tuple[str, str]:
    """A fork's run and candidate ids from its place under FLAKEBOT_HOME; made up elsewhere."""
    workspaces = workspaces.resolve()
    if root.is_relative_to(workspaces) and len(root.relative_to(workspaces).parts) == 2:
        run_id, candidate_id = root.relative_to(workspaces).parts
        return run_id, candidate_id
    safe = re.sub(r"[^A-Za-z0-9._-]", "-", root.name).strip("-.")[:64]
    return "local", safe or "package"


def _registry_source(registry: Path, candidate: CrateCandidate) -> Path:
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


def _toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _export_tree(repo: pygit2.Repository, tree: pygit2.Tree, root: Path, prefix: str) -> None:
    for entry in tree:
        relative = f"{prefix}{entry.name}"
        content = repo[entry.id]
        if isinstance(content, pygit2.Tree):
            _export_tree(repo, content, root, relative + "/")
        elif not isinstance(content, pygit2.Blob):
            continue  # a gitlink (submodule) has no content here
        elif entry.filemode == pygit2.enums.FileMode.LINK:
            target = content.data.decode("utf-8", errors="replace")
            inside = posixpath.normpath(posixpath.join(posixpath.dirname(relative), target))
            if target.startswith("/") or inside == ".." or inside.startswith("../"):
                log.info("export_symlink_skipped", path=relative, target=target)
                continue
            fork_files.write_symlink(root, relative, target)
        else:
            executable = entry.filemode == pygit2.enums.FileMode.BLOB_EXECUTABLE
            mode = 0o755 if executable else 0o644
            fork_files.write_bytes(root, relative, content.data, mode=mode)


def _reachable(url: str, *, timeout: float) -> bool:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return Path(parsed.path).exists()
    if parsed.scheme != "https" or not parsed.hostname:
        return False
    try:
        socket.create_connection((parsed.hostname, parsed.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _commit_all(repo: pygit2.Repository, message: str, *, force: Sequence[str] = ()) -> str:
    index = repo.index
    deleted = [
        path
        for path, status in repo.status().items()
        if status & pygit2.enums.FileStatus.WT_DELETED
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


def _pruned_from_history(repo: pygit2.Repository) -> list[PrunedItem]:
    pruned = []
    for commit in reversed(list(repo.walk(repo.head.target))):
        for line in commit.message.splitlines():
            if line.startswith("pruned: "):
                what, _, rest = line.removeprefix("pruned: ").partition(" ")
                name, _, reason = rest.partition(": ")
                pruned.append(PrunedItem(what=what, name=name, reason=reason))
    return pruned
