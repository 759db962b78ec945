"""Cargo's flavour of semver: versions, version requirements, and matching one against the other.

Enough of cargo's rules to answer "does this registry have a version of X that satisfies REQ":
comparators `^ ~ = > >= < <=`, wildcards (`*`, `1.*`, `1.2.x`), bare versions meaning caret, and
comma-separated conjunctions. Pre-release versions match only a requirement that names a
pre-release of the same major.minor.patch, as in cargo.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import total_ordering

_VERSION = re.compile(
    r"^(?P<major>\d+)\.(?P<minor>\d+)\.(?P<patch>\d+)(?:-(?P<pre>[0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?\Z"
)
_COMPARATOR = re.compile(
    r"^(?P<op>\^|~|=|>=|<=|>|<)?\s*(?P<major>\d+|\*|x|X)"
    r"(?:\.(?P<minor>\d+|\*|x|X))?(?:\.(?P<patch>\d+|\*|x|X))?(?:-(?P<pre>[0-9A-Za-z.-]+))?"
    r"(?:\+[0-9A-Za-z.-]+)?\Z"
)


class SemverError(ValueError):
    """A version or requirement that cargo would not accept."""


def _pre_key(pre: str) -> tuple[tuple[int, int | str], ...]:
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in pre.split("."))


@total_ordering
@dataclass(frozen=True)
class Version:
    major: int
    minor: int
    patch: int
    pre: str = ""

    @classmethod
    def parse(cls, text: str) -> Version:
        match = _VERSION.match(text.strip())
        if match is None:
            raise SemverError(f"not a semver version: {text!r}")
        return cls(
            int(match["major"]), int(match["minor"]), int(match["patch"]), match["pre"] or ""
        )

    @property
    def release(self) -> tuple[int, int, int]:
        return (self.major, self.minor, self.patch)

    def _key(self) -> tuple[tuple[int, int, int], int, tuple[tuple[int, int | str], ...]]:
        # A release sorts after every pre-release of the same numbers.
        return (self.release, 1 if not self.pre else 0, _pre_key(self.pre) if self.pre else ())

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key() < other._key()

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}" + (f"-{self.pre}" if self.pre else "")


@dataclass(frozen=True)
class _Comparator:
    op: str
    major: int
    minor: int | None
    patch: int | None
    pre: str

    def _floor(self) -> Version:
        return Version(self.major, self.minor or 0, self.patch or 0, self.pre)

    def matches(self, version: Version) -> bool:
        floor = self._floor()
        if self.op == "=":
            if self.minor is None:
                return version.major == self.major
            if self.patch is None:
                return (version.major, version.minor) == (self.major, self.minor)
            return version == floor
        if self.op == ">":
            if self.minor is None:
                return version.major > self.major
            if self.patch is None:
                return (version.major, version.minor) > (self.major, self.minor)
            return version > floor
        if self.op == ">=":
            return version >= floor
        if self.op == "<":
            return version < floor
        if self.op == "<=":
            if self.minor is None:
                return version.major <= self.major
            if self.patch is None:
                return (version.major, version.minor) <= (self.major, self.minor)
            return version <= floor
        if self.op == "~":
            if self.minor is None:
                return version.major == self.major
            return version >= floor and (version.major, version.minor) == (self.major, self.minor)
        # caret: the left-most non-zero part may not change
        if version < floor:
            return False
        if self.major > 0 or self.minor is None:
            return version.major == self.major
        if self.minor > 0 or self.patch is None:
            return (version.major, version.minor) == (0, self.minor)
        return version.release == (0, 0, self.patch)


class VersionReq:
    """A cargo version requirement such as `^1.2`, `>=0.3, <0.5`, `1.*` or `*`."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._comparators: list[_Comparator] = []
        stripped = text.strip()
        if stripped in ("", "*", "x", "X"):
            return
        for part in stripped.split(","):
            match = _COMPARATOR.match(part.strip())
            if match is None:
                raise SemverError(f"not a version requirement: {text!r}")
            numbers = [match["major"], match["minor"], match["patch"]]
            wildcard_at = next(
                (index for index, number in enumerate(numbers) if number in ("*", "x", "X")), None
            )
            if wildcard_at is not None:
                if wildcard_at == 0:
                    continue  # `*` alone: matches everything, adds no constraint
                numbers = numbers[:wildcard_at] + [None] * (3 - wildcard_at)
                op = "="
            else:
                op = match["op"] or "^"
            self._comparators.append(
                _Comparator(
                    op=op,
                    major=int(str(numbers[0])),
                    minor=None if numbers[1] is None else int(numbers[1]),
                    patch=None if numbers[2] is None else int(numbers[2]),
                    pre=match["pre"] or "",
                )
            )

    def matches(self, version: Version) -> bool:
        if version.pre and not any(
            c.pre and (c.major, c.minor or 0, c.patch or 0) == version.release
            for c in self._comparators
        ):
            return False
        return all(comparator.matches(version) for comparator in self._comparators)

    def best_match(self, versions: list[Version]) -> Version | None:
        """The newest of `versions` that satisfies this requirement, as cargo would pick."""
        matching = [version for version in versions if self.matches(version)]
        return max(matching) if matching else None

    def __str__(self) -> str:
        return self.text
