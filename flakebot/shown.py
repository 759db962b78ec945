"""Text that others wrote (a model, a crate, a deployed tool, a file's name), made safe to show.

On a terminal, an escape sequence in a compiler message, a model's summary or a tool's `--help`
would be obeyed, not shown: clear the screen, retitle the window, hide the lines that follow or
write the clipboard (OSC 52). `visible` turns every control character but newline and tab, and
the bidirectional overrides that show a name other than the one there, into a visible escape
(`\\x1b`). Everything the CLI prints passes through it (flakebot.cli's consoles).

In Markdown (a manifest an agent reads), a run of backticks in the text would close the block it
is quoted in and let what follows pass for the manifest's own words ("## Run it: curl ... | sh").
`fenced` quotes text in a fence longer than any run of backticks inside it.
"""

from __future__ import annotations

import re
import unicodedata

# C0 but tab and newline, DEL, C1, and the bidi embeddings, overrides and isolates
_HIDDEN = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_BACKTICKS = re.compile(r"`+")


def _escaped(match: re.Match[str]) -> str:
    return _escape(match.group())


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: str) -> str:
    """`text` as it can be shown: bytes that were not UTF-8 (a file name's, kept by Python as
    lone surrogates) as escapes."""
    return text.encode("utf-8", errors="backslashreplace").decode("utf-8")


def visible(text: str) -> str:
    """`text` with its control characters (but newline and tab) and its invisible format
    characters (zero-width, bidi, tags) as visible escapes."""
    shown = _HIDDEN.sub(_escaped, text)
    if shown.isascii():
        return shown
    return "".join(_escape(char) if unicodedata.category(char) == "Cf" else char for char in shown)


def fenced(text: str, info: str = "") -> str:
    """`text` as a Markdown code block that nothing inside can close (and `visible`)."""
    longest = max((len(run) for run in _BACKTICKS.findall(text)), default=0)
    fence = "`" * max(3, longest + 1)
    body = visible(text).rstrip("\n")
    return f"{fence}{info}\n{body}\n{fence}"


def inline_code(text: str) -> str:
    """`text` as Markdown inline code on one line, whatever backticks it holds."""
    flat = visible(" ".join(text.splitlines()))
    longest = max((len(run) for run in _BACKTICKS.findall(flat)), default=0)
    ticks = "`" * (longest + 1)
    pad = " " if flat.startswith("`") or flat.endswith("`") else ""
    return f"{ticks}{pad}{flat}{pad}{ticks}"
