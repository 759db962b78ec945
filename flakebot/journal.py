"""The durable journal: every message of every run, in one SQLite database under FLAKEBOT_HOME.

`FLAKEBOT_HOME/journal.sqlite` runs in WAL mode: readers (`flakebot status`) never block the runs
that write, and writers from several processes and threads queue on SQLite's lock (a busy timeout
of 30 s) instead of failing. Each message is one committed row before `append` returns, so a step
whose message was appended survives a killed driver, actor or machine. A run's row keeps what
`status` shows at a glance (state, current step, times, tool, reason); the messages hold the rest.
Messages are stored as the protocol's JSON with secrets masked, and read back as messages. With a
`jsonl` path, `append` also appends the line to the run's `journal.jsonl` while it holds the lock,
so the file has the database's order whichever process wrote.

Model replies have their own table (`save_reply`, `reply`): each call a run makes to a model, by
who asked (role, step, candidate, attempt) and its position among that asker's calls. A resumed run
or a restarted coder is given the journalled reply instead of asking again (models.journalled);
`requests` counts real calls and `replays` the answers served from here.

States: `running` until a `run_finished` or `run_failed` event; a run whose state is `running` but
whose process no longer holds its lock (runstate) is shown as `killed`.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from flakebot.home import append_private, ensure_home
from flakebot.redact import redact
from messages import AnyMessage, RunEvent, ToolSpec, dump_message, parse_message

BUSY_TIMEOUT_S = 30.0
_REPLY_COLUMNS = "asker, call, model, reply, prompt_tokens, completion_tokens, requests, replays"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    step TEXT,
    tool TEXT,
    reason TEXT,
    started_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    ended_at REAL
);
CREATE TABLE IF NOT EXISTS messages (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    candidate_id TEXT,
    body TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
CREATE TABLE IF NOT EXISTS model_replies (
    run_id TEXT NOT NULL,
    asker TEXT NOT NULL,
    call INTEGER NOT NULL,
    model TEXT NOT NULL,
    reply TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    at REAL NOT NULL,
    requests INTEGER NOT NULL DEFAULT 1,
    replays INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, asker, call, model)
);
"""


@dataclass(frozen=True)
class RunRow:
    run_id: str
    state: str  # running | finished | failed
    step: str | None
    tool: str | None
    reason: str | None
    started_at: float
    updated_at: float
    ended_at: float | None


@dataclass(frozen=True)
class Entry:
    seq: int
    at: float
    message: AnyMessage


@dataclass(frozen=True)
class SavedReply:
    """A model's reply as the journal keeps it."""

    asker: str  # role/step/candidate/attempt, as models.journalled names it
    call: int
    model: str
    reply: str
    prompt_tokens: int
    completion_tokens: int
    requests: int
    replays: int


class RunJournal(Protocol):
    """What a role that journals needs of the journal: the Journal itself on the run's home node,
    flakebot.run_store's view of it elsewhere."""

    def append(
        self,
        run_id: str,
        message: AnyMessage,
        *,
        at: float | None = None,
        jsonl: Path | None = None,
    ) -> int: ...

    def messages_of(
        self, run_id: str, kind: str, candidate_id: str | None = None
    ) -> list[AnyMessage]: ...

    def save_reply(
        self,
        run_id: str,
        asker: str,
        call: int,
        model: str,
        reply: str,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> None: ...

    def reply(self, run_id: str, asker: str, call: int, model: str) -> SavedReply | None: ...


class Journal:
    """One connection to the journal database; safe to share between threads of a process."""

    def __init__(self, path: Path) -> None:
        ensure_home(path.parent)
        self.path = path
        self._db = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL: durable across a killed process
        self._db.executescript(_SCHEMA)
        path.chmod(0o600)
        self._lock = threading.Lock()  # one connection: one statement sequence at a time

    def close(self) -> None:
        self._db.close()

    def append(
        self,
        run_id: str,
        message: AnyMessage,
        *,
        at: float | None = None,
        jsonl: Path | None = None,
    ) -> int:
        """Commit `message` as the run's next entry (and its line to `jsonl`); returns its
        position."""
        at = time.time() if at is None else at
        body = redact(dump_message(message))
        candidate = getattr(message, "candidate_id", None)
        with self._lock, self._transaction():
            row = self._db.execute(
                "SELECT coalesce(max(seq) + 1, 0) FROM messages WHERE run_id = ?", (run_id,)
            ).fetchone()
            seq = int(row[0])
            self._db.execute(
                "INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?)",
                (run_id, seq, at, message.kind, candidate, body),
            )
            self._db.execute(
                "INSERT INTO runs (run_id, state, started_at, updated_at)"
                " VALUES (?, 'running', ?, ?)"
                " ON CONFLICT (run_id) DO UPDATE SET updated_at = excluded.updated_at",
                (run_id, at, at),
            )
            self._update_run(run_id, message, at)
            if jsonl is not None:
                append_private(jsonl, json.dumps({"at": at, "message": json.loads(body)}))
        return seq

    def _update_run(self, run_id: str, message: AnyMessage, at: float) -> None:
        if isinstance(message, ToolSpec):
            self._db.execute("UPDATE runs SET tool = ? WHERE run_id = ?", (message.name, run_id))
        if not isinstance(message, RunEvent):
            return
        if message.event == "run_finished":
            state, reason = "finished", None
        elif message.event == "run_failed":
            state, reason = "failed", message.detail
        else:
            self._db.execute("UPDATE runs SET step = ? WHERE run_id = ?", (message.step, run_id))
            return
        self._db.execute(
            "UPDATE runs SET state = ?, reason = ?, ended_at = ? WHERE run_id = ?",
            (state, reason, at, run_id),
        )

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    def runs(self) -> list[RunRow]:
        """Every run, newest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT run_id, state, step, tool, reason, started_at, updated_at, ended_at"
                " FROM runs ORDER BY started_at DESC"
            ).fetchall()
        return [RunRow(*row) for row in rows]

    def run(self, run_id: str) -> RunRow | None:
        with self._lock:
            row = self._db.execute(
                "SELECT run_id, state, step, tool, reason, started_at, updated_at, ended_at"
                " FROM runs WHERE run_id = ?",
                (run_id,),
            ).fetchone()
        return None if row is None else RunRow(*row)

    def entries(self, run_id: str, *, since: int = 0) -> list[Entry]:
        """The run's messages from position `since`, in order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, at, body FROM messages WHERE run_id = ? AND seq >= ? ORDER BY seq",
                (run_id, since),
            ).fetchall()
        return [Entry(int(seq), float(at), parse_message(body)) for seq, at, body in rows]

    def messages_of(
        self, run_id: str, kind: str, candidate_id: str | None = None
    ) -> list[AnyMessage]:
        """The run's messages of one kind (for one candidate), in order (e.g. its TestReports)."""
        query = "SELECT body FROM messages WHERE run_id = ? AND kind = ?"
        parameters = [run_id, kind]
        if candidate_id is not None:
            query += " AND candidate_id = ?"
            parameters.append(candidate_id)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY seq", parameters).fetchall()
        return [parse_message(body) for (body,) in rows]

    # Model replies ------------------------------------------------------------------------------

    def save_reply(
        self,
        run_id: str,
        asker: str,
        call: int,
        model: str,
        reply: str,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> None:
        """Keep a reply the model just gave; a second real call for the same key is counted."""
        with self._lock, self._transaction():
            self._db.execute(
                "INSERT INTO model_replies"
                " (run_id, asker, call, model, reply, prompt_tokens, completion_tokens, at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (run_id, asker, call, model) DO UPDATE SET"
                " requests = requests + 1, reply = excluded.reply, at = excluded.at",
                (run_id, asker, call, model, redact(reply), prompt_tokens, completion_tokens,
                 time.time()),
            )  # fmt: skip

    def reply(self, run_id: str, asker: str, call: int, model: str) -> SavedReply | None:
        """The journalled reply for this call, counted as replayed; None if there is none."""
        with self._lock, self._transaction():
            row = self._db.execute(
                f"SELECT {_REPLY_COLUMNS} FROM model_replies"
                " WHERE run_id = ? AND asker = ? AND call = ? AND model = ?",
                (run_id, asker, call, model),
            ).fetchone()
            if row is None:
                return None
            self._db.execute(
                "UPDATE model_replies SET replays = replays + 1"
                " WHERE run_id = ? AND asker = ? AND call = ? AND model = ?",
                (run_id, asker, call, model),
            )
        saved = SavedReply(*row)
        return replace(saved, replays=saved.replays + 1)

    def replies(self, run_id: str) -> list[SavedReply]:
        """Every journalled model reply of the run."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_REPLY_COLUMNS} FROM model_replies WHERE run_id = ? ORDER BY at",
                (run_id,),
            ).fetchall()
        return [SavedReply(*row) for row in rows]

    def export_jsonl(self, run_id: str) -> Iterator[str]:
        """The run's messages as JSON lines, as `journal.jsonl` has them."""
        with self._lock:
            rows = self._db.execute(
                "SELECT at, body FROM messages WHERE run_id = ? ORDER BY seq", (run_id,)
            ).fetchall()
        for at, body in rows:
            yield json.dumps({"at": at, "message": json.loads(body)})


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT: the writer takes SQLite's lock before it reads `max(seq)`."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, *rest: object) -> None:
        self._db.execute("ROLLBACK" if kind is not None else "COMMIT")
