"""Models: one async interface (`Model.complete`), three implementations, and what loops need
around them (structured output with bounded retries, budgets, transcripts).

    groq:NAME           GroqModel             the groq SDK, GROQ_API_KEY
    openai:URL#NAME     OpenAICompatibleModel OpenAI-compatible endpoints (vLLM, llama.cpp, Ollama)
    scripted:FILE       ScriptedModel         replies from a YAML/JSON script (tests, offline demos)
"""

from __future__ import annotations

from typing import assert_never

import httpx

from flakebot.errors import ConfigError
from flakebot.models.base import CallContext, ChatMessage, Model, ModelReply, NoModel, Usage
from flakebot.models.budget import Budget, Price
from flakebot.models.groq_model import DEFAULT_BASE_URL, GroqModel
from flakebot.models.openai_compat import OpenAICompatibleModel
from flakebot.models.scripted import ScriptedModel
from flakebot.models.structured import Exchange, Transcript, ask
from flakebot.settings import ModelRef, Settings


def load_model(
    ref: ModelRef, settings: Settings, *, http: httpx.AsyncClient | None = None
) -> Model:
    """The model `ref` names (`--model` or FLAKEBOT_MODEL)."""
    provider = ref.provider
    if provider == "groq":
        key = settings.groq_api_key.get_secret_value() if settings.groq_api_key else None
        url = settings.groq_base_url or DEFAULT_BASE_URL
        return GroqModel(str(ref.name), api_key=key, base_url=url, http=http)
    if provider == "openai":
        return OpenAICompatibleModel(str(ref.url), str(ref.name), http=http)
    if provider == "scripted":
        if ref.script is None:
            raise ConfigError("scripted: needs a script file", hint="--model scripted:FILE")
        return ScriptedModel.from_file(ref.script)
    assert_never(provider)


__all__ = [
    "Budget",
    "CallContext",
    "ChatMessage",
    "Exchange",
    "GroqModel",
    "Model",
    "ModelReply",
    "NoModel",
    "OpenAICompatibleModel",
    "Price",
    "ScriptedModel",
    "Transcript",
    "Usage",
    "ask",
    "load_model",
]
