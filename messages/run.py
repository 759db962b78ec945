"""The run's own bookkeeping: how it was started, a step that failed, and the events that make up
a run's history."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, JsonValue, StringConstraints

from messages.base import CandidateId, Message, NonEmptyText, RegistryRef, Step

EventName = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)+$"),
    Field(description="snake_case noun then past verb, e.g. crate_forked, tests_failed."),
]
Scalar = str | int | float | bool | None


class StepFailed(Message):
    """A step failed; names the step that owns the failure so the supervisor can backtrack."""

    kind: Literal["step_failed"] = "step_failed"
    candidate_id: CandidateId | None = None
    step: Step
    attempt: int = Field(default=1, ge=1)
    error_type: Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_.]*$")]
    reason: NonEmptyText
    evidence: str = Field(default="", description="Log tail or diagnostics backing the reason.")
    retryable: bool = False
    backtrack_to: Step | None = Field(
        default=None, description="The earlier step that owns this failure, if any."
    )


class RunEvent(Message):
    """One entry of a run's history, in order."""

    kind: Literal["run_event"] = "run_event"
    seq: int = Field(ge=0, description="Position in the run's history, from 0 without gaps.")
    at: datetime
    step: Literal["plan", "scout", "fork", "code", "test", "deploy", "instruct", "clean", "run"]
    candidate_id: CandidateId | None = None
    event: EventName
    detail: str = ""
    data: dict[Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]*$")], Scalar] = Field(
        default_factory=dict
    )


class RunStarted(Message):
    """How a run was started, recorded first: what `flakebot resume` needs to go on with it.
    Names the model, never its key."""

    kind: Literal["run_started"] = "run_started"
    model: str | None = Field(
        default=None, description="groq:NAME, openai:URL#NAME or scripted:FILE (absolute)."
    )
    registry: RegistryRef
    candidates: int = Field(ge=1, le=64)
    all_candidates: bool = False
    plan: dict[str, JsonValue] = Field(description="The run's plan (flakebot.runplan.RunPlan).")
    run_timeout_s: float | None = Field(default=None, gt=0)
    heartbeat_s: float = Field(default=30.0, gt=0)
