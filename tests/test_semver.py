"""Cargo's semver rules, checked against the examples in the Cargo book."""

from __future__ import annotations

import pytest

from flakebot.crates.semver import SemverError, Version, VersionReq

CASES = [
    # (requirement, version, matches) — from "Specifying Dependencies" in the Cargo book
    ("1.2.3", "1.2.3", True),
    ("1.2.3", "1.9.0", True),
    ("1.2.3", "2.0.0", False),
    ("1.2.3", "1.2.2", False),
    ("^1.2", "1.2.0", True),
    ("^1", "1.99.0", True),
    ("^0.2.3", "0.2.9", True),
    ("^0.2.3", "0.3.0", False),
    ("^0.2", "0.2.0", True),
    ("^0.0.3", "0.0.3", True),
    ("^0.0.3", "0.0.4", False),
    ("^0.0", "0.0.9", True),
    ("^0.0", "0.1.0", False),
    ("^0", "0.9.9", True),
    ("0.2", "0.2.27", True),
    ("~1.2.3", "1.2.9", True),
    ("~1.2.3", "1.3.0", False),
    ("~1.2", "1.2.0", True),
    ("~1", "1.9.0", True),
    ("~1", "2.0.0", False),
    ("*", "7.0.0", True),
    ("1.*", "1.5.0", True),
    ("1.*", "2.0.0", False),
    ("1.2.*", "1.2.7", True),
    ("1.2.*", "1.3.0", False),
    (">= 1.2.0", "1.2.0", True),
    ("> 1", "1.9.0", False),
    ("> 1", "2.0.0", True),
    ("< 2", "1.99.0", True),
    ("<= 1.2", "1.2.9", True),
    ("<= 1.2", "1.3.0", False),
    ("= 1.2.3", "1.2.3", True),
    ("= 1.2", "1.2.8", True),
    (">= 1.2, < 1.5", "1.4.9", True),
    (">= 1.2, < 1.5", "1.5.0", False),
    ("1.0.0", "1.1.0-alpha", False),
    ("1.1.0-alpha", "1.1.0-beta", True),
]


@pytest.mark.parametrize(("requirement", "version", "expected"), CASES)
def test_matching(requirement: str, version: str, expected: bool) -> None:
    assert VersionReq(requirement).matches(Version.parse(version)) is expected


def test_ordering_puts_pre_releases_before_releases() -> None:
    ordered = ["0.9.0", "1.0.0-alpha", "1.0.0-alpha.2", "1.0.0-beta", "1.0.0", "1.0.1", "1.10.0"]
    versions = [Version.parse(text) for text in ordered]
    assert sorted(reversed(versions)) == versions
    assert str(versions[2]) == "1.0.0-alpha.2"


def test_best_match_is_the_newest_matching() -> None:
    versions = [Version.parse(text) for text in ["2.34.0", "3.2.23", "4.0.32"]]
    assert VersionReq("2").best_match(versions) == Version.parse("2.34.0")
    assert VersionReq(">=3").best_match(versions) == Version.parse("4.0.32")
    assert VersionReq("5").best_match(versions) is None


@pytest.mark.parametrize("text", ["latest", "1.2.3.4", "v1", "^^1"])
def test_bad_input_is_rejected(text: str) -> None:
    with pytest.raises(SemverError):
        VersionReq(text)
    with pytest.raises(SemverError):
        Version.parse(text)
