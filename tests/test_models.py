"""Models at the seam: Groq and OpenAI-compatible clients on httpx.MockTransport with real-shaped
replies, the scripted model, structured replies with bounded retries, budgets, and the guard."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from pydantic import BaseModel

from flakebot.errors import BudgetExceeded, ConfigError, ModelReplyInvalid, ModelUnavailable
from flakebot.models import (
    Budget,
    CallContext,
    ChatMessage,
    GroqModel,
    OpenAICompatibleModel,
    Price,
    ScriptedModel,
    Transcript,
    Usage,
    ask,
    load_model,
)
from flakebot.models.scripted import Script
from flakebot.planner import Planner
from flakebot.settings import Settings, parse_model
from messages import ToolRequest
from tests.conftest import Cli

CONTEXT = CallContext(role="planner", step="plan")
SPEC_DRAFT = {
    "name": "hexview",
    "summary": "A hex viewer that prints plain ASCII.",
    "tool_kind": "cli",
    "search_queries": ["hex viewer", "hexdump"],
    "requirements": ["Never print colour codes."],
    "acceptance": [
        {"name": "dumps", "args": [], "stdin": "A", "stdout": {"match": "contains", "value": "41"}}
    ],
}


def chat_completion(content: str, model: str = "llama-3.3-70b-versatile") -> dict[str, object]:
    """A chat.completion body shaped like Groq's (and OpenAI's) replies."""
    return {
        "id": "chatcmpl-3f1c2a9e-7b1d-4c55-9a1e-2b8f0d6c4e11",
        "object": "chat.completion",
        "created": 1763769600,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "queue_time": 0.02,
            "prompt_tokens": 812,
            "prompt_time": 0.04,
            "completion_tokens": 143,
            "completion_time": 0.29,
            "total_tokens": 955,
            "total_time": 0.33,
        },
        "system_fingerprint": "fp_3f39dc5e17",
        "x_groq": {"id": "req_01kab8c3g7f9xq2w6z5m4n8p1r"},
    }


class Recorder:
    def __init__(self, *responses: httpx.Response) -> None:
        self.requests: list[httpx.Request] = []
        self.responses = list(responses)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.responses.pop(0)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self))


def test_groq_plan_request_and_reply(settings: Settings) -> None:
    recorder = Recorder(httpx.Response(200, json=chat_completion(json.dumps(SPEC_DRAFT))))
    keyed = settings.model_copy(
        update={"groq_api_key": __import__("pydantic").SecretStr("gsk_testkey0123456789abcdef")}
    )
    model = load_model(parse_model("groq:llama-3.3-70b-versatile"), keyed, http=recorder.client())
    assert isinstance(model, GroqModel)
    spec = asyncio.run(Planner(model).plan(ToolRequest(run_id="r1", text="a hex viewer")))
    assert spec.name == "hexview" and spec.run_id == "r1"
    (request,) = recorder.requests
    assert request.method == "POST"
    assert str(request.url) == "https://api.groq.com/openai/v1/chat/completions"
    assert request.headers["Authorization"] == "Bearer gsk_testkey0123456789abcdef"
    body = json.loads(request.content)
    assert body["model"] == "llama-3.3-70b-versatile"
    assert [message["role"] for message in body["messages"]] == ["system", "user"]
    assert body["messages"][1]["content"] == "a hex viewer"
    assert "search_queries" in body["messages"][0]["content"]
    schema = body["response_format"]
    assert schema["type"] == "json_schema" and schema["json_schema"]["name"] == "ToolSpecDraft"
    assert "acceptance" in schema["json_schema"]["schema"]["properties"]


def test_groq_errors_are_readable() -> None:
    recorder = Recorder(
        httpx.Response(
            401,
            json={
                "error": {
                    "message": "Invalid API Key",
                    "type": "invalid_request_error",
                    "code": "invalid_api_key",
                }
            },
        )
    )
    model = GroqModel(
        "llama-3.3-70b-versatile", api_key="gsk_bad", http=recorder.client(), max_retries=0
    )
    messages = [ChatMessage(role="user", content="hi")]
    with pytest.raises(ModelUnavailable) as caught:
        asyncio.run(model.complete(messages, context=CONTEXT))
    assert "answered 401" in caught.value.message and caught.value.hint is not None
    with pytest.raises(ModelUnavailable, match="needs an API key"):
        GroqModel("x", api_key=None, http=recorder.client())


def test_real_models_are_refused_under_test(cli: Cli) -> None:
    with pytest.raises(ModelUnavailable, match="refusing to call a real Groq model"):
        GroqModel("llama-3.3-70b-versatile", api_key="gsk_anything")
    with pytest.raises(ModelUnavailable, match="refusing"):
        OpenAICompatibleModel("http://127.0.0.1:8080/v1", "qwen")
    result = cli(
        "plan",
        "a hex viewer",
        "--model",
        "groq:llama-3.3-70b-versatile",
        env={"GROQ_API_KEY": "gsk_x" * 4},
    )
    assert result.code == 3 and "refusing to call a real Groq model" in result.stderr
    assert "gsk_x" not in result.stderr + result.stdout


def test_openai_compatible_falls_back_to_instructions() -> None:
    recorder = Recorder(
        httpx.Response(
            400, json={"error": {"message": "response_format json_schema is not supported"}}
        ),
        httpx.Response(
            200,
            json=chat_completion("```json\n" + json.dumps(SPEC_DRAFT) + "\n```", "qwen2.5-coder"),
        ),
    )
    model = OpenAICompatibleModel(
        "http://127.0.0.1:8080/v1", "qwen2.5-coder", http=recorder.client()
    )
    spec = asyncio.run(Planner(model).plan(ToolRequest(run_id="r1", text="a hex viewer")))
    assert spec.name == "hexview"
    first, second = (json.loads(request.content) for request in recorder.requests)
    assert str(recorder.requests[0].url) == "http://127.0.0.1:8080/v1/chat/completions"
    assert "response_format" in first and "response_format" not in second
    assert "JSON Schema" in second["messages"][0]["content"]
    assert model.json_schema is False  # remembered


def test_openai_compatible_unreachable() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Connection refused", request=request)

    model = OpenAICompatibleModel(
        "http://127.0.0.1:9/v1", "m", http=httpx.AsyncClient(transport=httpx.MockTransport(refuse))
    )
    with pytest.raises(ModelUnavailable, match="could not be reached"):
        asyncio.run(model.complete([ChatMessage(role="user", content="x")], context=CONTEXT))


def scripted(*replies: dict[str, object]) -> ScriptedModel:
    return ScriptedModel(Script.model_validate({"replies": list(replies)}))


def test_scripted_model_matches_keys_in_order() -> None:
    model = scripted(
        {"role": "coder", "candidate": "hexyl", "attempt": 2, "text": "second"},
        {"role": "coder", "text": "any coder"},
        {"role": "planner", "json": {"a": 1}, "repeat": True},
    )
    hi = [ChatMessage(role="user", content="x" * 400)]

    def say(context: CallContext) -> str:
        return asyncio.run(model.complete(hi, context=context)).text

    assert say(CallContext("coder", "code", "c1-hexyl", 2)) == "second"
    assert say(CallContext("coder", "code", "c1-hexyl", 2)) == "any coder"
    assert say(CallContext("planner", "plan")) == '{"a": 1}'
    assert say(CallContext("planner", "plan")) == '{"a": 1}'
    with pytest.raises(ModelUnavailable, match="no reply left for role=coder"):
        say(CallContext("coder", "code", "c1-hexyl", 3))
    assert len(model.calls) == 5
    reply = asyncio.run(model.complete(hi, context=CallContext("planner", "plan")))
    assert reply.usage.prompt_tokens == 100


def test_scripted_model_from_file(tmp_path: Path) -> None:
    path = tmp_path / "script.yaml"
    path.write_text("replies:\n  - role: planner\n    json: {name: x}\n")
    assert ScriptedModel.from_file(path).script.replies[0].role == "planner"
    path.write_text("replies:\n  - role: planner\n")
    with pytest.raises(ConfigError, match="exactly one of `text` or `json`"):
        ScriptedModel.from_file(path)


class Answer(BaseModel):
    value: int


def test_ask_feeds_problems_back_and_keeps_every_reply(tmp_path: Path) -> None:
    model = scripted(
        {"text": "Sure! Here you go: {value: oops}"},
        {"text": '```json\n{"value": "seven"}\n```'},
        {"text": 'The answer is {"value": 7}.'},
    )
    transcript = Transcript(tmp_path / "transcript.jsonl")
    answer = asyncio.run(
        ask(model, [ChatMessage(role="user", content="q")], Answer, context=CONTEXT,
            budget=Budget(), transcript=transcript)
    )  # fmt: skip
    assert answer.value == 7
    third_call = model.calls[2][1]
    assert (
        third_call[-1].role == "user"
        and "value: Input should be a valid integer" in third_call[-1].content
    )
    assert third_call[-2].content.startswith("```json")
    lines = [json.loads(line) for line in (tmp_path / "transcript.jsonl").read_text().splitlines()]
    assert [line["problem"] is None for line in lines] == [False, False, True]
    assert lines[0]["reply"].startswith("Sure!")


def test_ask_gives_up_at_its_bound() -> None:
    model = scripted({"text": "no json here", "repeat": True})
    with pytest.raises(ModelReplyInvalid) as caught:
        asyncio.run(
            ask(model, [ChatMessage(role="user", content="q")], Answer, context=CONTEXT,
                budget=Budget(), transcript=Transcript(), retries=2)
        )  # fmt: skip
    assert caught.value.replies == ["no json here"] * 3


def test_budget_bounds() -> None:
    budget = Budget(max_calls=2, max_tokens=None, max_money=None, prices={"m": Price(1.0, 2.0)})
    budget.record("m", Usage(prompt_tokens=1_000_000, completion_tokens=500_000))
    assert budget.money == pytest.approx(2.0) and budget.tokens == 1_500_000
    budget.check()
    budget.record("m", Usage())
    with pytest.raises(BudgetExceeded) as caught:
        budget.check()
    assert caught.value.bound == "call_budget"
    with pytest.raises(BudgetExceeded) as money:
        Budget(max_money=1.0, money=1.5).check()
    assert money.value.bound == "money_budget"
    with pytest.raises(BudgetExceeded) as tokens:
        Budget(max_tokens=10, tokens=10).check()
    assert tokens.value.bound == "token_budget"
    with pytest.raises(BudgetExceeded) as seconds:
        Budget(max_seconds=0.0).check()
    assert seconds.value.bound == "time_budget"
    assert "groq:llama-3.3-70b-versatile" in Budget().prices


def test_only_the_named_stand_in_endpoint_is_allowed_under_test(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLAKEBOT_STANDIN_MODEL_URL", "http://127.0.0.1:9/")
    model = GroqModel("llama-3.3-70b-versatile", api_key="gsk_a", base_url="http://127.0.0.1:9")
    assert model.name == "groq:llama-3.3-70b-versatile"
    with pytest.raises(ModelUnavailable, match="refusing"):
        GroqModel("llama-3.3-70b-versatile", api_key="gsk_a", base_url="http://127.0.0.1:10")
    with pytest.raises(ModelUnavailable, match="refusing"):
        GroqModel("llama-3.3-70b-versatile", api_key="gsk_a")  # api.groq.com
