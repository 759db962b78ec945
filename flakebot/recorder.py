"""The run's recorder: every message of a run, in order, with a time, append-only.

The supervisor passes each step's input and output through `record` before the next step starts;
`event` adds a RunEvent (progress, a backtrack and why). The history is kept in memory, committed
to the durable journal (flakebot.journal: SQLite under FLAKEBOT_HOME, what `flakebot status`
reads) and appended to FLAKEBOT_HOME/runs/<run>/journal.jsonl (0600, secrets masked), the same
history as JSON lines.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from flakebot.home import append_private
from flakebot.journal import Journal
from flakebot.redact import redact
from messages import AnyMessage, RunEvent, dump_message
from messages.run import Scalar

EventStep = str


class Recorder:
    """Ordered, timestamped history of one run."""

    def __init__(
        self,
        run_id: str,
        path: Path | None = None,
        on_event: Callable[[RunEvent], None] | None = None,
        journal: Journal | None = None,
    ) -> None:
        self.run_id = run_id
        self.path = path
        self.on_event = on_event
        self.journal = journal
        self._lock = threading.Lock()
        self.entries: list[tuple[float, AnyMessage]] = []
        self._events = 0

    def record(self, message: AnyMessage) -> AnyMessage:
        with self._lock:
            at = time.time()
            self.entries.append((at, message))
            if self.journal is not None:  # the database, and the JSONL file in its order
                self.journal.append(self.run_id, message, at=at, jsonl=self.path)
            elif self.path is not None:
                line = json.dumps({"at": at, "message": json.loads(dump_message(message))})
                append_private(self.path, redact(line))
        if isinstance(message, RunEvent) and self.on_event is not None:
            self.on_event(message)
        return message

    def event(
        self,
        step: str,
        event: str,
        detail: str = "",
        *,
        candidate_id: str | None = None,
        **data: Scalar,
    ) -> RunEvent:
        with self._lock:
            seq = self._events
            self._events += 1
        message = RunEvent(
            run_id=self.run_id,
            seq=seq,
            at=datetime.now(UTC),
            step=step,
            candidate_id=candidate_id,
            event=event,
            detail=detail,
            data=data,
        )
        self.record(message)
        return message

    def go_on_from(self, history: list[AnyMessage]) -> None:
        """Number new events after those of `history` (a resumed run's journal)."""
        seqs = [message.seq for message in history if isinstance(message, RunEvent)]
        with self._lock:
            self._events = max(seqs, default=-1) + 1

    def events(self, since: int = 0) -> list[RunEvent]:
        return [m for _, m in self.entries if isinstance(m, RunEvent) and m.seq >= since]

    def messages(self) -> list[AnyMessage]:
        return [message for _, message in self.entries]
