"""Plans: the steps the supervisor follows for one request, with retry limits and deadlines (YAML).

A default plan ships as package data (flakebot/data/plans/default.yaml); `--plan FILE` replaces it.
Every step has a deadline (`timeout_s`: for `code`, per candidate); a run's own deadline is
`run_timeout_s`, or, when the plan leaves it out, the sum of what its steps may take, with every
retry and backtrack (`run_deadline`).
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
DEFAULT_TIMEOUTS: dict[StepName, float] = {
    "plan": 600.0,
    "scout": 300.0,
    "code": 5_400.0,
    "deploy": 1_800.0,
    "instruct": 600.0,
}


class PlanStep(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    step: StepName
    retries: int = Field(default=0, ge=0, le=20)
    batch: int | None = Field(default=None, ge=1, le=32)
    max_attempts: int | None = Field(default=None, ge=1, le=50)
    timeout_s: float | None = Field(
        default=None, gt=0, le=86_400, description="Deadline of one try (code: per candidate)."
    )

    @property
    def deadline(self) -> float:
        return self.timeout_s if self.timeout_s is not None else DEFAULT_TIMEOUTS[self.step]


class RunPlan(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    max_backtracks: int = Field(default=4, ge=0, le=50)
    run_timeout_s: float | None = Field(default=None, gt=0, le=7 * 86_400)
    steps: list[PlanStep]

    def run_deadline(self) -> float:
        """The run's deadline: the plan's, or what every step may take with retries and
        backtracks (each backtrack may run the code step and a deploy again)."""
        if self.run_timeout_s is not None:
            return self.run_timeout_s
        tries = {step.step: step.deadline * (step.retries + 1) for step in self.steps}
        rounds = self.max_backtracks + 1
        return (
            tries["plan"]
            + tries["instruct"]
            + rounds * (tries["scout"] + tries["code"] + tries["deploy"])
        )

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
