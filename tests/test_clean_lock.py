"""One clean of a run at a time, whichever process asks: a second waits for the first (bounded),
then finds nothing left and reports no failures. A whole run's clean waits for the coders still at
work on it, and a coder does nothing more for a run that has ended."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime

import pytest

from flakebot.errors import RoleLost, RunBusy
from flakebot.janitor import Janitor
from flakebot.journal import Journal
from flakebot.roles import DeveloperRole
from flakebot.runstate import RunRecord
from flakebot.settings import Settings
from messages import CleanupReport, CleanupRequest, CrateCandidate, RunEvent
from tests.samples import SAMPLES, SPEC


def a_run(settings: Settings, run_id: str, workspaces: int) -> RunRecord:
    record = RunRecord(settings.home, run_id)
    for index in range(workspaces):
        workspace = settings.workspaces_dir / run_id / f"c{index}"
        workspace.mkdir(parents=True)
        (workspace / "file").write_text("x" * 10)
        record.add("workspace", workspace, candidate_id=f"c{index}")
    return record


def test_a_clean_waits_for_another_clean_of_the_run_then_finds_nothing_left(
    settings: Settings,
) -> None:
    record = a_run(settings, "twice", workspaces=3)
    reports: list[CleanupReport] = []
    second = threading.Thread(
        target=lambda: reports.append(Janitor(settings).clean(CleanupRequest(run_id="twice")))
    )
    with record.cleaning():  # the first clean, holding the run
        second.start()
        time.sleep(1.0)
        assert second.is_alive()  # waiting, having removed nothing
        assert (settings.workspaces_dir / "twice" / "c0").exists()
        first = Janitor(settings)._clean(record, CleanupRequest(run_id="twice"))
    second.join(timeout=60)
    assert not second.is_alive()
    assert len(first.removed) == 3 and first.failures == []
    (report,) = reports
    assert report.removed == [] and report.failures == []
    assert not record.exists()


def test_concurrent_cleans_of_one_run_report_no_failures(settings: Settings) -> None:
    record = a_run(settings, "racing", workspaces=40)
    reports: list[CleanupReport] = []
    cleans = [
        threading.Thread(
            target=lambda: reports.append(Janitor(settings).clean(CleanupRequest(run_id="racing")))
        )
        for _ in range(3)
    ]
    for clean in cleans:
        clean.start()
    for clean in cleans:
        clean.join(timeout=120)
    assert [report.failures for report in reports] == [[], [], []]
    assert sum(len(report.removed) for report in reports) == 40
    assert not record.exists()


def test_a_clean_held_too_long_is_run_busy(settings: Settings) -> None:
    record = a_run(settings, "held", workspaces=1)
    with (
        record.cleaning(),
        pytest.raises(RunBusy, match="being cleaned by another process"),
        RunRecord(settings.home, "held").cleaning(wait_s=0.3),
    ):
        pass


def test_a_whole_run_clean_waits_for_its_coders_at_work(settings: Settings) -> None:
    record = a_run(settings, "busy", workspaces=1)
    reports: list[CleanupReport] = []
    clean = threading.Thread(
        target=lambda: reports.append(Janitor(settings).clean(CleanupRequest(run_id="busy")))
    )
    with record.working():  # a coder, killed with its run a moment ago, still at work
        clean.start()
        time.sleep(1.0)
        assert clean.is_alive() and (settings.workspaces_dir / "busy" / "c0").exists()
    clean.join(timeout=60)
    (report,) = reports
    assert len(report.removed) == 1 and report.failures == []
    with record.working():  # the record is gone: nothing to hold, and no record made again
        assert not record.directory.exists()


def test_a_coder_does_nothing_more_for_a_run_that_has_ended(settings: Settings) -> None:
    candidate = SAMPLES["crate_candidate"]
    assert isinstance(candidate, CrateCandidate)
    run_id = candidate.run_id
    RunRecord(settings.home, run_id).add("workspace", settings.workspaces_dir / run_id,
                                         candidate_id=None)  # fmt: skip
    journal = Journal(settings.journal_path)
    for seq, event in enumerate(("run_started", "run_failed")):
        journal.append(
            run_id,
            RunEvent(run_id=run_id, seq=seq, at=datetime.now(UTC), step="run", event=event),
        )
    role = DeveloperRole(settings, None, tester=None)  # type: ignore[arg-type]
    with pytest.raises(RoleLost, match="has ended \\(failed\\): nothing more is done"):
        asyncio.run(role.develop(candidate, SPEC))
    assert not (settings.workspaces_dir / run_id).exists()  # no fork was made
