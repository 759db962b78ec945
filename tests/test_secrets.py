"""Secrets and privacy: keys masked in errors, journals and transcripts; a private home."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path

import httpx
import pytest

from flakebot import manifest as manifests
from flakebot.errors import FlakebotError, ModelUnavailable
from flakebot.home import append_private, ensure_home, write_private
from flakebot.models import ChatMessage, GroqModel, Transcript
from flakebot.models.base import CallContext
from flakebot.models.structured import Exchange
from flakebot.recorder import Recorder
from flakebot.runstate import RunRecord
from flakebot.settings import Settings
from messages import StepFailed
from tests.conftest import Cli
from tests.samples import SAMPLES

KEY = "gsk_live0123456789abcdefABCDEFxyz"
CONTEXT = CallContext(role="coder", step="code")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_key_a_provider_echoes_back_is_masked_in_the_error() -> None:
    echo = httpx.Response(
        401, json={"error": {"message": f"Invalid API Key: {KEY}", "code": "invalid_api_key"}}
    )
    client = httpx.AsyncClient(transport=httpx.MockTransport(lambda request: echo))
    model = GroqModel("llama-3.3-70b-versatile", api_key=KEY, http=client, max_retries=0)
    with pytest.raises(ModelUnavailable) as caught:
        asyncio.run(model.complete([ChatMessage(role="user", content="hi")], context=CONTEXT))
    assert KEY not in str(caught.value) and "***" in caught.value.message


def test_a_registered_secret_is_masked_in_every_error_and_hint() -> None:
    Settings.from_env({"FLAKEBOT_HOME": "/tmp/x", "GROQ_API_KEY": "plainsecret-4242"})
    error = FlakebotError("the endpoint said plainsecret-4242", hint="not plainsecret-4242 again")
    assert "plainsecret-4242" not in error.message and "plainsecret-4242" not in str(error.hint)


def test_journal_and_transcript_mask_secrets_and_are_private(tmp_path: Path) -> None:
    Settings.from_env({"FLAKEBOT_HOME": str(tmp_path), "GROQ_API_KEY": KEY})
    journal = tmp_path / "runs" / "r1" / "journal.jsonl"
    recorder = Recorder("r1", journal)
    recorder.record(StepFailed(run_id="r1", step="plan", error_type="X", reason=f"echoed {KEY}"))
    recorder.event("plan", "spec_planned", f"with {KEY}")
    transcript_path = tmp_path / "runs" / "r1" / "model-transcript.jsonl"
    Transcript(transcript_path).add(
        Exchange(CONTEXT, "groq:x", [ChatMessage(role="user", content=KEY)], KEY, None, 1, 1)
    )
    for path in (journal, transcript_path):
        text = path.read_text()
        assert KEY not in text and "***" in text, path
        assert mode(path) == 0o600, path


def test_home_is_private_and_its_files_are_owner_only(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    home.chmod(0o755)
    ensure_home(home)
    assert mode(home) == 0o700
    write_private(home / "a" / "state.json", "{}")
    append_private(home / "a" / "log.jsonl", "{}")
    assert mode(home / "a" / "state.json") == 0o600 and mode(home / "a" / "log.jsonl") == 0o600
    record = RunRecord(home, "r1")
    record.add("workspace", home / "w", candidate_id="c1")
    assert mode(record.path) == 0o600
    saved = manifests.save(home, SAMPLES["tool_manifest"])  # type: ignore[arg-type]
    assert mode(saved) == 0o600 and mode(saved.with_suffix(".md")) == 0o600


def test_the_cli_makes_its_home_private(cli: Cli, tmp_path: Path) -> None:
    home = tmp_path / "fresh-home"
    done = cli("doctor", "--check", "home", "--json", env={"FLAKEBOT_HOME": str(home)})
    assert done.code == 0, done.stderr
    assert mode(home) == 0o700


@pytest.mark.parametrize(
    "args",
    [
        ("manifest", "../.."),
        ("clean", ".."),
        ("clean", "/etc"),
        ("fork", "hexyl", "--run", "../x"),
        ("clean", "run-1\n"),  # Python's $ would let a final newline through
    ],
)
def test_run_ids_from_the_command_line_cannot_leave_the_home(
    cli: Cli, args: tuple[str, ...]
) -> None:
    done = cli(*args)
    assert done.code == 2, done.stderr
    assert "is not valid" in done.stderr and "Traceback" not in done.stderr


def test_an_oversized_model_reply_is_cut_recorded_and_fed_back(tmp_path: Path) -> None:
    from pydantic import BaseModel

    from flakebot.models import Budget, ask
    from flakebot.models.structured import MAX_REPLY_CHARS
    from tests.test_models import scripted

    class Answer(BaseModel):
        value: int

    huge = '{"value": 1, "padding": "' + "x" * (MAX_REPLY_CHARS * 2) + '"}'
    model = scripted({"text": huge}, {"text": '{"value": 7}'})
    transcript = Transcript(tmp_path / "t.jsonl")
    answer = asyncio.run(
        ask(model, [ChatMessage(role="user", content="q")], Answer, context=CONTEXT,
            budget=Budget(), transcript=transcript)
    )  # fmt: skip
    assert answer.value == 7
    first, second = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert "more than the" in first["problem"] and len(first["reply"]) == MAX_REPLY_CHARS
    fed_back = model.calls[1][1]
    assert "more than the" in fed_back[-1].content
    assert sum(len(message.content) for message in fed_back) < 10_000
    assert second["problem"] is None
