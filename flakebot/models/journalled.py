"""A model whose replies are kept in the run's journal, and never asked for twice.

`JournalledModel` wraps any model for one run. Each call is named by who asks (role, step,
candidate, attempt: the CallContext) and its position among that asker's calls in this process,
the first being 0: the planner's first call, a candidate's attempt 3 and the retry `ask` makes
after an invalid reply are all different calls. When the journal already holds a reply for a
call (a resumed run, a coder restarted after its process died), that reply is given again,
marked `replayed`, and the model is not asked; otherwise the model answers and its reply is
committed to the journal before it is returned. The loops that ask are deterministic given the
replies (the same fork, the same tests), so a replay asks the same questions in the same order.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog
from pydantic import BaseModel

from flakebot.journal import RunJournal
from flakebot.models.base import CallContext, ChatMessage, Model, ModelReply, Usage

log = structlog.get_logger()


def asker_of(context: CallContext) -> str:
    """The journal's name for who asks: `coder/code/c1-hexyl/3`, `planner/plan/-/-`."""
    candidate = context.candidate_id or "-"
    attempt = "-" if context.attempt is None else str(context.attempt)
    return f"{context.role}/{context.step}/{candidate}/{attempt}"


@dataclass
class JournalledModel:
    """`model` for run `run_id`, with every reply journalled and replayed from the journal."""

    model: Model
    journal: RunJournal
    run_id: str
    _calls: Counter[str] = field(default_factory=Counter)

    @property
    def name(self) -> str:
        return self.model.name

    async def complete(
        self,
        messages: Sequence[ChatMessage],
        *,
        output: type[BaseModel] | None = None,
        context: CallContext,
    ) -> ModelReply:
        asker = asker_of(context)
        call = self._calls[asker]
        self._calls[asker] += 1
        saved = self.journal.reply(self.run_id, asker, call, self.model.name)
        if saved is not None:
            log.info("model_reply_replayed", asker=asker, call=call)
            usage = Usage(
                prompt_tokens=saved.prompt_tokens, completion_tokens=saved.completion_tokens
            )
            return ModelReply(
                text=saved.reply, usage=usage, model=saved.model, raw={"replayed": True}
            )
        reply = await self.model.complete(messages, output=output, context=context)
        self.journal.save_reply(
            self.run_id,
            asker,
            call,
            self.model.name,
            reply.text,
            reply.usage.prompt_tokens,
            reply.usage.completion_tokens,
        )
        return reply
