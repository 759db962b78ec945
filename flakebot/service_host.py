"""The host side of a deployed service: a small detached process that keeps the sandbox alive.

`python -m flakebot.service_host` reads its job as JSON on stdin (the binary, its arguments with
`{port}`, its Nix closure, where to log), makes a socket listening on 127.0.0.1 (an unused port),
prints `{"pid": ..., "port": ...}` and returns at once, leaving a detached child (its own session,
so it outlives the deployer that started it, and is not a direct child of a Ray worker) that runs
the service in the tool sandbox with the relay (flakebot.service_relay) in front of it.

The service's output (stdout and stderr) goes to its log through the child, at most LOG_LIMIT
bytes of it. Stopping that child stops everything: bubblewrap runs with --die-with-parent, so
when the child dies (SIGTERM: it kills the sandbox first; SIGKILL: the kernel does), the sandbox
dies with it. The janitor finds the child by its pid and start time, and checks that it is this
program.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from flakebot.cgroups import Group, limited
from flakebot.proc import CHUNK
from flakebot.sandbox import etc_files
from flakebot.tool_sandbox import ToolSandbox

PROGRAM = "flakebot.service_host"
LOG_LIMIT = 16 * 1024 * 1024  # bytes of a service's output kept in its log


class ServiceJob(BaseModel):
    """What to host: the deployed binary, its arguments (with `{port}`), its closure, the log."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bin_path: str
    args: list[str]
    closure: list[str]
    log: str


def relay_command(listen_fd: int, port: int, service: list[str]) -> tuple[list[str], list[Path]]:
    """The relay's argv inside the sandbox, and the host paths it needs read-only."""
    python = Path(os.path.realpath(sys.executable))
    relay = Path(__file__).with_name("service_relay.py").resolve()
    needed = [Path(sys.base_prefix).resolve(), python, relay]
    argv = [str(python), "-I", "-S", str(relay), str(listen_fd), str(port), "--", *service]
    return argv, needed


def copy_capped(source: int, sink: int, limit: int) -> int:
    """Copy `source` to `sink` until its end, at most `limit` bytes of it; past that, one line
    saying so, and the rest is read and dropped (a service decides how much it prints: it must
    not fill the host's disk). A sink that fails (a full disk) is given up, and `source` still
    drained, so the service never blocks on its output. Returns the bytes dropped."""
    written = dropped = 0
    told = False
    while chunk := os.read(source, CHUNK):
        kept = chunk[: max(limit - written, 0)]
        try:
            if kept:
                _write_all(sink, kept)
            if len(chunk) > len(kept) and not told:
                told = True
                notice = f"\n[{PROGRAM}: the log passed {limit} bytes; the rest is dropped]\n"
                _write_all(sink, notice.encode())
        except OSError:
            limit, told, kept = written, True, b""  # keep reading, write no more
        written += len(kept)
        dropped += len(chunk) - len(kept)
    return dropped


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def host(job: ServiceJob, listener: socket.socket) -> int:
    """Run the service's sandbox until it ends or this process is told to stop."""
    port = listener.getsockname()[1]
    args = [arg.replace("{port}", str(port)) for arg in job.args]
    closure = tuple(job.closure)
    command, needed = relay_command(listener.fileno(), port, [job.bin_path, *args])
    workdir = Path(tempfile.mkdtemp(prefix="flakebot-service-"))
    tool = ToolSandbox(closure=closure)
    with etc_files() as data_fds, limited(tool.memory_bytes, tool.tasks) as group:
        argv = tool.argv(command, workdir=workdir, data_fds=data_fds, read_only=needed)
        return _serve(argv, group, listener, workdir, data_fds)


def _serve(
    argv: list[str],
    group: Group,
    listener: socket.socket,
    workdir: Path,
    data_fds: dict[str, int],
) -> int:
    """Run the sandbox (in its cgroup) with its output copied to the log, until it ends."""
    sandbox = subprocess.Popen(
        [*group.join_argv(), *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        pass_fds=[listener.fileno(), *data_fds.values()],
    )
    assert sandbox.stdout is not None
    logging = threading.Thread(
        target=copy_capped, args=(sandbox.stdout.fileno(), 1, LOG_LIMIT), daemon=True
    )
    logging.start()

    def stop(signum: int, frame: object) -> None:
        sandbox.kill()  # bwrap's --die-with-parent takes the sandbox with it

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    code = sandbox.wait()
    logging.join(5)
    listener.close()
    shutil.rmtree(workdir, ignore_errors=True)
    return code


def main() -> int:
    job = ServiceJob.model_validate_json(sys.stdin.read())
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.set_inheritable(True)
    log = os.open(job.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    child = os.fork()
    if child:
        print(json.dumps({"pid": child, "port": listener.getsockname()[1]}), flush=True)
        return 0
    os.setsid()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    try:
        code = host(job, listener)
    except BaseException as exc:  # the deployer sees the service end; the log says why
        print(f"{PROGRAM}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        code = 1
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
