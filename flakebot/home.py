"""FLAKEBOT_HOME: private to its owner, and every path in it derived from validated names.

The home holds journals, model transcripts (which may quote a request's secrets), forks and GC
roots, so it is created 0700 (and tightened if it exists with looser modes), and the files Flakebot
writes there are 0600. Processes that write into it (the CLI, the driver, Ray workers) also run with
umask 077, so files that other code creates there (cargo's, git's) are private too.

Run ids and candidate ids come from users (`flakebot clean RUN`, `--run`) and from messages; a path
is only ever made from one that matches the protocol's id pattern, so nothing like `..` or `/x`
can point outside the home.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from pathlib import Path

from flakebot.errors import ConfigError

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def private_umask() -> None:
    """Files and directories this process creates are readable by their owner only."""
    os.umask(0o077)


def ensure_home(home: Path) -> Path:
    """Create FLAKEBOT_HOME 0700, or tighten an existing one; returns it."""
    home.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    if home.stat().st_mode & 0o777 != PRIVATE_DIR:
        with contextlib.suppress(PermissionError):
            home.chmod(PRIVATE_DIR)
    return home


def check_id(value: str, what: str = "run id") -> str:
    """`value` if it is a valid run or candidate id; a ConfigError naming the problem otherwise."""
    if not ID_PATTERN.match(value) or value in (".", ".."):
        raise ConfigError(
            f"{what} {value!r} is not valid",
            hint="ids are 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit; "
            "the runs are the directories in FLAKEBOT_HOME/runs",
        )
    return value


def run_dir(home: Path, run_id: str) -> Path:
    """FLAKEBOT_HOME/runs/<run>, for a validated run id."""
    return home / "runs" / check_id(run_id)


def write_private(path: Path, text: str) -> None:
    """Replace `path` with `text`, mode 0600, atomically (a temporary file renamed over it)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, PRIVATE_FILE)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        temporary.replace(path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def append_private(path: Path, line: str) -> None:
    """Append one line to `path`, creating it 0600."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, PRIVATE_FILE)
    with os.fdopen(fd, "a", encoding="utf-8") as handle:
        handle.write(line if line.endswith("\n") else line + "\n")
