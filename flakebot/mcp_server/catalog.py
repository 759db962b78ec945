"""The deployed tools an MCP client can call: one per live run of this FLAKEBOT_HOME.

A run's tool is live while Flakebot's own record of it holds: its manifest (written by the run into
FLAKEBOT_HOME/runs/<run>/manifest.json) is there and the store path it names still exists. Cleaning
a run removes both, so a tool disappears with its run, whichever process cleaned it (`clean_tool`,
`flakebot clean`, another server). Nothing is read from the fork.

Tool names are the manifests' names. Two live runs that built tools of the same name both stay
callable: each is then named `<name>-<last six characters of its run id>`. The server's own tools'
names are reserved.
"""

from __future__ import annotations

import itertools
import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import structlog
from pydantic import ValidationError

from flakebot.manifest import to_markdown
from flakebot.runstate import all_runs
from messages import ToolManifest

log = structlog.get_logger()

RESERVED = frozenset({"build_tool", "clean_tool"})
URI_PREFIX = "flakebot://tools/"


@dataclass(frozen=True)
class DeployedTool:
    """A live run's tool under the name the server gives it."""

    name: str
    run_id: str
    manifest: ToolManifest

    @property
    def uri(self) -> str:
        """Where its Markdown manifest is read as an MCP resource."""
        return f"{URI_PREFIX}{self.name}/manifest.md"

    def markdown(self) -> str:
        return to_markdown(self.manifest)


def _live_manifest(directory: Path, present: Callable[[str], bool]) -> ToolManifest | None:
    path = directory / "manifest.json"
    try:
        manifest = ToolManifest.model_validate(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, ValidationError) as exc:  # a damaged record: skip, say why
        log.warning("manifest_unreadable", path=str(path), error=str(exc)[:300])
        return None
    return manifest if present(manifest.store_path) else None


def signature(home: Path) -> tuple[tuple[str, int], ...]:
    """What the catalog depends on, cheaply: each run's manifest and its modification time.
    The server polls this and rebuilds the catalog (and tells clients) only when it changes."""
    found = []
    for record in all_runs(home):
        try:
            found.append((record.run_id, (record.directory / "manifest.json").stat().st_mtime_ns))
        except OSError:
            continue
    return tuple(found)


class Catalog:
    """The live tools of a home, by name."""

    def __init__(self, tools: list[DeployedTool]) -> None:
        self.tools = {tool.name: tool for tool in tools}

    @classmethod
    def load(cls, home: Path, present: Callable[[str], bool] = os.path.exists) -> Catalog:
        """The home's live tools; `present` says whether a store path is still there."""
        live: list[tuple[str, ToolManifest]] = []
        for record in all_runs(home):
            manifest = _live_manifest(record.directory, present)
            if manifest is not None and manifest.run_id == record.run_id:
                live.append((record.run_id, manifest))
        counts = Counter(manifest.name for _, manifest in live)
        plain = {name for name, count in counts.items() if count == 1 and name not in RESERVED}
        used = set(plain) | set(RESERVED)
        tools = []
        for run_id, manifest in live:
            name = manifest.name
            if name not in plain:  # shared or reserved: told apart by its run, never shadowing
                name = next(
                    choice
                    for choice in _renamings(name, run_id)
                    if choice not in used  # a tool another spec is named after
                )
                used.add(name)
            tools.append(DeployedTool(name=name, run_id=run_id, manifest=manifest))
        return cls(tools)

    def get(self, name: str) -> DeployedTool | None:
        return self.tools.get(name)

    def by_uri(self, uri: str) -> DeployedTool | None:
        return next((tool for tool in self.tools.values() if tool.uri == uri), None)

    def by_run(self, run_id: str) -> DeployedTool | None:
        return next((tool for tool in self.tools.values() if tool.run_id == run_id), None)

    def names(self) -> list[str]:
        return sorted(self.tools)


def _renamings(name: str, run_id: str) -> Iterator[str]:
    """Names for a tool whose own is shared or reserved: with its run's last six characters,
    its whole run id, then numbered."""
    yield f"{name}-{run_id[-6:]}"
    yield f"{name}-{run_id}"
    yield from (f"{name}-{run_id}-{number}" for number in itertools.count(2))
