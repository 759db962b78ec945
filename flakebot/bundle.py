"""Git bundles of a fork, to move it between nodes, written and read without the git CLI.

A v2 bundle is a header (`# v2 git bundle`, one `<oid> <ref>` line per ref, a blank line) followed
by a packfile. `write_bundle` packs a branch with pygit2's PackBuilder. libgit2 cannot index a pack
from Python, so `read_bundle` walks the pack itself: each entry is a zlib stream, whole or a delta
against an earlier entry (by offset) or another object (by id), and every object is written to the
repository's object database, after which the refs are set. `git clone x.bundle` reads the same
files, and the tests check that it does.
"""

from __future__ import annotations

import hashlib
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import pygit2

from flakebot.errors import BundleError

HEADER = b"# v2 git bundle\n"
_TYPES = {1: pygit2.enums.ObjectType.COMMIT, 2: pygit2.enums.ObjectType.TREE,
          3: pygit2.enums.ObjectType.BLOB, 4: pygit2.enums.ObjectType.TAG}  # fmt: skip
_OFS_DELTA, _REF_DELTA = 6, 7
# no file a fork commits is larger (flakebot.fork_sources.MAX_FILE_BYTES), and commits and trees
# are far smaller; the sum bounds what reading one bundle may hold in memory
MAX_OBJECT_BYTES = 64 * 1024 * 1024
MAX_INFLATED_BYTES = 1024 * 1024 * 1024


def write_bundle(repo: pygit2.Repository, refs: Sequence[str], path: Path) -> Path:
    """Write the objects reachable from `refs` (e.g. refs/heads/flakebot/r1) and the refs."""
    builder = pygit2.PackBuilder(repo)
    lines = []
    for ref in refs:
        commit = repo.references[ref].peel(pygit2.Commit)
        lines.append(f"{commit.id} {ref}\n".encode())
        for ancestor in repo.walk(commit.id):
            builder.add_recur(ancestor.tree_id)
            builder.add(ancestor.id)
    with tempfile.TemporaryDirectory() as scratch:
        builder.write(scratch)
        (pack,) = Path(scratch).glob("*.pack")
        data = pack.read_bytes()
    path.write_bytes(HEADER + b"".join(lines) + b"\n" + data)
    return path


def read_bundle(path: Path, repo: pygit2.Repository) -> dict[str, str]:
    """Add a bundle's objects to `repo` and create (or move) its refs; returns ref -> commit."""
    data = path.read_bytes()
    if not data.startswith(HEADER):
        raise BundleError(f"{path} is not a v2 git bundle")
    header_end = data.index(b"\n\n", len(HEADER))
    refs: dict[str, str] = {}
    for line in data[len(HEADER) : header_end].decode().splitlines():
        if line.startswith("-"):
            raise BundleError(f"{path} needs prerequisite commits; only complete bundles are read")
        oid, ref = line.split(" ", 1)
        refs[ref] = oid
    try:
        _unpack(data[header_end + 2 :], repo)
    except (IndexError, KeyError, ValueError) as exc:  # an offset or a delta out of its bounds
        raise BundleError(f"{path} holds a malformed pack ({type(exc).__name__})") from None
    for ref, oid in refs.items():
        if pygit2.Oid(hex=oid) not in repo.odb:
            raise BundleError(f"{path} names {ref} at {oid}, which it does not contain")
        repo.references.create(ref, pygit2.Oid(hex=oid), force=True)
    return refs


def _varint_size(data: bytes, position: int) -> tuple[int, int, int]:
    """An entry header: (type, size, position after it)."""
    byte = data[position]
    kind = (byte >> 4) & 7
    size = byte & 15
    shift = 4
    position += 1
    while byte & 0x80:
        byte = data[position]
        size |= (byte & 0x7F) << shift
        shift += 7
        position += 1
    return kind, size, position


def _inflate(data: bytes, position: int) -> tuple[bytes, int]:
    """One zlib stream of the pack, at most MAX_OBJECT_BYTES of it (a few compressed bytes can
    stand for gigabytes: a bundle is read, never trusted to be small inside)."""
    stream = zlib.decompressobj()
    try:
        out = stream.decompress(data[position:], MAX_OBJECT_BYTES + 1)
    except zlib.error as exc:
        raise BundleError(f"the bundle's pack has an unreadable entry: {exc}") from None
    if len(out) > MAX_OBJECT_BYTES:
        raise BundleError(f"the bundle holds an object of more than {MAX_OBJECT_BYTES} bytes")
    if not stream.eof:
        raise BundleError("the bundle's pack ends inside an entry")
    return out, len(data) - len(stream.unused_data)


def _apply_delta(base: bytes, delta: bytes) -> bytes:
    position = 0
    for _ in range(2):  # source size, then target size
        while delta[position] & 0x80:
            position += 1
        position += 1
    out = bytearray()
    while position < len(delta):
        op = delta[position]
        position += 1
        if op & 0x80:
            offset = size = 0
            for bit in range(4):
                if op & (1 << bit):
                    offset |= delta[position] << (8 * bit)
                    position += 1
            for bit in range(3):
                if op & (1 << (4 + bit)):
                    size |= delta[position] << (8 * bit)
                    position += 1
            out += base[offset : offset + (size or 0x10000)]
        elif op:
            out += delta[position : position + op]
            position += op
        else:
            raise BundleError("a delta in the bundle's pack has a reserved instruction")
        if len(out) > MAX_OBJECT_BYTES:
            raise BundleError(f"the bundle holds an object of more than {MAX_OBJECT_BYTES} bytes")
    return bytes(out)


def _unpack(pack: bytes, repo: pygit2.Repository) -> None:
    if pack[:4] != b"PACK" or int.from_bytes(pack[4:8], "big") not in (2, 3):
        raise BundleError("the bundle's pack has no PACK header")
    if hashlib.sha1(pack[:-20]).digest() != pack[-20:]:
        raise BundleError("the bundle's pack is corrupt (checksum mismatch)")
    count = int.from_bytes(pack[8:12], "big")
    position = 12
    by_offset: dict[int, tuple[int, bytes]] = {}
    pending: list[tuple[int, bytes, bytes]] = []  # (offset, base oid, delta) for REF_DELTA
    inflated = 0
    for _ in range(count):
        start = position
        kind, _, position = _varint_size(pack, position)
        if kind == _OFS_DELTA:
            byte = pack[position]
            distance = byte & 0x7F
            position += 1
            while byte & 0x80:
                byte = pack[position]
                distance = ((distance + 1) << 7) | (byte & 0x7F)
                position += 1
            delta, position = _inflate(pack, position)
            base_kind, base = by_offset[start - distance]
            by_offset[start] = (base_kind, _apply_delta(base, delta))
        elif kind == _REF_DELTA:
            base_id = pack[position : position + 20]
            delta, position = _inflate(pack, position + 20)
            inflated = _counted(inflated, len(delta))
            pending.append((start, base_id, delta))
            continue
        elif kind in _TYPES:
            body, position = _inflate(pack, position)
            by_offset[start] = (kind, body)
        else:
            raise BundleError(f"the bundle's pack has an entry of unknown type {kind}")
        inflated = _counted(inflated, len(by_offset[start][1]))
        repo.odb.write(_TYPES[by_offset[start][0]], by_offset[start][1])
    while pending:  # a REF_DELTA's base may itself arrive as a REF_DELTA
        waiting = [entry for entry in pending if pygit2.Oid(raw=entry[1]) not in repo.odb]
        if len(waiting) == len(pending):
            raise BundleError("the bundle's pack refers to objects it does not contain")
        for _, base_id, delta in pending:
            if pygit2.Oid(raw=base_id) in repo.odb:
                base_kind, base = repo.odb.read(pygit2.Oid(raw=base_id))[:2]
                made = _apply_delta(base, delta)
                inflated = _counted(inflated, len(made))
                repo.odb.write(base_kind, made)
        pending = waiting


def _counted(inflated: int, more: int) -> int:
    """What reading the bundle has inflated so far; BundleError past MAX_INFLATED_BYTES."""
    if inflated + more > MAX_INFLATED_BYTES:
        raise BundleError(f"the bundle's objects come to more than {MAX_INFLATED_BYTES} bytes")
    return inflated + more
