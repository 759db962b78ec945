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
    (tmp_path / "fork" / "link").symlink_to("src.rs")
    second = commit_all(repo, "second")
    assert second != first  # the bound, not the fork, was in the way
    (tmp_path / "fork" / "link").unlink()  # a tracked symlink becomes a large file
    with open(tmp_path / "fork" / "link", "wb") as sparse:
        sparse.truncate(4 * MAX_FILE_BYTES)
    with pytest.raises(ForkError, match="link in the fork is"):
        commit_all(repo, "third")
    assert str(repo.head.target) == second


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


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if not n:
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


def _entry_header(kind: int, size: int) -> bytes:
    first, size = (kind << 4) | (size & 15), size >> 4
    out = bytearray()
    while size:
        out.append(first | 0x80)
        first, size = size & 0x7F, size >> 7
    out.append(first)
    return bytes(out)


def test_deltas_by_object_id_count_against_the_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """REF_DELTA entries (a delta against an object the repository holds) were not counted."""
    import hashlib
    import zlib

    repo = pygit2.init_repository(str(tmp_path / "r"))
    base = repo.create_blob(b"base")
    signature = pygit2.Signature("a", "a@example.com")
    tree = repo.TreeBuilder()
    tree.insert("f", base, pygit2.enums.FileMode.BLOB)
    commit = repo.create_commit("refs/heads/main", signature, signature, "m", tree.write(), [])
    count, size, entries = 10, 60_000, b""
    for index in range(count):
        target = bytes([65 + index]) * size
        delta = _varint(4) + _varint(size)
        for start in range(0, size, 127):
            chunk = target[start : start + 127]
            delta += bytes([len(chunk)]) + chunk
        entries += _entry_header(7, len(delta)) + base.raw + zlib.compress(delta)
    pack = b"PACK" + (2).to_bytes(4, "big") + count.to_bytes(4, "big") + entries
    pack += hashlib.sha1(pack).digest()
    path = tmp_path / "x.bundle"
    path.write_bytes(bundle.HEADER + f"{commit} refs/heads/main\n\n".encode() + pack)
    monkeypatch.setattr(bundle, "MAX_INFLATED_BYTES", 100_000)
    with pytest.raises(BundleError, match="objects come to more than 100000 bytes"):
        bundle.read_bundle(path, repo)
    monkeypatch.undo()
    assert bundle.read_bundle(path, repo) == {"refs/heads/main": str(commit)}
