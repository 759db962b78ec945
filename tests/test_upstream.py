"""Cloning a crate's upstream repository: bounded in time whatever the server does."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

from flakebot.upstream import UpstreamUnusable, clone_release


def test_a_server_that_accepts_and_never_answers_is_given_up_at_the_timeout(
    tmp_path: Path,
) -> None:
    """The deadline callback runs only as data arrives: this clone hung far past its timeout."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(server.accept()[0])  # and say nothing
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}/crate.git"
    outcome: list[BaseException | None] = []

    def clone() -> None:
        try:
            clone_release(
                url, tmp_path / "clone", "b", name="c", version="1.0.0", commit=None, timeout=2
            )
            outcome.append(None)
        except BaseException as exc:  # handed to the test's thread
            outcome.append(exc)

    cloning = threading.Thread(target=clone, daemon=True)
    started = time.monotonic()
    cloning.start()
    cloning.join(30)  # without libgit2's timeouts it waits for ever
    server.close()
    for each in held:
        each.close()
    assert not cloning.is_alive(), "the clone was still waiting after 30 s (its timeout: 2 s)"
    assert time.monotonic() - started < 30
    assert isinstance(outcome[0], UpstreamUnusable) and "failed" in str(outcome[0])
    assert not (tmp_path / "clone").exists()
