"""Trees a build shaped: measured and removed at any depth, symlinks never followed."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from flakebot.settings import Settings
from flakebot.trees import disk_usage, remove_tree


@pytest.fixture
def deep_trees(tmp_path: Path) -> Iterator[Path]:
    """A directory for deep trees, removed whatever the test did: pytest's own clean-up of old
    temporary directories (shutil.rmtree) would fail on them in a later session."""
    directory = tmp_path / "deep"
    directory.mkdir()
    yield directory
    with contextlib.suppress(FileNotFoundError):
        remove_tree(directory)


def deep_tree(top: Path, depth: int) -> None:
    """`top/d/d/.../d/f` `depth` levels down (built by fd: its path passes PATH_MAX)."""
    top.mkdir()
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for level in range(depth):
            os.mkdir("d", dir_fd=fd)
            with open(os.open("x", os.O_WRONLY | os.O_CREAT, dir_fd=fd), "wb") as file:
                file.write(b"1234")
            child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
            del level
    finally:
        os.close(fd)


def test_a_tree_nested_past_the_recursion_limit_and_path_max_is_measured_and_removed(
    deep_trees: Path,
) -> None:
    top = deep_trees / "target"
    deep_tree(top, 2_500)  # os.walk and shutil.rmtree raised RecursionError
    assert disk_usage(top) == 4 * 2_500
    remove_tree(top)
    assert not top.exists() and list(deep_trees.iterdir()) == []


def test_symlinks_are_measured_and_removed_as_links_never_followed(tmp_path: Path) -> None:
    host = tmp_path / "host"
    host.mkdir()
    (host / "keep.txt").write_text("host file\n")
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "f").write_bytes(b"12345678")
    (tree / "into_host").symlink_to(host)
    (tree / "sub" / "file_link").symlink_to(host / "keep.txt")
    assert disk_usage(tree) == 8 + len(str(host)) + len(str(host / "keep.txt"))
    remove_tree(tree)
    assert not tree.exists()
    assert (host / "keep.txt").read_text() == "host file\n"
    link = tmp_path / "link"
    link.symlink_to(host)
    remove_tree(link)  # the link goes, not what it names
    assert not link.is_symlink() and (host / "keep.txt").exists()
    assert disk_usage(tmp_path / "gone") is None
    with pytest.raises(FileNotFoundError):
        remove_tree(tmp_path / "gone")


def test_the_janitor_cleans_a_fork_a_build_nested_thousands_deep(
    settings: Settings, deep_trees: Path
) -> None:
    """The clean stopped at RecursionError and left the run and its fork on disk."""
    from flakebot.janitor import Janitor
    from flakebot.runstate import RunRecord
    from messages import CleanupRequest

    workspace = deep_trees / "c1"
    deep_tree(workspace, 2_100)
    RunRecord(settings.home, "deep1").add("workspace", workspace, candidate_id="c1")
    report = Janitor(settings).clean(CleanupRequest(run_id="deep1"))
    assert report.failures == [] and not workspace.exists()
    assert [item.bytes_freed for item in report.removed] == [4 * 2_100]


def test_a_tree_moved_during_its_removal_stops_it_before_anything_outside_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A build still running moves the directory being cleared one level up: going back up
    through `..` then lands in the run's directory, which the walk would have emptied."""
    from flakebot import trees

    run = tmp_path / "run1"
    fork = run / "c1"
    (fork / "c1" / "d").mkdir(parents=True)
    (fork / "c1" / "d" / "f").write_text("x")
    (run / "c2").mkdir()
    (run / "c2" / "src.rs").write_text("another fork\n")
    (run / "record.json").write_text("the run's record\n")
    clear = trees._clear_files

    def moving(fd: int) -> str | None:
        held = fork / "c1" / "d"
        if held.exists() and os.path.samestat(os.fstat(fd), os.stat(held)):
            os.rename(held, fork / "d")  # what the build does meanwhile
        return clear(fd)

    monkeypatch.setattr(trees, "_clear_files", moving)
    with pytest.raises(OSError, match="moved while it was walked"):
        remove_tree(fork)
    assert (run / "c2" / "src.rs").read_text() == "another fork\n"
    assert (run / "record.json").read_text() == "the run's record\n"
