"""The Flakebot protocol, version 1: every message exchanged between roles.

Each message is a frozen pydantic model tagged by ``kind``; ``AnyMessage`` is their discriminated
union and ``MESSAGE_ADAPTER`` the one ``TypeAdapter`` that reads and writes them as JSON. Unknown
fields and unknown kinds are rejected, and the error names what was wrong.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import ConfigDict, Field, JsonValue, TypeAdapter

from messages.base import PROTOCOL_VERSION, Message, OutputCheck, RegistryRef
from messages.coding import (
    CandidateResult,
    DeleteFile,
    DependencyChange,
    Diagnostic,
    EditProposal,
    FileEdit,
    ReplaceInFile,
    StageResult,
    TestCaseResult,
    TestReport,
    WriteFile,
)
from messages.crates import (
    CrateCandidate,
    CrateQuery,
    CrateSource,
    PrunedItem,
    ScoreParts,
    Workspace,
)
from messages.deploy import (
    ChangedFile,
    CleanupFailure,
    CleanupReport,
    CleanupRequest,
    Deployment,
    Provenance,
    RemovedItem,
    ServiceInstance,
    ToolManifest,
    WorkedExample,
)
from messages.run import RunEvent, RunStarted, StepFailed
from messages.spec import AcceptanceCase, ServiceProbe, ServiceSettings, ToolRequest, ToolSpec

AnyMessage = Annotated[
    ToolRequest
    | ToolSpec
    | CrateQuery
    | CrateCandidate
    | Workspace
    | EditProposal
    | TestReport
    | CandidateResult
    | Deployment
    | ToolManifest
    | CleanupRequest
    | CleanupReport
    | StepFailed
    | RunEvent
    | RunStarted,
    Field(discriminator="kind"),
]

MESSAGE_ADAPTER: TypeAdapter[AnyMessage] = TypeAdapter(
    AnyMessage, config=ConfigDict(title="FlakebotMessage")
)

MESSAGE_TYPES: tuple[type[Message], ...] = (
    ToolRequest,
    ToolSpec,
    CrateQuery,
    CrateCandidate,
    Workspace,
    EditProposal,
    TestReport,
    CandidateResult,
    Deployment,
    ToolManifest,
    CleanupRequest,
    CleanupReport,
    StepFailed,
    RunEvent,
    RunStarted,
)


def parse_message(data: str | bytes) -> AnyMessage:
    """Read one message from JSON; raises pydantic.ValidationError naming the bad field."""
    return MESSAGE_ADAPTER.validate_json(data)


def dump_message(message: AnyMessage) -> str:
    """Write one message as JSON."""
    return MESSAGE_ADAPTER.dump_json(message).decode()


def json_schema() -> dict[str, JsonValue]:
    """The JSON Schema of the whole union, as `flakebot schema` prints it."""
    schema: dict[str, JsonValue] = MESSAGE_ADAPTER.json_schema()
    schema["title"] = f"Flakebot protocol v{PROTOCOL_VERSION}"
    return schema


__all__ = [
    "MESSAGE_ADAPTER",
    "MESSAGE_TYPES",
    "PROTOCOL_VERSION",
    "AcceptanceCase",
    "AnyMessage",
    "CandidateResult",
    "ChangedFile",
    "CleanupFailure",
    "CleanupReport",
    "CleanupRequest",
    "CrateCandidate",
    "CrateQuery",
    "CrateSource",
    "DeleteFile",
    "DependencyChange",
    "Deployment",
    "Diagnostic",
    "EditProposal",
    "FileEdit",
    "Message",
    "OutputCheck",
    "Provenance",
    "PrunedItem",
    "RegistryRef",
    "RemovedItem",
    "ReplaceInFile",
    "RunEvent",
    "RunStarted",
    "ScoreParts",
    "ServiceInstance",
    "ServiceProbe",
    "ServiceSettings",
    "StageResult",
    "StepFailed",
    "TestCaseResult",
    "TestReport",
    "ToolManifest",
    "ToolRequest",
    "ToolSpec",
    "WorkedExample",
    "Workspace",
    "WriteFile",
    "dump_message",
    "json_schema",
    "parse_message",
]
