"""Building small directory registries for tests: copies of Debian's crates and hand-made crates."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import tarfile
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pygit2

from flakebot.crates.index_entry import entry_of, index_file_path

DEBIAN_REGISTRY = Path("/usr/share/cargo/registry")


def copy_crates(registry: Path, *directories: str) -> Path:
    """Copy crates (directory names like `hexyl-0.8.0`) from Debian's registry into `registry`."""
    registry.mkdir(parents=True, exist_ok=True)
    for directory in directories:
        source = DEBIAN_REGISTRY / directory
        assert source.is_dir(), f"{source} is missing: ./bootstrap.sh installs it"
        shutil.copytree(source, registry / directory)
    return registry


# A hex dump tool in a few lines: what the test crates print when they work.
QUICKHEX = """use std::io::Read;
fn main() {
    let mut input = Vec::new();
    std::io::stdin().read_to_end(&mut input).unwrap();
    let hex: Vec<String> = input.iter().map(|b| format!("{:02x}", b)).collect();
    println!("{}", hex.join(" "));
}
"""


def make_crate(
    registry: Path,
    name: str,
    version: str,
    *,
    extra_toml: str = "",
    description: str = "",
    files: dict[str, str] | None = None,
) -> Path:
    """Write a crate `name-version` with a [package] table, `extra_toml`, and the given files."""
    directory = registry / f"{name}-{version}"
    directory.mkdir(parents=True)
    (directory / "Cargo.toml").write_text(
        f'[package]\nname = "{name}"\nversion = "{version}"\n'
        f'description = "{description}"\nlicense = "MIT"\n{extra_toml}'
    )
    # A directory registry's crates carry a checksum file; an empty one checks no files.
    (directory / ".cargo-checksum.json").write_text('{"files": {}, "package": null}')
    for relative, text in (files or {"src/lib.rs": ""}).items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return directory


def tag_upstream(directory: Path, version: str) -> str:
    """Make `directory` a git repository with one commit of everything, tagged `v<version>` as
    an upstream release would be; returns the commit."""
    repo = pygit2.init_repository(str(directory), initial_head="main")
    repo.index.add_all()
    repo.index.write()
    author = pygit2.Signature("Upstream", "up@example.org")
    commit = repo.create_commit("HEAD", author, author, version, repo.index.write_tree(), [])
    repo.create_tag(f"v{version}", commit, pygit2.enums.ObjectType.COMMIT, author, version)
    return str(commit)


class StaticRegistry:
    """A crates.io-protocol registry made of static files, served on loopback by a plain file
    server: `index/config.json`, the sparse index, and `.crate` files at the `dl` template."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.server = ThreadingHTTPServer(
            ("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(root))
        )
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        (root / "index").mkdir(parents=True, exist_ok=True)
        (root / "index" / "config.json").write_text(
            json.dumps({"dl": f"{self.url}/crates/{{crate}}-{{version}}.crate", "api": self.url})
        )

    def publish(self, name: str, version: str, data: bytes, manifest: dict[str, object]) -> str:
        """Add a `.crate` and its index line; returns its checksum."""
        checksum = hashlib.sha256(data).hexdigest()
        (self.root / "crates").mkdir(exist_ok=True)
        (self.root / "crates" / f"{name}-{version}.crate").write_bytes(data)
        line = entry_of(manifest, checksum).model_dump(exclude_none=True)
        index = self.root / "index" / index_file_path(name)
        index.parent.mkdir(parents=True, exist_ok=True)
        with index.open("a") as handle:
            handle.write(json.dumps(line) + "\n")
        return checksum

    def __enter__(self) -> StaticRegistry:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def crate_tarball(name: str, version: str, files: dict[str, bytes]) -> bytes:
    """A `.crate` with these members (paths relative to `<name>-<version>/`, or absolute or
    escaping ones as they are when they start with `/` or `..`)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for relative, data in files.items():
            member = (
                relative if relative.startswith(("/", "..")) else f"{name}-{version}/{relative}"
            )
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(buffer.getvalue())


# The scripted coder's one reply that turns `todohex` into a hex dump tool.
TODOHEX_FIX = {
    "role": "coder",
    "attempt": 1,
    "json": {
        "summary": "print the bytes as hex",
        "edits": [{"op": "write", "path": "src/main.rs", "content": QUICKHEX}],
    },
}


def make_todohex(registry: Path, *, build_s: int) -> Path:
    """`todohex`: a crate that prints `todo` until TODOHEX_FIX, whose build script sleeps
    `build_s` seconds (time to kill something mid-build)."""
    sleeps = f"fn main() {{ std::thread::sleep(std::time::Duration::from_secs({build_s})); }}\n"
    return make_crate(
        registry,
        "todohex",
        "0.1.0",
        description="hex dump tool",
        files={"build.rs": sleeps, "src/main.rs": 'fn main() { println!("todo"); }\n'},
    )
