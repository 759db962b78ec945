"""Reading and writing files inside a fork without trusting it.

Once a sandboxed stage or a model edit has run, everything under a fork is attacker-controlled: a
build script may have replaced `Cargo.toml` with a symlink to a host file, turned `tests/` into a
symlink to `/etc`, or left a FIFO where Flakebot reads. Every file Flakebot reads or writes in a
fork goes through this module:

- directories are opened one component at a time with O_NOFOLLOW, starting from the fork's root
  (which Flakebot made), so no path can leave the fork through a symlink;
- a read opens the file with O_NOFOLLOW | O_NONBLOCK and accepts only a regular file (a FIFO
  cannot hang it, a device cannot be read), up to a size limit;
- a write goes to a fresh temporary file in the checked directory and is renamed over the name,
  which replaces a planted symlink instead of following it;
- a removal unlinks the name itself (unlink never follows a symlink).

A path that would go through a symlink or a special file raises UnsafePath, which is a ForkError:
the candidate fails with that reason, and the host is untouched.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import secrets
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath

from flakebot.errors import ForkError

DEFAULT_READ_LIMIT = 8 * 1024 * 1024
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePath(ForkError):
    """A path in a fork goes through a symlink, or names something that is not a regular file."""


def _parts(relative: str | PurePosixPath) -> list[str]:
    path = PurePosixPath(relative)
    if path.is_absolute() or not path.parts or any(part in ("..", "") for part in path.parts):
        raise UnsafePath(f"{relative}: not a plain path inside the fork")
    return [part for part in path.parts if part != "."]


@contextlib.contextmanager
def _directory(root: Path, parts: list[str], *, create: bool) -> Iterator[int | None]:
    """An fd of root/parts..., every component opened without following symlinks.

    Yields None when a component is missing and `create` is false.
    """
    fd = os.open(root, _DIR_FLAGS)
    try:
        for index, part in enumerate(parts):
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    yield None
                    return
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
                child = _open_dir_at(fd, part, "/".join(parts[: index + 1]))
            except OSError as exc:
                raise _unsafe(exc, "/".join(parts[: index + 1])) from None
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def _open_dir_at(fd: int, part: str, shown: str) -> int:
    try:
        return os.open(part, _DIR_FLAGS, dir_fd=fd)
    except OSError as exc:
        raise _unsafe(exc, shown) from None


def _unsafe(exc: OSError, shown: str) -> UnsafePath:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return UnsafePath(f"{shown}: a symlink or a file where a directory should be")
    return UnsafePath(f"{shown}: {exc.strerror}")


MAX_LINK_HOPS = 40  # the kernel's own bound on symlinks followed in one lookup


def links_outside(links: Mapping[str, str]) -> list[str]:
    """Those of a tree's symlinks (path -> target, paths relative to the tree's root) that
    resolve outside it, or through too many links, when followed as the kernel follows them:
    through the tree's other links too. Normalising a link's own text is not enough: with
    `a/b/l -> ../..` inside, `x -> a/b/l/../../../etc` normalises to `etc` yet reaches the
    parent of the tree (its `..` applies to where `l` leads, not to `a/b/l`)."""
    normal = {posixpath.normpath(path): target for path, target in links.items()}
    return sorted(
        path
        for path, target in links.items()
        if not _resolves_inside(posixpath.normpath(path), target, normal)
    )


def _resolves_inside(path: str, target: str, links: Mapping[str, str]) -> bool:
    current = [part for part in posixpath.dirname(path).split("/") if part]
    pending = [target]  # link targets still to walk, innermost last
    hops = 0
    while pending:
        text = pending.pop()
        if text.startswith("/"):
            return False
        parts = [part for part in text.split("/") if part not in ("", ".")]
        for index, part in enumerate(parts):
            if part == "..":
                if not current:
                    return False
                current.pop()
                continue
            current.append(part)
            followed = links.get("/".join(current))
            if followed is not None:
                hops += 1
                if hops > MAX_LINK_HOPS:
                    return False
                current.pop()
                rest = "/".join(parts[index + 1 :])
                if rest:
                    pending.append(rest)
                pending.append(followed)
                break
    return True


def package_root(root: Path, relative: str | PurePosixPath) -> Path:
    """root/relative, a directory of the fork (a workspace member's package directory, or the
    root itself for ".") reached from the fork's root without following a symlink: the path to
    hand to this module's functions, and to readers of a crate, as their root.

    The functions here trust their `root` and check only what lies below it, so a package
    directory must be checked from the fork's root each time after a sandboxed stage or an
    edit has run: a build script may have replaced a component of it (`p` in `p/pkg`) with a
    symlink to `/`. Nothing changes the fork between this check and the host's use of the path
    (the sandbox and its processes are gone). UnsafePath if it goes through a symlink or is not
    there."""
    parts = [] if str(relative) in ("", ".") else _parts(relative)
    with _directory(root, parts, create=False) as found:
        if found is None:
            raise UnsafePath(f"{relative}: the package directory is not in the fork")
    return root.joinpath(*parts)


def read_bytes(root: Path, relative: str, *, limit: int = DEFAULT_READ_LIMIT) -> bytes | None:
    """The content of a regular file at root/relative, or None if there is none.

    Raises UnsafePath for a symlink or a special file, and for a file larger than `limit`.
    """
    parts = _parts(relative)
    with _directory(root, parts[:-1], create=False) as directory:
        if directory is None:
            return None
        return _read_at(parts[-1], directory, shown=str(relative), limit=limit)


def read_regular(path: Path, *, limit: int = DEFAULT_READ_LIMIT) -> bytes | None:
    """The content of the regular file `path` (its last component not followed if a symlink)."""
    return _read_at(str(path), None, shown=str(path), limit=limit)


def _read_at(name: str, directory: int | None, *, shown: str, limit: int) -> bytes | None:
    try:
        fd = os.open(
            name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=directory
        )
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePath(f"{shown}: a symlink, which Flakebot does not follow") from None
        raise _unsafe(exc, shown) from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise UnsafePath(f"{shown}: not a regular file")
        if info.st_size > limit:
            raise UnsafePath(f"{shown}: {info.st_size} bytes, more than {limit}")
        return handle.read(limit + 1)[:limit]


def read_text(root: Path, relative: str, *, limit: int = DEFAULT_READ_LIMIT) -> str | None:
    """Like read_bytes, decoded as UTF-8 (undecodable bytes replaced)."""
    data = read_bytes(root, relative, limit=limit)
    return None if data is None else data.decode("utf-8", errors="replace")


def write_bytes(root: Path, relative: str, data: bytes, *, mode: int = 0o644) -> None:
    """Write root/relative: a new file renamed over the name, creating directories as needed."""
    parts = _parts(relative)
    with _directory(root, parts[:-1], create=True) as directory:
        assert directory is not None
        temporary = f".flakebot-{secrets.token_hex(6)}.tmp"
        fd = os.open(
            temporary,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            mode,
            dir_fd=directory,
        )
        try:
            with os.fdopen(fd, "wb") as handle:
                os.fchmod(handle.fileno(), mode)  # exactly `mode`, whatever the umask
                handle.write(data)
            os.rename(temporary, parts[-1], src_dir_fd=directory, dst_dir_fd=directory)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temporary, dir_fd=directory)
            raise _unsafe(exc, relative) from None


def write_text(root: Path, relative: str, text: str, *, mode: int = 0o644) -> None:
    write_bytes(root, relative, text.encode("utf-8"), mode=mode)


def write_symlink(root: Path, relative: str, target: str) -> None:
    """Create the symlink root/relative -> target (it is made, never followed)."""
    parts = _parts(relative)
    with _directory(root, parts[:-1], create=True) as directory:
        assert directory is not None
        os.symlink(target, parts[-1], dir_fd=directory)


def remove(root: Path, relative: str) -> bool:
    """Remove the file (or symlink) root/relative; False if it was not there."""
    parts = _parts(relative)
    with _directory(root, parts[:-1], create=False) as directory:
        if directory is None:
            return False
        try:
            os.unlink(parts[-1], dir_fd=directory)
        except FileNotFoundError:
            return False
        except IsADirectoryError:
            raise UnsafePath(f"{relative}: a directory, not a file") from None
        return True


def kind(root: Path, relative: str) -> str | None:
    """'file', 'dir', 'symlink' or 'other' for root/relative, never followed; None if absent."""
    parts = _parts(relative)
    try:
        with _directory(root, parts[:-1], create=False) as directory:
            if directory is None:
                return None
            try:
                info = os.stat(parts[-1], dir_fd=directory, follow_symlinks=False)
            except FileNotFoundError:
                return None
    except UnsafePath:
        return "symlink"
    if stat.S_ISLNK(info.st_mode):
        return "symlink"
    if stat.S_ISREG(info.st_mode):
        return "file"
    if stat.S_ISDIR(info.st_mode):
        return "dir"
    return "other"
