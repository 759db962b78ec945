"""House style that a tool can check: ruff (lint and format) and mypy --strict are clean."""

from __future__ import annotations

import sys
from pathlib import Path

from flakebot.proc import run

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def test_ruff_is_clean() -> None:
    lint = run([BIN / "ruff", "check", "--no-cache", "."], timeout=120, cwd=ROOT)
    assert lint.ok, lint.stdout
    layout = run([BIN / "ruff", "format", "--check", "--no-cache", "."], timeout=120, cwd=ROOT)
    assert layout.ok, layout.stdout


def test_mypy_strict_is_clean() -> None:
    typed = run([BIN / "mypy", "--no-incremental"], timeout=600, cwd=ROOT)
    assert typed.ok, typed.stdout
