"""`flakebot resume` of a real run whose driver was SIGKILLed in the code step.

The driver (`flakebot run`, its own local Ray cluster) is killed once the coder's first model
reply is journalled, while that attempt builds. Ray's processes go with it. `flakebot status`
then says `killed`, and `flakebot resume RUN` finishes the run with a deployed tool. The journal
shows every step done once: one spec, one scouting, one test report per attempt, one deploy,
one manifest, and the model asked once per reply (the reply of the killed attempt is replayed).
A second `flakebot run` of the same job then reuses the verified result: no test, no model call.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from flakebot.journal import Journal
from flakebot.runstate import RunRecord
from messages import RunEvent, TestReport, ToolManifest
from tests.conftest import FLAKEBOT, Cli
from tests.registry_helpers import TODOHEX_FIX, make_todohex

pytestmark = pytest.mark.slow

SPEC = {
    "name": "hexdump",
    "summary": "Prints the bytes of stdin as hex.",
    "search_queries": ["hex dump tool"],
    "preferred_crates": ["todohex"],
    "acceptance": [
        {"name": "dumps", "stdin": "AB", "stdout": {"match": "contains", "value": "41 42"}}
    ],
}
SCRIPT = {"replies": [TODOHEX_FIX]}


def processes_of(home: Path) -> list[str]:
    """Processes (Ray's, cargo's) that run with this FLAKEBOT_HOME: pid and command line."""
    marker = f"FLAKEBOT_HOME={home}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    command = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
                    found.append(f"{entry.name} {command.decode(errors='replace')[:200]}")
            except OSError:
                continue
    return found


def working(home: Path) -> list[str]:
    """The processes of this home that could still touch the run (not Ray's idle agents)."""
    return [p for p in processes_of(home) if "Agent" not in p.split(" ", 2)[1]]


def wait_for(check: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout} s")


def test_a_driver_killed_in_the_code_step_resumes_to_a_deployed_tool(
    cli: Cli, home: Path, tmp_path: Path
) -> None:
    registry = tmp_path / "registry"
    make_todohex(registry, build_s=6)
    spec, script = tmp_path / "hexdump.yaml", tmp_path / "script.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    script.write_text(yaml.safe_dump(SCRIPT))
    env = {**os.environ, "FLAKEBOT_HOME": str(home), "FLAKEBOT_FORBID_REAL_MODELS": "1"}
    argv = [str(FLAKEBOT), "run", str(spec), "--model", f"scripted:{script}",
            "--registry", f"local:{registry}", "--candidates", "1", "--json"]  # fmt: skip
    with (tmp_path / "run.err").open("w") as errors:
        driver = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=errors, env=env)
    journal_path = home / "journal.sqlite"

    def proposed() -> bool:
        if not journal_path.exists():
            return False
        runs = Journal(journal_path).runs()
        return bool(runs) and bool(
            Journal(journal_path).messages_of(runs[0].run_id, "edit_proposal", "c1-todohex")
        )

    try:
        wait_for(proposed, 300, "the coder's first proposal was journalled")
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    journal = Journal(journal_path)
    (row,) = journal.runs()
    run_id = row.run_id
    wait_for(lambda: not RunRecord(home, run_id).in_progress(), 60, "the run's lock was released")
    try:  # Ray's dashboard and runtime-env agents may outlive their raylet: not the run's work
        wait_for(lambda: not working(home), 120, "the killed run's processes ended")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {processes_of(home)}") from None
    for process in processes_of(home):
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(process.split()[0]), signal.SIGKILL)
    status = cli("status", run_id, "--json")
    assert status.code == 0 and json.loads(status.stdout)["state"] == "killed", status.stdout
    before = [e.message for e in journal.entries(run_id)]
    assert not [m for m in before if isinstance(m, TestReport) and m.attempt == 1]  # mid-attempt

    resumed = cli("resume", run_id, "--json", timeout=900)
    assert resumed.code == 0, resumed.stderr[-3000:]
    manifest = ToolManifest.model_validate_json(resumed.stdout)
    assert manifest.run_id == run_id and manifest.provenance.crate_name == "todohex"
    assert Path(manifest.store_path).exists()
    assert any("41 42" in example.stdout for example in manifest.examples), manifest.examples
    assert journal.run(run_id).state == "finished"  # type: ignore[union-attr]

    messages = [e.message for e in journal.entries(run_id)]
    events = Counter(m.event for m in messages if isinstance(m, RunEvent))
    for once in ("spec_planned", "candidates_found", "tool_deployed", "manifest_written",
                 "run_resumed", "run_finished"):  # fmt: skip
        assert events[once] == 1, (once, events)
    reports = [m.attempt for m in messages if isinstance(m, TestReport)]
    assert sorted(reports) == [0, 1]  # the baseline is not tested again
    replies = journal.replies(run_id)
    assert [(r.asker, r.requests, r.replays) for r in replies] == [
        ("coder/code/c1-todohex/1", 1, 1)  # asked once, replayed once on resume
    ]
    sequence = [m.seq for m in messages if isinstance(m, RunEvent)]
    assert sequence == list(range(len(sequence)))

    # The same job again: the verified result is reused, nothing is tested or asked.
    again = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    second = ToolManifest.model_validate_json(again.stdout)
    assert second.run_id != run_id and any("41 42" in e.stdout for e in second.examples)
    events_2 = [m for e in journal.entries(second.run_id) if isinstance(m := e.message, RunEvent)]
    (reused,) = [e for e in events_2 if e.event == "result_reused"]
    assert run_id in reused.detail and "toolchain" in reused.detail
    (green,) = [m.commit for m in messages if isinstance(m, TestReport) and m.green]
    reports_2 = [e.message for e in journal.entries(second.run_id)]
    assert [m.commit for m in reports_2 if isinstance(m, TestReport)] == [green]  # not rerun
    assert journal.replies(second.run_id) == []  # the model was not asked
    assert second.provenance.changes == manifest.provenance.changes
    assert cli("clean", run_id).code == 0  # the second run holds the tool: it stays
    assert Path(second.store_path).exists()
    assert cli("clean", second.run_id).code == 0 and not Path(second.store_path).exists()
