"""The scripted model: replies from a YAML or JSON script, for tests and offline demos.

A script is a list of replies, each with the keys it answers to and what it says:

    replies:
      - role: coder            # who asks: planner | coder (any key may be left out)
        step: code             # the step: plan | code
        candidate: c1-hexyl    # a candidate id, or a crate name (the part after `cN-`)
        attempt: 1             # the attempt number
        json:                  # the reply as data (sent as JSON text) ...
          summary: print no colours by default
          edits: [...]
        # text: "..."          # ... or as text, exactly as a model would send it
        # repeat: true         # answer every matching call, not just the first
        # usage: {prompt_tokens: 900, completion_tokens: 120}

Each call takes the first unused reply whose keys all match its context (a `repeat` reply is never
used up). Token usage is the script's, or estimated at four characters a token. Every call's
messages are kept in `calls`, so tests can check what the model was shown.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, model_validator

from flakebot.errors import ConfigError, ModelUnavailable
from flakebot.models.base import CallContext, ChatMessage, ModelReply, Usage


class ScriptedReply(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    role: str | None = None
    step: str | None = None
    candidate: str | None = None
    attempt: int | None = None
    text: str | None = None
    json_reply: JsonValue = Field(default=None, alias="json")
    repeat: bool = False
    usage: Usage | None = None

    @model_validator(mode="after")
    def _says_something(self) -> ScriptedReply:
        if (self.text is None) == (self.json_reply is None):
            raise ValueError("each reply needs exactly one of `text` or `json`")
        return self

    def matches(self, context: CallContext) -> bool:
        if self.role is not None and self.role != context.role:
            return False
        if self.step is not None and self.step != context.step:
            return False
        if self.attempt is not None and self.attempt != context.attempt:
            return False
        if self.candidate is not None:
            candidate = context.candidate_id or ""
            crate = candidate.split("-", 1)[1] if "-" in candidate else candidate
            if self.candidate not in (candidate, crate):
                return False
        return True

    def content(self) -> str:
        return self.text if self.text is not None else json.dumps(self.json_reply)


class Script(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    replies: list[ScriptedReply]


@dataclass
class ScriptedModel:
    """Answers from a script; keeps every call's context and messages."""

    script: Script
    source: str = "inline"
    calls: list[tuple[CallContext, list[ChatMessage]]] = field(default_factory=list)
    _used: set[int] = field(default_factory=set)

    @classmethod
    def from_file(cls, path: Path) -> ScriptedModel:
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read model script {path}: {exc.strerror}") from None
        try:
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
            script = Script.model_validate(data)
        except (json.JSONDecodeError, yaml.YAMLError, ValidationError) as exc:
            raise ConfigError(
                f"{path} is not a valid model script: {exc}",
                hint="see the scripted model's format in README.md",
            ) from None
        return cls(script=script, source=str(path))

    @property
    def name(self) -> str:
        return f"scripted:{self.source}"

    async def complete(
        self,
        messages: Sequence[ChatMessage],
        *,
        output: type[BaseModel] | None = None,
        context: CallContext,
    ) -> ModelReply:
        self.calls.append((context, list(messages)))
        for index, reply in enumerate(self.script.replies):
            if (reply.repeat or index not in self._used) and reply.matches(context):
                self._used.add(index)
                text = reply.content()
                prompt_chars = sum(len(message.content) for message in messages)
                usage = reply.usage or Usage(
                    prompt_tokens=prompt_chars // 4, completion_tokens=max(1, len(text) // 4)
                )
                return ModelReply(text=text, usage=usage, model=self.name)
        raise ModelUnavailable(
            f"the script {self.source} has no reply left for role={context.role} "
            f"step={context.step} candidate={context.candidate_id} attempt={context.attempt}",
            hint="add a reply with matching keys to the script",
        )
