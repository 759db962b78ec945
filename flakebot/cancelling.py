"""Finishing a cancelled run: wait until nothing runs it, record that it was cancelled, clean it.

A caller that cancels a build (an MCP client's notifications/cancelled, or a client that goes away
mid-build) may end the process that was building right after: an MCP stdio client closes the
server's stdin, sends its process group SIGTERM 2 s later and SIGKILL 2 s after that, while a run's
clean takes longer (its supervisor must first let go, then the janitor removes the deployment, the
Nix store paths, the fork and the workspaces). So the finishing is done by a process of its own, in
a session of its own, which outlives the canceller: `python -m flakebot.cancelling RUN`, started
with `start_finisher`. Its log goes to FLAKEBOT_HOME/logs/cancelled.log.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import get_args

import structlog

from flakebot.home import PRIVATE_DIR, PRIVATE_FILE, check_id
from flakebot.janitor import Janitor
from flakebot.journal import Journal
from flakebot.logs import configure_logging
from flakebot.runstate import RunRecord
from flakebot.settings import Settings
from messages import CleanupReport, CleanupRequest, RunEvent, StepFailed
from messages.base import Step

log = structlog.get_logger()

CANCEL_WAIT_S = 30.0  # how long a killed supervisor may take to let go of its run
FINISH_S = CANCEL_WAIT_S + 120.0  # the wait, then the clean (the janitor's own retries in it)
LOG_NAME = "cancelled.log"
STEPS = get_args(Step)
REASON = "the run was cancelled by its caller"


def finish_cancelled(
    settings: Settings, run_id: str, wait_s: float = CANCEL_WAIT_S
) -> CleanupReport:
    """Wait (at most `wait_s`) until no process runs `run_id`, record in the journal that it was
    cancelled if it is still running there, and clean what it made."""
    record = RunRecord(settings.home, run_id)
    waited = time.monotonic() + wait_s
    while record.in_progress() and time.monotonic() < waited:
        time.sleep(0.2)
    journal = Journal(settings.journal_path)
    try:
        row = journal.run(run_id)
        if row is not None and row.state == "running":
            step = row.step if row.step in STEPS else "plan"
            failure = StepFailed(
                run_id=run_id,
                step=step,  # checked against STEPS
                error_type="CancelledError",
                reason=REASON,
            )
            events = sum(isinstance(e.message, RunEvent) for e in journal.entries(run_id))
            journal.append(run_id, failure)
            journal.append(
                run_id,
                RunEvent(
                    run_id=run_id,
                    seq=events,
                    at=datetime.now(UTC),
                    step="run",
                    event="run_failed",
                    detail=failure.reason,
                    data={"failed_step": step},
                ),
            )
    finally:
        journal.close()
    return Janitor(settings).clean(CleanupRequest(run_id=run_id, reason="cancelled"))


def start_finisher(settings: Settings, run_id: str) -> subprocess.Popen[bytes]:
    """`finish_cancelled` in a process of its own session (it outlives this one); its output is
    appended to FLAKEBOT_HOME/logs/cancelled.log."""
    check_id(run_id)
    logs = settings.home / "logs"
    logs.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    fd = os.open(
        logs / LOG_NAME, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, PRIVATE_FILE
    )
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "flakebot.cancelling", run_id],
            env={**os.environ, "FLAKEBOT_HOME": str(settings.home)},
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=fd,
            start_new_session=True,  # not in the canceller's process group: a killpg spares it
            cwd="/",
        )
    finally:
        os.close(fd)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m flakebot.cancelling RUN_ID", file=sys.stderr)
        return 2
    settings = Settings.from_env()
    configure_logging(settings.log_level, "json")
    run_id = check_id(argv[0])
    try:
        report = finish_cancelled(settings, run_id)
    except Exception as exc:
        log.error("cancelled_run_not_cleaned", run_id=run_id, error=str(exc)[:500])
        return 1
    log.info(
        "cancelled_run_cleaned",
        run_id=run_id,
        removed=len(report.removed),
        failures=[f"{failure.path}: {failure.reason}" for failure in report.failures],
    )
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
