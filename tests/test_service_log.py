"""A deployed service's log is bounded: it decides how much it prints, the host's disk does not
pay for it (the service host copies at most LOG_LIMIT bytes of its output, and drains the rest)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from flakebot import services
from flakebot.proc import start_time
from flakebot.service_host import LOG_LIMIT, PROGRAM, ServiceJob, copy_capped

MIB = 1 << 20


def pipe_of(data_mib: int) -> int:
    """The read end of a pipe a thread writes `data_mib` MiB of 'x' into, then closes."""
    read, write = os.pipe()

    def feed() -> None:
        with os.fdopen(write, "wb") as out:
            for _ in range(data_mib):
                out.write(b"x" * MIB)

    threading.Thread(target=feed, daemon=True).start()
    return read


def test_the_copy_keeps_the_limit_says_so_once_and_drains_the_rest(tmp_path: Path) -> None:
    log = tmp_path / "log"
    source = pipe_of(5)
    with log.open("wb") as sink:
        dropped = copy_capped(source, sink.fileno(), MIB)
    os.close(source)
    text = log.read_bytes()
    assert dropped == 4 * MIB
    assert text.startswith(b"x" * MIB)
    assert text.count(b"the log passed") == 1 and len(text) < MIB + 200


def test_a_failing_log_is_given_up_and_the_output_still_drained(tmp_path: Path) -> None:
    (tmp_path / "ro").write_text("")
    sink = os.open(tmp_path / "ro", os.O_RDONLY)  # every write fails
    source = pipe_of(3)
    try:
        assert copy_capped(source, sink, 10 * MIB) == 3 * MIB  # read to the end, nothing kept
    finally:
        os.close(sink)
        os.close(source)


def test_a_service_that_prints_without_measure_fills_its_log_only_to_the_limit(
    tmp_path: Path,
) -> None:
    log = tmp_path / "service.log"
    # it waits first: services.start refuses a service that has already ended (fairly: it checks
    # the host is running), and 24 MiB takes a fraction of a second
    flood = f"sleep 3; head -c {LOG_LIMIT + 8 * MIB} /dev/zero | tr '\\0' y; exit 3"
    job = ServiceJob(bin_path="/bin/sh", args=["-c", flood], closure=[], log=str(log))
    host = services.start(job)
    deadline = time.monotonic() + 120
    while start_time(host.pid) is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert start_time(host.pid) is None  # the service ended, and its host with it
    size = log.stat().st_size
    assert LOG_LIMIT <= size < LOG_LIMIT + 200, size
    assert f"[{PROGRAM}: the log passed {LOG_LIMIT} bytes".encode() in log.read_bytes()[-200:]


def test_an_error_shows_the_end_of_a_large_log(tmp_path: Path) -> None:
    log = tmp_path / "service.log"
    log.write_bytes(b"a" * (4 * MIB) + "é the end\n".encode())
    tail = services._tail(str(log), chars=100)
    assert tail.endswith("é the end\n") and len(tail) == 100
    assert services._tail(str(tmp_path / "missing")) == ""
