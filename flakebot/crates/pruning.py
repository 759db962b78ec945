"""Pruning what a registry cannot provide: a missing dev-dependency and the targets that use it.

Debian's crate sources lack many dev-dependencies (bat's `assert_cmd`, for one), and cargo will not
resolve a package, even to build it, while one is missing. A dev-dependency is only needed by
tests, benches and examples, so removing it together with those that use it leaves a crate that
builds and keeps the rest of its tests. Cargo.toml is edited with tomlkit (comments and layout
kept); every removal is returned as a PrunedItem for the Workspace message.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import tomlkit
from tomlkit.items import AoT, Table

from flakebot import fork_files
from messages import PrunedItem

_NO_MATCHING = re.compile(r"no matching package (?:named|found)[^`]*`([A-Za-z0-9_-]+)`")
_NO_VERSION = re.compile(r"failed to select a version for the requirement `([A-Za-z0-9_-]+) = ")
_TARGET_DIRS = {"tests": "test", "benches": "bench", "examples": "example"}
_DOC_INCLUDE = re.compile(r'doc\s*=\s*include_str!\(\s*"([^"]+)"\s*\)')
_MOD_DECL = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+([A-Za-z_][A-Za-z0-9_]*)\s*;", re.M)


def unresolved_dependency(cargo_stderr: str) -> str | None:
    """The crate cargo could not find (or find a matching version of), from its error output."""
    for pattern in (_NO_MATCHING, _NO_VERSION):
        match = pattern.search(cargo_stderr)
        if match:
            return match.group(1)
    return None


def _dev_tables(document: tomlkit.TOMLDocument) -> list[Table]:
    tables: list[Table] = []
    for key in ("dev-dependencies", "dev_dependencies"):
        table = document.get(key)
        if isinstance(table, Table):
            tables.append(table)
    targets = document.get("target")
    if isinstance(targets, Table):
        for spec in targets.values():
            if isinstance(spec, Table):
                for key in ("dev-dependencies", "dev_dependencies"):
                    table = spec.get(key)
                    if isinstance(table, Table):
                        tables.append(table)
    return tables


def _keys_for(table: Table, crate: str) -> list[str]:
    keys = []
    for key, spec in table.items():
        package = spec.get("package") if isinstance(spec, Table | dict) else None
        if key == crate or package == crate:
            keys.append(str(key))
    return keys


def _is_normal_dependency(document: tomlkit.TOMLDocument, crate: str) -> bool:
    sections = [document.get("dependencies"), document.get("build-dependencies")]
    targets = document.get("target")
    if isinstance(targets, Table):
        for spec in targets.values():
            if isinstance(spec, Table):
                sections += [spec.get("dependencies"), spec.get("build-dependencies")]
    return any(isinstance(section, Table) and _keys_for(section, crate) for section in sections)


def prune_dev_dependency(root: Path, crate: str, *, reason: str) -> list[PrunedItem]:
    """Remove dev-dependency `crate` and the test/bench/example targets using it.

    Returns what was removed; empty when `crate` is not (only) a dev-dependency of this package.
    """
    document = tomlkit.parse(fork_files.read_text(root, "Cargo.toml") or "")
    if _is_normal_dependency(document, crate):
        return []
    keys: list[str] = []
    for table in _dev_tables(document):
        for key in _keys_for(table, crate):
            del table[key]
            keys.append(key)
    if not keys:
        return []
    pruned = [PrunedItem(what="dev-dependency", name=crate, reason=reason)]
    identifiers = {key.replace("-", "_") for key in keys} | {crate.replace("-", "_")}
    for relative in _targets_using(root, identifiers):
        kind = _TARGET_DIRS[relative.split("/", 1)[0]]
        target_file = root / relative
        if target_file.name == "main.rs":
            shutil.rmtree(target_file.parent)  # refuses a symlink; never follows one
        else:
            fork_files.remove(root, relative)
        _drop_manifest_target(document, kind, relative)
        pruned.append(PrunedItem(what=kind, name=relative, reason=f"uses {crate}"))
    in_code, in_docs = _library_uses(root, identifiers)
    if in_code and _disable_lib(document, "test"):
        pruned.append(
            PrunedItem(what="test", name="lib unit tests", reason=f"src/ tests use {crate}")
        )
    if in_docs and _disable_lib(document, "doctest"):
        pruned.append(
            PrunedItem(what="test", name="lib doctests", reason=f"doc examples use {crate}")
        )
    fork_files.write_text(root, "Cargo.toml", tomlkit.dumps(document))
    return pruned


def _library_uses(root: Path, identifiers: set[str]) -> tuple[bool, bool]:
    """Does the library name any identifier in its code (unit tests), and in its docs (doctests:
    `///` and `//!` comments, and a README the crate includes as its docs)?"""
    uses = re.compile(r"\b(?:" + "|".join(sorted(map(re.escape, identifiers))) + r")\b")
    in_code = in_docs = False
    source = root / "src"
    for path in source.rglob("*.rs") if source.is_dir() else []:
        relative = path.relative_to(source)
        if relative.parts[0] == "bin" or relative == Path("main.rs") or path.is_symlink():
            continue
        text = fork_files.read_text(root, str(path.relative_to(root))) or ""
        for line in text.splitlines():
            if not uses.search(line):
                continue
            stripped = line.lstrip()
            if stripped.startswith(("///", "//!")):
                in_docs = True
            elif not stripped.startswith("//"):
                in_code = True
        for included in _DOC_INCLUDE.findall(text):
            target = (path.parent / included).resolve()
            if target.is_relative_to(root.resolve()) and not target.is_symlink():
                included_text = fork_files.read_text(root, str(target.relative_to(root.resolve())))
                in_docs = in_docs or bool(uses.search(included_text or ""))
    return in_code, in_docs


def _disable_lib(document: tomlkit.TOMLDocument, setting: str) -> bool:
    """Set `[lib] <setting> = false` (test or doctest); returns False when it was already off."""
    library = document.get("lib")
    if not isinstance(library, Table):
        library = tomlkit.table()
        document["lib"] = library
    if library.get(setting) is False:
        return False
    library[setting] = False
    return True


def _targets_using(root: Path, identifiers: set[str]) -> list[str]:
    """Target root files under tests/, benches/, examples/ whose code names any identifier."""
    uses = re.compile(r"\b(?:" + "|".join(sorted(map(re.escape, identifiers))) + r")\b")
    found = []
    for directory in _TARGET_DIRS:
        base = root / directory
        if not base.is_dir():
            continue
        roots = sorted(base.glob("*.rs")) + sorted(base.glob("*/main.rs"))
        for target in roots:
            files = [target, *_declared_modules(root, target)]
            if any(uses.search(_text(root, path)) for path in files):
                found.append(str(target.relative_to(root)))
    return found


def _text(root: Path, path: Path) -> str:
    """A source file's text, read through fork_files (a crate's symlink is not followed, a FIFO
    not read): "" if it is not a regular file of the crate's own."""
    try:
        return fork_files.read_text(root, path.relative_to(root).as_posix()) or ""
    except fork_files.UnsafePath:
        return ""


def _declared_modules(root: Path, target: Path) -> list[Path]:
    """Files of the modules `target` declares with `mod name;`, and everything under them."""
    files: list[Path] = []
    for name in _MOD_DECL.findall(_text(root, target)):
        for candidate in (target.parent / f"{name}.rs", target.parent / name / "mod.rs"):
            if candidate.is_file():
                files.append(candidate)
        module_dir = target.parent / name
        if module_dir.is_dir():
            files.extend(sorted(module_dir.rglob("*.rs")))
    return files


def _drop_manifest_target(document: tomlkit.TOMLDocument, kind: str, relative: str) -> None:
    entries = document.get(kind)
    if not isinstance(entries, AoT):
        return
    stem = Path(relative).stem if Path(relative).name != "main.rs" else Path(relative).parent.name
    keep = [
        entry
        for entry in entries
        if entry.get("path") != relative
        and not (entry.get("path") is None and entry.get("name") == stem)
    ]
    if len(keep) != len(entries):
        document[kind] = tomlkit.aot()
        for entry in keep:
            document[kind].append(entry)
        if not keep:
            del document[kind]
