"""The run's home as an actor (flakebot.run_store.RunStore on the home node), and the view of it a
coder on another node is given: the same methods, each a call to the actor with a deadline.

The coder's loop calls the journal synchronously between its awaited steps (the model, the
tester). A call here blocks the coder's event loop for as long as one SQLite commit, or one
bundle copied through the object store, takes. Nothing else runs in that loop meanwhile, so
this costs nothing. Ray says so once in the worker's log.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from flakebot.errors import RoleLost
from flakebot.journal import SavedReply
from flakebot.run_store import RunStore
from flakebot.runstate import ForkRecord
from messages import AnyMessage, CrateCandidate, Workspace

STORE_TIMEOUT_S = 120.0

# max_restarts: the store keeps nothing in memory (SQLite and files on the home's disk), so a
# restarted one answers as the lost one would have.
RunStoreActor = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(RunStore)


@dataclass
class RemoteRunStore:
    """A `flakebot.run_store.Store` that calls the run's RunStoreActor."""

    actor: Any

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return ray.get(
                getattr(self.actor, method).remote(*args, **kwargs), timeout=STORE_TIMEOUT_S
            )
        except ray.exceptions.GetTimeoutError:
            raise RoleLost(
                f"the run's home node did not answer {method} within {STORE_TIMEOUT_S:g} s"
            ) from None
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, Exception):
                raise exc.cause from None
            raise RoleLost(f"the run's store failed in {method}") from None
        except ray.exceptions.RayError as exc:
            raise RoleLost(f"the run's home node is lost: {type(exc).__name__}") from None

    def append(
        self,
        run_id: str,
        message: AnyMessage,
        *,
        at: float | None = None,
        jsonl: Path | None = None,
    ) -> int:
        del jsonl  # the home writes its own journal.jsonl
        seq: int = self._call("append", run_id, message, at=at)
        return seq

    def messages_of(
        self, run_id: str, kind: str, candidate_id: str | None = None
    ) -> list[AnyMessage]:
        found: list[AnyMessage] = self._call("messages_of", run_id, kind, candidate_id)
        return found

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
        self._call(
            "save_reply", run_id, asker, call, model, reply, prompt_tokens, completion_tokens
        )

    def reply(self, run_id: str, asker: str, call: int, model: str) -> SavedReply | None:
        saved: SavedReply | None = self._call("reply", run_id, asker, call, model)
        return saved

    def keep_fork(self, candidate: CrateCandidate, workspace: Workspace, bundle: bytes) -> None:
        self._call("keep_fork", candidate, workspace, bundle)

    def kept_fork(self, run_id: str, candidate_id: str) -> tuple[ForkRecord, bytes] | None:
        kept: tuple[ForkRecord, bytes] | None = self._call("kept_fork", run_id, candidate_id)
        return kept
