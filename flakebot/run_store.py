"""A run's record on its home node, for the roles that run on other nodes of a cluster.

A run has one home: the node of its driver and supervisor. That node's FLAKEBOT_HOME holds the
run's journal, and its Nix store gets the deployed tool. Every other node has its own
FLAKEBOT_HOME on its own disk, where its coders keep their forks and cargo its target dirs.

Two things must still reach the home:

- What a coder journals (its proposals, its test reports, its model replies). It goes to the
  run's one journal, so `flakebot status` and `flakebot resume` see it wherever it was written.
- The fork itself. After each test report, a coder on another node hands its fork over as a git
  bundle of the run's branch, with the commit that report tested. The home keeps the latest one
  of each candidate (`runs/<run>/kept/<candidate>/`, recorded for the janitor).

A later step that runs elsewhere recreates the fork from that bundle with `Forker.receive`, which
checks that the branch is at the commit handed over: the deployer on the home node, a candidate
rescheduled after its node died, or a resumed run. The bundle travels through Ray's object store,
so no node needs to reach another's disk.

`RunStore` is the plain class. actors.run_store runs it as an actor on the home node and gives
coders elsewhere a view of it with the same methods.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Protocol

import pygit2
import structlog

from flakebot.errors import ForkError
from flakebot.fork import Forker
from flakebot.home import PRIVATE_DIR, check_id, run_dir, write_private
from flakebot.journal import Journal, RunJournal
from flakebot.runstate import ForkRecord, RunRecord
from messages import AnyMessage, CrateCandidate, Workspace

log = structlog.get_logger()

MAX_BUNDLE_BYTES = 512 * 1024 * 1024


class ForkKeeper(Protocol):
    """Where a coder hands its fork over, and where a later step finds it."""

    def keep_fork(self, candidate: CrateCandidate, workspace: Workspace, bundle: bytes) -> None: ...

    def kept_fork(self, run_id: str, candidate_id: str) -> tuple[ForkRecord, bytes] | None: ...


class Store(RunJournal, ForkKeeper, Protocol):
    """The run's home as a coder sees it: its journal and its kept forks."""


class RunStore(Journal):
    """The journal and the kept forks of this node's FLAKEBOT_HOME (the runs' home node)."""

    def __init__(self, home: str | Path) -> None:
        self.home = Path(home)
        super().__init__(self.home / "journal.sqlite")

    def append(
        self,
        run_id: str,
        message: AnyMessage,
        *,
        at: float | None = None,
        jsonl: Path | None = None,
    ) -> int:
        """Journal `message`, with its line in this home's journal.jsonl of the run (a `jsonl`
        named by a caller on another node is that node's path, and is not used)."""
        del jsonl
        return super().append(
            run_id, message, at=at, jsonl=run_dir(self.home, run_id) / "journal.jsonl"
        )

    # Kept forks ----------------------------------------------------------------------------------

    def _kept_dir(self, run_id: str, candidate_id: str) -> Path:
        return run_dir(self.home, run_id) / "kept" / check_id(candidate_id, "candidate id")

    def keep_fork(self, candidate: CrateCandidate, workspace: Workspace, bundle: bytes) -> None:
        """Keep `bundle`, the fork `workspace` with its branch at `workspace.head_commit`, as the
        candidate's latest; the one kept before is replaced (atomically)."""
        if len(bundle) > MAX_BUNDLE_BYTES:
            raise ValueError(f"a fork bundle of {len(bundle)} bytes is over the limit")
        directory = self._kept_dir(workspace.run_id, workspace.candidate_id)
        record = RunRecord(self.home, workspace.run_id)
        record.add("workspace", directory, candidate_id=workspace.candidate_id)
        directory.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
        name = f"{workspace.head_commit}.bundle"
        descriptor, scratch = tempfile.mkstemp(dir=directory, prefix=".bundle-")
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(bundle)
        os.replace(scratch, directory / name)
        made = ForkRecord(candidate=candidate, workspace=workspace)
        write_private(directory / "fork.json", made.model_dump_json(indent=1))  # now the latest
        for older in directory.glob("*.bundle"):
            if older.name != name:
                older.unlink(missing_ok=True)
        log.info(
            "fork_kept",
            run_id=workspace.run_id,
            candidate=workspace.candidate_id,
            commit=workspace.head_commit,
            bytes=len(bundle),
        )

    def kept_fork(self, run_id: str, candidate_id: str) -> tuple[ForkRecord, bytes] | None:
        """The candidate's latest fork handed over (its record, at the commit handed over, and
        its bundle), or None."""
        directory = self._kept_dir(run_id, candidate_id)
        try:
            made = ForkRecord.model_validate_json((directory / "fork.json").read_text())
            bundle = (directory / f"{made.workspace.head_commit}.bundle").read_bytes()
        except (OSError, ValueError):
            return None
        return made, bundle


def receive(forker: Forker, made: ForkRecord, bundle: bytes) -> Workspace:
    """This node's copy of the fork handed over as `made` with `bundle` (Forker.receive)."""
    with tempfile.TemporaryDirectory(prefix="flakebot-bundle-") as scratch:
        path = Path(scratch) / "fork.bundle"
        path.write_bytes(bundle)
        return forker.receive(made.candidate, made.workspace, path)


def fork_here(forker: Forker, workspace: Workspace, keeper: ForkKeeper | None) -> Workspace:
    """`workspace` (as the supervisor knows it, made on this node or another) as this node has it:
    this home's fork when its branch holds `workspace.head_commit`, else the fork handed over at
    that commit, received here. A ForkError when neither is there."""
    run_id, candidate_id = workspace.run_id, workspace.candidate_id
    made = RunRecord(forker.settings.home, run_id).fork(candidate_id)
    here = None if made is None else made.workspace
    if here is None or not _holds(Path(here.path), workspace.branch, workspace.head_commit):
        kept = None if keeper is None else keeper.kept_fork(run_id, candidate_id)
        if kept is None or kept[0].workspace.head_commit != workspace.head_commit:
            raise ForkError(
                f"the fork of {candidate_id} at {workspace.head_commit[:12]} is not on this node"
                " and was not handed over to the run's home",
                hint="run the step on the node that holds the fork, or develop it again",
            )
        here = receive(forker, *kept)
        log.info("fork_received", candidate=candidate_id, commit=workspace.head_commit)
    return workspace.model_copy(update={"path": here.path, "target_dir": here.target_dir})


def _holds(path: Path, branch: str, commit: str) -> bool:
    """Is `commit` the tip of `branch` in the repository at `path`, or behind it?"""
    if not (path / ".git").is_dir():
        return False
    try:
        repo = pygit2.Repository(str(path))
        tip = repo.references.get(f"refs/heads/{branch}")
        if tip is None:
            return False
        return str(tip.target) == commit or bool(repo.descendant_of(tip.target, commit))
    except (pygit2.GitError, KeyError, ValueError):
        return False
