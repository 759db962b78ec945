"""Resuming a killed run from its journal, on plain roles in this process (test_resume_run.py
kills a real driver): each step whose result is journalled is not done again, the run goes on at
the first that has none, and model replies in the journal are not asked for again."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from flakebot.errors import ConfigError, RunBusy
from flakebot.journal import Journal
from flakebot.models import CallContext, ChatMessage, ScriptedModel
from flakebot.models.journalled import JournalledModel
from flakebot.models.scripted import Script
from flakebot.recorder import Recorder
from flakebot.resume import RunHistory, check_resumable
from flakebot.runstate import RunRecord
from flakebot.verified import VerifiedResult, VerifiedResults, result_key
from messages import (
    AnyMessage,
    CandidateResult,
    CrateCandidate,
    RunEvent,
    RunStarted,
    ScoreParts,
    ToolManifest,
    Workspace,
)
from tests.conftest import Cli
from tests.test_supervisor import COMMIT, REGISTRY, SPEC, TableRoles, supervise

STEPS = ["spec_planned", "candidates_found", "candidate_won", "tool_deployed", "manifest_written"]


def first_run(tmp_path: Path) -> tuple[list[AnyMessage], TableRoles]:
    """A whole run: `a` fails, `b` wins; its journal."""
    journal = Journal(tmp_path / "journal.sqlite")
    roles = TableRoles(batches=[["a", "b"]], green={"b"}, delays={"b": 0.2})
    supervisor, _ = supervise(roles, recorder=Recorder("r", journal=journal))
    asyncio.run(supervisor.run(SPEC))
    return [entry.message for entry in journal.entries("r")], roles


def cut_after(messages: list[AnyMessage], event: str) -> list[AnyMessage]:
    """The journal of a run killed right after `event` was committed."""
    for index, message in enumerate(messages):
        if isinstance(message, RunEvent) and message.event == event:
            return messages[: index + 1]
    raise AssertionError(f"no {event} in the journal")


def resume(
    prefix: list[AnyMessage], *, head: str = COMMIT, deployed: bool = True
) -> tuple[ToolManifest, TableRoles, list[AnyMessage]]:
    roles = TableRoles(batches=[["a", "b"]], green={"b"}, delays={"b": 0.2})
    recorder = Recorder("r")
    recorder.go_on_from(prefix)
    supervisor, _ = supervise(
        roles,
        recorder=recorder,
        fork_head=lambda candidate_id: head,
        still_deployed=lambda deployment: deployed,
    )
    manifest = asyncio.run(supervisor.run(SPEC, RunHistory.of("r", prefix)))
    return manifest, roles, prefix + recorder.messages()


def count(messages: list[AnyMessage]) -> Counter[str]:
    return Counter(m.event for m in messages if isinstance(m, RunEvent))


@pytest.mark.parametrize("killed_after", [*STEPS, "candidate_failed"])
def test_a_resumed_run_does_no_saved_step_again(tmp_path: Path, killed_after: str) -> None:
    messages, _ = first_run(tmp_path)
    manifest, roles, journal = resume(cut_after(messages, killed_after))
    assert manifest.provenance.crate_name == "b"
    events = count(journal)
    for step in (*STEPS, "run_finished", "run_resumed"):
        assert events[step] == 1, (step, events)
    done = STEPS.index(killed_after) if killed_after in STEPS else 1
    assert events["candidate_reused"] == (done >= 2) and events["deployment_reused"] == (done >= 3)
    assert ("plan" in roles.calls) is False  # a spec file: never planned, never re-planned
    assert any(call.startswith("scout") for call in roles.calls) == (done < 1)
    assert ("developed a" in roles.calls) == (done < 1 or killed_after == "candidates_found")
    assert ("developed b" in roles.calls) == (done < 2)
    assert ("deploy c2-b" in roles.calls) == (done < 3)
    assert ("instruct c2-b" in roles.calls) == (done < 4)
    sequence = [m.seq for m in journal if isinstance(m, RunEvent)]
    assert sequence == list(range(len(sequence)))  # numbered on, without gaps


def test_a_green_fork_that_moved_is_developed_again(tmp_path: Path) -> None:
    messages, _ = first_run(tmp_path)
    _, roles, journal = resume(cut_after(messages, "candidate_won"), head="f" * 40)
    assert "developed b" in roles.calls and "developed a" not in roles.calls
    assert count(journal)["candidate_reused"] == 0


def test_a_deployment_whose_store_path_is_gone_is_built_again(tmp_path: Path) -> None:
    messages, _ = first_run(tmp_path)
    _, roles, journal = resume(cut_after(messages, "tool_deployed"), deployed=False)
    assert "deploy c2-b" in roles.calls and count(journal)["deployment_reused"] == 0


def started(run_id: str) -> RunStarted:
    return RunStarted(run_id=run_id, registry=REGISTRY, candidates=1, plan={"steps": []})


def test_only_a_killed_run_can_be_resumed_and_the_error_says_why(tmp_path: Path) -> None:
    home = tmp_path / "home"
    journal = Journal(home / "journal.sqlite")
    with pytest.raises(ConfigError, match="no run nope"):
        check_resumable(journal, home, "nope")
    for run_id, last in (("done", "run_finished"), ("broke", "run_failed"), ("live", "x_y")):
        recorder = Recorder(run_id, journal=journal)
        recorder.record(started(run_id))
        recorder.record(SPEC.model_copy(update={"run_id": run_id}))
        recorder.event("plan", "spec_planned")
        recorder.event("run", last, "the reason")
    with pytest.raises(ConfigError, match="finished"):
        check_resumable(journal, home, "done")
    with pytest.raises(ConfigError, match="failed in the plan step and was cleaned: the reason"):
        check_resumable(journal, home, "broke")
    with RunRecord(home, "live").active(), pytest.raises(RunBusy, match="still running"):
        check_resumable(journal, home, "live")
    history = check_resumable(journal, home, "live")  # its process is gone: killed
    assert history.started == started("live") and history.request is not None
    holder, other = RunRecord(home, "live"), RunRecord(home, "live")
    with holder.active(), pytest.raises(RunBusy), other.active(wait=False):
        pass


def test_journalled_replies_are_replayed_not_asked_for_again(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.sqlite")
    script = Script.model_validate(
        {"replies": [{"role": "coder", "attempt": 1, "text": f"reply {n}"} for n in range(3)]}
    )
    first = ScriptedModel(script)
    context = CallContext(role="coder", step="code", candidate_id="c1-a", attempt=1)
    ask = [ChatMessage(role="user", content="edit")]

    async def calls(model: JournalledModel, times: int) -> list[str]:
        return [(await model.complete(ask, context=context)).text for _ in range(times)]

    assert asyncio.run(calls(JournalledModel(first, journal, "r"), 2)) == ["reply 0", "reply 1"]
    again = ScriptedModel(script)  # a new process: the script from its start
    replies = asyncio.run(calls(JournalledModel(again, journal, "r"), 3))
    assert replies == ["reply 0", "reply 1", "reply 0"]  # the third is a real, first call
    assert len(first.calls) == 2 and len(again.calls) == 1
    saved = {(r.asker, r.call): (r.requests, r.replays) for r in journal.replies("r")}
    assert saved == {
        ("coder/code/c1-a/1", 0): (1, 1),
        ("coder/code/c1-a/1", 1): (1, 1),
        ("coder/code/c1-a/1", 2): (1, 0),
    }
    other = asyncio.run(calls(JournalledModel(ScriptedModel(script), journal, "other-run"), 1))
    assert other == ["reply 0"] and len(journal.replies("other-run")) == 1


def test_cli_resume_of_an_unknown_run_says_so_in_one_line(cli: Cli) -> None:
    result = cli("resume", "run-nope")
    assert result.code == 2 and "there is no run run-nope in the journal" in result.stderr
    assert "flakebot status" in result.stderr and "Traceback" not in result.stderr


def test_a_verified_result_is_keyed_by_everything_it_depends_on(tmp_path: Path) -> None:
    crate = CrateCandidate(
        run_id="r",
        candidate_id="c1-a",
        name="a",
        version="1.0.0",
        registry=REGISTRY,
        score=1.0,
        score_parts=ScoreParts(relevance=1.0),
    )
    key = result_key(SPEC, "scripted:/s.yaml", crate, "rustc 1.85.0")
    elsewhere = {"run_id": "other"}
    same = result_key(
        SPEC.model_copy(update=elsewhere), "scripted:/s.yaml", crate.model_copy(update=elsewhere),
        "rustc 1.85.0",
    )  # fmt: skip
    assert key == same
    changed = [
        result_key(SPEC.model_copy(update={"summary": "Else."}), "scripted:/s.yaml", crate, "r"),
        result_key(SPEC, "groq:llama", crate, "rustc 1.85.0"),
        result_key(SPEC, "scripted:/s.yaml", crate.model_copy(update={"version": "1.0.1"}), "r"),
        result_key(SPEC, "scripted:/s.yaml", crate, "rustc 1.86.0"),
    ]
    assert key not in changed and len(set(changed)) == 4
    results = VerifiedResults(tmp_path)
    assert results.find(key) is None
    results.directory.mkdir()
    (results.directory / f"{key}.json").write_text("{not json")
    results.bundle(key).write_bytes(b"x")
    assert results.find(key) is None  # damaged: no result, no crash
    assert results.clear() == 1 and not results.directory.exists()


def test_a_candidate_that_failed_but_was_not_yet_cleaned_is_cleaned_not_developed(
    tmp_path: Path,
) -> None:
    messages, _ = first_run(tmp_path)
    failed = next(
        index
        for index, message in enumerate(messages)
        if isinstance(message, CandidateResult) and message.candidate_id == "c1-a"
    )
    _, roles, _ = resume(messages[: failed + 1])
    assert "clean c1-a failed" in roles.calls and "developed a" not in roles.calls
    assert "developed b" in roles.calls


def test_forgetting_a_run_removes_only_the_results_it_kept(tmp_path: Path) -> None:
    from tests.samples import GREEN_REPORT, SAMPLES

    workspace = SAMPLES["workspace"]
    assert isinstance(workspace, Workspace)
    results = VerifiedResults(tmp_path)
    assert results.forget_run("run-a") == 0  # nothing kept yet
    for key, run_id in (("k1", "run-a"), ("k2", "run-b"), ("k3", "run-a")):
        bundle = tmp_path / f"{key}.tmp"
        bundle.write_bytes(b"bundle")
        results.save(
            VerifiedResult(key=key, run_id=run_id, workspace=workspace, report=GREEN_REPORT),
            bundle,
        )
    assert results.forget_run("run-a") == 2
    assert results.find("k1") is None and results.find("k3") is None
    assert not results.bundle("k1").exists()
    kept = results.find("k2")
    assert kept is not None and kept.run_id == "run-b" and results.bundle("k2").exists()
