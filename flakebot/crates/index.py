"""A searchable index of a directory registry: SQLite FTS5 under FLAKEBOT_HOME, kept incrementally.

Every crate directory's Cargo.toml is read once (see `cargo_toml`); a re-check stats each manifest
and re-reads only those whose size or mtime changed, so an unchanged registry is re-checked in a
fraction of a second. Each version of a crate is kept; searches report the newest. After a change,
the index works out which crates resolve in this registry: every dependency a default build
needs, transitively, has a version here that satisfies its requirement.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from flakebot.crates.cargo_toml import CrateRecord, Dependency, read_crate
from flakebot.crates.resolution import CrateDeps, Resolver
from flakebot.crates.semver import SemverError, Version
from flakebot.errors import ConfigError, ManifestError

log = structlog.get_logger()

SCHEMA_VERSION = "4"  # 3: bin_names holds the tool binaries only; 4: dependents
# bm25 column weights: name, keywords, categories, description, readme
BM25_WEIGHTS = (10.0, 5.0, 2.0, 4.0, 0.5)
_TOKEN = re.compile(r"[A-Za-z0-9]+")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS crates (
    id INTEGER PRIMARY KEY,
    dir TEXT NOT NULL UNIQUE,
    mtime_ns INTEGER NOT NULL,
    size INTEGER NOT NULL,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    description TEXT NOT NULL,
    license TEXT,
    repository TEXT,
    keywords TEXT NOT NULL,
    categories TEXT NOT NULL,
    bin_names TEXT NOT NULL,
    has_lib INTEGER NOT NULL,
    dependencies TEXT NOT NULL,
    features TEXT NOT NULL,
    resolves INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS crates_name ON crates (name);
CREATE TABLE IF NOT EXISTS skipped (
    dir TEXT PRIMARY KEY, mtime_ns INTEGER NOT NULL, size INTEGER NOT NULL, reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS dependents (name TEXT PRIMARY KEY, count INTEGER NOT NULL);
CREATE VIRTUAL TABLE IF NOT EXISTS crates_fts USING fts5 (
    name, keywords, categories, description, readme, tokenize = 'porter unicode61'
);
"""


@dataclass(frozen=True)
class IndexedCrate:
    """A crate as the index knows it."""

    name: str
    version: str
    path: Path
    description: str
    license: str | None
    repository: str | None
    keywords: tuple[str, ...]
    categories: tuple[str, ...]
    bin_names: tuple[str, ...]
    has_lib: bool
    resolves: bool


@dataclass(frozen=True)
class SearchHit:
    crate: IndexedCrate
    relevance: float  # -bm25: larger is better, > 0


@dataclass
class RefreshStats:
    crates: int = 0
    added: int = 0
    updated: int = 0
    removed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (directory, reason)
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.removed)


def query_terms(text: str) -> list[str]:
    """Search terms of a free-text query; `sha256` also yields `sha` and `256`, as in `SHA-256`."""
    terms: list[str] = []
    for token in _TOKEN.findall(text.lower()):
        parts = re.findall(r"[a-z]+|[0-9]+", token)
        for term in [token, *parts] if len(parts) > 1 else [token]:
            if term not in terms:
                terms.append(term)
    return terms


def index_path(home: Path, registry_dir: Path) -> Path:
    digest = hashlib.sha256(str(registry_dir.resolve()).encode()).hexdigest()[:16]
    return home / "index" / f"local-{digest}.sqlite"


class CrateIndex:
    """The index of one directory registry, stored in one SQLite file."""

    def __init__(self, registry_dir: Path, db_path: Path) -> None:
        if not registry_dir.is_dir():
            raise ConfigError(
                f"registry directory {registry_dir} does not exist",
                hint="install crate sources (apt-get install librust-<name>-dev) or pass "
                "--registry local:DIR with a directory of unpacked crates",
            )
        self.registry_dir = registry_dir.resolve()
        db_path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(db_path, check_same_thread=False)  # callers serialise
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        if self._meta("schema") != SCHEMA_VERSION or self._meta("registry") != str(
            self.registry_dir
        ):
            self._db.executescript(
                "DROP TABLE IF EXISTS crates; DROP TABLE IF EXISTS skipped;"
                " DROP TABLE IF EXISTS dependents;"
                " DROP TABLE IF EXISTS crates_fts; DELETE FROM meta;"
            )
        self._db.executescript(_SCHEMA)
        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
        self._db.execute(
            "INSERT OR REPLACE INTO meta VALUES ('registry', ?)", (str(self.registry_dir),)
        )
        self._db.commit()

    def close(self) -> None:
        self._db.close()

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _clear(self) -> None:
        self._db.executescript("DELETE FROM crates; DELETE FROM skipped; DELETE FROM crates_fts;")

    def refresh(self, *, force: bool = False) -> RefreshStats:
        """Bring the index up to date with the directory; `force` re-reads every crate."""
        started = time.monotonic()
        stats = RefreshStats()
        if force:
            self._clear()
        known = {
            row[0]: (row[1], row[2], row[3])
            for row in self._db.execute("SELECT dir, mtime_ns, size, id FROM crates")
        }
        skipped = {
            row[0]: (row[1], row[2])
            for row in self._db.execute("SELECT dir, mtime_ns, size FROM skipped")
        }
        seen: set[str] = set()
        with self._db:
            for directory, mtime_ns, size in self._scan():
                seen.add(directory)
                if directory in known and known[directory][:2] == (mtime_ns, size):
                    continue
                if directory in skipped and skipped[directory] == (mtime_ns, size):
                    continue
                was_known = directory in known
                if was_known:
                    self._delete(known[directory][2])
                self._db.execute("DELETE FROM skipped WHERE dir = ?", (directory,))
                try:
                    record = read_crate(self.registry_dir / directory)
                except ManifestError as exc:
                    stats.removed += was_known
                    self._db.execute(
                        "INSERT INTO skipped VALUES (?, ?, ?, ?)",
                        (directory, mtime_ns, size, exc.message),
                    )
                    log.warning("crate_skipped", directory=directory, reason=exc.message)
                    continue
                self._insert(directory, mtime_ns, size, record)
                if was_known:
                    stats.updated += 1
                else:
                    stats.added += 1
            for directory, (_, _, crate_id) in known.items():
                if directory not in seen:
                    self._delete(crate_id)
                    stats.removed += 1
            self._db.execute(
                "DELETE FROM skipped WHERE dir NOT IN (SELECT value FROM json_each(?))",
                (json.dumps(sorted(seen)),),
            )
            if stats.changed or force or self._meta("resolved") != "1":
                self._compute_resolution()
                self._db.execute("INSERT OR REPLACE INTO meta VALUES ('resolved', '1')")
        stats.skipped = [
            (str(row[0]), str(row[1]))
            for row in self._db.execute("SELECT dir, reason FROM skipped ORDER BY dir")
        ]
        stats.crates = int(self._db.execute("SELECT count(*) FROM crates").fetchone()[0])
        stats.seconds = time.monotonic() - started
        log.info(
            "registry_indexed",
            registry=str(self.registry_dir),
            crates=stats.crates,
            added=stats.added,
            updated=stats.updated,
            removed=stats.removed,
            skipped=len(stats.skipped),
            seconds=round(stats.seconds, 3),
        )
        return stats

    def _scan(self) -> Iterator[tuple[str, int, int]]:
        with os.scandir(self.registry_dir) as entries:
            for entry in entries:
                if entry.name.startswith(".") or not entry.is_dir():
                    continue
                try:
                    manifest = os.stat(os.path.join(entry.path, "Cargo.toml"))
                except FileNotFoundError:
                    continue  # not a crate (a stray directory)
                yield entry.name, manifest.st_mtime_ns, manifest.st_size

    def _insert(self, directory: str, mtime_ns: int, size: int, record: CrateRecord) -> None:
        dependencies = [dataclasses.asdict(dep) for dep in record.dependencies]
        cursor = self._db.execute(
            "INSERT INTO crates (dir, mtime_ns, size, name, version, description, license,"
            " repository, keywords, categories, bin_names, has_lib, dependencies, features)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                directory,
                mtime_ns,
                size,
                record.name,
                record.version,
                record.description,
                record.license,
                record.repository,
                json.dumps(record.keywords),
                json.dumps(record.categories),
                json.dumps(record.tool_bins),
                int(record.has_lib),
                json.dumps(dependencies),
                json.dumps(record.features),
            ),
        )
        self._db.execute(
            "INSERT INTO crates_fts (rowid, name, keywords, categories, description, readme)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (
                cursor.lastrowid,
                record.name.replace("-", " ").replace("_", " ") + " " + record.name,
                " ".join(record.keywords),
                " ".join(record.categories).replace("-", " "),
                record.description,
                record.readme,
            ),
        )

    def _delete(self, crate_id: int) -> None:
        self._db.execute("DELETE FROM crates WHERE id = ?", (crate_id,))
        self._db.execute("DELETE FROM crates_fts WHERE rowid = ?", (crate_id,))

    def _compute_resolution(self) -> None:
        """Mark each crate version whose default build's dependencies all resolve here."""
        rows = self._db.execute("SELECT id, name, version, dependencies, features FROM crates")
        parsed: list[tuple[int, str, CrateDeps]] = []
        for crate_id, name, version, dependencies, features in rows.fetchall():
            try:
                parsed_version = Version.parse(version)
            except SemverError:
                continue
            deps = tuple(Dependency(**dep) for dep in json.loads(dependencies))
            features_table = {key: tuple(value) for key, value in json.loads(features).items()}
            parsed.append((crate_id, name, CrateDeps(parsed_version, deps, features_table)))
        resolver = Resolver((name, crate) for _, name, crate in parsed)
        users: dict[str, set[str]] = {}
        for _, name, crate in parsed:
            for dep in crate.dependencies:
                if dep.name != name:
                    users.setdefault(dep.name, set()).add(name)
        self._db.execute("DELETE FROM dependents")
        self._db.executemany(
            "INSERT INTO dependents VALUES (?, ?)", [(n, len(u)) for n, u in users.items()]
        )
        self._db.executemany(
            "UPDATE crates SET resolves = ? WHERE id = ?",
            [
                (int(resolver.resolves(name, deps.version)), crate_id)
                for crate_id, name, deps in parsed
            ],
        )

    def search(self, text: str, *, limit: int = 10, bins_only: bool = False) -> list[SearchHit]:
        """Crates matching `text`, best first, one hit per crate name (its newest version)."""
        terms = query_terms(text)
        if not terms:
            raise ConfigError(
                f"the query {text!r} has no words to search for",
                hint="search with a few words, e.g. 'hex viewer'",
            )
        match = " OR ".join(f'"{term}"' for term in terms)
        weights = ", ".join(str(weight) for weight in BM25_WEIGHTS)
        rows = self._db.execute(
            f"SELECT crates.*, -bm25(crates_fts, {weights}) AS relevance"
            " FROM crates_fts JOIN crates ON crates.id = crates_fts.rowid"
            " WHERE crates_fts MATCH ? ORDER BY relevance DESC",
            (match,),
        ).fetchall()
        best: dict[str, SearchHit] = {}
        for row in rows:
            crate = _crate(row, self.registry_dir)
            if bins_only and not crate.bin_names:
                continue
            hit = SearchHit(crate=crate, relevance=float(row[-1]))
            current = best.get(crate.name)
            if current is None or _newer(crate, current.crate):
                best[crate.name] = SearchHit(
                    crate=crate, relevance=max(hit.relevance, current.relevance if current else 0)
                )
        ranked = sorted(best.values(), key=lambda hit: hit.relevance, reverse=True)
        return ranked[:limit]

    def versions(self, name: str) -> list[IndexedCrate]:
        """Every indexed version of crate `name`, newest first."""
        rows = self._db.execute("SELECT *, 0 FROM crates WHERE name = ?", (name,)).fetchall()
        crates = [_crate(row, self.registry_dir) for row in rows]
        return sorted(crates, key=lambda crate: _version_key(crate.version), reverse=True)

    def dependents(self, name: str) -> int:
        """How many crates here (by name, any version) depend on `name`."""
        row = self._db.execute("SELECT count FROM dependents WHERE name = ?", (name,)).fetchone()
        return 0 if row is None else int(row[0])

    def most_dependents(self) -> int:
        row = self._db.execute("SELECT max(count) FROM dependents").fetchone()
        return 0 if row is None or row[0] is None else int(row[0])

    def count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM crates").fetchone()[0])


def _crate(row: tuple[object, ...], registry_dir: Path) -> IndexedCrate:
    (_, directory, _, _, name, version, description, license_, repository) = row[:9]
    keywords, categories, bin_names, has_lib, _, _, resolves = row[9:16]
    return IndexedCrate(
        name=str(name),
        version=str(version),
        path=registry_dir / str(directory),
        description=str(description),
        license=None if license_ is None else str(license_),
        repository=None if repository is None else str(repository),
        keywords=tuple(json.loads(str(keywords))),
        categories=tuple(json.loads(str(categories))),
        bin_names=tuple(json.loads(str(bin_names))),
        has_lib=bool(has_lib),
        resolves=bool(resolves),
    )


def _version_key(text: str) -> tuple[int, Version | str]:
    try:
        return (1, Version.parse(text))
    except SemverError:
        return (0, text)


def _newer(candidate: IndexedCrate, current: IndexedCrate) -> bool:
    a, b = _version_key(candidate.version), _version_key(current.version)
    if a[0] != b[0]:
        return a[0] > b[0]
    return a[1] > b[1]
