"""The `flakebot` console script: version, schema, and readable errors instead of tracebacks."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from flakebot.cli import main, system
from tests.conftest import Cli
from tests.registry_helpers import make_crate
from tests.samples import SAMPLES


def test_version(cli: Cli) -> None:
    result = cli("--version")
    assert result.code == 0
    assert result.stdout.startswith("flakebot ") and "protocol v1" in result.stdout


def test_schema_prints_the_union(cli: Cli) -> None:
    result = cli("schema")
    assert result.code == 0
    schema = result.json()
    assert set(schema["discriminator"]["mapping"]) == set(SAMPLES)
    assert "ToolSpec" in schema["$defs"] and "AcceptanceCase" in schema["$defs"]


def test_bad_setting_is_a_message_not_a_traceback(cli: Cli) -> None:
    result = cli("doctor", env={"FLAKEBOT_REGISTRY": "pypi"})
    assert result.code == 2
    assert "error: unknown registry 'pypi'" in result.stderr
    assert "hint: use local, local:DIR, crates-io or crates-io:URL" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_doctor_check_is_named(cli: Cli) -> None:
    result = cli("doctor", "--check", "gpu")
    assert result.code == 2
    assert "unknown check 'gpu'" in result.stderr and "choose from python" in result.stderr


def test_no_command_prints_help(cli: Cli) -> None:
    result = cli()
    assert "doctor" in result.stdout + result.stderr
    assert "schema" in result.stdout + result.stderr


def test_run_free_text_without_a_model_stops_before_starting_ray(cli: Cli) -> None:
    result = cli("run", "a hex viewer", env={"FLAKEBOT_MODEL": ""})
    assert result.code == 2
    assert "a free-text request needs a model" in result.stderr and "Traceback" not in result.stderr
    assert "Ray" not in result.stderr  # refused before any cluster started


def test_run_with_a_spec_file_that_is_not_there_says_so(cli: Cli, tmp_path: Path) -> None:
    missing = tmp_path / "hexveiw.yaml"  # a typo: not a description for the model to plan
    result = cli("run", str(missing), "--model", "scripted:examples/hexview-script.yaml")
    assert result.code == 2
    assert f"there is no spec file '{missing}'" in result.stderr
    assert "Ray" not in result.stderr  # refused before any cluster started


def test_run_with_a_bad_spec_file_names_the_field(cli: Cli, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: Bad Name\nsummary: s\nsearch_queries: [x]\n")
    result = cli("run", str(spec))
    assert result.code == 2 and "name: String should match pattern" in result.stderr


def test_a_binary_spec_file_is_named_not_a_traceback(cli: Cli, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_bytes(bytes(range(256)) * 4)
    result = cli("run", str(spec))
    assert result.code == 2 and "is not UTF-8 text" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_deeply_nested_spec_file_is_named_not_a_traceback(cli: Cli, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("[" * 100_000)
    result = cli("run", str(spec))
    assert result.code == 2 and "Traceback" not in result.stderr
    assert "nested too deeply" in result.stderr or "is not valid YAML" in result.stderr


def test_a_request_that_is_not_utf8_is_named_not_a_traceback(cli: Cli) -> None:
    result = cli("run", os.fsdecode(b"a hex viewer \xff\xfe"), env={"FLAKEBOT_MODEL": ""})
    assert result.code == 2 and "Traceback" not in result.stderr
    assert "neither a spec file nor UTF-8 text" in result.stderr


def test_a_missing_program_stops_a_run_before_ray_with_the_fix(cli: Cli, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for program in ("bwrap", "prlimit"):  # present: only nix is missing
        (bin_dir / program).symlink_to(shutil.which(program) or f"/usr/bin/{program}")
    started = time.monotonic()
    spec = Path(__file__).resolve().parent.parent / "examples" / "hexview.yaml"
    result = cli("run", str(spec), env={"PATH": str(bin_dir)})
    assert result.code == 4, result.stderr
    assert "error: this machine is not ready for a run: nix:" in result.stderr
    assert "apt-get install nix-bin" in result.stderr and "flakebot doctor" in result.stderr
    assert "Traceback" not in result.stderr and "Ray" not in result.stderr
    assert time.monotonic() - started < 30


def test_an_internal_error_is_one_line_and_a_crash_log(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An exception Flakebot does not expect (a bug) is one line, a hint and a crash log."""

    def broken() -> None:
        raise RuntimeError("a planted crash\nwith a second line")

    monkeypatch.setattr(system, "json_schema", broken)
    monkeypatch.setenv("FLAKEBOT_HOME", str(home))
    for argv, shows_traceback in (
        (["flakebot", "schema"], False),
        (["flakebot", "--debug", "schema"], True),
    ):
        monkeypatch.setattr(sys, "argv", argv)
        umask = os.umask(0o022)
        try:
            with pytest.raises(SystemExit) as exited:
                main()
        finally:
            os.umask(umask)  # main() makes this process's files private
        assert exited.value.code == 70
        stderr = capsys.readouterr().err
        assert stderr.startswith("error: internal error: RuntimeError: a planted crash\n")
        assert ("Traceback" in stderr) is shows_traceback
        if not shows_traceback:
            hint = stderr.strip().splitlines()[-1]
            assert hint.startswith("hint: this is a bug in Flakebot; the traceback is in ")
            log = Path(hint.split("the traceback is in ", 1)[1].split(" (--debug", 1)[0])
            assert log.is_relative_to(home) and "RuntimeError: a planted crash" in log.read_text()


def test_a_failed_run_exits_3_with_its_step_reason_and_journal(cli: Cli, tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    make_crate(registry, "unrelated", "0.1.0", description="nothing to do with the request")
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: zzqx\nsummary: s\nsearch_queries: [zzqx quux]\n")
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "max_backtracks: 1\nsteps:\n"
        + "".join(f"  - step: {step}\n" for step in ("plan", "scout", "code", "deploy", "instruct"))
    )
    result = cli("run", str(spec), "--registry", f"local:{registry}", "--plan", str(plan))
    assert result.code == 3, result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "failed in the plan step" in error[0]
    assert "hint: the run's history is in " in result.stderr and "journal.jsonl" in result.stderr
    assert "Traceback" not in result.stderr
