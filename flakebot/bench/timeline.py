"""A run's timeline from its journal: one lane for the run, one per candidate, a span per stage.

Flakebot's own run record is the source: every journal row has the time it was written. The run
lane holds plan, scout, deploy and instruct; a candidate's lane holds fork (from its start to its
first test), code (the model's answer and its edits: from a test report to the next proposal),
test (the tester's stages: they end when the report is journalled, and last as long as the report
says: the build, then the test; clippy lints during the build and takes no time of its own) and
clean (a losing candidate cleaned). The bench adds the run's own clean at the end.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

STAGES = ("plan", "scout", "fork", "code", "test", "deploy", "instruct", "clean")
RUN_LANE = "run"


@dataclass(frozen=True)
class Span:
    lane: str  # "run" or a candidate id
    stage: str
    start: float  # seconds since the run started
    end: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_journal(path: Path) -> list[tuple[float, dict[str, Any]]]:
    """(time, message) of every row of a run's journal.jsonl, in order."""
    rows = []
    for text in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(text)
        except json.JSONDecodeError:
            continue  # a row cut by a kill
        if isinstance(row, dict) and isinstance(row.get("message"), dict):
            rows.append((float(row["at"]), row["message"]))
    return rows


def spans(rows: list[tuple[float, dict[str, Any]]]) -> list[Span]:
    """The stage spans of one run (times relative to its `run_started`)."""
    if not rows:
        return []
    origin = next((at for at, message in rows if message["kind"] == "run_started"), rows[0][0])
    found: list[Span] = []
    opened: dict[tuple[str, str], float] = {}
    last_report: dict[str, float] = {}
    tested: set[str] = set()

    def open_(lane: str, stage: str, at: float) -> None:
        opened.setdefault((lane, stage), at)

    def close(lane: str, stage: str, at: float) -> None:
        start = opened.pop((lane, stage), None)
        if start is not None:
            found.append(Span(lane, stage, start - origin, max(at, start) - origin))

    for at, message in rows:
        kind = message["kind"]
        lane = message.get("candidate_id") or RUN_LANE
        if kind == "run_started":
            open_(RUN_LANE, "plan", at)
        elif kind == "crate_query":
            close(RUN_LANE, "plan", at)
            open_(RUN_LANE, "scout", at)
        elif kind == "test_report":
            ran = _tester_seconds(message["stages"])
            start = max(at - ran, last_report.get(lane, opened.get((lane, "fork"), at)))
            if lane not in tested:
                close(lane, "fork", start)
                tested.add(lane)
            close(lane, "code", start)
            found.append(Span(lane, "test", start - origin, at - origin))
            last_report[lane] = at
            open_(lane, "code", at)
        elif kind == "edit_proposal":
            close(lane, "code", at)
        elif kind == "candidate_result":
            opened.pop((lane, "code"), None)  # no proposal followed the last report
            close(lane, "fork", at)  # a candidate that ended before any test
        elif kind == "cleanup_request" and message.get("candidate_id"):
            open_(lane, "clean", at)
        elif kind == "cleanup_report" and message.get("candidate_id"):
            close(lane, "clean", at)
        elif kind == "run_event":
            _event(message, at, open_, close)
    return sorted(found, key=lambda span: (span.start, span.lane))


def _event(message: dict[str, Any], at: float, open_: Any, close: Any) -> None:
    event, lane = message["event"], message.get("candidate_id") or RUN_LANE
    if event == "spec_planned":
        close(RUN_LANE, "plan", at)
    elif event in ("candidates_found", "candidates_reused"):
        close(RUN_LANE, "scout", at)
    elif event == "candidate_started":
        open_(lane, "fork", at)
    elif event == "candidate_won":
        open_(RUN_LANE, "deploy", at)
    elif event in ("tool_deployed", "deployment_reused", "deploy_failed"):
        close(RUN_LANE, "deploy", at)
        if event != "deploy_failed":
            open_(RUN_LANE, "instruct", at)
    elif event == "manifest_written":
        close(RUN_LANE, "instruct", at)


def _tester_seconds(stages: list[dict[str, Any]]) -> float:
    """How long the tester ran: the build, then the longer of the later stages (test; clippy
    lints during the build, and so reports no time of its own)."""
    seconds = [float(stage["duration_s"]) for stage in stages]
    return seconds[0] + max(seconds[1:], default=0.0) if seconds else 0.0


def stage_seconds(found: list[Span]) -> dict[str, float]:
    """Wall time per stage: how long any lane was in it (overlapping spans count once)."""
    seconds: dict[str, float] = {}
    for stage in STAGES:
        intervals = sorted((span.start, span.end) for span in found if span.stage == stage)
        total, reach = 0.0, float("-inf")
        for start, end in intervals:
            if end > reach:
                total += end - max(start, reach)
                reach = end
        seconds[stage] = round(total, 3)
    return seconds


def first_test(found: list[Span]) -> float | None:
    """When the first tester stage (the first cargo command) started, after the run's start."""
    starts = [span.start for span in found if span.stage == "test"]
    return min(starts) if starts else None
