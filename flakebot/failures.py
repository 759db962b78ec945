"""One failure type end to end: whatever goes wrong becomes a `step_failed` message.

A role that fails on purpose (a FlakebotError: a build that does not deploy, a model that cannot
answer) and a role that crashes (our bug, a dead actor, a deadline) both end up here, as the step
that failed, the reason in one line a person can read, and the evidence (a log tail, or the
traceback of a crash) for the journal. The supervisor records it, cleans up, and hands it to the
caller inside RunFailed; progress events carry the same reason.
"""

from __future__ import annotations

import traceback

from flakebot.errors import FlakebotError
from flakebot.redact import redact
from messages import CandidateResult, StepFailed, TestReport
from messages.base import Step

REASON_CHARS = 4_000
EVIDENCE_CHARS = 8_000


def describe(error: BaseException) -> str:
    """An error as one readable reason: our message, or the exception's type and text."""
    if isinstance(error, FlakebotError):
        return error.message
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def step_failed(
    run_id: str,
    step: Step,
    error: BaseException,
    *,
    candidate_id: str | None = None,
    backtrack_to: Step | None = None,
    evidence: str = "",
    attempt: int = 1,
) -> StepFailed:
    """The step_failed message for `error`; a crash's traceback becomes its evidence."""
    if not evidence and not isinstance(error, FlakebotError):
        evidence = "".join(traceback.format_exception(error))
    return StepFailed(
        run_id=run_id,
        candidate_id=candidate_id,
        step=step,
        attempt=attempt,
        error_type=type(error).__name__,
        reason=redact(describe(error))[:REASON_CHARS] or type(error).__name__,
        evidence=redact(evidence)[-EVIDENCE_CHARS:],
        retryable=backtrack_to is not None,
        backtrack_to=backtrack_to,
    )


def report_outcome(report: TestReport) -> str:
    """How a test report came out, in one line: green, or what failed first."""
    if report.green:
        return "green"
    stages = ", ".join(f"{s.stage} {s.status}" for s in report.stages if s.status != "passed")
    if report.errors:
        first = report.errors[0]
        where = f" at {first.file}:{first.line}" if first.file else ""
        code = f"{first.code} " if first.code else ""
        return f"red ({stages}): {len(report.errors)} errors, first {code}{first.message}{where}"
    failed = report.failed_tests
    if failed:
        names = ", ".join(test.name.rsplit("::", 1)[-1] for test in failed[:4])
        more = f" and {len(failed) - 4} more" if len(failed) > 4 else ""
        return f"red ({stages}): {len(failed)} failing tests: {names}{more}"
    return f"red ({stages})"


def result_reason(result: CandidateResult | StepFailed) -> str:
    """Why a candidate did not go green, in one line: its bound and what its last test showed."""
    if isinstance(result, StepFailed):
        return result.reason.strip().splitlines()[0] if result.reason.strip() else result.error_type
    why = f"ended by {result.ended_by} after {result.attempts} attempts"
    if result.detail:
        why += f" ({result.detail.strip().splitlines()[0]})"
    if result.last_report is None:
        return why
    return f"{why}: {report_outcome(result.last_report)}"
