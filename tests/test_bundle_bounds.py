"""What a fork's commit takes, and what reading a bundle inflates, are bounded: a build script
can make a sparse file of 64 GB that takes no disk."""

from __future__ import annotations

import os
from pathlib import Path

import pygit2
import pytest

from flakebot import bundle
from flakebot.errors import BundleError, ForkError
from flakebot.fork_sources import MAX_FILE_BYTES, commit_all


def test_a_file_larger_than_the_bound_is_not_committed_and_nothing_is(tmp_path: Path) -> None:
    repo = pygit2.init_repository(str(tmp_path / "fork"))
    (tmp_path / "fork" / "src.rs").write_text("fn main() {}\n")
    first = commit_all(repo, "first")
    (tmp_path / "fork" / "edit.rs").write_text("// an edit\n")
    with open(tmp_path / "fork" / "junk", "wb") as sparse:
        sparse.truncate(4 * MAX_FILE_BYTES)  # no disk, but git would read and store it all
    with pytest.raises(ForkError, match=r"junk in the fork is \d+ bytes, more than"):
        commit_all(repo, "second")
    assert str(repo.head.target) == first
    os.unlink(tmp_path / "fork" / "junk")
    assert commit_all(repo, "second") != first  # the bound, not the fork, was in the way


def test_a_bundle_entry_that_inflates_past_the_bound_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 1 MiB bundle inflated to 3 GB in memory where it was read."""
    repo = pygit2.init_repository(str(tmp_path / "src"))
    (tmp_path / "src" / "big").write_bytes(b"\0" * (2 * 1024 * 1024))
    commit_all(repo, "big")
    repo.branches.local.create("flakebot/r1", repo.head.peel(pygit2.Commit))
    path = bundle.write_bundle(repo, ["refs/heads/flakebot/r1"], tmp_path / "b.bundle")
    assert path.stat().st_size < 64 * 1024  # it compresses 2 MiB of zeros to almost nothing
    monkeypatch.setattr(bundle, "MAX_OBJECT_BYTES", 1024 * 1024)
    target = pygit2.init_repository(str(tmp_path / "dst"), bare=True)
    with pytest.raises(BundleError, match="an object of more than 1048576 bytes"):
        bundle.read_bundle(path, target)
    monkeypatch.setattr(bundle, "MAX_OBJECT_BYTES", 4 * 1024 * 1024)
    monkeypatch.setattr(bundle, "MAX_INFLATED_BYTES", 1024 * 1024)
    with pytest.raises(BundleError, match="objects come to more than"):
        bundle.read_bundle(path, target)
    monkeypatch.undo()
    refs = bundle.read_bundle(path, target)
    assert refs["refs/heads/flakebot/r1"] == str(repo.head.target)
