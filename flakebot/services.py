"""Deployed services: started in the tool sandbox, checked, and stopped by their identity.

`start` launches flakebot.service_host, which runs the service in a sandbox with a network
namespace of its own and relays connections from a port on the host's loopback. `listening` reads
the sandbox's own socket table (/proc/PID/net/tcp of a process inside it), so the deployer can
refuse a service that listens anywhere but loopback. `stop` signals a service only if the process
at the recorded pid is still the one that was started: same start time (clock ticks since boot,
from /proc/PID/stat) and the service host's command line. A pid the kernel has since given to
another process is left alone.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import select
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import structlog

from flakebot.errors import DeployError
from flakebot.proc import argv, children, run, start_time
from flakebot.service_host import PROGRAM, ServiceJob

log = structlog.get_logger()


@dataclass(frozen=True)
class ServiceProcess:
    """A running service host: its pid and start time (its identity), and the port it serves."""

    pid: int
    started: int
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def is_service_host(pid: int, started: int, *, program: str = PROGRAM) -> bool:
    """Is `pid` still the service host (or another `program` of ours: its module's name is in
    its command line) that started at `started`?"""
    if start_time(pid) != started:
        return False
    return program.encode() in argv(pid)


def start(job: ServiceJob) -> ServiceProcess:
    """Start the service host for `job`; returns once it is running (not yet healthy)."""
    done = run(
        [sys.executable, "-m", PROGRAM],
        timeout=60,
        stdin=job.model_dump_json(),
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    if not done.ok:
        raise DeployError("the service could not be started", log_tail=done.stderr)
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    pid = int(answer["pid"])
    started = start_time(pid)
    if started is None:
        raise DeployError("the service exited as soon as it started", log_tail=_tail(job.log))
    return ServiceProcess(pid=pid, started=started, port=int(answer["port"]))


def stop(pid: int, started: int | None, *, grace: float = 5.0, program: str = PROGRAM) -> bool:
    """Stop the service host (or `program`) `pid` if it is still the one started at `started`,
    SIGTERM first and SIGKILL after `grace` seconds; True if stopped."""
    if started is None or not is_service_host(pid, started, program=program):
        return False
    try:
        handle = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    try:
        if not is_service_host(pid, started, program=program):  # the pidfd pins this process
            return False
        signal.pidfd_send_signal(handle, signal.SIGTERM)
        if not select.select([handle], [], [], grace)[0]:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(handle, signal.SIGKILL)
            select.select([handle], [], [], grace)
    finally:
        os.close(handle)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    return True


def alive(process: ServiceProcess) -> bool:
    return is_service_host(process.pid, process.started)


def sandboxed_pid(process: ServiceProcess) -> int | None:
    """A process inside the service's sandbox (in its network namespace), if one is running."""
    own = os.readlink("/proc/self/ns/net")
    pending = [process.pid]
    while pending:
        pid = pending.pop()
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/ns/net") != own:
                return pid
        pending += children(pid)
    return None


def listening(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket listening in the network namespace of `pid`."""
    found = []
    for table, width in (("tcp", 4), ("tcp6", 16)):
        path = Path(f"/proc/{pid}/net/{table}")
        with contextlib.suppress(FileNotFoundError):
            for line in path.read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) < 4 or fields[3] != "0A":  # 0A: LISTEN
                    continue
                address, port = fields[1].split(":")
                found.append((_address(address, width), int(port, 16)))
    return found


def _address(hex_text: str, width: int) -> str:
    raw = bytes.fromhex(hex_text)
    # /proc prints each 32-bit word in host (little-endian) order.
    words = b"".join(raw[index : index + 4][::-1] for index in range(0, width, 4))
    return str(ipaddress.ip_address(words))


def non_loopback(addresses: list[tuple[str, int]]) -> list[tuple[str, int]]:
    bad = []
    for address, port in addresses:
        parsed = ipaddress.ip_address(address)
        if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
            parsed = parsed.ipv4_mapped
        if not parsed.is_loopback:
            bad.append((address, port))
    return bad


def check_loopback_only(process: ServiceProcess) -> None:
    """Raise DeployError if the service listens anywhere but loopback."""
    inside = sandboxed_pid(process)
    if inside is None:
        return
    bad = non_loopback(listening(inside))
    if bad:
        shown = ", ".join(f"{address}:{port}" for address, port in bad)
        raise DeployError(
            f"the service listens on {shown}; a deployed service must listen on 127.0.0.1 only",
            log_tail="",
            hint="bind 127.0.0.1 (the spec's service args pass the port as {port})",
        )


def _tail(path: str, chars: int = 2_000) -> str:
    """The end of a log (read from its end: a service's log may be as large as LOG_LIMIT)."""
    with contextlib.suppress(OSError), open(path, "rb") as file:
        file.seek(max(file.seek(0, os.SEEK_END) - 4 * chars, 0))
        return file.read().decode(errors="replace")[-chars:]
    return ""
