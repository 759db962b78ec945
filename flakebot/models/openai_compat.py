"""Any OpenAI-compatible chat endpoint (vLLM, llama.cpp server, Ollama, ...), through httpx.

POST {base}/chat/completions with the messages and, for structured output, `response_format:
json_schema`. An endpoint that rejects `response_format` (400 naming it) is asked again with the
schema in the instructions instead, and is remembered as such.
"""

from __future__ import annotations

from collections.abc import Sequence

import httpx
from pydantic import BaseModel, JsonValue

from flakebot.errors import ModelUnavailable
from flakebot.models.base import (
    CallContext,
    ChatMessage,
    ModelReply,
    Usage,
    refuse_real_models_under_test,
    response_format,
    schema_instructions,
)


def with_instructions(
    messages: Sequence[ChatMessage], output: type[BaseModel]
) -> list[ChatMessage]:
    """The messages with the reply's JSON Schema appended to the system message (or prepended)."""
    extra = schema_instructions(output)
    if messages and messages[0].role == "system":
        first = ChatMessage(role="system", content=f"{messages[0].content}\n\n{extra}")
        return [first, *messages[1:]]
    return [ChatMessage(role="system", content=extra), *messages]


def parse_chat_completion(body: dict[str, JsonValue], model: str) -> ModelReply:
    """Text and usage from an OpenAI-shaped chat.completion body."""
    try:
        choices = body["choices"]
        assert isinstance(choices, list) and choices
        first = choices[0]
        assert isinstance(first, dict)
        message = first["message"]
        assert isinstance(message, dict)
        content = message.get("content") or ""
        assert isinstance(content, str)
    except (KeyError, AssertionError):
        raise ModelUnavailable(f"{model} sent a reply with no message: {str(body)[:300]}") from None
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    assert isinstance(usage, dict)
    return ModelReply(
        text=content,
        usage=Usage(
            prompt_tokens=int(usage.get("prompt_tokens") or 0),  # type: ignore[arg-type]
            completion_tokens=int(usage.get("completion_tokens") or 0),  # type: ignore[arg-type]
        ),
        model=str(body.get("model") or model),
        raw=body,
    )


class OpenAICompatibleModel:
    """A chat model behind an OpenAI-compatible HTTP API."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        http: httpx.AsyncClient | None = None,
        timeout: float = 120.0,
        json_schema: bool = True,
    ) -> None:
        if http is None:
            refuse_real_models_under_test("OpenAI-compatible", base_url)
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._http = http or httpx.AsyncClient(timeout=timeout)
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.json_schema = json_schema

    @property
    def name(self) -> str:
        return f"openai:{self.base_url}#{self.model}"

    async def complete(
        self,
        messages: Sequence[ChatMessage],
        *,
        output: type[BaseModel] | None = None,
        context: CallContext,
    ) -> ModelReply:
        body: dict[str, JsonValue] = {"model": self.model, "temperature": 0}
        sent = list(messages)
        if output is not None and self.json_schema:
            body["response_format"] = response_format(output)
        elif output is not None:
            sent = with_instructions(messages, output)
        body["messages"] = [message.model_dump() for message in sent]
        response = await self._post(body)
        if (
            response.status_code == 400
            and output is not None
            and self.json_schema
            and "response_format" in response.text
        ):
            self.json_schema = False  # this endpoint does not take schemas: instruct instead
            return await self.complete(messages, output=output, context=context)
        if response.status_code != 200:
            raise ModelUnavailable(
                f"{self.name} answered {response.status_code}: {response.text[:300]}"
            )
        return parse_chat_completion(response.json(), self.model)

    async def _post(self, body: dict[str, JsonValue]) -> httpx.Response:
        try:
            return await self._http.post(
                f"{self.base_url}/chat/completions", json=body, headers=self._headers
            )
        except httpx.HTTPError as exc:
            raise ModelUnavailable(
                f"{self.name} could not be reached: {type(exc).__name__}: {exc}",
                hint="is the server running? check the URL in --model openai:URL#NAME",
            ) from None
