"""What an agent asks for: the free-text request and the tool spec the planner makes of it."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints, model_validator

from messages.base import Message, NonEmptyText, OutputCheck, Part, RegistryRef, RelativePath

ToolName = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,63}$"),
    Field(description="The tool's command name: lower-case letters, digits, '_' and '-'."),
]


class ToolRequest(Message):
    """An agent's request for a tool, in its own words."""

    kind: Literal["tool_request"] = "tool_request"
    text: NonEmptyText = Field(description="What the tool should do, in plain language.")
    requested_by: str | None = Field(default=None, description="Who asked (an agent's name).")
    registry: RegistryRef | None = Field(
        default=None, description="Where to look for crates; None means the configured default."
    )
    max_candidates: int = Field(default=3, ge=1, le=32)


class AcceptanceCase(Part):
    """One run of the built tool and what it must print and return."""

    name: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")] = Field(
        description="A Rust-identifier-safe name, used as the test function's name."
    )
    args: list[str] = Field(default_factory=list)
    stdin: str | None = None
    input_files: dict[RelativePath, str] = Field(
        default_factory=dict,
        description="Files created in the case's working directory before the run: path to text.",
    )
    stdout: OutputCheck | None = None
    exit_code: int = Field(default=0, ge=0, le=255)


class ServiceProbe(Part):
    """An HTTP request to a running service and the response it must give."""

    name: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
    method: Literal["GET", "POST", "PUT", "DELETE", "HEAD"] = "GET"
    path: Annotated[str, StringConstraints(pattern=r"^/[^\s]*$")] = "/"
    body: str | None = None
    expect_status: int = Field(default=200, ge=100, le=599)
    expect_body: OutputCheck | None = None


class ServiceSettings(Part):
    """How a service is started and probed."""

    args: list[str] = Field(
        description="Arguments that start the service; '{port}' is replaced by the chosen port.",
    )
    health_path: Annotated[str, StringConstraints(pattern=r"^/[^\s]*$")] = "/"
    probes: list[ServiceProbe] = Field(default_factory=list)

    @model_validator(mode="after")
    def _port_is_passed(self) -> ServiceSettings:
        if not any("{port}" in arg for arg in self.args):
            raise ValueError("args must contain '{port}' so the service listens where we probe")
        return self


class ToolSpec(Message):
    """A tool to build: what it is, where to look for a starting crate, and how to prove it."""

    kind: Literal["tool_spec"] = "tool_spec"
    name: ToolName
    summary: NonEmptyText
    tool_kind: Literal["cli", "service"] = "cli"
    search_queries: list[Annotated[str, StringConstraints(min_length=1, max_length=200)]] = Field(
        min_length=1, description="Free-text queries for the crate scout, best first."
    )
    requirements: list[NonEmptyText] = Field(
        default_factory=list,
        description="Functionality to add to or remove from the starting crate, one per entry.",
    )
    acceptance: list[AcceptanceCase] = Field(default_factory=list)
    service: ServiceSettings | None = None
    preferred_crates: list[
        Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_-]*$")]
    ] = Field(default_factory=list, description="Crates to try first when the registry has them.")

    @model_validator(mode="after")
    def _kind_matches_settings(self) -> ToolSpec:
        if self.tool_kind == "service" and self.service is None:
            raise ValueError("a tool_kind 'service' spec needs 'service' (start args and probes)")
        if self.tool_kind == "cli" and self.service is not None:
            raise ValueError("'service' applies only to tool_kind 'service'")
        names = [case.name for case in self.acceptance]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"acceptance case names must be unique; repeated: {duplicates}")
        return self
