"""Asking for structured output: validate the reply, feed the problem back, retry, keep it all.

`ask` sends the messages with the wanted pydantic type, pulls a JSON object out of the reply
(fenced or bare), and validates it. An invalid reply is not an error that ends a run: the reply
and what was wrong with it go back to the model as the next turn, up to `retries` times. Every
exchange (prompt, raw reply, verdict) is appended to a `Transcript`, which a run writes to disk.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import structlog
from pydantic import BaseModel, ValidationError

from flakebot.errors import ModelReplyInvalid
from flakebot.home import append_private
from flakebot.models.base import CallContext, ChatMessage, Model, Usage
from flakebot.models.budget import RunBudget
from flakebot.redact import redact

log = structlog.get_logger()

T = TypeVar("T", bound=BaseModel)
MAX_REPLY_CHARS = 400_000
_FENCE = re.compile(r"```(?:json)?\s*(\{.*\})\s*```", re.DOTALL)


@dataclass(frozen=True)
class Exchange:
    """One call to a model: who asked, what it was sent, what it said, and the verdict."""

    context: CallContext
    model: str
    messages: list[ChatMessage]
    reply: str
    problem: str | None
    prompt_tokens: int
    completion_tokens: int
    at: float = field(default_factory=time.time)

    def as_json(self) -> str:
        return json.dumps(
            {
                "role": self.context.role,
                "step": self.context.step,
                "candidate": self.context.candidate_id,
                "attempt": self.context.attempt,
                "model": self.model,
                "messages": [message.model_dump() for message in self.messages],
                "reply": self.reply,
                "problem": self.problem,
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "at": self.at,
            }
        )


@dataclass
class Transcript:
    """Every exchange with a model, kept in memory and, with a path, appended as JSON lines."""

    path: Path | None = None
    exchanges: list[Exchange] = field(default_factory=list)

    def add(self, exchange: Exchange) -> None:
        self.exchanges.append(exchange)
        if self.path is not None:
            append_private(self.path, redact(exchange.as_json()))


def extract_json(text: str) -> str:
    """The JSON object in a reply: inside a ``` fence if there is one, else from { to }."""
    fenced = _FENCE.search(text)
    if fenced:
        return fenced.group(1)
    start, end = text.find("{"), text.rfind("}")
    if start == -1 or end < start:
        raise ValueError("the reply holds no JSON object")
    return text[start : end + 1]


def validate_reply(text: str, output: type[T]) -> T:
    """Parse and validate; raises ValueError with a message meant for the model."""
    try:
        return output.model_validate_json(extract_json(text))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'reply'}: {error['msg']}"
            for error in exc.errors()[:10]
        )
        raise ValueError(problems) from None


async def ask(
    model: Model,
    messages: Sequence[ChatMessage],
    output: type[T],
    *,
    context: CallContext,
    budget: RunBudget,
    transcript: Transcript,
    retries: int = 2,
    check: Callable[[T], object] | None = None,
) -> T:
    """A validated `output` from `model`; bad replies are fed back up to `retries` times.

    `check` may reject a reply that has the right shape but breaks a further rule, by raising
    ValueError with a message for the model.
    """
    history = list(messages)
    replies: list[str] = []
    for _ in range(retries + 1):
        await budget.acheck()
        reply = await model.complete(history, output=output, context=context)
        await budget.arecord(model.name, reply.usage)
        text = reply.text
        if len(text) > MAX_REPLY_CHARS:  # kept and fed back only in part: bounded memory
            text = text[:MAX_REPLY_CHARS]
            problem = (
                f"the reply was {len(reply.text)} characters, more than the {MAX_REPLY_CHARS} "
                "allowed; reply with a smaller edit"
            )
            replies.append(text)
            transcript.add(_exchange(context, model, history, text, problem, reply.usage))
            log.warning(
                "model_reply_rejected", role=context.role, step=context.step, problem=problem
            )
            history = [
                *history,
                ChatMessage(role="assistant", content=text[:2_000] + "\n[... cut]"),
                ChatMessage(role="user", content=f"That reply was not valid: {problem}"),
            ]
            continue
        replies.append(text)
        try:
            value = validate_reply(text, output)
            if check is not None:
                check(value)
        except ValueError as exc:
            problem = str(exc)
            transcript.add(_exchange(context, model, history, reply.text, problem, reply.usage))
            log.warning(
                "model_reply_rejected", role=context.role, step=context.step, problem=problem
            )
            history = [
                *history,
                ChatMessage(role="assistant", content=reply.text),
                ChatMessage(
                    role="user",
                    content=f"That reply was not valid: {problem}\n"
                    "Reply again with only the corrected JSON object.",
                ),
            ]
            continue
        transcript.add(_exchange(context, model, history, reply.text, None, reply.usage))
        return value
    raise ModelReplyInvalid(
        f"{model.name} gave no valid {output.__name__} in {retries + 1} replies",
        replies=replies,
        hint="every reply is in the run's model transcript",
    )


def _exchange(
    context: CallContext,
    model: Model,
    messages: list[ChatMessage],
    reply: str,
    problem: str | None,
    usage: Usage,
) -> Exchange:
    return Exchange(
        context=context,
        model=model.name,
        messages=list(messages),
        reply=reply,
        problem=problem,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
    )
