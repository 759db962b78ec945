"""Matching observed output against a spec's expectations, in linear time.

A spec's `regex` checks come from users and models. Python's `re` backtracks, so a pattern like
`(a+)+$` can take exponential time on a service's response. Flakebot matches with RE2 instead
(google-re2): linear in the input, and close to the syntax of Rust's `regex` crate, which runs the
same patterns in the acceptance tests. A pattern RE2 rejects (backreferences, lookaround) is
reported when the spec is read, with what is wrong, rather than failing later in a test.
"""

from __future__ import annotations

import re2

from flakebot.errors import SpecError
from messages import OutputCheck, ToolSpec

MAX_PATTERN_MEMORY = 8 * 1024 * 1024


def _options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False
    options.max_mem = MAX_PATTERN_MEMORY
    return options


def _compile(pattern: str):  # type: ignore[no-untyped-def]  # re2 has no type stubs
    """The pattern compiled multi-line (as the acceptance tests run it); SpecError if invalid."""
    try:
        return re2.compile("(?m)" + pattern, _options())
    except re2.error as exc:
        detail = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise SpecError(
            f"pattern {pattern!r} is not a regular expression Flakebot can run: {detail}",
            hint="use RE2/Rust regex syntax: no backreferences or lookaround",
        ) from None


def output_matches(check: OutputCheck, observed: str) -> bool:
    if check.match == "exact":
        return observed == check.value
    if check.match == "contains":
        return check.value in observed
    return pattern_matches(check.value, observed)


def check_pattern(pattern: str) -> None:
    """SpecError unless `pattern` compiles with RE2."""
    _compile(pattern)


def pattern_matches(pattern: str, observed: str) -> bool:
    """Does `pattern` (multi-line) match anywhere in `observed`? Linear time."""
    return _compile(pattern).search(observed) is not None


def check_spec_patterns(spec: ToolSpec) -> None:
    """Every regex check in `spec` compiles with RE2 (SpecError naming the first that does not)."""
    checks = [case.stdout for case in spec.acceptance]
    if spec.service is not None:
        checks += [probe.expect_body for probe in spec.service.probes]
    for check in checks:
        if check is not None and check.match == "regex":
            check_pattern(check.value)
