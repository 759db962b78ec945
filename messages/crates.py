"""Finding and forking crates: the scout's query, its ranked candidates, the forked workspace."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from messages.base import (
    CandidateId,
    CrateName,
    CrateVersion,
    Message,
    Part,
    RegistryRef,
    RelativePath,
)


class CrateQuery(Message):
    """Ask the scout for candidates: free-text queries against one registry."""

    kind: Literal["crate_query"] = "crate_query"
    queries: list[Annotated[str, StringConstraints(min_length=1, max_length=200)]] = Field(
        min_length=1
    )
    registry: RegistryRef
    bins_only: bool = Field(default=False, description="Only crates with a binary target.")
    prefer_binary: bool = Field(
        default=False, description="Rank crates with a binary target higher (cli and service)."
    )
    limit: int = Field(default=5, ge=1, le=100)
    exclude: list[CrateName] = Field(
        default_factory=list, description="Crates already tried in this run; skip them."
    )


class ScoreParts(Part):
    """The parts a candidate's score is made of, each in [0, 1]; None where it does not apply."""

    relevance: float = Field(ge=0, le=1)
    has_binary: float | None = Field(default=None, ge=0, le=1)
    license: float | None = Field(default=None, ge=0, le=1)
    popularity: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="downloads on crates.io; dependents in a local registry",
    )
    recency: float | None = Field(default=None, ge=0, le=1)
    resolves: float | None = Field(default=None, ge=0, le=1)


class CrateCandidate(Message):
    """One crate the scout proposes to start from, with why it ranked where it did."""

    kind: Literal["crate_candidate"] = "crate_candidate"
    candidate_id: CandidateId
    name: CrateName
    version: CrateVersion
    description: str = ""
    license: str | None = None
    repository: str | None = None
    registry: RegistryRef
    bin_names: list[str] = Field(default_factory=list)
    has_lib: bool = False
    downloads: int | None = Field(default=None, ge=0)
    dependents: int | None = Field(
        default=None, ge=0, description="Crates in a local registry that depend on it."
    )
    updated_at: datetime | None = None
    score: float = Field(ge=0)
    score_parts: ScoreParts


class PrunedItem(Part):
    """Something removed from a fork so that it resolves and builds offline."""

    what: Literal["dev-dependency", "test", "bench", "example"]
    name: str
    reason: str


Sha = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{40}$")]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class CrateSource(Part):
    """Where a fork's crate came from, as Flakebot recorded it when it made the fork."""

    registry: RegistryRef
    checksum: Sha256 | None = Field(
        default=None,
        description="sha256 of the published .crate (checked against the registry's index when "
        "downloaded; from .cargo-checksum.json in a directory registry).",
    )
    upstream_repository: str | None = None
    upstream_commit: Sha | None = Field(
        default=None, description="The upstream commit the fork's history starts from."
    )
    note: str | None = Field(
        default=None, description="Why the fork starts from the registry's source, not upstream."
    )


class Workspace(Message):
    """A candidate's fork: a git repository with one branch for the run."""

    kind: Literal["workspace"] = "workspace"
    candidate_id: CandidateId
    crate_name: CrateName
    crate_version: CrateVersion
    path: str = Field(description="Absolute path of the fork's work tree.")
    branch: str
    head_commit: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{40}$")]
    origin: Literal["upstream-clone", "registry-source"]
    upstream_url: str | None = None
    registry: RegistryRef = Field(description="The registry its dependencies resolve against.")
    target_dir: str = Field(
        description="Cargo's target dir, shared per (crate, version, toolchain)."
    )
    bin_names: list[str] = Field(default_factory=list)
    manifest_path: RelativePath = "Cargo.toml"
    pruned: list[PrunedItem] = Field(default_factory=list)
    source: CrateSource | None = None
