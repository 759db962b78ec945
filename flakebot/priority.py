"""Lower priority that holds on Linux with autogroups: nice for a process and for its session.

With the kernel's autogroup scheduling (`/proc/sys/kernel/sched_autogroup_enabled`, on by
default on most distributions), every session is a scheduling group of its own, and groups share
the CPU by the group's nice, not by their processes' nice. Flakebot starts each cargo command in
a session of its own (so a time limit can kill its whole tree; bwrap's `--new-session` too), so
`nice -n 10 cargo build` alone would still get half the machine against the likely winner's
build. `launcher` is the argv prefix that lowers both, inside the command's new session: the
process's nice (what counts without autogroups, and within a group) and its session's, by writing
`/proc/self/autogroup` (raising a nice needs no privilege; without CAP_SYS_ADMIN such writes are
rate-limited to one every 100 ms, so a busy moment is retried). No shell: the command follows as
arguments.
"""

from __future__ import annotations

import shutil
from pathlib import Path

# Run by a system python3 inside the sandbox, as `python3 -c LAUNCH <nice> <command>...`.
LAUNCH = """\
import os, sys, time
nice = int(sys.argv[1])
os.nice(nice)
for _ in range(20):
    try:
        with open("/proc/self/autogroup", "w") as group:
            group.write(str(nice))
        break
    except BlockingIOError:
        time.sleep(0.1)
    except OSError:
        break
os.execvp(sys.argv[2], sys.argv[2:])
"""


def launcher(nice: int, *, search_path: str = "/usr/bin:/bin") -> list[str]:
    """The argv prefix that lowers what follows it, inside a new session. Falls back to plain
    `nice` when there is no system python3 to run the launcher."""
    python = shutil.which("python3", path=search_path)
    if python is None:
        return ["nice", "-n", str(nice)]
    return [python, "-c", LAUNCH, str(nice)]


def session_nice(pid: int | str = "self") -> int | None:
    """The nice of a process's autogroup (None without autogroups)."""
    try:
        text = Path(f"/proc/{pid}/autogroup").read_text(encoding="ascii")
    except OSError:
        return None
    _, _, value = text.partition(" nice ")
    return int(value) if value.strip().lstrip("-").isdigit() else None
