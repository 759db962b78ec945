"""The durable journal: concurrent writers lose nothing, and `flakebot status` tells running,
finished, failed and killed runs apart from the journal and the runs' locks."""

from __future__ import annotations

import json
import multiprocessing
import threading
from datetime import UTC, datetime
from pathlib import Path

from flakebot.journal import Journal
from flakebot.recorder import Recorder
from flakebot.runstate import RunRecord
from messages import CrateCandidate, RegistryRef, RunEvent, ScoreParts, ToolSpec
from tests.conftest import Cli

DEBIAN = RegistryRef(source="local", location="/usr/share/cargo/registry")


def event(run_id: str, seq: int, name: str, detail: str = "", step: str = "code") -> RunEvent:
    return RunEvent(
        run_id=run_id,
        seq=seq,
        at=datetime.now(UTC),
        step=step,  # type: ignore[arg-type]
        event=name,
        detail=detail,
    )


def write_many(path: Path, run_id: str, count: int) -> None:
    journal = Journal(path)
    for seq in range(count):
        journal.append(run_id, event(run_id, seq, "progress_reported", f"{run_id} {seq}"))
        journal.append("shared", event("shared", seq, "progress_reported", f"{run_id} {seq}"))
    journal.close()


def test_runs_writing_at_once_from_processes_and_threads_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "home" / "journal.sqlite"
    Journal(path).close()
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=write_many, args=(path, f"proc{n}", 150)) for n in range(2)]
    threads = [
        threading.Thread(target=write_many, args=(path, f"thread{n}", 150)) for n in range(2)
    ]
    for worker in [*processes, *threads]:
        worker.start()
    for process in processes:
        process.join(timeout=120)
        assert process.exitcode == 0
    for thread in threads:
        thread.join(timeout=120)
    journal = Journal(path)
    for run_id in ("proc0", "proc1", "thread0", "thread1"):
        entries = journal.entries(run_id)
        assert [entry.seq for entry in entries] == list(range(150))
        details = [entry.message.detail for entry in entries]  # type: ignore[union-attr]
        assert details == [f"{run_id} {n}" for n in range(150)]
    shared = journal.entries("shared")
    assert [entry.seq for entry in shared] == list(range(600))  # 4 writers x 150, no gaps
    assert len({entry.message.detail for entry in shared}) == 600  # type: ignore[union-attr]
    assert path.stat().st_mode & 0o777 == 0o600


def record_run(journal: Journal, home: Path, run_id: str, ending: str | None) -> None:
    recorder = Recorder(
        run_id, RunRecord(home, run_id).directory / "journal.jsonl", journal=journal
    )
    recorder.record(
        ToolSpec(run_id=run_id, name="hexview", summary="a hex viewer", search_queries=["hex"])
    )
    recorder.event("plan", "spec_planned", "hexview")
    recorder.record(
        CrateCandidate(
            run_id=run_id,
            candidate_id="c1-hexyl",
            name="hexyl",
            version="0.8.0",
            registry=DEBIAN,
            score=0.9,
            score_parts=ScoreParts(relevance=1.0),
        )
    )
    recorder.event("code", "candidate_started", "hexyl", candidate_id="c1-hexyl")
    if ending == "finished":
        recorder.event("code", "candidate_won", "green after 2 attempts", candidate_id="c1-hexyl")
        recorder.event("run", "run_finished", "hexview from hexyl")
    elif ending == "failed":
        recorder.event("code", "candidate_failed", "red", candidate_id="c1-hexyl")
        recorder.event("run", "run_failed", "every candidate failed in the code step")


def test_status_tells_running_finished_failed_and_killed_runs_apart(cli: Cli, home: Path) -> None:
    journal = Journal(home / "journal.sqlite")
    for run_id, ending in (("r-done", "finished"), ("r-failed", "failed"), ("r-killed", None)):
        record_run(journal, home, run_id, ending)
    record_run(journal, home, "r-live", None)
    workspace = home / "workspaces" / "r-live" / "c1-hexyl"
    workspace.mkdir(parents=True)
    (workspace / "main.rs").write_bytes(b"x" * 3_000_000)
    RunRecord(home, "r-live").add("workspace", workspace, candidate_id="c1-hexyl")
    with RunRecord(home, "r-live").active():  # this process runs r-live now
        listed = cli("status", "--json")
        live = cli("status", "r-live")
    assert listed.code == 0, listed.stderr
    states = {run["run_id"]: run["state"] for run in listed.json()}  # type: ignore[attr-defined]
    assert states == {
        "r-done": "finished", "r-failed": "failed", "r-killed": "killed", "r-live": "running",
    }  # fmt: skip
    assert live.code == 0 and "running" in live.stdout and "step: code" in live.stdout
    assert "c1-hexyl: hexyl 0.8.0 running" in live.stdout
    assert f"holds workspace: {workspace} (2.9 MiB)" in live.stdout

    done = cli("status", "r-done", "--json").json()
    assert isinstance(done, dict) and done["state"] == "finished" and done["tool"] == "hexview"
    assert done["candidates"] == [
        {"candidate_id": "c1-hexyl", "crate": "hexyl", "version": "0.8.0", "outcome": "won",
         "attempts": None}
    ]  # fmt: skip
    failed = cli("status", "r-failed")
    assert "reason: every candidate failed in the code step" in failed.stdout
    assert "c1-hexyl: hexyl 0.8.0 failed" in failed.stdout
    killed = cli("status", "r-killed")
    assert "killed" in killed.stdout and "step: code" in killed.stdout
    followed = cli("status", "r-done", "--follow", timeout=30)
    assert followed.code == 0 and "run_finished: hexview from hexyl" in followed.stdout
    missing = cli("status", "r-nope")
    assert missing.code == 2 and "no run 'r-nope'" in missing.stderr

    exported = cli("journal", "r-done").stdout.splitlines()
    lines = (RunRecord(home, "r-done").directory / "journal.jsonl").read_text().splitlines()
    assert [json.loads(line)["message"] for line in exported] == [
        json.loads(line)["message"] for line in lines
    ]
