"""Shared parts of every message: the base model, identifiers and small value types."""

from __future__ import annotations

import posixpath
import re
import unicodedata
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
)

PROTOCOL_VERSION: Literal[1] = 1

RunId = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"),
    Field(description="Identifies one run: letters, digits, '.', '_' and '-', at most 64."),
]
CandidateId = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"),
    Field(description="Identifies one candidate fork within a run."),
]
CrateName = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"),
    Field(description="A crate name as cargo accepts it."),
]
CrateVersion = Annotated[
    str,
    StringConstraints(pattern=r"^\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.+-]+)?$"),
    Field(description="A semver version, e.g. 0.8.0."),
]
VersionReq = Annotated[
    str,
    StringConstraints(pattern=r"^[0-9A-Za-z.*^~<>=, +-]{1,64}$"),
    Field(description="A cargo version requirement, e.g. '^1.0' or '>=0.3, <0.5'."),
]
FeatureName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_+./-]{0,63}$")]
Step = Literal["plan", "scout", "fork", "code", "test", "deploy", "instruct", "clean"]
NonEmptyText = Annotated[str, StringConstraints(min_length=1, max_length=100_000)]

_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")


def check_relative_path(value: str) -> str:
    """A path relative to the fork's root: no absolute paths, no '..', no backslashes, no
    control characters."""
    if not value or value.strip() != value:
        raise ValueError("path must be non-empty and have no surrounding whitespace")
    if "\\" in value or "\x00" in value:
        raise ValueError(f"path {value!r} must use '/' separators and no NUL bytes")
    if any(unicodedata.category(char) in ("Cc", "Cf") for char in value):
        # a newline, an escape or a bidi override: it would forge lines in a commit message
        # or a manifest, or show a user another name than the file's
        raise ValueError(f"path {value!r} must not contain control or format characters")
    if value.startswith("/") or _WINDOWS_DRIVE.match(value):
        raise ValueError(f"path {value!r} must be relative to the fork's root, not absolute")
    parts = value.split("/")
    if ".." in parts:
        raise ValueError(f"path {value!r} must not contain '..'")
    normal = posixpath.normpath(value)
    if normal in (".", ""):
        raise ValueError(f"path {value!r} names the root, not a file")
    return normal


RelativePath = Annotated[
    str,
    AfterValidator(check_relative_path),
    Field(description="A path relative to the fork's (or the test's) root, using '/'."),
]


class Message(BaseModel):
    """Base of every protocol message: frozen, strict about unknown fields, versioned."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=False)

    protocol_version: Literal[1] = PROTOCOL_VERSION
    run_id: RunId


class Part(BaseModel):
    """Base of the value types nested inside messages."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class OutputCheck(Part):
    """How observed output is compared with what is expected.

    A `regex` value is RE2/Rust `regex` syntax (no backreferences, no lookaround), which is what
    runs it: the acceptance tests use Rust's `regex` crate, and Flakebot matches with RE2. Where
    a spec enters Flakebot it is checked against that syntax (flakebot.matching)."""

    match: Literal["exact", "contains", "regex"] = "exact"
    value: str


class RegistryRef(Part):
    """Where crates come from: a local directory registry or the crates.io API."""

    source: Literal["local", "crates-io"]
    location: str = Field(
        description="For 'local', the registry directory; for 'crates-io', the API base URL."
    )

    def __str__(self) -> str:
        return f"{self.source}:{self.location}"
