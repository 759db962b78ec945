"""Reading published manifests: targets as cargo finds them, and the dependencies a build needs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from flakebot.crates.cargo_toml import enabled_optional, read_crate, target_applies
from flakebot.errors import ManifestError
from tests.registry_helpers import DEBIAN_REGISTRY, make_crate


def test_hexyl_from_debian() -> None:
    hexyl = read_crate(DEBIAN_REGISTRY / "hexyl-0.8.0")
    assert (hexyl.name, hexyl.version) == ("hexyl", "0.8.0")
    assert hexyl.bin_names == ("hexyl",) and hexyl.has_lib
    assert hexyl.description == "A command-line hex viewer"
    assert "hexyl" in hexyl.readme
    assert {dep.name for dep in hexyl.build_dependencies} == {"ansi_term", "atty", "clap", "libc"}


def test_bat_default_features_turn_on_optional_dependencies() -> None:
    bat = read_crate(DEBIAN_REGISTRY / "bat-0.22.1")
    needed = {dep.name for dep in bat.build_dependencies}
    assert {"clap", "git2", "walkdir"} <= needed  # optional, on by default
    assert "assert_cmd" not in needed  # a dev-dependency
    assert "assert_cmd" in {dep.name for dep in bat.dependencies if dep.kind == "dev"}


def test_binary_discovery(tmp_path: Path) -> None:
    crate = make_crate(
        tmp_path,
        "tool",
        "1.0.0",
        extra_toml='[[bin]]\nname = "named"\npath = "src/tools/named.rs"\n',
        files={
            "src/main.rs": "fn main() {}",
            "src/bin/extra.rs": "fn main() {}",
            "src/bin/multi/main.rs": "fn main() {}",
            "src/bin/notes.txt": "",
            "src/tools/named.rs": "fn main() {}",
        },
    )
    record = read_crate(crate)
    assert record.bin_names == ("named", "tool", "extra", "multi")
    assert not record.has_lib


def test_binaries_are_not_looked_for_through_symlinks(tmp_path: Path) -> None:
    """A crate (or a fork a build has written to) may point src at a host directory: the names
    of the files there must not become binaries (they reach the prompt and the manifest)."""
    host = tmp_path / "host"
    (host / "bin").mkdir(parents=True)
    (host / "main.rs").write_text("fn main() {}")
    (host / "lib.rs").write_text("")
    (host / "bin" / "secret-name.rs").write_text("fn main() {}")
    crate = make_crate(tmp_path, "tool", "1.0.0", files={"README.md": ""})
    (crate / "src").symlink_to(host)
    record = read_crate(crate)
    assert record.bin_names == () and not record.has_lib
    other = make_crate(tmp_path / "b", "other", "1.0.0", files={"src/lib.rs": ""})
    (other / "src" / "bin").symlink_to(host / "bin")
    (other / "src" / "main.rs").symlink_to(host / "main.rs")
    assert read_crate(other).bin_names == ()
    assert read_crate(other).has_lib


def test_a_binary_name_with_a_final_newline_is_not_a_name(tmp_path: Path) -> None:
    crate = make_crate(
        tmp_path, "tool", "1.0.0", extra_toml='[[bin]]\nname = "evil\\n"\npath = "src/e.rs"\n'
    )
    assert read_crate(crate).bin_names == ()


def test_autobins_false_keeps_only_explicit_bins(tmp_path: Path) -> None:
    crate = make_crate(
        tmp_path,
        "tool",
        "1.0.0",
        extra_toml='autobins = false\n[lib]\npath = "src/lib.rs"\n',
        files={"src/main.rs": "fn main() {}", "src/lib.rs": ""},
    )
    record = read_crate(crate)
    assert record.bin_names == () and record.has_lib


def test_renamed_target_specific_and_optional_dependencies(tmp_path: Path) -> None:
    crate = make_crate(
        tmp_path,
        "deps",
        "0.1.0",
        extra_toml=(
            '[features]\ndefault = ["fast"]\nfast = ["dep:simd", "extra?/x", "json/preserve"]\n'
            '[dependencies.simd]\nversion = "1"\noptional = true\n'
            '[dependencies.extra]\nversion = "1"\noptional = true\n'
            '[dependencies.json]\nversion = "1"\noptional = true\npackage = "serde_json"\n'
            '[dependencies.local]\npath = "../local"\n'
            "[target.'cfg(windows)'.dependencies.winapi]\nversion = \"0.3\"\n"
            "[target.'cfg(unix)'.dependencies.libc]\nversion = \"0.2\"\n"
            '[dev-dependencies]\nassert_cmd = "2"\n'
        ),
    )
    needed = {dep.name: dep for dep in read_crate(crate).build_dependencies}
    assert set(needed) == {"simd", "serde_json", "libc"}
    assert needed["serde_json"].feature_key == "json"


def test_enabled_optional_follows_features_transitively() -> None:
    features = {"default": ("a",), "a": ("b", "dep:x"), "b": ("y/feature", "z?/feature")}
    assert enabled_optional(features, ["default"]) >= {"x", "y"}
    assert "z" not in enabled_optional(features, ["default"])
    assert enabled_optional(features, []) == set()


@pytest.mark.parametrize(
    ("target", "applies"),
    [
        ("cfg(unix)", True),
        ("cfg(windows)", False),
        ('cfg(target_os = "linux")', True),
        ('cfg(target_os = "macos")', False),
        ('cfg(all(unix, not(target_os = "macos")))', True),
        ('cfg(any(windows, target_os = "redox"))', False),
        ('cfg(not(target_env = "msvc"))', True),
        ("wasm32-unknown-unknown", False),
    ],
)
def test_target_cfg(target: str, applies: bool) -> None:
    assert target_applies(target) is applies


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[package\nname=", "not valid TOML"),
        ("[workspace]\nmembers = []\n", "no [package]"),
        ('[package]\nname = "x"\n', "lacks a string package.name and package.version"),
    ],
)
def test_unusable_manifests_are_errors(tmp_path: Path, text: str, problem: str) -> None:
    (tmp_path / "Cargo.toml").write_text(text)
    with pytest.raises(ManifestError, match=re.escape(problem)):
        read_crate(tmp_path)


@pytest.mark.parametrize(
    ("directory", "bins", "tools"),
    [
        ("hexyl-0.8.0", ("hexyl",), ("hexyl",)),  # a library and its tool, named after it
        ("bat-0.22.1", ("bat",), ("bat",)),
        ("clap-4.0.32", ("stdio-fixture",), ()),  # a test fixture beside a library
        ("os_pipe-1.1.1", ("cat", "cat_both", "swap"), ()),  # test helpers beside a library
        ("cc-1.0.73", ("gcc-shim",), ()),
        ("sha2-0.10.5", (), ()),  # a library only
    ],
)
def test_tools_are_told_apart_from_fixtures_and_helpers(
    directory: str, bins: tuple[str, ...], tools: tuple[str, ...]
) -> None:
    record = read_crate(Path("/usr/share/cargo/registry") / directory)
    assert record.bin_names == bins and record.tool_bins == tools
