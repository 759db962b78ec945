"""The model interface: one async method, chat messages in, text and token usage out.

Every model (Groq, an OpenAI-compatible endpoint, the scripted model) implements `Model.complete`.
When the caller wants structured output it passes a pydantic type; a model whose endpoint supports
`response_format: json_schema` sends the schema there, others add it to the instructions. Either
way the reply comes back as text; `flakebot.models.structured.ask` validates it and retries.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, JsonValue

from flakebot.errors import ModelUnavailable

Role = Literal["system", "user", "assistant"]
FORBID_ENV = "FLAKEBOT_FORBID_REAL_MODELS"
STANDIN_ENV = "FLAKEBOT_STANDIN_MODEL_URL"


class ChatMessage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Role
    content: str


class Usage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
        )


@dataclass(frozen=True)
class CallContext:
    """Who is asking, for what: the scripted model picks its reply by these; logs carry them."""

    role: str
    step: str
    candidate_id: str | None = None
    attempt: int | None = None


@dataclass(frozen=True)
class ModelReply:
    text: str
    usage: Usage
    model: str
    raw: dict[str, JsonValue] = field(default_factory=dict)


class Model(Protocol):
    """Anything that answers chat messages."""

    @property
    def name(self) -> str: ...

    async def complete(
        self,
        messages: Sequence[ChatMessage],
        *,
        output: type[BaseModel] | None = None,
        context: CallContext,
    ) -> ModelReply: ...


def schema_of(output: type[BaseModel]) -> dict[str, JsonValue]:
    schema: dict[str, JsonValue] = output.model_json_schema()
    return schema


def schema_instructions(output: type[BaseModel]) -> str:
    """What a model without json_schema support is told about the reply's shape."""
    return (
        "Reply with one JSON object and nothing else (no prose, no code fences), valid against "
        f"this JSON Schema:\n{json.dumps(schema_of(output))}"
    )


def response_format(output: type[BaseModel]) -> dict[str, JsonValue]:
    """The OpenAI-style `response_format` asking for JSON that matches `output`'s schema."""
    return {
        "type": "json_schema",
        "json_schema": {"name": output.__name__, "schema": schema_of(output), "strict": False},
    }


def refuse_real_models_under_test(provider: str, url: str | None = None) -> None:
    """Tests set FLAKEBOT_FORBID_REAL_MODELS=1; then no real endpoint may be built, except the
    one a test serves itself as the API's stand-in and names in FLAKEBOT_STANDIN_MODEL_URL."""
    standin = os.environ.get(STANDIN_ENV, "")
    if url is not None and standin and url.rstrip("/") == standin.rstrip("/"):
        return
    if os.environ.get(FORBID_ENV) == "1":
        raise ModelUnavailable(
            f"refusing to call a real {provider} model: {FORBID_ENV}=1 (tests use the scripted "
            "model, or pass an httpx client on MockTransport)"
        )


class NoModel:
    """Stands in when no model is configured: a crate that already passes needs none."""

    @property
    def name(self) -> str:
        return "none"

    async def complete(
        self,
        messages: Sequence[ChatMessage],
        *,
        output: type[BaseModel] | None = None,
        context: CallContext,
    ) -> ModelReply:
        raise ModelUnavailable(
            f"no model is configured, and the {context.role} needs one",
            hint="pass --model (groq:NAME, openai:URL#NAME, scripted:FILE) or set FLAKEBOT_MODEL",
        )
