"""Measuring and removing directory trees that code in a sandbox may have shaped.

A build script can nest directories thousands deep (`mkdir d; cd d` in a loop). Python 3.11's
os.walk and shutil.rmtree recurse once per level and raise RecursionError past about a thousand,
and paths that deep pass PATH_MAX (4096 bytes), so any path-based walk fails with ENAMETOOLONG.
Both functions here walk iteratively, holding one directory open at a time: they go down by name
from the directory they hold (O_NOFOLLOW, so a symlink is never entered) and back up through its
`..`, checking (device and inode) that it is the directory they came from. Should a process still
running in the tree have moved the directory they hold (a clean that went ahead after its wait
for a run's coders), `..` would be somewhere else, perhaps outside the tree: they stop there with
an OSError rather than go on. Symlinks are measured and removed as links, never followed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def disk_usage(path: Path) -> int | None:
    """Bytes of the files under `path` (or of `path` itself if it is not a directory; a
    symlink's own size), or None if it is gone."""
    try:
        top = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISDIR(top.st_mode):
        return top.st_size
    try:
        fd = os.open(path, _DIR)
    except OSError:
        return 0
    total, subdirs = _scan(fd)
    pending = [subdirs]  # per level, the subdirectories still to visit
    path_ids = [_identity(fd)]  # per level, the directory's (device, inode)
    try:
        while pending:
            if pending[-1]:
                try:
                    child = os.open(pending[-1].pop(), _DIR, dir_fd=fd)
                except OSError:
                    continue
                os.close(fd)
                fd = child
                path_ids.append(_identity(fd))
                size, subdirs = _scan(fd)
                total += size
                pending.append(subdirs)
            else:
                pending.pop()
                path_ids.pop()
                if pending:
                    fd = _up(fd, path_ids[-1])
    except OSError:
        pass  # the tree moved under the walk: what was counted so far
    finally:
        os.close(fd)
    return total


def _identity(fd: int) -> tuple[int, int]:
    info = os.fstat(fd)
    return info.st_dev, info.st_ino


def _up(fd: int, expected: tuple[int, int]) -> int:
    """The parent of the directory `fd` (then closed), which must be `expected`: the directory
    the walk came down from. OSError, `fd` left open, if it is not (the tree was moved)."""
    up = os.open("..", _DIR, dir_fd=fd)
    if _identity(up) != expected:  # `fd` stays open: its holder closes it
        os.close(up)
        raise OSError(errno.ESTALE, "the directory tree was moved while it was walked")
    os.close(fd)
    return up


def _scan(fd: int) -> tuple[int, list[str]]:
    """The bytes of the non-directories in the directory `fd`, and its subdirectories' names."""
    size, subdirs = 0, []
    with contextlib.suppress(OSError), os.scandir(fd) as entries:
        for entry in entries:
            with contextlib.suppress(OSError):
                if entry.is_dir(follow_symlinks=False):
                    subdirs.append(entry.name)
                else:
                    size += entry.stat(follow_symlinks=False).st_size
    return size, subdirs


def remove_tree(path: Path) -> None:
    """Remove `path` and everything under it, at any depth (a symlink or a file: just it).
    OSError if something could not be removed."""
    parent = os.open(path.parent, _DIR)
    try:
        info = os.lstat(path.name, dir_fd=parent)
        if not stat.S_ISDIR(info.st_mode):
            os.unlink(path.name, dir_fd=parent)
            return
        names = [path.name]
        path_ids = [_identity(parent)]  # the (device, inode) of each directory above `fd`
        fd = os.open(path.name, _DIR, dir_fd=parent)
        try:
            while names:
                subdir = _clear_files(fd)
                if subdir is not None:  # down into it
                    child = os.open(subdir, _DIR, dir_fd=fd)
                    path_ids.append(_identity(fd))
                    os.close(fd)
                    fd = child
                    names.append(subdir)
                    continue
                emptied = names.pop()  # empty now: up, and remove it
                expected = path_ids.pop()
                if names:
                    fd = _up(fd, expected)
                else:
                    os.close(fd)
                    fd = os.dup(parent)
                os.rmdir(emptied, dir_fd=fd)
        finally:
            os.close(fd)
    finally:
        os.close(parent)


def _clear_files(fd: int) -> str | None:
    """Unlink every non-directory in the directory `fd`; the name of a subdirectory, if any."""
    with os.scandir(fd) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                return entry.name
            os.unlink(entry.name, dir_fd=fd)
    return None
