"""`.crate` files: packed reproducibly from a directory registry, unpacked without escaping."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from flakebot.crates.crate_file import CrateRejected, pack, unpack
from tests.registry_helpers import make_crate


def tarball(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return gzip.compress(buffer.getvalue())


def file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


MANIFEST = file("evil-1.0.0/Cargo.toml", b'[package]\nname = "evil"\nversion = "1.0.0"\n')


def test_pack_is_reproducible_and_unpacks_to_the_same_files(tmp_path: Path) -> None:
    crate = make_crate(
        tmp_path / "registry",
        "tidy",
        "0.2.0",
        files={"src/lib.rs": "pub fn f() {}\n", "src/bin/tidy.rs": "fn main() {}\n"},
    )
    (crate / "run.sh").write_text("#!/bin/sh\n")
    (crate / "run.sh").chmod(0o755)
    (crate / "LICENSE").symlink_to("/usr/share/common-licenses/MIT")  # out of the crate: left out
    first = pack(crate, "tidy", "0.2.0")
    (crate / "src/lib.rs").touch()  # a new mtime changes nothing
    assert pack(crate, "tidy", "0.2.0") == first
    files = unpack(first, "tidy", "0.2.0", tmp_path / "out")
    assert sorted(files) == ["Cargo.toml", "run.sh", "src/bin/tidy.rs", "src/lib.rs"]
    assert (tmp_path / "out/src/lib.rs").read_text() == "pub fn f() {}\n"
    assert (tmp_path / "out/run.sh").stat().st_mode & 0o111
    with tarfile.open(fileobj=io.BytesIO(first)) as tar:
        assert all(name.startswith("tidy-0.2.0/") for name in tar.getnames())
    assert (
        hashlib.sha256(first).hexdigest()
        == hashlib.sha256(pack(crate, "tidy", "0.2.0")).hexdigest()
    )


@pytest.mark.parametrize(
    ("members", "named"),
    [
        ([MANIFEST, file("evil-1.0.0/../../escaped")], "a path outside its directory"),
        ([MANIFEST, file("/tmp/flakebot-absolute-escape")], "absolute"),
        ([MANIFEST, file("other-2.0.0/src/lib.rs")], "a path outside its directory"),
        ([MANIFEST, link("evil-1.0.0/out", "../../../etc")], "points outside the crate"),
        ([MANIFEST, link("evil-1.0.0/abs", "/etc/passwd")], "points outside the crate"),
        ([MANIFEST, link("evil-1.0.0/hard", "/etc/passwd", tarfile.LNKTYPE)], "hard link"),
        (
            [MANIFEST, link("evil-1.0.0/dir", "src"), file("evil-1.0.0/dir/x.rs")],
            "could not be unpacked safely",
        ),
    ],
)
def test_unpack_refuses_members_that_escape_or_are_not_files(
    tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], named: str
) -> None:
    destination = tmp_path / "work" / "crate"
    with pytest.raises(CrateRejected) as caught:
        unpack(tarball(*members), "evil", "1.0.0", destination)
    assert named in caught.value.message and "evil 1.0.0" in caught.value.message
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "work" / "escaped").exists()
    assert not Path("/tmp/flakebot-absolute-escape").exists()


def test_unpack_refuses_a_fifo_and_garbage(tmp_path: Path) -> None:
    fifo = tarfile.TarInfo("evil-1.0.0/fifo")
    fifo.type = tarfile.FIFOTYPE
    with pytest.raises(CrateRejected, match="not a file, a directory or a symlink"):
        unpack(tarball(MANIFEST, (fifo, None)), "evil", "1.0.0", tmp_path / "a")
    with pytest.raises(CrateRejected, match="not a readable gzipped tarball"):
        unpack(b"<html>not a crate</html>", "evil", "1.0.0", tmp_path / "b")
    with pytest.raises(CrateRejected, match=r"has no evil-1\.0\.0/Cargo\.toml"):
        unpack(tarball(file("evil-1.0.0/src/lib.rs")), "evil", "1.0.0", tmp_path / "c")


def test_an_inside_symlink_is_kept_as_a_link(tmp_path: Path) -> None:
    data = tarball(MANIFEST, file("evil-1.0.0/src/lib.rs"), link("evil-1.0.0/lib.rs", "src/lib.rs"))
    unpack(data, "evil", "1.0.0", tmp_path / "ok")
    assert (tmp_path / "ok/lib.rs").is_symlink()
    assert (tmp_path / "ok/lib.rs").readlink() == Path("src/lib.rs")


def test_a_link_that_escapes_through_another_link_is_refused(tmp_path: Path) -> None:
    """`l -> ../../..` stays inside, and `zz.rs -> ../a/b/c/l/../../../../dev/zero` normalises to
    `dev/zero`; but its `..` apply to where `l` leads: it reaches /dev/zero (read by the pruner
    on the host, it took the host's memory)."""
    data = tarball(
        MANIFEST,
        link("evil-1.0.0/a/b/c/l", "../../.."),
        link("evil-1.0.0/tests/zz.rs", "../a/b/c/l/../../../../dev/zero"),
    )
    with pytest.raises(CrateRejected, match=r"tests/zz\.rs -> .* points outside the crate"):
        unpack(data, "evil", "1.0.0", tmp_path / "chain")
    loop = tarball(MANIFEST, link("evil-1.0.0/x", "y"), link("evil-1.0.0/y", "x"))
    with pytest.raises(CrateRejected, match="too many links"):
        unpack(loop, "evil", "1.0.0", tmp_path / "loop")
    fine = tarball(
        MANIFEST,
        file("evil-1.0.0/src/lib.rs"),
        link("evil-1.0.0/s", "src"),
        link("evil-1.0.0/docs/lib.rs", "../s/../src/lib.rs"),
    )
    unpack(fine, "evil", "1.0.0", tmp_path / "fine")
    assert (tmp_path / "fine/docs/lib.rs").read_text() == "x"


def test_links_are_judged_whatever_their_paths_spelling() -> None:
    from flakebot.fork_files import links_outside

    assert links_outside({"./l": "../x"}) == ["./l"]
    assert links_outside({"a/./l": "../../x"}) == ["a/./l"]
    assert links_outside({"a//b/l": "../.."}) == []
