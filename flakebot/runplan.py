"""Plans: the steps the supervisor follows for one request, with their retry limits (YAML).

A default plan ships as package data (flakebot/data/plans/default.yaml); `--plan FILE` replaces it.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from flakebot.errors import SpecError
from flakebot.specs import describe_errors

StepName = Literal["plan", "scout", "code", "deploy", "instruct"]
ORDER: tuple[StepName, ...] = ("plan", "scout", "code", "deploy", "instruct")


class PlanStep(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    step: StepName
    retries: int = Field(default=0, ge=0, le=20)
    batch: int | None = Field(default=None, ge=1, le=32)
    max_attempts: int | None = Field(default=None, ge=1, le=50)


class RunPlan(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    max_backtracks: int = Field(default=4, ge=0, le=50)
    steps: list[PlanStep]

    @model_validator(mode="after")
    def _all_steps_in_order(self) -> RunPlan:
        names = tuple(step.step for step in self.steps)
        if names != ORDER:
            raise ValueError(
                f"steps must be {', '.join(ORDER)} in that order; got {', '.join(names)}"
            )
        return self

    def step(self, name: StepName) -> PlanStep:
        return next(step for step in self.steps if step.step == name)


def default_plan() -> RunPlan:
    text = resources.files("flakebot").joinpath("data/plans/default.yaml").read_text()
    return RunPlan.model_validate(yaml.safe_load(text))


def load_plan(path: Path) -> RunPlan:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SpecError(f"cannot read plan {path}: {exc}") from None
    try:
        return RunPlan.model_validate(data)
    except ValidationError as exc:
        raise SpecError(f"{path} is not a valid plan:\n{describe_errors(exc)}") from None
