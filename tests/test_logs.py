"""Logging renders JSON off a terminal, carries bound context, and masks secrets."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
import structlog

from flakebot.logs import MASK, SecretMasker, bind_context, clear_context, configure_logging


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    buffer = io.StringIO()
    yield buffer
    clear_context()
    structlog.reset_defaults()


def _events(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_off_a_terminal_with_context(stream: io.StringIO) -> None:
    configure_logging("info", "auto", stream=stream)
    bind_context(run_id="r1", candidate="c1-hexyl", actor="tester")
    structlog.get_logger().info("tests_failed", failed=2)
    structlog.get_logger().debug("hidden_below_level")
    (event,) = _events(stream)
    assert event["event"] == "tests_failed"
    assert event["run_id"] == "r1" and event["candidate"] == "c1-hexyl"
    assert event["level"] == "info" and event["failed"] == 2
    assert str(event["timestamp"]).endswith("Z")


def test_console_format_is_not_json(stream: io.StringIO) -> None:
    configure_logging("info", "console", stream=stream)
    structlog.get_logger().info("crate_forked", crate="hexyl")
    line = stream.getvalue()
    assert "crate_forked" in line and "crate=hexyl" in line
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_secrets_are_masked(stream: io.StringIO) -> None:
    configure_logging("debug", "json", stream=stream, secrets=["s3cr3t-token-value"])
    log = structlog.get_logger()
    log.info("model_called", api_key="anything", headers={"Authorization": "Bearer x"})
    log.info(
        "request_sent", url="https://x/?k=s3cr3t-token-value", note="key gsk_0123456789abcdefABCD"
    )
    first, second = _events(stream)
    assert first["api_key"] == MASK
    assert first["headers"] == {"Authorization": MASK}
    assert "s3cr3t-token-value" not in stream.getvalue()
    assert second["url"] == f"https://x/?k={MASK}"
    assert second["note"] == f"key {MASK}"


def test_masker_ignores_short_secrets() -> None:
    masker = SecretMasker(["abc"])
    assert masker.mask_text("abc abc") == "abc abc"
