"""What was built and how to use it: the deployment, the agent's manifest, and cleaning up."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, JsonValue, StringConstraints, model_validator

from messages.base import (
    CandidateId,
    CrateName,
    CrateVersion,
    Message,
    NonEmptyText,
    Part,
    RegistryRef,
    RelativePath,
)
from messages.crates import CrateSource

StorePath = Annotated[str, StringConstraints(pattern=r"^/nix/store/[0-9a-z]{32}-[^/]+$")]


class ServiceInstance(Part):
    """A deployed service running on loopback."""

    pid: int = Field(ge=1)
    port: int = Field(ge=1, le=65535)
    url: str
    started_at: datetime


class Deployment(Message):
    """A fork built with `nix build`, rooted, and (for a service) started."""

    kind: Literal["deployment"] = "deployment"
    candidate_id: CandidateId
    flake_ref: str = Field(
        description="What `nix run` and `nix build` take, e.g. path:/...#default"
    )
    system: str = Field(description="The Nix system, e.g. x86_64-linux.")
    commit: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{40}$")] = Field(
        description="The fork commit that was built."
    )
    store_path: StorePath
    bin_path: str
    nar_hash: str
    gc_root: str
    service: ServiceInstance | None = None


class WorkedExample(Part):
    """An acceptance case as it was run against the deployed tool."""

    name: str
    command: list[str] = Field(description="The full argv, starting with the binary's path.")
    stdin: str | None = None
    input_files: dict[RelativePath, str] = Field(default_factory=dict)
    stdout: str
    exit_code: int


class ChangedFile(Part):
    """A file the fork changed against the crate as it was published."""

    path: RelativePath
    status: Literal["added", "deleted", "modified", "renamed"]
    insertions: int = Field(default=0, ge=0)
    deletions: int = Field(default=0, ge=0)


class Provenance(Part):
    """Where the tool came from, precisely enough to rebuild it, and what was changed."""

    crate_name: CrateName
    crate_version: CrateVersion
    license: str | None
    repository: str | None
    registry: RegistryRef
    fork_commit: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{40}$")]
    toolchain: str = Field(description="rustc --version of the toolchain that built it.")
    nar_hash: str
    source: CrateSource | None = Field(
        default=None,
        description="The registry URL, the .crate's checksum, and the upstream repository and "
        "commit the fork started from.",
    )
    changes: list[ChangedFile] = Field(
        default_factory=list,
        description="What the fork added, removed or changed against the published crate "
        "(Flakebot's own files left out: its registry config, the lock, the flake, the "
        "acceptance test).",
    )


class ToolManifest(Message):
    """Everything an agent needs to call the tool it asked for."""

    kind: Literal["tool_manifest"] = "tool_manifest"
    name: str
    summary: NonEmptyText
    tool_kind: Literal["cli", "service"]
    run_command: list[str] = Field(
        min_length=1, description="argv of `nix run <flake ref> --`; append the tool's arguments."
    )
    store_path: StorePath
    bin_path: str
    help_text: str
    examples: list[WorkedExample] = Field(default_factory=list)
    function_schema: dict[str, JsonValue] = Field(
        description="An OpenAI function-calling tool definition."
    )
    mcp_tool: dict[str, JsonValue] = Field(description="An MCP tool definition.")
    service_url: str | None = None
    provenance: Provenance
    cleanup_command: list[str] = Field(min_length=1)

    @model_validator(mode="after")
    def _service_has_url(self) -> ToolManifest:
        if (self.tool_kind == "service") != (self.service_url is not None):
            raise ValueError("service_url is set exactly when tool_kind is 'service'")
        return self


CleanupReason = Literal["requested", "failed", "expired", "cancelled", "superseded"]


class CleanupRequest(Message):
    """Ask the janitor to remove what a run (or one of its candidates) made."""

    kind: Literal["cleanup_request"] = "cleanup_request"
    candidate_id: CandidateId | None = Field(
        default=None, description="Clean only this candidate; None cleans the whole run."
    )
    reason: CleanupReason = "requested"
    keep_deployment: bool = Field(
        default=False, description="Keep the deployed store path, its GC root and any service."
    )


class RemovedItem(Part):
    """One thing the janitor removed."""

    what: Literal[
        "workspace",
        "target_dir",
        "gc_root",
        "store_path",
        "deployment",
        "service",
        "prebuild",
        "cache",
    ]
    path: str
    bytes_freed: int = Field(ge=0)


class CleanupFailure(Part):
    """Something the janitor could not remove, and why."""

    path: str
    reason: str


class CleanupReport(Message):
    """What the janitor removed and what it could not."""

    kind: Literal["cleanup_report"] = "cleanup_report"
    candidate_id: CandidateId | None = None
    reason: CleanupReason
    removed: list[RemovedItem] = Field(default_factory=list)
    failures: list[CleanupFailure] = Field(default_factory=list)

    @property
    def bytes_freed(self) -> int:
        return sum(item.bytes_freed for item in self.removed)
