"""Batches without Ray: the requests file is checked line by line, and a batch run again skips the
requests that have a result (the whole path through Ray: tests/test_job_submit.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from flakebot.batch import Batch, default_out, read_requests, read_results
from flakebot.driver import Flakebot, Request
from flakebot.errors import ConfigError, RunFailed
from messages import RunEvent, StepFailed, ToolManifest, ToolSpec

SPEC = {
    "name": "hexdump",
    "summary": "Prints the bytes of stdin as hex.",
    "search_queries": ["hex dump tool"],
    "acceptance": [
        {"name": "dumps", "stdin": "AB", "stdout": {"match": "contains", "value": "41"}}
    ],
}


def write(path: Path, *lines: object) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n"
                            for line in lines))  # fmt: skip
    return path


def test_every_kind_of_line_is_read(tmp_path: Path) -> None:
    (tmp_path / "hex.yaml").write_text("name: hexdump\n")
    requests = write(
        tmp_path / "requests.jsonl",
        json.dumps("a hex viewer"),
        "",
        {"id": "file", "request": "hex.yaml", "candidates": 2, "model": "scripted:x.yaml"},
        {"id": "inline", "spec": SPEC, "timeout": 60},
    )
    text, from_file, inline = read_requests(requests)
    assert text.what == "a hex viewer" and text.id.startswith("request-") and text.line == 1
    assert from_file.what == tmp_path / "hex.yaml"  # beside the requests file
    assert from_file.options == {"candidates": 2, "model": "scripted:x.yaml"}
    assert isinstance(inline.what, ToolSpec) and inline.what.name == "hexdump"
    assert inline.options == {"timeout": 60}
    assert read_requests(requests)[0].id == text.id  # the same line, the same id next time
    assert default_out(requests) == tmp_path / "requests.results.jsonl"


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("{not json", "requests.jsonl:2 is not JSON"),
        ({"request": "x", "spec": SPEC}, "give one of request or spec"),
        ({"id": "a"}, "give one of request or spec"),
        ({"request": "x", "colour": "red"}, "colour: Extra inputs are not permitted"),
        ({"request": "x", "candidates": 0}, "candidates: Input should be greater than or equal"),
        ({"id": "../x", "request": "x"}, "id: String should match pattern"),
        ({"spec": {"name": "Bad Name"}}, "the spec's"),
        ({"id": "one", "request": "again"}, "the id 'one' is already used on line 1"),
    ],
)
def test_a_bad_line_is_named_before_anything_runs(
    tmp_path: Path, line: object, problem: str
) -> None:
    requests = write(tmp_path / "requests.jsonl", {"id": "one", "request": "a hex viewer"}, line)
    with pytest.raises(ConfigError, match=r"requests\.jsonl:2") as raised:
        read_requests(requests)
    assert problem in raised.value.message


def test_an_empty_or_missing_requests_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="holds no request"):
        read_requests(write(tmp_path / "empty.jsonl", ""))
    with pytest.raises(ConfigError, match="cannot read the requests file"):
        read_requests(tmp_path / "missing.jsonl")


@dataclass
class Driver(Flakebot):
    """The driver's seam: what each request ends with, without a cluster."""

    outcome: Callable[[Request], ToolManifest] = field(default=lambda request: _fail(request))
    asked: list[Request] = field(default_factory=list)

    def connect(self) -> None:
        pass

    async def abuild(
        self,
        request: Request,
        *,
        on_event: Callable[[RunEvent], None] | None = None,
        run_id: str | None = None,
    ) -> ToolManifest:
        self.asked.append(request)
        return self.outcome(request)


def _fail(request: Request) -> ToolManifest:
    failure = StepFailed(run_id="r", step="scout", error_type="RunFailed", reason=f"no {request}")
    raise RunFailed(failure, journal=Path("/tmp/journal.jsonl"))


def test_a_batch_run_again_skips_the_requests_with_a_result(tmp_path: Path) -> None:
    requests = write(tmp_path / "requests.jsonl", *(json.dumps(f"tool {n}") for n in range(5)))
    jobs = read_requests(requests)
    out = tmp_path / "results.jsonl"
    driver = Driver()
    seen: list[str] = []
    Batch(driver, out, parallel=2, on_progress=lambda what, job, _: seen.append(what)).run(jobs)
    assert sorted(map(str, driver.asked)) == [f"tool {n}" for n in range(5)]
    results = read_results(out)
    assert {result.status for result in results.values()} == {"failed"}
    first = results[jobs[0].id]
    assert first.step == "scout" and first.reason == "no tool 0"
    assert first.journal == "/tmp/journal.jsonl"
    assert seen.count("started") == 5 and seen.count("finished") == 5

    # a batch killed while writing its last line: that request has no result and runs again
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])
    cut = [job for job in jobs if job.id == json.loads(lines[-1])["id"]]
    again = Driver()
    Batch(again, out).run(jobs)
    assert again.asked == [job.what for job in cut]
    assert len(read_results(out)) == 5

    retried = Driver()
    Batch(retried, out, retry_failed=True).run(jobs)
    assert len(retried.asked) == 5


def test_one_request_that_crashes_does_not_lose_the_others(tmp_path: Path) -> None:
    requests = write(tmp_path / "requests.jsonl", '"good"', '"bad"')

    def outcome(request: Request) -> ToolManifest:
        if request == "bad":
            raise ValueError("a machine problem")
        _fail(request)
        raise AssertionError

    out = tmp_path / "results.jsonl"
    Batch(Driver(outcome=outcome), out).run(read_requests(requests))
    by_reason = {result.reason: result for result in read_results(out).values()}
    assert set(by_reason) == {"no good", "ValueError: a machine problem"}
    assert by_reason["ValueError: a machine problem"].step == "plan"
