"""Logging: structlog, configured once per process; JSON off a terminal, readable on one.

Context (``run_id``, ``candidate``, ``actor``) is bound with ``structlog.contextvars`` and merged
into every event. Secrets never reach a log: values under secret-looking keys, values equal to a
registered secret, and strings shaped like API keys are masked before rendering.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from typing import TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from flakebot import redact
from flakebot.home import private_umask
from flakebot.settings import LogFormat, LogLevel
from flakebot.shown import visible

MASK = redact.MASK
_SECRET_KEY = re.compile(r"(api[_-]?key|token|secret|password|authorization)", re.IGNORECASE)


class SecretMasker:
    """A structlog processor that masks secrets in every event (see flakebot.redact)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        for secret in secrets:
            redact.register(secret)

    def add(self, secret: str) -> None:
        redact.register(secret)

    def mask_text(self, text: str) -> str:
        return redact.redact(text)

    def _mask(self, key: str, value: object) -> object:
        if _SECRET_KEY.search(key) and value is not None:
            return MASK
        if isinstance(value, str):
            return self.mask_text(value)
        if isinstance(value, dict):
            return {k: self._mask(str(k), v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._mask("", item) for item in value]
        return value

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        return {key: self._mask(key, value) for key, value in event_dict.items()}


MASKER = SecretMasker()


def configure_logging(
    level: LogLevel = "info",
    log_format: LogFormat = "auto",
    *,
    stream: TextIO | None = None,
    secrets: Iterable[str] = (),
) -> None:
    """Configure structlog for this process; call once at start (and in each Ray worker)."""
    out = sys.stderr if stream is None else stream
    for secret in secrets:
        MASKER.add(secret)
    use_json = log_format == "json" or (log_format == "auto" and not out.isatty())
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    processors: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        MASKER,
    ]
    if use_json:
        processors.append(structlog.processors.format_exc_info)
    else:  # a terminal obeys escapes: what a crate or a model wrote is shown, not obeyed
        processors.append(_visible_values)
    processors.append(renderer)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


def _visible_values(logger: WrappedLogger, method: str, event: EventDict) -> EventDict:
    return {
        key: visible(value) if isinstance(value, str) else value for key, value in event.items()
    }


def bind_context(**context: str | int | None) -> None:
    """Bind context (run_id, candidate, actor) to every later event in this task or thread."""
    structlog.contextvars.bind_contextvars(**context)


def clear_context() -> None:
    structlog.contextvars.clear_contextvars()


def setup_worker_logging() -> None:
    """A Ray worker's logging (actors/__init__.py): JSON on stderr at FLAKEBOT_LOG_LEVEL, private
    files."""
    import os

    private_umask()
    level = os.environ.get("FLAKEBOT_LOG_LEVEL", "info").lower()
    configure_logging(level if level in ("debug", "info", "warning", "error") else "info", "json")  # type: ignore[arg-type]
