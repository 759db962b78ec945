"""A benchmark suite: tool tasks, each with its scripted model and checks of the deployed tool.

    name: flakebot-suite
    tasks:
      - id: hexview
        spec: ../examples/hexview.yaml          # a spec file, or `request:` free text
        script: ../examples/hexview-script.yaml # the scripted model's replies for this task
        kind: binary                            # binary: a binary crate changed; library: a
                                                # library crate turned into a tool
        candidates: 1                           # optional, else the bench's --candidates
        checks:                                 # run against the deployed tool, in its sandbox
          - {name: dumps_a_file, args: [x.bin], input_files: {x.bin: AB},
             stdout: {match: contains, value: "41 42"}}

Paths are relative to the suite file. A trial is one task with one model, repeated `--repeat`
times; the model `scripted` means each task's own script.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from flakebot.errors import ConfigError
from flakebot.settings import parse_model
from messages import AcceptanceCase

SCRIPTED = "scripted"


class BenchTask(BaseModel):
    """One task of a suite."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,47}$")
    spec: Path | None = None
    request: str | None = None
    script: Path | None = None
    kind: Literal["binary", "library"] = "binary"
    candidates: int | None = Field(default=None, ge=1, le=16)
    timeout: float | None = Field(default=None, gt=0)
    checks: list[AcceptanceCase] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_request(self) -> BenchTask:
        if (self.spec is None) == (self.request is None):
            raise ValueError("give one of spec (a spec file) or request (free text)")
        return self


class Suite(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    tasks: list[BenchTask] = Field(min_length=1)
    path: Path = Path(".")


@dataclass(frozen=True)
class Trial:
    """One task with one model, the `repeat`-th time: one line of results."""

    task: BenchTask
    model: str  # as the user named it: `scripted` or a model reference
    repeat: int

    @property
    def key(self) -> str:
        return f"{self.task.id}|{self.model}|{self.repeat}"

    def model_ref(self) -> str:
        """The model reference the run gets (`scripted` is the task's own script)."""
        if self.model != SCRIPTED:
            return self.model
        assert self.task.script is not None  # checked by trials()
        return f"scripted:{self.task.script}"

    def request(self) -> Path | str:
        if self.task.spec is not None:
            return self.task.spec
        assert self.task.request is not None
        return self.task.request


def load_suite(path: Path) -> Suite:
    """The suite at `path`, its paths resolved; a ConfigError naming what is wrong."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(
            f"cannot read the suite {path}: {exc}", hint="pass a YAML suite file (bench/suite.yaml)"
        ) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} is not a suite", hint="a mapping with `name` and `tasks`")
    try:
        suite = Suite.model_validate({**raw, "path": path})
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise ConfigError(
            f"{path}: {where}: {error['msg']}", hint="see `flakebot bench --help`"
        ) from None
    seen: set[str] = set()
    tasks = []
    for task in suite.tasks:
        if task.id in seen:
            raise ConfigError(f"{path}: the task id {task.id!r} is used twice", hint="rename one")
        seen.add(task.id)
        tasks.append(_resolved(path, task))
    return suite.model_copy(update={"tasks": tasks})


def _resolved(suite_path: Path, task: BenchTask) -> BenchTask:
    base = suite_path.resolve().parent
    update: dict[str, Path] = {}
    for field in ("spec", "script"):
        value: Path | None = getattr(task, field)
        if value is None:
            continue
        full = (base / value).resolve()
        if not full.is_file():
            raise ConfigError(
                f"{suite_path}: task {task.id}: its {field} {value} does not exist ({full})",
                hint="paths in a suite are relative to the suite file",
            )
        update[field] = full
    return task.model_copy(update=update)


def trials(suite: Suite, models: list[str], repeat: int) -> list[Trial]:
    """Every task with every model, `repeat` times; a ConfigError for a model no task can use."""
    if repeat < 1:
        raise ConfigError("--repeat must be at least 1", hint="--repeat 3")
    for model in models:
        if model == SCRIPTED:
            missing = [task.id for task in suite.tasks if task.script is None]
            if missing:
                raise ConfigError(
                    f"the model `scripted` needs a script; tasks {', '.join(missing)} have none",
                    hint="give each task `script:`, or pass --models with a real model",
                )
        else:
            parse_model(model)  # a ConfigError naming a bad reference
    return [
        Trial(task, model, number)
        for number in range(1, repeat + 1)
        for model in models
        for task in suite.tasks
    ]
