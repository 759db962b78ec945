"""Groq through its own SDK (`groq.AsyncGroq`), with `GROQ_API_KEY` and the model from settings.

The SDK appends `/openai/v1/chat/completions` to its base URL; tests hand it an httpx client on
MockTransport and check the request it builds. Structured output goes through `response_format`
with a JSON schema (Groq supports it on its current models).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import groq
import httpx
from pydantic import BaseModel

from flakebot.errors import ModelUnavailable
from flakebot.models.base import (
    CallContext,
    ChatMessage,
    ModelReply,
    refuse_real_models_under_test,
    response_format,
)
from flakebot.models.openai_compat import parse_chat_completion

DEFAULT_BASE_URL = "https://api.groq.com"


class GroqModel:
    """A Groq-hosted model."""

    def __init__(
        self,
        model: str,
        *,
        api_key: str | None,
        base_url: str = DEFAULT_BASE_URL,
        http: httpx.AsyncClient | None = None,
        max_retries: int = 2,
    ) -> None:
        if not api_key:
            raise ModelUnavailable(
                f"groq:{model} needs an API key", hint="set GROQ_API_KEY (console.groq.com)"
            )
        if http is None:
            refuse_real_models_under_test("Groq", base_url)
        self.model = model
        self._client = groq.AsyncGroq(
            api_key=api_key, base_url=base_url, http_client=http, max_retries=max_retries
        )

    @property
    def name(self) -> str:
        return f"groq:{self.model}"

    async def complete(
        self,
        messages: Sequence[ChatMessage],
        *,
        output: type[BaseModel] | None = None,
        context: CallContext,
    ) -> ModelReply:
        options: dict[str, Any] = {"temperature": 0}
        if output is not None:
            options["response_format"] = response_format(output)
        try:
            completion = await self._client.chat.completions.create(
                model=self.model,
                messages=[message.model_dump() for message in messages],  # type: ignore[misc]
                **options,
            )
        except groq.APIStatusError as exc:
            raise ModelUnavailable(
                f"{self.name} answered {exc.status_code}: {str(exc.message)[:300]}",
                hint="check GROQ_API_KEY and the model name"
                if exc.status_code in (401, 404)
                else None,
            ) from None
        except groq.APIConnectionError as exc:
            raise ModelUnavailable(f"{self.name} could not be reached: {exc}") from None
        return parse_chat_completion(completion.model_dump(mode="json"), self.model)
