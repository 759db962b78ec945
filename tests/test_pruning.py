"""Pruning a missing dev-dependency and the targets that use it, on hand-made crates."""

from __future__ import annotations

import tomllib
from pathlib import Path

from flakebot.crates.pruning import prune_dev_dependency, unresolved_dependency
from tests.registry_helpers import make_crate

MANIFEST = """
[dependencies]
serde = "1"

[dev-dependencies]
assert_cmd = "2"
tempfile = "3"

[target.'cfg(unix)'.dev-dependencies]
nix = "0.24"

[[test]]
name = "cli"
path = "tests/cli.rs"

[[example]]
name = "demo"
path = "examples/demo.rs"
"""


def crate(tmp_path: Path) -> Path:
    return make_crate(
        tmp_path,
        "tool",
        "1.0.0",
        extra_toml=MANIFEST,
        files={
            "src/lib.rs": "pub fn f() {}\n#[cfg(test)]\nmod tests { use tempfile; }\n",
            "src/main.rs": "fn main() {}\n",
            "tests/cli.rs": "use assert_cmd::Command;\n#[test]\nfn runs() {}\n",
            "tests/plain.rs": "#[test]\nfn plain() {}\n",
            "tests/helped.rs": "mod common;\n#[test]\nfn helped() {}\n",
            "tests/common/mod.rs": "pub fn cmd() { let _ = assert_cmd::Command::new(); }\n",
            "tests/suite/main.rs": "#[test]\nfn s() { let _ = nix::unistd::getpid(); }\n",
            "examples/demo.rs": "extern crate assert_cmd;\nfn main() {}\n",
            "benches/speed.rs": "fn main() {}\n",
        },
    )


def test_prunes_the_dev_dependency_and_what_uses_it(tmp_path: Path) -> None:
    root = crate(tmp_path)
    pruned = prune_dev_dependency(root, "assert_cmd", reason="not in the registry")
    assert [(item.what, item.name) for item in pruned] == [
        ("dev-dependency", "assert_cmd"),
        ("test", "tests/cli.rs"),
        ("test", "tests/helped.rs"),
        ("example", "examples/demo.rs"),
    ]
    assert not (root / "tests" / "cli.rs").exists() and not (root / "tests" / "helped.rs").exists()
    assert (root / "tests" / "plain.rs").exists() and (root / "benches" / "speed.rs").exists()
    manifest = tomllib.loads((root / "Cargo.toml").read_text())
    assert "assert_cmd" not in manifest["dev-dependencies"]
    assert "test" not in manifest and "example" not in manifest
    assert manifest["dependencies"] == {"serde": "1"}


def test_target_specific_dev_dependency_and_test_directory(tmp_path: Path) -> None:
    root = crate(tmp_path)
    pruned = prune_dev_dependency(root, "nix", reason="version mismatch")
    assert ("test", "tests/suite/main.rs") in [(item.what, item.name) for item in pruned]
    assert not (root / "tests" / "suite").exists()
    manifest = tomllib.loads((root / "Cargo.toml").read_text())
    assert manifest["target"]["cfg(unix)"]["dev-dependencies"] == {}


def test_unit_tests_in_src_are_switched_off(tmp_path: Path) -> None:
    root = crate(tmp_path)
    pruned = prune_dev_dependency(root, "tempfile", reason="not in the registry")
    assert ("test", "lib unit tests") in [(item.what, item.name) for item in pruned]
    assert tomllib.loads((root / "Cargo.toml").read_text())["lib"]["test"] is False
    assert (root / "src" / "lib.rs").exists()


def test_normal_dependencies_are_never_pruned(tmp_path: Path) -> None:
    root = crate(tmp_path)
    before = (root / "Cargo.toml").read_text()
    assert prune_dev_dependency(root, "serde", reason="missing") == []
    assert prune_dev_dependency(root, "not-a-dependency", reason="missing") == []
    assert (root / "Cargo.toml").read_text() == before


def test_cargo_resolution_errors_name_the_crate() -> None:
    missing = (
        "error: no matching package named `assert_cmd` found\n"
        "location searched: directory source `/usr/share/cargo/registry`\n"
    )
    assert unresolved_dependency(missing) == "assert_cmd"
    mismatch = (
        'error: failed to select a version for the requirement `nix = "^0.24.2"`\n'
        "candidate versions found which didn't match: 0.26.1\n"
    )
    assert unresolved_dependency(mismatch) == "nix"
    assert unresolved_dependency("error: could not compile `x`") is None


def test_doc_examples_that_use_a_pruned_crate_take_the_doctests_with_them(tmp_path: Path) -> None:
    root = make_crate(
        tmp_path,
        "hashy",
        "0.1.0",
        extra_toml='[dev-dependencies]\nhex-literal = "0.3"\n',
        files={
            "src/lib.rs": "//! ```\n//! use hex_literal::hex;\n//! ```\npub fn hash() {}\n",
        },
    )
    pruned = prune_dev_dependency(root, "hex-literal", reason="not in the registry")
    assert ("test", "lib doctests") in [(item.what, item.name) for item in pruned]
    assert ("test", "lib unit tests") not in [(item.what, item.name) for item in pruned]
    library = tomllib.loads((root / "Cargo.toml").read_text())["lib"]
    assert library["doctest"] is False and "test" not in library


def test_a_readme_included_as_the_crate_docs_counts_as_docs(tmp_path: Path) -> None:
    root = make_crate(
        tmp_path,
        "readmed",
        "0.1.0",
        extra_toml='[dev-dependencies]\nhex-literal = "0.3"\n',
        files={
            "src/lib.rs": '#![doc = include_str!("../README.md")]\npub fn f() {}\n',
            "README.md": "```rust\nuse hex_literal::hex;\n```\n",
        },
    )
    pruned = prune_dev_dependency(root, "hex-literal", reason="not in the registry")
    assert ("test", "lib doctests") in [(item.what, item.name) for item in pruned]


def test_the_pruner_reads_no_file_through_a_symlink_or_a_fifo(tmp_path: Path) -> None:
    """A test target linked to /dev/zero took the host's memory, one linked to a FIFO hung it."""
    import os

    from flakebot.crates.pruning import _targets_using

    crate = make_crate(tmp_path, "p", "1.0.0", files={"tests/ok.rs": "use helper;\n"})
    (crate / "tests" / "zero.rs").symlink_to("/dev/zero")
    os.mkfifo(crate / "tests" / "fifo.rs")
    (crate / "tests" / "mods.rs").write_text("mod inner;\n")
    (crate / "tests" / "inner.rs").symlink_to(tmp_path / "host.rs")
    (tmp_path / "host.rs").write_text("use helper;\n")
    assert _targets_using(crate, {"helper"}) == ["tests/ok.rs"]
