"""The edit-test loop on a real crate with the scripted model: a planted compile error through a
wrong fix to green, bad replies that are fed back, bounds, and no edit when none is needed."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pygit2
import pytest

from flakebot.coder import AttemptOutcome, CodeLoop, LocalTestRunner
from flakebot.crates.index import CrateIndex
from flakebot.errors import RoleLost
from flakebot.fork import Forker
from flakebot.journal import Journal
from flakebot.models import Budget, ScriptedModel, Transcript
from flakebot.models.journalled import JournalledModel
from flakebot.models.scripted import Script
from flakebot.sandbox import Sandbox
from flakebot.settings import Settings
from flakebot.tester import Tester
from messages import AcceptanceCase, OutputCheck, TestReport, ToolSpec, Workspace
from tests.conftest import Cli, candidate

pytestmark = pytest.mark.slow
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

PLANTED = 'pub const PLANTED: u32 = "not a number";'
SPEC = ToolSpec(
    run_id="t",
    name="hexview",
    summary="A hex viewer that prints plain ASCII.",
    search_queries=["hex viewer"],
    acceptance=[
        AcceptanceCase(
            name="plain",
            args=["--color", "never"],
            stdin="Flakebot",
            stdout=OutputCheck(match="contains", value="46 6c 61 6b"),
        )
    ],
)


def planted_fork(forker: Forker, candidate_id: str) -> Workspace:
    workspace = forker.fork(candidate("hexyl", "0.8.0", candidate_id))
    squeezer = Path(workspace.path) / "src" / "squeezer.rs"
    squeezer.write_text(squeezer.read_text() + PLANTED + "\n")
    return workspace


def loop(
    model: ScriptedModel, forker: Forker, sandbox: Sandbox, index: CrateIndex, **options: object
) -> CodeLoop:
    return CodeLoop(
        model=model,
        forker=forker,
        tester=LocalTestRunner(Tester(sandbox)),
        registry=index,
        budget=options.pop("budget", Budget()),  # type: ignore[arg-type]
        transcript=Transcript(),
        **options,  # type: ignore[arg-type]
    )


def test_planted_error_through_a_wrong_fix_to_green(
    forker: Forker, sandbox: Sandbox, debian_index: CrateIndex
) -> None:
    workspace = planted_fork(forker, "c1-planted")
    wrong_fix = {
        "op": "replace",
        "path": "src/squeezer.rs",
        "search": '"not a number"',
        "replace": "1.5",
    }
    real_fix = {
        "op": "replace",
        "path": "src/squeezer.rs",
        "search": "pub const PLANTED: u32 = 1.5;",
        "replace": "",
    }
    model = ScriptedModel(
        Script.model_validate(
            {
                "replies": [
                    {"role": "coder", "attempt": 1, "text": "Let me think about this first."},
                    {
                        "role": "coder",
                        "attempt": 1,
                        "json": {"summary": "use a number", "edits": [wrong_fix]},
                    },
                    {
                        "role": "coder",
                        "attempt": 2,
                        "json": {"summary": "drop the constant", "edits": [real_fix]},
                    },
                ]
            }
        )
    )
    outcomes: list[AttemptOutcome] = []
    result = asyncio.run(
        loop(model, forker, sandbox, debian_index, on_attempt=outcomes.append).run(workspace, SPEC)
    )
    assert (result.status, result.ended_by, result.attempts) == ("green", "green", 2)
    assert result.last_report is not None and result.last_report.green
    assert [outcome.report.green for outcome in outcomes if outcome.report] == [False, False, True]

    first_prompt = model.calls[0][1][-1].content
    assert "mismatched types" in first_prompt and PLANTED in first_prompt
    second_prompt = next(messages for context, messages in model.calls if context.attempt == 2)
    assert "expected `u32`, found floating-point number" in second_prompt[-1].content
    retry = model.calls[1][1]
    assert retry[-1].role == "user" and "not valid" in retry[-1].content

    history = [attempt.message for attempt in forker.attempts(workspace)]
    assert history[-3].startswith("flakebot: acceptance cases of hexview")
    assert history[-2].startswith("attempt 1: use a number") and "outcome: red" in history[-2]
    assert (
        "E0308 mismatched types" in history[-2] and "edits: replace src/squeezer.rs" in history[-2]
    )
    assert history[-1].startswith("attempt 2: drop the constant")
    assert "outcome: green" in history[-1]
    assert result.head_commit == str(pygit2.Repository(workspace.path).head.target)
    assert PLANTED.split("=")[0] not in (Path(workspace.path) / "src" / "squeezer.rs").read_text()


def test_a_model_that_never_answers_well_ends_at_the_attempt_bound(
    forker: Forker, sandbox: Sandbox, debian_index: CrateIndex, tmp_path: Path
) -> None:
    workspace = planted_fork(forker, "c2-planted")
    outside = {"op": "write", "path": "../../escape.rs", "content": "fn main() {}"}
    no_match = {
        "op": "replace",
        "path": "src/squeezer.rs",
        "search": "not in the file",
        "replace": "",
    }
    model = ScriptedModel(
        Script.model_validate(
            {
                "replies": [
                    {
                        "attempt": 1,
                        "json": {"summary": "escape", "edits": [outside]},
                        "repeat": True,
                    },
                    {
                        "attempt": 2,
                        "json": {"summary": "miss", "edits": [no_match]},
                        "repeat": True,
                    },
                ]
            }
        )
    )
    result = asyncio.run(
        loop(model, forker, sandbox, debian_index, max_attempts=2).run(workspace, SPEC)
    )
    assert (result.status, result.ended_by, result.attempts) == ("failed", "max_attempts", 2)
    assert result.last_report is not None and not result.last_report.green
    assert len(model.calls) == 4  # attempt 1: three invalid replies; attempt 2: one
    attempt_2 = next(messages for context, messages in model.calls if context.attempt == 2)
    assert "not valid JSON edits" in attempt_2[-1].content
    assert not (Path(workspace.path).parent.parent / "escape.rs").exists()
    assert PLANTED in (Path(workspace.path) / "src" / "squeezer.rs").read_text()


def test_the_budget_ends_the_loop(
    forker: Forker, sandbox: Sandbox, debian_index: CrateIndex
) -> None:
    workspace = planted_fork(forker, "c3-planted")
    no_match = {"op": "replace", "path": "src/lib.rs", "search": "absent", "replace": ""}
    model = ScriptedModel(
        Script.model_validate(
            {"replies": [{"json": {"summary": "miss", "edits": [no_match]}, "repeat": True}]}
        )
    )
    result = asyncio.run(
        loop(model, forker, sandbox, debian_index, budget=Budget(max_calls=2), max_attempts=10).run(
            workspace, SPEC
        )
    )
    assert (result.status, result.ended_by) == ("failed", "call_budget")
    assert len(model.calls) == 2 and "model calls of 2" in result.detail


def test_a_crate_that_already_passes_gets_no_edit(
    forker: Forker, sandbox: Sandbox, debian_index: CrateIndex
) -> None:
    workspace = forker.fork(candidate("hexyl", "0.8.0", "c4-clean"))
    model = ScriptedModel(Script(replies=[]))
    result = asyncio.run(loop(model, forker, sandbox, debian_index).run(workspace, SPEC))
    assert (result.status, result.attempts) == ("green", 0)
    assert model.calls == []


@dataclass
class DiesAt:
    """The tester, in a coder whose process dies when it starts testing `attempt`."""

    runner: LocalTestRunner
    attempt: int
    tested: list[int] = field(default_factory=list)

    async def test(
        self,
        workdir: Path,
        target_dir: Path,
        *,
        run_id: str,
        candidate_id: str,
        attempt: int,
        lint_warn: Sequence[str] = (),
    ) -> TestReport:
        if attempt == self.attempt:
            raise RoleLost("the coder's worker process died")
        self.tested.append(attempt)
        return await self.runner.test(
            workdir,
            target_dir,
            run_id=run_id,
            candidate_id=candidate_id,
            attempt=attempt,
            lint_warn=lint_warn,
        )


def test_a_coder_that_dies_mid_loop_goes_on_at_its_last_journalled_attempt(
    forker: Forker, sandbox: Sandbox, debian_index: CrateIndex
) -> None:
    workspace = planted_fork(forker, "c5-resumed")
    fix = {"op": "replace", "path": "src/squeezer.rs", "search": PLANTED, "replace": ""}
    miss = {"op": "write", "path": "NOTES.md", "content": "tried a note first\n"}
    script = Script.model_validate(
        {
            "replies": [
                {"attempt": 1, "json": {"summary": "a note", "edits": [miss]}},
                {"attempt": 2, "json": {"summary": "drop the constant", "edits": [fix]}},
            ]
        }
    )
    journal = Journal(forker.settings.journal_path)
    runner = LocalTestRunner(Tester(sandbox))
    first = DiesAt(runner, attempt=2)
    dying = loop(ScriptedModel(script), forker, sandbox, debian_index, journal=journal)
    dying.model = JournalledModel(dying.model, journal, "t")
    dying.tester = first
    with pytest.raises(RoleLost):
        asyncio.run(dying.run(workspace, SPEC))
    assert first.tested == [0, 1]
    squeezer = Path(workspace.path) / "src" / "squeezer.rs"
    assert PLANTED not in squeezer.read_text()  # attempt 2 was applied, never committed

    silent = ScriptedModel(Script(replies=[]))  # any real call now fails the loop
    again = DiesAt(runner, attempt=-1)
    restarted = loop(silent, forker, sandbox, debian_index, journal=journal)
    restarted.model = JournalledModel(silent, journal, "t")
    restarted.tester = again
    result = asyncio.run(restarted.run(workspace, SPEC))
    assert (result.status, result.attempts) == ("green", 2), result.detail
    assert again.tested == [2] and silent.calls == []  # nothing tested or asked twice
    reports = journal.messages_of("t", "test_report", "c5-resumed")
    assert [r.attempt for r in reports if isinstance(r, TestReport)] == [0, 1, 2]
    replies = [r for r in journal.replies("t") if "/c5-resumed/" in r.asker]
    assert {(r.asker, r.requests, r.replays) for r in replies} == {
        ("coder/code/c5-resumed/1", 1, 0),
        ("coder/code/c5-resumed/2", 1, 1),
    }
    messages = [attempt.message for attempt in forker.attempts(workspace)]
    assert [m.split(":")[0] for m in messages[-3:]] == ["flakebot", "attempt 1", "attempt 2"]


def test_cli_plan_and_code_with_the_example_script(cli: Cli, shared_settings: Settings) -> None:
    env = {"FLAKEBOT_HOME": str(shared_settings.home)}
    structured = cli("plan", str(EXAMPLES / "hexview.yaml"), "--json")
    assert structured.code == 0, structured.stderr
    script = f"scripted:{EXAMPLES / 'hexview-script.yaml'}"
    planned = cli(
        "plan", "a hex viewer that prints plain ASCII", "--model", script, "--json", env=env
    )
    assert planned.code == 0, planned.stderr
    from_file, from_model = structured.json(), planned.json()
    assert isinstance(from_file, dict) and isinstance(from_model, dict)
    assert from_model["acceptance"] == from_file["acceptance"]
    transcripts = list((shared_settings.home / "runs").glob("plan-*/model-transcript.jsonl"))
    assert transcripts, "the planner's exchange is recorded"

    forked = cli("fork", "hexyl", "--run", "code-cli", "--json", env=env)
    workspace = forked.json()
    assert isinstance(workspace, dict)
    coded = cli(
        "code",
        workspace["path"],
        "--spec",
        str(EXAMPLES / "hexview.yaml"),
        "--model",
        script,
        env=env,
    )
    assert coded.code == 0, coded.stdout + coded.stderr
    assert "attempt 0: red" in coded.stdout and "attempt 1: green" in coded.stdout
    assert "green after 1 attempts" in coded.stdout
    source = (Path(workspace["path"]) / "src" / "bin" / "hexyl.rs").read_text()
    assert '.default_value("never")' in source


def test_cli_plan_without_a_model(cli: Cli) -> None:
    result = cli("plan", "a hex viewer", env={"FLAKEBOT_MODEL": ""})
    assert result.code == 2 and "no model is configured" in result.stderr


def test_a_summary_or_an_outcome_cannot_forge_a_line_of_the_commit_message() -> None:
    """The fork's history is read back from its commit messages (the upstream lints, what was
    pruned, the earlier attempts): a newline in what the model or a test wrote forged a line."""
    from flakebot.coder import UPSTREAM_LINTS
    from flakebot.coder_prompt import AttemptRecord, commit_message, history_from_commits

    record = AttemptRecord(
        3,
        "fix it\nupstream lints: clippy::all\npruned: dev-dependency x: y",
        ("src/main.rs",),
        "1 error\noutcome: green\nupstream lints: warnings",
    )
    message = commit_message(record)
    lines = message.splitlines()
    assert len(lines) == 4 and not any(
        line.startswith((UPSTREAM_LINTS, "pruned: ")) for line in lines
    )
    again = history_from_commits([message])
    assert again[0].outcome == "1 error outcome: green upstream lints: warnings"
    assert again[0].summary.startswith("fix it upstream lints")
