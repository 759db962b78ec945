"""Nix: offline flake builds, and deleting our own store paths by name and nothing else."""

from __future__ import annotations

from pathlib import Path

from flakebot.nix import BASE_SANDBOX_PATHS, Nix, current_system, offline_options

FLAKE = """{
  outputs = { self }: {
    packages.SYSTEM.default = derivation {
      name = "flakebot-test-NAME";
      system = "SYSTEM";
      builder = "/bin/sh";
      args = [ "-c" "echo NAME > $out" ];
    };
  };
}
"""


def _flake(tmp_path: Path, name: str) -> str:
    directory = tmp_path / name
    directory.mkdir()
    text = FLAKE.replace("SYSTEM", current_system()).replace("NAME", name)
    (directory / "flake.nix").write_text(text)
    return f"path:{directory}"


def test_offline_options_disable_substituters_and_bind_host_paths() -> None:
    options = offline_options(["/bin/sh", "/usr"])
    assert options[options.index("substituters") + 1] == ""
    assert options[options.index("build-users-group") + 1] == ""
    assert options[-1] == "/bin/sh /usr"
    assert "extra-sandbox-paths" not in offline_options(())


def test_delete_removes_only_the_paths_named(tmp_path: Path) -> None:
    nix = Nix()
    unique = tmp_path.name.replace("_", "-")[-20:]
    first_ref, second_ref = _flake(tmp_path, f"a-{unique}"), _flake(tmp_path, f"b-{unique}")
    sources = [nix.source_path(first_ref), nix.source_path(second_ref)]
    first = nix.build(first_ref, timeout=300)
    second = nix.build(second_ref, timeout=300)
    first_out, second_out = first.out_paths["out"], second.out_paths["out"]
    assert Path(first_out).read_text().strip() == f"a-{unique}"
    try:
        deleted = nix.delete([first_out, first.drv_path])
        assert deleted == [first_out, first.drv_path]
        assert not Path(first_out).exists() and not Path(first.drv_path).exists()
        assert Path(second_out).exists() and Path(second.drv_path).exists()
        assert nix.delete([first_out]) == []  # already gone: nothing to do
    finally:
        nix.delete([second_out, second.drv_path, *sources])
    assert not Path(second_out).exists()
    assert not any(Path(source).exists() for source in sources)


BUILDER_WRITES = """{
  outputs = { self }: {
    packages.SYSTEM.default = derivation {
      name = "flakebot-test-builder-writes";
      system = "SYSTEM";
      builder = "/bin/sh";
      args = [ "-c" ''
        for target in TARGETS; do
          (echo escaped > "$target" && echo "wrote $target") >> $out 2>&1 || true
        done
        echo done >> $out
      '' ];
    };
  };
}
"""


def test_a_builder_cannot_write_the_host_paths_bound_into_its_sandbox(tmp_path: Path) -> None:
    """Nix binds extra-sandbox-paths writable for a root builder; Flakebot's build makes them
    read-only, so a build script in a fork cannot change /usr or the Rust toolchain."""
    toolchain = tmp_path / "toolchain"
    (toolchain / "bin").mkdir(parents=True)
    targets = [f"/usr/local/flakebot-escaped-{tmp_path.name}", str(toolchain / "bin" / "cargo")]
    directory = tmp_path / "flake"
    directory.mkdir()
    text = BUILDER_WRITES.replace("SYSTEM", current_system()).replace("TARGETS", " ".join(targets))
    (directory / "flake.nix").write_text(text)
    nix = Nix()
    built = nix.build(f"path:{directory}", sandbox_paths=[*BASE_SANDBOX_PATHS, str(toolchain)])
    out = built.out_paths["out"]
    try:
        log = Path(out).read_text()
        assert log.rstrip().endswith("done") and "wrote" not in log, log
        assert not Path(targets[0]).exists() and not Path(targets[1]).exists()
    finally:
        nix.delete([out, built.drv_path])
