"""The `.crate` file: a gzipped tarball whose every member lives under `<name>-<version>/`.

`pack` makes one from a directory registry's crate directory, byte for byte the same on every
call (sorted members, fixed times and owners, gzip without a timestamp), so a mirror's index can
publish its sha256 as the crate's checksum. `unpack` is the other side, for a tarball that came
off the network: it writes nothing outside the destination. A member whose path is absolute,
climbs out with `..`, or lies outside `<name>-<version>/` is refused; so is a hard link, a device
or a FIFO, and a symlink that points outside the crate. Files are written with
`fork_files.write_bytes`, which never follows a symlink, so a symlink unpacked first cannot
redirect a later file. Sizes are bounded: a decompression bomb stops at `MAX_UNPACKED_BYTES`.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import posixpath
import stat
import tarfile
from pathlib import Path

from flakebot import fork_files
from flakebot.errors import ForkError

MAX_UNPACKED_BYTES = 512 * 1024 * 1024
MAX_MEMBERS = 50_000
SKIPPED_WHEN_PACKING = {".cargo-checksum.json", ".git", "target"}
_MTIME = 1_153_704_088  # the fixed timestamp cargo gives members of a packaged crate


class CrateRejected(ForkError):
    """A downloaded `.crate` is not what the registry said it would be, or is unsafe to unpack."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pack(directory: Path, name: str, version: str) -> bytes:
    """The `.crate` of a crate directory: its files under `<name>-<version>/`, reproducibly."""
    prefix = f"{name}-{version}"
    buffer = io.BytesIO()
    files = _walk(directory)
    links = {
        path: os.readlink(directory / path) for path in files if (directory / path).is_symlink()
    }
    outside = set(fork_files.links_outside(links))
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for relative in files:
            path = directory / relative
            info = tarfile.TarInfo(f"{prefix}/{relative}")
            info.mtime = _MTIME
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            status = path.lstat()
            if stat.S_ISLNK(status.st_mode):
                if relative in outside:
                    continue  # a link out of the crate (Debian's licence links): not the crate's
                info.type = tarfile.SYMTYPE
                info.linkname = links[relative]
                info.mode = 0o777
                tar.addfile(info)
                continue
            data = path.read_bytes()
            info.size = len(data)
            info.mode = 0o755 if status.st_mode & 0o111 else 0o644
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(buffer.getvalue(), compresslevel=9, mtime=0)


def _walk(directory: Path) -> list[str]:
    """Every file and symlink under `directory`, sorted; symlinked directories are not entered."""
    found: list[str] = []
    for root, dirs, files in os.walk(directory):  # os.walk does not follow symlinks
        relative_root = os.path.relpath(root, directory)
        top = relative_root == "."
        entries = files + [d for d in dirs if os.path.islink(os.path.join(root, d))]
        dirs[:] = [d for d in dirs if not (top and d in SKIPPED_WHEN_PACKING)]
        for entry in entries:
            if not (top and entry in SKIPPED_WHEN_PACKING):
                found.append(entry if top else f"{relative_root}/{entry}")
    return sorted(found)


def unpack(data: bytes, name: str, version: str, destination: Path) -> list[str]:
    """Write the crate's files into `destination` (which must not exist); returns their paths.

    Raises CrateRejected, naming the member, for anything that would escape or is not a plain
    file, directory or inside-pointing symlink."""
    prefix = f"{name}-{version}/"
    what = f"the .crate of {name} {version}"
    destination.mkdir(parents=True)
    written: list[str] = []
    links: dict[str, str] = {}
    total = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for count, member in enumerate(tar, start=1):
                if count > MAX_MEMBERS:
                    raise CrateRejected(f"{what} has more than {MAX_MEMBERS} members")
                relative = _member_path(member.name, prefix, what)
                if relative is None:
                    continue  # the top directory itself
                if member.isdir():
                    continue  # directories are made as files need them
                if member.issym():
                    links[relative] = member.linkname  # checked once all are known
                    fork_files.write_symlink(destination, relative, member.linkname)
                    written.append(relative)
                    continue
                if not member.isfile():
                    raise CrateRejected(
                        f"{what} holds {member.name}, which is not a file, a directory or a "
                        "symlink (a hard link, a device or a FIFO); refusing it"
                    )
                total += member.size
                if total > MAX_UNPACKED_BYTES:
                    raise CrateRejected(
                        f"{what} unpacks to more than {MAX_UNPACKED_BYTES // 2**20} MiB"
                    )
                source = tar.extractfile(member)
                assert source is not None
                mode = 0o755 if member.mode & 0o111 else 0o644
                fork_files.write_bytes(destination, relative, source.read(), mode=mode)
                written.append(relative)
    except fork_files.UnsafePath as exc:
        raise CrateRejected(f"{what} could not be unpacked safely: {exc.message}") from None
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise CrateRejected(f"{what} is not a readable gzipped tarball: {exc}") from None
    for outside in fork_files.links_outside(links):  # through each other too, as the kernel
        raise CrateRejected(
            f"{what} holds a symlink {prefix}{outside} -> {links[outside]} that points outside "
            "the crate (or through too many links); refusing it"
        )
    if "Cargo.toml" not in written:
        raise CrateRejected(f"{what} has no {prefix}Cargo.toml")
    return written


def _member_path(member: str, prefix: str, what: str) -> str | None:
    """The member's path inside the crate, or None for the top directory; refuses escapes."""
    if member.startswith("/") or "\\" in member or "\0" in member:
        raise CrateRejected(f"{what} holds {member!r}, an absolute or malformed path; refusing it")
    normal = posixpath.normpath(member)
    if normal in (prefix.rstrip("/"), "."):
        return None
    parts = member.split("/")
    if ".." in parts or not normal.startswith(prefix):
        raise CrateRejected(
            f"{what} holds {member!r}, a path outside its directory {prefix}; refusing it",
            hint="the registry serves a malicious or broken crate: pick another candidate",
        )
    return normal.removeprefix(prefix)
