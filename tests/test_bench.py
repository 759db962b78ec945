"""The bench's parts without Ray: suites are checked, a journal becomes stage spans, a report
and its plots are written from results (the whole path: tests/test_bench_run.py)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from flakebot.bench.report import median, write_report
from flakebot.bench.runner import TrialResult, read_trial_results
from flakebot.bench.suite import load_suite, trials
from flakebot.bench.timeline import read_journal, spans, stage_seconds
from flakebot.errors import ConfigError

SUITE = """\
name: two
tasks:
  - id: hexview
    spec: hex.yaml
    script: hex-script.yaml
    checks:
      - {name: dumps, stdin: AB, stdout: {match: contains, value: "41 42"}}
  - id: free
    request: a tool that sums numbers
    kind: library
"""


def suite_dir(tmp_path: Path, text: str = SUITE) -> Path:
    (tmp_path / "hex.yaml").write_text("name: hexview\n")
    (tmp_path / "hex-script.yaml").write_text("replies: []\n")
    (tmp_path / "suite.yaml").write_text(text)
    return tmp_path / "suite.yaml"


def test_a_suite_resolves_its_paths_and_makes_trials(tmp_path: Path) -> None:
    suite = load_suite(suite_dir(tmp_path))
    assert [task.id for task in suite.tasks] == ["hexview", "free"]
    assert suite.tasks[0].spec == (tmp_path / "hex.yaml").resolve()
    assert suite.tasks[0].checks[0].stdout is not None
    made = trials(suite, ["groq:llama-3.3-70b-versatile", "openai:http://x/v1#m"], 2)
    assert len(made) == 8 and len({trial.key for trial in made}) == 8
    assert made[0].model_ref() == "groq:llama-3.3-70b-versatile"
    assert made[1].request() == "a tool that sums numbers"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("name: x\ntasks: []\n", "tasks"),
        ("name: x\ntasks:\n  - id: a\n", "give one of spec"),
        ("name: x\ntasks:\n  - {id: a, spec: missing.yaml}\n", "missing.yaml does not exist"),
        ("name: x\ntasks:\n  - {id: a, request: r}\n  - {id: a, request: s}\n", "used twice"),
        ("name: x\ntasks:\n  - {id: A!, request: r}\n", "tasks.0.id"),
        ("name: x\ntasks:\n  - {id: a, request: r, colour: red}\n", "colour"),
        ("- not a mapping\n", "is not a suite"),
    ],
)
def test_a_bad_suite_is_named(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_suite(suite_dir(tmp_path, text))
    assert named in caught.value.message


def test_the_scripted_model_needs_every_task_to_have_a_script(tmp_path: Path) -> None:
    suite = load_suite(suite_dir(tmp_path))
    with pytest.raises(ConfigError, match="free"):
        trials(suite, ["scripted"], 1)
    with pytest.raises(ConfigError, match="names no model"):
        trials(suite, ["groq:"], 1)
    with pytest.raises(ConfigError, match="at least 1"):
        trials(suite, ["groq:m"], 0)


def journal(tmp_path: Path) -> Path:
    """A run of two candidates: c1 red then green after an edit, c2 failed and cleaned."""
    rows = [
        (100.0, {"kind": "run_started"}),
        (100.5, {"kind": "crate_query"}),
        (101.0, {"kind": "run_event", "event": "candidates_found"}),
        (101.0, {"kind": "run_event", "event": "candidate_started", "candidate_id": "c1-a"}),
        (101.0, {"kind": "run_event", "event": "candidate_started", "candidate_id": "c2-b"}),
        (110.0, {"kind": "test_report", "candidate_id": "c2-b", "attempt": 0,
                 "stages": [{"duration_s": 6.0}]}),
        (110.0, {"kind": "candidate_result", "candidate_id": "c2-b"}),
        (110.1, {"kind": "cleanup_request", "candidate_id": "c2-b"}),
        (111.0, {"kind": "cleanup_report", "candidate_id": "c2-b"}),
        (120.0, {"kind": "test_report", "candidate_id": "c1-a", "attempt": 0,
                 "stages": [{"duration_s": 10.0}, {"duration_s": 5.0}, {"duration_s": 3.0}]}),
        (122.0, {"kind": "edit_proposal", "candidate_id": "c1-a", "attempt": 1}),
        (125.0, {"kind": "test_report", "candidate_id": "c1-a", "attempt": 1,
                 "stages": [{"duration_s": 2.5}]}),
        (125.0, {"kind": "candidate_result", "candidate_id": "c1-a"}),
        (125.0, {"kind": "run_event", "event": "candidate_won", "candidate_id": "c1-a"}),
        (140.0, {"kind": "run_event", "event": "tool_deployed", "candidate_id": "c1-a"}),
        (141.5, {"kind": "run_event", "event": "manifest_written"}),
    ]  # fmt: skip
    path = tmp_path / "journal.jsonl"
    path.write_text(
        "".join(json.dumps({"at": at, "message": m}) + "\n" for at, m in rows) + '{"at": 142, "mess'
    )  # fmt: skip  (a row cut by a kill)
    return path


def test_a_journal_becomes_stage_spans(tmp_path: Path) -> None:
    found = spans(read_journal(journal(tmp_path)))
    got = {(s.lane, s.stage, round(s.start, 2), round(s.end, 2)) for s in found}
    assert got == {
        ("run", "plan", 0.0, 0.5),
        ("run", "scout", 0.5, 1.0),
        ("c2-b", "fork", 1.0, 4.0),
        ("c2-b", "test", 4.0, 10.0),
        ("c2-b", "clean", 10.1, 11.0),
        ("c1-a", "fork", 1.0, 5.0),
        ("c1-a", "test", 5.0, 20.0),
        ("c1-a", "code", 20.0, 22.0),
        ("c1-a", "test", 22.5, 25.0),
        ("run", "deploy", 25.0, 40.0),
        ("run", "instruct", 40.0, 41.5),
    }
    seconds = stage_seconds(found)
    assert seconds["test"] == 18.5  # 4-20 and 22.5-25: the overlap of 4-10 counted once
    assert seconds["fork"] == 4.0 and seconds["deploy"] == 15.0


def result(task: str, model: str, repeat: int, **fields: object) -> TrialResult:
    base: dict[str, object] = {
        "key": f"{task}|{model}|{repeat}", "task": task, "kind": "binary", "model": model,
        "repeat": repeat, "status": "deployed", "success": True, "run_id": "run-x",
        "seconds": 50.0 + repeat, "attempts": 1, "floor_s": 45.0, "overhead": (50 + repeat) / 45,
        "spans": [{"lane": "run", "stage": "scout", "start": 0.0, "end": 1.0},
                  {"lane": "c1-a", "stage": "test", "start": 1.0, "end": 30.0}],
    }  # fmt: skip
    return TrialResult.model_validate({**base, **fields})


def test_a_report_has_a_leaderboard_tables_and_plots(tmp_path: Path) -> None:
    results = [
        result("hexview", "scripted", 1),
        result("hexview", "scripted", 2),
        result("sum", "scripted", 1, status="failed", success=False, step="code",
               error_type="CodeError", reason="no green attempt", floor_s=None, overhead=None),
        result("hexview", "groq:m", 1, cost_usd=0.002),
    ]  # fmt: skip
    report = write_report(results, tmp_path, suite="two", options="--parallel 2")
    text = report.read_text()
    assert "| scripted | 3 | 67% |" in text  # two of three succeeded
    assert "| groq:m | 1 | 100% |" in text and "$0.0020" in text
    assert "sum · scripted · #1 (run-x): code: CodeError: no green attempt" in text
    assert median([1.0, None, 3.0]) == 2.0
    for name in ("overhead.png", "timeline-hexview-scripted-1.png", "timeline-sum-scripted-1.png",
                 "timeline-hexview-groq_m-1.png"):  # fmt: skip
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG", name
        assert f"]({name})" in text


def test_results_cut_by_a_kill_are_not_results(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    path.write_text(result("a", "m", 1).model_dump_json() + "\n" + '{"key": "b|m|1", "ta')
    assert list(read_trial_results(path)) == ["a|m|1"]


def test_a_floor_is_measured_with_no_run_going_on_and_later_runs_wait_for_it() -> None:
    from flakebot.bench.runner import _Quiet

    events: list[str] = []

    async def main() -> None:
        quiet = _Quiet()

        async def run(name: str, seconds: float, after: float = 0.0) -> None:
            await asyncio.sleep(after)
            async with quiet.running():
                events.append(f"{name} start")
                await asyncio.sleep(seconds)
                events.append(f"{name} end")

        async def floor() -> None:
            await asyncio.sleep(0.01)
            async with quiet.alone():
                events.append("floor start")
                await asyncio.sleep(0.05)
                events.append("floor end")

        await asyncio.gather(run("a", 0.1), floor(), run("late", 0.01, after=0.03))

    asyncio.run(main())
    assert events == ["a start", "a end", "floor start", "floor end", "late start", "late end"]
