"""Inside a service's sandbox: start the service, and relay connections to it from the host.

The sandbox has a network namespace of its own: the service can listen on its own loopback only,
and can connect nowhere. The host reaches it through this relay, which Flakebot starts as the
sandbox's command with one inherited file descriptor: a socket listening on the host's
127.0.0.1:PORT (created outside, before the sandbox). Each accepted connection is joined to
127.0.0.1:PORT inside, where the service listens. A listening socket lets its holder accept on that
one address and nothing else, so even a service that took it over could only serve where it is
supposed to.

Run as `python -I -S service_relay.py FD PORT -- SERVICE ARGS...` (standard library only: it runs
with the interpreter's own files and nothing else of Flakebot). It exits with the service's exit
code when the service ends, and stops the service when it is told to stop.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import threading

CHUNK = 65536


def pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(CHUNK):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for side in (sink, source):
            with contextlib.suppress(OSError):
                side.shutdown(socket.SHUT_RDWR)


def serve(client: socket.socket, port: int) -> None:
    try:
        inner = socket.create_connection(("127.0.0.1", port), timeout=5)
    except OSError:
        client.close()  # the service is not listening (yet): the caller sees the connection end
        return
    inner.settimeout(None)
    threading.Thread(target=pump, args=(inner, client), daemon=True).start()
    pump(client, inner)
    client.close()
    inner.close()


def main(argv: list[str]) -> int:
    listen_fd, port, separator, *command = argv
    if separator != "--" or not command:
        print("usage: service_relay.py FD PORT -- SERVICE ARGS...", file=sys.stderr)
        return 2
    listener = socket.socket(fileno=int(listen_fd))
    service = subprocess.Popen(command, stdin=subprocess.DEVNULL)

    def stop(signum: int, frame: object) -> None:
        service.terminate()

    signal.signal(signal.SIGTERM, stop)

    def accept() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(client, int(port)), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return service.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
