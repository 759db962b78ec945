"""Ctrl-C on `flakebot run` (SIGINT, as a terminal sends it): the run stops at once with exit
code 130, and says what became of it: a killed run, which `flakebot resume` could go on with and
`flakebot clean` removes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import FLAKEBOT, Cli
from tests.registry_helpers import make_todohex
from tests.test_resume_run import SCRIPT, SPEC, processes_of

pytestmark = pytest.mark.slow


def test_ctrl_c_stops_the_run_and_names_what_to_do_with_it(
    home: Path, cli: Cli, tmp_path: Path
) -> None:
    registry = tmp_path / "registry"
    make_todohex(registry, build_s=120)  # its build takes long: the run is surely interrupted
    spec, script = tmp_path / "hexdump.yaml", tmp_path / "script.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    script.write_text(yaml.safe_dump(SCRIPT))
    run = subprocess.Popen(
        [str(FLAKEBOT), "run", str(spec), "--model", f"scripted:{script}",
         "--registry", f"local:{registry}", "--candidates", "1"],
        env={**os.environ, "FLAKEBOT_HOME": str(home), "FLAKEBOT_FORBID_REAL_MODELS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # as a terminal starts it: a test run in the background (CI) has SIGINT ignored, and
        # an ignored signal stays ignored across exec
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        assert run.stderr is not None
        run_id = None
        for line in run.stderr:  # run events, as JSON lines (stderr is not a terminal)
            if line.startswith("{"):
                event = json.loads(line)
                run_id = event["run_id"]
                if event["event"] == "candidate_started":  # its coder and tester are at work
                    break
        assert run_id is not None
        time.sleep(1.0)
        interrupted = time.monotonic()
        run.send_signal(signal.SIGINT)
        _, rest = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
        run.communicate()
    assert run.returncode == 130, rest
    assert time.monotonic() - interrupted < 30  # not the rest of the run
    said = [line for line in rest.splitlines() if not line.startswith("{")][-2:]
    assert said == [
        "error: interrupted",
        f"hint: run {run_id} stopped: `flakebot resume {run_id}` goes on with it, "
        f"`flakebot clean {run_id}` removes what it made",
    ], rest
    status = cli("status")
    assert f"{run_id}  killed" in status.stdout, status.stdout
    assert cli("clean", run_id).code == 0
    assert not (home / "runs" / run_id).exists()
    deadline = time.monotonic() + 30
    while processes_of(home) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert processes_of(home) == []
