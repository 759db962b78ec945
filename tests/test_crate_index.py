"""The local registry index: incremental refresh, skipped crates, versions, and resolution."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from flakebot.crates.index import CrateIndex, index_path, query_terms
from flakebot.errors import ConfigError
from tests.registry_helpers import copy_crates, make_crate


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    return copy_crates(tmp_path / "registry", "hexyl-0.8.0", "sha2-0.10.5", "base64-0.13.0")


def _index(tmp_path: Path, registry: Path) -> CrateIndex:
    return CrateIndex(registry, index_path(tmp_path / "home", registry))


def test_refresh_is_incremental(tmp_path: Path, registry: Path) -> None:
    index = _index(tmp_path, registry)
    first = index.refresh()
    assert (first.crates, first.added, first.updated, first.removed) == (3, 3, 0, 0)
    again = index.refresh()
    assert not again.changed and again.crates == 3

    manifest = registry / "base64-0.13.0" / "Cargo.toml"
    manifest.write_text(manifest.read_text().replace("encodes and decodes", "turns bytes into"))
    os.utime(manifest, ns=(0, manifest.stat().st_mtime_ns + 1_000_000))
    updated = index.refresh()
    assert (updated.added, updated.updated, updated.removed) == (0, 1, 0)
    assert index.search("turns bytes")[0].crate.name == "base64"

    (registry / "sha2-0.10.5" / "Cargo.toml").unlink()  # no longer a crate
    removed = index.refresh()
    assert removed.removed == 1 and removed.crates == 2
    assert [hit.crate.name for hit in index.search("sha256 hash")] == []


def test_index_survives_reopening(tmp_path: Path, registry: Path) -> None:
    _index(tmp_path, registry).refresh()
    reopened = _index(tmp_path, registry)
    assert reopened.count() == 3
    assert not reopened.refresh().changed


def test_corrupt_manifest_is_skipped_counted_and_retried(tmp_path: Path, registry: Path) -> None:
    broken = registry / "broken-1.0.0"
    broken.mkdir()
    (broken / "Cargo.toml").write_text("[package\nname = ")
    index = _index(tmp_path, registry)
    stats = index.refresh()
    assert stats.crates == 3
    assert [directory for directory, _ in stats.skipped] == ["broken-1.0.0"]
    assert "not valid TOML" in stats.skipped[0][1]
    assert not index.refresh().changed  # not re-read while unchanged
    (broken / "Cargo.toml").write_text('[package]\nname = "broken"\nversion = "1.0.1"\n')
    fixed = index.refresh()
    assert fixed.added == 1 and fixed.skipped == [] and fixed.crates == 4


def test_several_versions_newest_wins(tmp_path: Path) -> None:
    registry = copy_crates(tmp_path / "registry", "clap-2.34.0", "clap-3.2.23", "clap-4.0.32")
    index = _index(tmp_path, registry)
    index.refresh()
    (hit,) = index.search("command line argument parser", limit=5)
    assert (hit.crate.name, hit.crate.version) == ("clap", "4.0.32")
    assert [crate.version for crate in index.versions("clap")] == ["4.0.32", "3.2.23", "2.34.0"]


def test_bins_only(tmp_path: Path, registry: Path) -> None:
    index = _index(tmp_path, registry)
    index.refresh()
    assert [hit.crate.name for hit in index.search("hex viewer encode hash", bins_only=True)] == [
        "hexyl"
    ]


def test_resolution_follows_requirements_and_features(tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    make_crate(registry, "leaf", "1.4.0")
    make_crate(registry, "ok", "0.1.0", extra_toml='[dependencies]\nleaf = "1.2"\n')
    make_crate(registry, "too-new", "0.1.0", extra_toml='[dependencies]\nleaf = "2"\n')
    make_crate(registry, "absent", "0.1.0", extra_toml='[dependencies]\nghost = "1"\n')
    make_crate(registry, "deep", "0.1.0", extra_toml='[dependencies]\nabsent = "0.1"\n')
    make_crate(
        registry,
        "needs-ghost-by-default",
        "1.0.0",
        extra_toml='[features]\ndefault = ["std"]\nstd = ["ghost"]\n'
        '[dependencies.ghost]\nversion = "1"\noptional = true\n',
    )
    make_crate(
        registry,
        "avoids-ghost",
        "0.1.0",
        extra_toml=(
            '[dependencies.needs-ghost-by-default]\nversion = "1"\ndefault-features = false\n'
        ),
    )
    make_crate(
        registry,
        "windows-only-dep",
        "0.1.0",
        extra_toml="[target.'cfg(windows)'.dependencies]\nghost = \"1\"\n",
    )
    index = _index(tmp_path, registry)
    index.refresh()
    expected = {
        "leaf": True,
        "ok": True,
        "too-new": False,
        "absent": False,
        "deep": False,
        "needs-ghost-by-default": False,
        "avoids-ghost": True,
        "windows-only-dep": True,
    }
    resolves = {name: index.versions(name)[0].resolves for name in expected}
    assert resolves == expected


def test_debian_csv_resolves_through_default_features_off(tmp_path: Path) -> None:
    """csv needs bstr, whose regex-automata edge turns its `std` (and utf8-ranges) off."""
    index = CrateIndex(Path("/usr/share/cargo/registry"), tmp_path / "debian.sqlite")
    index.refresh()
    (csv,) = index.versions("csv")
    assert csv.resolves
    (automata,) = index.versions("regex-automata")
    assert not automata.resolves  # its own default build needs utf8-ranges, which Debian lacks


def test_missing_directory_and_empty_query(tmp_path: Path, registry: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        _index(tmp_path, tmp_path / "nowhere")
    index = _index(tmp_path, registry)
    with pytest.raises(ConfigError, match="no words"):
        index.search("  -- ")


def test_query_terms_split_letters_from_digits() -> None:
    assert query_terms("SHA256 hash") == ["sha256", "sha", "256", "hash"]
    assert query_terms("base64-encode") == ["base64", "base", "64", "encode"]
    assert query_terms('"quoted" OR x') == ["quoted", "or", "x"]
