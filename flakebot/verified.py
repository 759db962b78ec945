"""Verified results kept across runs: a second run of the same job reuses the first one's work.

When a run deploys its tool, the winner's fork is kept as a git bundle with its green TestReport
under FLAKEBOT_HOME/verified/, named by what the result depends on: the spec (without its run
id), the model, the registry, the crate and its version, and the toolchain (`result_key`). A
later run whose candidate has the same key is given that fork instead of a new one (its own
workspace, made from the bundle and checked to be at the green commit) with the green report
in its journal, so the coder does not test it again and the model is not asked; the supervisor
says so with a `result_reused` event. A change to any of those parts is a different key, and
the run works as if there were none. A kept result outlives the run that made it (`flakebot
clean` of that run leaves it); `flakebot clean --all` removes them all.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import structlog
from pydantic import BaseModel, ConfigDict

from flakebot.home import PRIVATE_DIR, write_private
from messages import CrateCandidate, TestReport, ToolSpec, Workspace

log = structlog.get_logger()


class VerifiedResult(BaseModel):
    """A green, deployed fork kept for later runs of the same job."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str
    run_id: str
    workspace: Workspace  # as the run that made it had it (its branch names that run)
    report: TestReport  # green, at workspace.head_commit


def result_key(spec: ToolSpec, model: str | None, candidate: CrateCandidate, toolchain: str) -> str:
    """What a verified result depends on, hashed: the same key means nothing changed."""
    parts = {
        "spec": spec.model_dump(mode="json", exclude={"run_id"}),
        "model": model,
        "registry": candidate.registry.model_dump(mode="json"),
        "crate": candidate.name,
        "version": candidate.version,
        "toolchain": toolchain,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


@dataclass
class VerifiedResults:
    """The verified results of one Flakebot home."""

    home: Path

    @property
    def directory(self) -> Path:
        return self.home / "verified"

    def _paths(self, key: str) -> tuple[Path, Path]:
        if not key.isalnum():
            raise ValueError(f"not a result key: {key!r}")
        return self.directory / f"{key}.json", self.directory / f"{key}.bundle"

    def find(self, key: str) -> VerifiedResult | None:
        record, bundle = self._paths(key)
        if not record.is_file() or not bundle.is_file():
            return None
        try:
            return VerifiedResult.model_validate_json(record.read_text())
        except ValueError as exc:  # a damaged record is no result: the run works without it
            log.warning("verified_result_unreadable", key=key, error=str(exc)[:200])
            return None

    def bundle(self, key: str) -> Path:
        return self._paths(key)[1]

    def save(self, result: VerifiedResult, bundle: Path) -> None:
        """Keep `result` with its fork's bundle (moved here); a later save of the key wins."""
        record, kept = self._paths(result.key)
        self.directory.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
        os.replace(bundle, kept)
        write_private(record, result.model_dump_json(indent=1))
        log.info("verified_result_kept", key=result.key, run_id=result.run_id)

    def forget_run(self, run_id: str) -> int:
        """Remove the results run `run_id` kept; returns how many."""
        forgotten = 0
        for record in sorted(self.directory.glob("*.json")) if self.directory.is_dir() else []:
            result = self.find(record.stem)
            if result is not None and result.run_id == run_id:
                for path in self._paths(result.key):
                    path.unlink(missing_ok=True)
                forgotten += 1
        return forgotten

    def clear(self) -> int:
        """Remove every kept result; returns how many there were."""
        if not self.directory.is_dir():
            return 0
        count = len(list(self.directory.glob("*.json")))
        shutil.rmtree(self.directory)
        return count
