"""The planner: a request in, a ToolSpec out. A structured spec passes through validated, with no
model; free text goes to the model with the planner prompt, and its draft is validated as a
ToolSpec (cross-field rules included), every problem fed back, bounded."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import structlog
from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from flakebot.errors import SpecError
from flakebot.matching import check_spec_patterns
from flakebot.models import Budget, CallContext, ChatMessage, Model, Transcript, ask
from flakebot.models.budget import RunBudget
from flakebot.specs import describe_errors, load_spec
from messages import ToolRequest, ToolSpec

log = structlog.get_logger()

_SUPPLIED = {"kind", "run_id", "protocol_version"}


def _draft_fields() -> dict[str, tuple[object, object]]:
    return {
        name: (field.annotation, field)
        for name, field in ToolSpec.model_fields.items()
        if name not in _SUPPLIED
    }


ToolSpecDraft: type[BaseModel] = create_model(  # type: ignore[call-overload]
    "ToolSpecDraft",
    __config__=ConfigDict(extra="forbid"),
    **_draft_fields(),
)


def prompt(name: str) -> str:
    """A prompt shipped as package data (flakebot/data/prompts/NAME.md)."""
    return resources.files("flakebot").joinpath(f"data/prompts/{name}.md").read_text()


def looks_like_spec_file(request: str) -> bool:
    return request.endswith((".yaml", ".yml", ".json")) and Path(request).is_file()


class Planner:
    """Turns requests into tool specs."""

    def __init__(
        self,
        model: Model | None,
        *,
        budget: RunBudget | None = None,
        transcript: Transcript | None = None,
    ) -> None:
        self.model = model
        self.budget = budget or Budget()
        self.transcript = transcript or Transcript()

    def plan_file(self, path: Path, run_id: str) -> ToolSpec:
        """A structured spec, validated; no model is asked."""
        spec = load_spec(path, run_id)
        log.info("spec_loaded", name=spec.name, path=str(path), cases=len(spec.acceptance))
        return spec

    async def plan(self, request: ToolRequest) -> ToolSpec:
        """A ToolSpec for a free-text request, drafted by the model and validated."""
        if self.model is None:
            raise SpecError(
                "a free-text request needs a model to plan it",
                hint="pass --model (groq:NAME, openai:URL#NAME, scripted:FILE) or a spec file",
            )
        messages = [
            ChatMessage(role="system", content=prompt("planner")),
            ChatMessage(role="user", content=request.text),
        ]

        def to_spec(draft: BaseModel) -> ToolSpec:
            data = draft.model_dump(exclude_unset=True) | {"run_id": request.run_id}
            try:
                spec = ToolSpec.model_validate(data)
                check_spec_patterns(spec)
            except ValidationError as exc:
                raise ValueError(describe_errors(exc)) from None
            except SpecError as exc:
                raise ValueError(exc.message) from None
            return spec

        draft = await ask(
            self.model,
            messages,
            ToolSpecDraft,
            context=CallContext(role="planner", step="plan"),
            budget=self.budget,
            transcript=self.transcript,
            check=to_spec,
        )
        spec = to_spec(draft)
        log.info(
            "spec_planned", name=spec.name, queries=spec.search_queries, cases=len(spec.acceptance)
        )
        return spec
