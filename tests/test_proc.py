"""External programs: no shell, a time limit that kills the whole group, readable failures."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from flakebot.errors import CommandFailed, CommandTimedOut, ToolMissing
from flakebot.proc import CHUNK, run, which


def test_runs_argv_without_a_shell() -> None:
    done = run(["echo", "$HOME; rm -rf /"], timeout=10)
    assert done.ok and done.stdout == "$HOME; rm -rf /\n"


def test_passes_stdin_and_env(tmp_path: Path) -> None:
    done = run(
        [sys.executable, "-c", "import os, sys; print(sys.stdin.read() + os.environ['X'])"],
        timeout=30,
        env={"X": "-env"},
        stdin="in",
        cwd=tmp_path,
    )
    assert done.stdout.strip() == "in-env"


def test_failure_names_the_command_and_tail() -> None:
    done = run([sys.executable, "-c", "import sys; sys.exit('boom')"], timeout=30)
    with pytest.raises(CommandFailed) as caught:
        done.check(hint="try again")
    assert caught.value.returncode == 1
    assert "boom" in str(caught.value) and "try again" in str(caught.value)


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen(['sleep', '60'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(60)\n"
    )
    started = time.monotonic()
    with pytest.raises(CommandTimedOut) as caught:
        run([sys.executable, "-c", script], timeout=2)
    assert time.monotonic() - started < 30
    assert caught.value.returncode is None
    grandchild = int(pid_file.read_text())
    for _ in range(50):
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"grandchild {grandchild} survived the timeout")


def test_missing_program_is_tool_missing() -> None:
    with pytest.raises(ToolMissing, match="no-such-program-xyz is not installed"):
        run(["no-such-program-xyz"], timeout=5)
    with pytest.raises(ToolMissing) as caught:
        which("no-such-program-xyz", path="/nonexistent", hint="apt-get install it")
    assert caught.value.hint == "apt-get install it"


def test_a_process_stopped_for_good_starts_no_more_programs() -> None:
    # A tester whose candidate is ending must not start a test that was already on its way.
    # The flag is process-wide, so it is tried in a process of its own.
    script = (
        "from flakebot.errors import RoleLost\n"
        "from flakebot.proc import run, stop_running\n"
        "assert run(['true'], timeout=10).ok\n"
        "assert stop_running(for_good=True) == 0\n"
        "try:\n"
        "    run(['true'], timeout=10)\n"
        "except RoleLost as exc:\n"
        "    print(exc.message)\n"
    )
    done = run([sys.executable, "-c", script], timeout=60)
    assert done.ok, done.stderr
    assert done.stdout.strip() == "true was not started: this process is ending"


def test_output_past_the_bound_keeps_its_head_and_tail_and_memory_stays_bounded() -> None:
    # 200 MiB through a 1 MiB bound: the kept text is about 1 MiB whatever the program prints
    script = (
        "import sys\n"
        "out = sys.stdout.buffer\n"
        "out.write(b'FIRST\\n')\n"
        "for _ in range(200): out.write(b'x' * (1 << 20))\n"
        "out.write(b'\\nLAST\\n')\n"
        "sys.stderr.write('err\\r\\n')\n"
    )
    done = run([sys.executable, "-c", script], timeout=120, max_output=1 << 20)
    assert done.ok and not done.stopped_at_limit
    assert done.stdout.startswith("FIRST\n") and done.stdout.endswith("\nLAST\n")
    assert len(done.stdout) < (1 << 20) + 100
    printed = 200 * (1 << 20) + 12
    assert printed - (1 << 20) - CHUNK <= done.dropped <= printed - (1 << 20)  # all but ~1 MiB
    assert f"[... {done.dropped} bytes not kept ...]" in done.stdout
    assert done.stderr == "err\n"  # newlines as a text-mode pipe gives them


def test_a_program_that_prints_without_end_can_be_stopped_at_the_bound() -> None:
    started = time.monotonic()
    done = run(["cat", "/dev/zero"], timeout=120, max_output=4 << 20, stop_at_limit=True)
    assert done.stopped_at_limit and not done.ok
    assert time.monotonic() - started < 60  # stopped at the bound, not at the time limit
    assert len(done.stdout) <= (4 << 20) + 100


def test_stdin_larger_than_a_pipe_and_a_program_that_does_not_read_it() -> None:
    data = "y" * (4 << 20)  # far more than a pipe holds
    echoed = run([sys.executable, "-c", "import sys; print(len(sys.stdin.read()))"],
                 timeout=60, stdin=data)  # fmt: skip
    assert echoed.stdout.strip() == str(len(data))
    ignored = run(["true"], timeout=60, stdin=data)  # exits without reading: no hang, no error
    assert ignored.ok
