"""Secrets never leave the process in text: one place that masks them everywhere.

A secret is registered once (Settings does it for GROQ_API_KEY when it reads the environment);
`redact` then replaces it, and anything shaped like a provider's API key, with `***`. Logs, error
messages (every FlakebotError), journal entries and model transcripts all pass through it, so a key
that a provider echoes back in an error does not reach the terminal, the journal or a manifest.
"""

from __future__ import annotations

import re

MASK = "***"
MIN_SECRET_CHARS = 8
_KEY_SHAPED = re.compile(r"\b(gsk_[A-Za-z0-9]{16,}|sk-[A-Za-z0-9_-]{16,})\b")
_SECRETS: set[str] = set()


def register(secret: str) -> None:
    """Mask `secret` from now on (short strings are ignored: they would mask ordinary text)."""
    if len(secret) >= MIN_SECRET_CHARS:
        _SECRETS.add(secret)


def redact(text: str) -> str:
    """`text` with every registered secret and every key-shaped string masked."""
    for secret in _SECRETS:
        if secret in text:
            text = text.replace(secret, MASK)
    return _KEY_SHAPED.sub(MASK, text)
