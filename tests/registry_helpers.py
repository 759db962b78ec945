"""Building small directory registries for tests: copies of Debian's crates and hand-made crates."""

from __future__ import annotations

import shutil
from pathlib import Path

import pygit2

DEBIAN_REGISTRY = Path("/usr/share/cargo/registry")


def copy_crates(registry: Path, *directories: str) -> Path:
    """Copy crates (directory names like `hexyl-0.8.0`) from Debian's registry into `registry`."""
    registry.mkdir(parents=True, exist_ok=True)
    for directory in directories:
        source = DEBIAN_REGISTRY / directory
        assert source.is_dir(), f"{source} is missing: ./bootstrap.sh installs it"
        shutil.copytree(source, registry / directory)
    return registry


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
