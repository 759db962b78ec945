"""Does a crate resolve in a registry? Every dependency its build needs, transitively, has a
version there that satisfies the requirement, with the features each edge asks for.

This is the question behind the scout's `resolves` score part, answered without running cargo:
cargo picks the newest matching version of each dependency, so this does too, and follows optional
dependencies only when the features in force turn them on (a crate's `default`, unless the edge
says `default-features = false`, plus the features the edge lists). Features of a dependency that
`x/f` names are not followed; cargo would unify them, so this can only err towards "resolves".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from flakebot.crates.cargo_toml import Dependency, enabled_optional
from flakebot.crates.semver import SemverError, Version, VersionReq


@dataclass(frozen=True)
class CrateDeps:
    """What resolution needs to know of one crate version."""

    version: Version
    dependencies: tuple[Dependency, ...]
    features: Mapping[str, tuple[str, ...]]


Key = tuple[str, Version, frozenset[str]]


class Resolver:
    """Answers `resolves` for crates of one registry, memoising every (crate, features) it sees."""

    def __init__(self, crates: Iterable[tuple[str, CrateDeps]]) -> None:
        self._versions: dict[str, dict[Version, CrateDeps]] = {}
        for name, deps in crates:
            self._versions.setdefault(name, {})[deps.version] = deps
        self._memo: dict[Key, bool] = {}

    def needed(self, crate: CrateDeps, roots: frozenset[str]) -> list[Dependency]:
        """The dependencies a build of `crate` with features `roots` needs (no dev-dependencies)."""
        enabled = enabled_optional(dict(crate.features), sorted(roots))
        return [
            dep
            for dep in crate.dependencies
            if dep.kind != "dev" and (not dep.optional or dep.feature_key in enabled)
        ]

    def pick(self, dep: Dependency) -> Version | None:
        """The version cargo would choose for `dep` here, or None if none matches."""
        try:
            requirement = VersionReq(dep.req)
        except SemverError:
            return None
        return requirement.best_match(list(self._versions.get(dep.name, {})))

    def unresolved(self, name: str, version: Version) -> list[str]:
        """Direct dependencies of a default build that do not resolve, as `name req` strings."""
        crate = self._versions[name][version]
        missing = []
        for dep in self.needed(crate, frozenset({"default"})):
            picked = self.pick(dep)
            if picked is None or not self._resolves(dep.name, picked, _roots(dep), frozenset()):
                missing.append(f"{dep.name} {dep.req}")
        return missing

    def resolves(self, name: str, version: Version) -> bool:
        """Does a default build of `name` `version` resolve here?"""
        return self._resolves(name, version, frozenset({"default"}), frozenset())

    def _resolves(
        self, name: str, version: Version, roots: frozenset[str], stack: frozenset[Key]
    ) -> bool:
        key = (name, version, roots)
        if key in self._memo:
            return self._memo[key]
        if key in stack:
            return True  # a cycle resolves if the rest of it does
        crate = self._versions.get(name, {}).get(version)
        if crate is None:
            return False
        ok = True
        for dep in self.needed(crate, roots):
            picked = self.pick(dep)
            if picked is None or not self._resolves(dep.name, picked, _roots(dep), stack | {key}):
                ok = False
                break
        self._memo[key] = ok
        return ok


def _roots(dep: Dependency) -> frozenset[str]:
    return frozenset((["default"] if dep.default_features else []) + list(dep.features))
