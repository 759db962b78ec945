"""What a run made, on disk, so the janitor can remove exactly that (and nothing else).

Each run has FLAKEBOT_HOME/runs/<run>/ holding `resources.json`: the workspaces, target dirs, GC
roots, Nix store paths and services the run created, each tagged with its candidate, plus when
the run's lease started. Every role that creates something records it here first; the janitor
reads it back. Updates take a file lock, so roles in several processes can record at once.
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Kind = Literal["workspace", "target_dir", "gc_root", "store_path", "service"]


class Resource(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Kind
    path: str  # for a service: its URL
    candidate_id: str | None = None
    pid: int | None = None


class Resources(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lease_started: float = Field(default_factory=time.time)
    items: list[Resource] = Field(default_factory=list)


class RunRecord:
    """The resource record of one run."""

    def __init__(self, home: Path, run_id: str) -> None:
        self.run_id = run_id
        self.directory = home / "runs" / run_id
        self.path = self.directory / "resources.json"

    @contextmanager
    def _locked(self) -> Iterator[Resources]:
        self.directory.mkdir(parents=True, exist_ok=True)
        with (self.directory / ".lock").open("a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            resources = self.load()
            yield resources
            temporary = self.path.with_suffix(".tmp")
            temporary.write_text(resources.model_dump_json(indent=1))
            temporary.replace(self.path)

    def load(self) -> Resources:
        if not self.path.exists():
            return Resources()
        return Resources.model_validate_json(self.path.read_text())

    def add(
        self, kind: Kind, path: str | Path, *, candidate_id: str | None, pid: int | None = None
    ) -> None:
        resource = Resource(kind=kind, path=str(path), candidate_id=candidate_id, pid=pid)
        with self._locked() as resources:
            if resource not in resources.items:
                resources.items.append(resource)

    def remove(self, resource: Resource) -> None:
        with self._locked() as resources:
            resources.items = [item for item in resources.items if item != resource]

    def items(self, kind: Kind | None = None, candidate_id: str | None = None) -> list[Resource]:
        return [
            item
            for item in self.load().items
            if (kind is None or item.kind == kind)
            and (candidate_id is None or item.candidate_id == candidate_id)
        ]

    def lease_age(self) -> float:
        return time.time() - self.load().lease_started

    def exists(self) -> bool:
        return self.directory.exists()


def all_runs(home: Path) -> list[RunRecord]:
    runs = home / "runs"
    if not runs.is_dir():
        return []
    return [RunRecord(home, entry.name) for entry in sorted(runs.iterdir()) if entry.is_dir()]
