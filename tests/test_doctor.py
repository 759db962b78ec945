"""`flakebot doctor`: every check passes here, and a missing piece fails with its hint."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from flakebot.crates.mirror import MirrorServer
from flakebot.doctor import CHECK_NAMES, Doctor
from flakebot.settings import Settings
from tests.conftest import Cli
from tests.registry_helpers import make_crate


def _bin_dir_without(tmp_path: Path, missing: str) -> Path:
    """A PATH directory with the programs the doctor uses, except `missing`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for program in ("cargo", "rustc", "nix", "nix-store", "bwrap"):
        if program == missing:
            continue
        found = shutil.which(program, path=os.environ["PATH"] + ":/root/.cargo/bin")
        assert found, f"{program} should be installed by ./bootstrap.sh"
        (bin_dir / program).symlink_to(found)
    return bin_dir


def test_every_check_is_ok_here(cli: Cli) -> None:
    result = cli("doctor", "--json")
    report = result.json()
    assert isinstance(report, dict)
    statuses = {check["name"]: check["status"] for check in report["checks"]}
    assert statuses == dict.fromkeys(CHECK_NAMES, "ok"), report
    assert report["healthy"] is True and result.code == 0
    details = {check["name"]: check["detail"] for check in report["checks"]}
    assert "sandboxed connections fail" in details["bwrap"]
    assert "an offline flake build works" in details["nix"]
    assert "crates" in details["registry"]
    assert "started" in details["ray"] and "stopped" in details["ray"]


def test_missing_bwrap_fails_with_its_hint(tmp_path: Path, settings: Settings) -> None:
    bin_dir = _bin_dir_without(tmp_path, "bwrap")
    report = Doctor(settings, path=str(bin_dir)).run(["cargo", "nix", "bwrap"])
    by_name = {check.name: check for check in report.checks}
    assert by_name["cargo"].status == "ok" and by_name["nix"].status == "ok"
    assert by_name["bwrap"].status == "fail"
    assert by_name["bwrap"].detail == "bwrap is not installed or not on PATH"
    assert (
        by_name["bwrap"].hint is not None and "apt-get install bubblewrap" in by_name["bwrap"].hint
    )
    assert not report.healthy


def test_missing_cargo_fails_through_the_cli(tmp_path: Path, cli: Cli) -> None:
    bin_dir = _bin_dir_without(tmp_path, "cargo")
    empty_cargo_home = tmp_path / "cargo-home"
    result = cli(
        "doctor", "--json", "--check", "cargo", "--check", "rustc",
        env={"PATH": str(bin_dir), "CARGO_HOME": str(empty_cargo_home)},
    )  # fmt: skip
    assert result.code == 1
    report = result.json()
    assert isinstance(report, dict) and report["healthy"] is False
    cargo, rustc = report["checks"]
    assert (cargo["name"], cargo["status"]) == ("cargo", "fail")
    assert "rustup" in cargo["hint"]
    assert rustc["status"] == "ok"


def test_missing_clippy_is_only_a_warning(tmp_path: Path, settings: Settings) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # A cargo without the clippy subcommand, as on a toolchain without the component.
    fake_cargo = bin_dir / "cargo"
    fake_cargo.write_text(
        "#!/bin/sh\n"
        '[ "$1" = clippy ] && { echo "no such command: clippy" >&2; exit 101; }\n'
        'echo "cargo 1.95.0"\n'
    )
    fake_cargo.chmod(0o755)
    report = Doctor(settings, path=str(bin_dir)).run(["cargo", "clippy"])
    cargo, clippy = report.checks
    assert cargo.status == "ok"
    assert clippy.status == "warn" and not clippy.required
    assert clippy.hint == "rustup component add clippy"
    assert report.healthy


@pytest.mark.parametrize(
    ("registry", "expected"),
    [("local:/nonexistent/registry", "does not exist"), ("local:{tmp}", "holds no crates")],
)
def test_registry_problems_fail_with_hint(tmp_path: Path, registry: str, expected: str) -> None:
    settings = Settings.from_env(
        {
            "FLAKEBOT_HOME": str(tmp_path / "home"),
            "FLAKEBOT_REGISTRY": registry.format(tmp=tmp_path),
        }
    )
    (check,) = Doctor(settings).run(["registry"]).checks
    assert check.status == "fail" and expected in check.detail
    assert check.hint is not None and "librust-" in check.hint


def test_unwritable_home_fails(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    settings = Settings.from_env({"FLAKEBOT_HOME": str(blocker / "home")})
    (check,) = Doctor(settings).run(["home"]).checks
    assert check.status == "fail" and "not writable" in check.detail


def test_a_remote_registry_is_checked_by_its_sparse_index(tmp_path: Path) -> None:
    make_crate(tmp_path / "registry", "alpha", "1.0.0")
    with MirrorServer(tmp_path / "registry", tmp_path / "mirror") as server:
        settings = Settings.from_env(
            {
                "FLAKEBOT_HOME": str(tmp_path / "home"),
                "FLAKEBOT_REGISTRY": f"crates-io:{server.url}",
            }
        )
        (check,) = Doctor(settings).run(["registry"]).checks
        assert check.status == "ok" and f"{server.url}/index/" in check.detail
    (check,) = Doctor(settings).run(["registry"]).checks  # the server is gone
    assert check.status == "fail" and server.url in check.detail and check.hint
