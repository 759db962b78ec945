"""Applying a model's EditProposal to a fork, safely and all at once.

Nothing the model wrote runs through a shell. Every path must stay inside the fork: no absolute
paths or `..` (the message already refuses those), no path through a symlink, nothing under
`.git/` or `.cargo/`, and not the files Flakebot owns (`Cargo.lock`, the generated acceptance
test). A replace hunk must match exactly once. A dependency change edits Cargo.toml with tomlkit and
may only name a crate, version and features the registry has. The whole proposal is checked
against an in-memory copy first; if anything is wrong, nothing is written and every problem is
returned, to be fed back to the model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import tomlkit
from tomlkit.items import Table

from flakebot import fork_files
from flakebot.acceptance import TEST_PATH
from flakebot.crates.cargo_toml import read_crate
from flakebot.crates.index import IndexedCrate
from flakebot.crates.semver import SemverError, Version, VersionReq
from flakebot.fork_files import UnsafePath
from messages import DeleteFile, DependencyChange, EditProposal, ReplaceInFile, WriteFile

PROTECTED_DIRS = (".git", ".cargo", "target")
PROTECTED_FILES = ("Cargo.lock", TEST_PATH)
MAX_FILE_BYTES = 1_000_000

Versions = Callable[[str], list[IndexedCrate]]


def check_path(root: Path, relative: str) -> str | None:
    """Why `relative` may not be edited, or None when it may."""
    parts = Path(relative).parts
    if parts[0] in PROTECTED_DIRS:
        return f"{relative}: files under {parts[0]}/ are not yours to edit"
    if relative in PROTECTED_FILES or relative.endswith(f"/{TEST_PATH}"):
        return f"{relative}: flakebot manages this file (cargo's lock, or generated from the spec)"
    current = root
    for part in parts:
        current = current / part
        if current.is_symlink():
            return f"{relative}: the path goes through a symlink ({current.relative_to(root)})"
    if not (root / relative).resolve().is_relative_to(root.resolve()):
        return f"{relative}: the path leaves the fork"
    return None


def apply_proposal(root: Path, proposal: EditProposal, versions: Versions) -> list[str]:
    """Apply every edit and dependency change, or none; returns the problems (empty: applied)."""
    overlay: dict[str, str | None] = {}  # relative path -> new content (None: deleted)
    problems: list[str] = []

    def current(relative: str) -> str | None:
        if relative in overlay:
            return overlay[relative]
        return fork_files.read_text(root, relative)

    for number, edit in enumerate(proposal.edits, start=1):
        why = check_path(root, edit.path)
        if why is not None:
            problems.append(f"edit {number}: {why}")
            continue
        try:
            current(edit.path)
        except UnsafePath as exc:
            problems.append(f"edit {number}: {exc.message}")
            continue
        if isinstance(edit, WriteFile):
            if len(edit.content.encode()) > MAX_FILE_BYTES:
                problems.append(f"edit {number}: {edit.path}: more than {MAX_FILE_BYTES} bytes")
                continue
            overlay[edit.path] = edit.content
        elif isinstance(edit, ReplaceInFile):
            text = current(edit.path)
            if text is None:
                problems.append(f"edit {number}: {edit.path} does not exist; use a write edit")
                continue
            count = text.count(edit.search)
            if count != 1:
                where = "was not found" if count == 0 else f"matches {count} times"
                problems.append(
                    f"edit {number}: the search text {where} in {edit.path}"
                    + ("; copy it exactly from the file" if count == 0 else "; add context")
                )
                continue
            overlay[edit.path] = text.replace(edit.search, edit.replace, 1)
        elif isinstance(edit, DeleteFile):
            if current(edit.path) is None:
                problems.append(f"edit {number}: {edit.path} does not exist")
                continue
            overlay[edit.path] = None
    if proposal.dependency_changes:
        try:
            manifest = current("Cargo.toml")
        except UnsafePath as exc:
            problems.append(exc.message)
            manifest = ""
        if manifest is None:
            problems.append("Cargo.toml is missing, so dependencies cannot change")
        elif manifest:
            try:
                overlay["Cargo.toml"] = _change_dependencies(
                    manifest, proposal.dependency_changes, versions, problems
                )
            except tomlkit.exceptions.ParseError as exc:
                problems.append(f"Cargo.toml does not parse after the edits: {exc}")
    if problems:
        return problems
    try:
        for relative, content in overlay.items():
            if content is None:
                fork_files.remove(root, relative)
            else:
                fork_files.write_text(root, relative, content)
    except UnsafePath as exc:  # the tree changed under the checks: nothing followed, say why
        return [exc.message]
    return []


def _change_dependencies(
    manifest: str, changes: list[DependencyChange], versions: Versions, problems: list[str]
) -> str:
    document = tomlkit.parse(manifest)
    for change in changes:
        table = document.get(change.section)
        if change.action == "remove":
            if not isinstance(table, Table) or change.crate not in table:
                problems.append(f"{change.crate} is not in [{change.section}]")
                continue
            del table[change.crate]
            continue
        available = versions(change.crate)
        if not available:
            problems.append(f"the registry has no crate named {change.crate}")
            continue
        try:
            requirement = VersionReq(str(change.version_req))
        except SemverError:
            problems.append(f"{change.crate}: {change.version_req!r} is not a version requirement")
            continue
        matching = [crate for crate in available if _matches(requirement, crate.version)]
        if not matching:
            have = ", ".join(crate.version for crate in available)
            problems.append(f"{change.crate} {change.version_req}: the registry has only {have}")
            continue
        known = _features_of(matching[0])
        unknown = [feature for feature in change.features if feature not in known]
        if unknown:
            problems.append(f"{change.crate} {matching[0].version} has no features {unknown}")
            continue
        if not isinstance(table, Table):
            table = tomlkit.table()
            document[change.section] = table
        if change.features:
            entry = tomlkit.inline_table()
            entry["version"] = change.version_req
            entry["features"] = list(change.features)
            table[change.crate] = entry
        else:
            table[change.crate] = change.version_req
    return tomlkit.dumps(document)


def _matches(requirement: VersionReq, version: str) -> bool:
    try:
        return requirement.matches(Version.parse(version))
    except SemverError:
        return False


def _features_of(crate: IndexedCrate) -> set[str]:
    record = read_crate(crate.path)
    optional = {dep.feature_key for dep in record.dependencies if dep.optional}
    return set(record.features) | optional
