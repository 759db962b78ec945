"""Registry index entries: one JSON line per crate version, as crates.io's index has them.

The format is cargo's (`cargo/src/cargo/sources/registry/index`): `name`, `vers`, `deps` (each
with `name`, `req`, `features`, `optional`, `default_features`, `target`, `kind`, and `package`
when the dependency is renamed), `cksum` (the sha256 of the `.crate`), `features`, `yanked`,
`links`, and `features2` with `v: 2` for features that use `dep:` or `?/`. `entry_of` writes one
from a published (normalised) Cargo.toml, keeping every target's dependencies, as `cargo publish`
does; `index_file_path` is where a crate's lines live in a sparse index.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field

_DEP_TABLES = (
    ("normal", ("dependencies",)),
    ("dev", ("dev-dependencies", "dev_dependencies")),
    ("build", ("build-dependencies", "build_dependencies")),
)
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")


class IndexDep(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    req: str
    features: list[str] = Field(default_factory=list)
    optional: bool = False
    default_features: bool = True
    target: str | None = None
    kind: str = "normal"
    package: str | None = None

    @property
    def crate(self) -> str:
        """The dependency's crate name (its `package` when renamed)."""
        return self.package or self.name


class IndexEntry(BaseModel):
    """One version of a crate, as a registry index lists it."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    vers: str = Field(pattern=r"^[0-9A-Za-z.+-]{1,64}$")
    deps: list[IndexDep] = Field(default_factory=list)
    cksum: str = Field(pattern=r"^[0-9a-f]{64}$")
    features: dict[str, list[str]] = Field(default_factory=dict)
    features2: dict[str, list[str]] | None = None
    yanked: bool = False
    links: str | None = None
    v: int = 1


def directory_prefix(name: str) -> str:
    """cargo's directory prefix of a crate name, in its own case: `1`, `2`, `3/a`, `ab/cd`."""
    if len(name) <= 2:
        return str(len(name))
    if len(name) == 3:
        return f"3/{name[0]}"
    return f"{name[:2]}/{name[2:4]}"


def index_file_path(name: str) -> str:
    """Where a crate's entries live in an index: `1/a`, `2/ab`, `3/a/abc`, `ab/cd/abcd...`."""
    if not _NAME.match(name):
        raise ValueError(f"{name!r} is not a crate name")
    return f"{directory_prefix(name.lower())}/{name.lower()}"


def entry_of(manifest: Mapping[str, object], cksum: str, *, yanked: bool = False) -> IndexEntry:
    """The index entry of a crate version from its published Cargo.toml (parsed)."""
    package = manifest.get("package")
    if not isinstance(package, Mapping):
        raise ValueError("the manifest has no [package] table")
    deps = _deps(manifest, target=None)
    targets = manifest.get("target")
    for target, table in (targets if isinstance(targets, Mapping) else {}).items():
        if isinstance(table, Mapping):
            deps += _deps(table, target=str(target))
    features = manifest.get("features")
    plain: dict[str, list[str]] = {}
    extended: dict[str, list[str]] = {}
    for feature, enables in (features if isinstance(features, Mapping) else {}).items():
        values = [str(value) for value in enables] if isinstance(enables, list) else []
        new_syntax = any(value.startswith("dep:") or "?/" in value for value in values)
        (extended if new_syntax else plain)[str(feature)] = values
    links = package.get("links")
    return IndexEntry(
        name=str(package["name"]),
        vers=str(package["version"]),
        deps=deps,
        cksum=cksum,
        features=plain,
        features2=extended or None,
        yanked=yanked,
        links=str(links) if isinstance(links, str) else None,
        v=2 if extended else 1,
    )


def _deps(tables: Mapping[str, object], *, target: str | None) -> list[IndexDep]:
    found = []
    for kind, names in _DEP_TABLES:
        for table_name in names:
            table = tables.get(table_name)
            for key, spec in (table if isinstance(table, Mapping) else {}).items():
                dep = _dep(str(key), spec, kind=kind, target=target)
                if dep is not None:
                    found.append(dep)
    return found


def _dep(key: str, spec: object, *, kind: str, target: str | None) -> IndexDep | None:
    if isinstance(spec, str):
        return IndexDep(name=key, req=spec, kind=kind, target=target)
    if not isinstance(spec, Mapping):
        return None
    if "version" not in spec and ("path" in spec or "git" in spec):
        return None  # not from a registry (cargo publish drops such dev-dependencies)
    features = spec.get("features")
    renamed = spec.get("package")
    default = spec.get("default-features", spec.get("default_features", True))
    return IndexDep(
        name=key,
        req=str(spec.get("version", "*")),
        features=[str(f) for f in features] if isinstance(features, list) else [],
        optional=bool(spec.get("optional", False)),
        default_features=bool(default),
        target=target,
        kind=kind,
        package=str(renamed) if isinstance(renamed, str) and renamed != key else None,
    )
