"""The crate scout: a CrateQuery in, ranked CrateCandidate messages out, each with its score parts.

A candidate's score is the weighted mean of the parts that apply to its registry:

    relevance   text match of the queries (BM25 locally; crates.io's own order remotely), in [0, 1];
                1 for a crate named by a word of a query (`base64 encode decode` names base64),
                as crates.io's exact match; text matches alone reach at most NAMED_LEAD below it
    has_binary  1 if the crate has a tool binary, when the query prefers binaries (cli, service):
                a mild preference, since a library crate whose API fits is a good start too (the
                coder writes its binary); test fixtures and helpers are not tools
    license     1 for a permissive licence, 0.3 for copyleft, 0.5 when unknown
    resolves    local only: 1 if a default build's dependencies all resolve in this registry
    popularity  crates.io: downloads, log-scaled, 10M downloads = 1; a local registry: how many of
                its crates depend on it, log-scaled against the most depended-on one there
    recency     crates.io only: 1 within a year of the last release, falling to 0 at five years
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import assert_never

import httpx
import structlog

from flakebot.crates.api import (
    PROCESS_LIMITER,
    CrateDetail,
    CratesIoClient,
    CrateSummary,
    DiskCache,
    RateLimiter,
)
from flakebot.crates.index import CrateIndex, IndexedCrate, index_path
from flakebot.errors import CrateNotFound
from flakebot.settings import CRATES_IO_API, Settings
from messages import CrateCandidate, CrateQuery, RegistryRef, ScoreParts

log = structlog.get_logger()

WEIGHTS = {
    "relevance": 0.55,
    "has_binary": 0.05,
    "license": 0.10,
    "resolves": 0.20,
    "popularity": 0.15,
    "recency": 0.05,
}
NAMED_LEAD = 0.85  # the best text match without the crate's name, against a named crate's 1
QUERY_DECAY = 0.9  # each later query in a CrateQuery counts this much less than the one before
CACHE_TTL_S = 24 * 3600.0
OTHER_REGISTRIES_LIMITER = RateLimiter(0.1)

_PERMISSIVE = {
    "mit", "apache-2.0", "bsd-2-clause", "bsd-3-clause", "isc", "zlib", "unlicense", "0bsd",
    "cc0-1.0", "mpl-2.0", "bsl-1.0", "unicode-dfs-2016", "unicode-3.0", "mit-0", "wtfpl",
}  # fmt: skip
_COPYLEFT = re.compile(r"^(a|l)?gpl", re.IGNORECASE)


def license_score(expression: str | None) -> float:
    """1.0 if any alternative of the SPDX expression is permissive, 0.3 if copyleft, else 0.5."""
    if not expression:
        return 0.5
    alternatives = re.split(r"\s+OR\s+|/", expression.strip(), flags=re.IGNORECASE)
    scores = []
    for alternative in alternatives:
        ids = [part.strip("() ").lower() for part in re.split(r"\s+AND\s+", alternative)]
        ids = [identifier.split(" with ")[0].removesuffix("+") for identifier in ids]
        if all(identifier in _PERMISSIVE for identifier in ids):
            scores.append(1.0)
        elif any(_COPYLEFT.match(identifier) for identifier in ids):
            scores.append(0.3)
        else:
            scores.append(0.5)
    return max(scores)


def downloads_score(downloads: int) -> float:
    return min(1.0, math.log10(downloads + 1) / 7)


def dependents_score(dependents: int, most: int) -> float:
    """How depended-on a crate is in its registry, against the most depended-on one there."""
    if most <= 0:
        return 0.0
    return min(1.0, math.log1p(dependents) / math.log1p(most))


def recency_score(updated_at: datetime | None, now: datetime) -> float | None:
    if updated_at is None:
        return None
    years = (now - updated_at).total_seconds() / (365.25 * 24 * 3600)
    return max(0.0, min(1.0, 1 - (years - 1) / 4))


def combine(parts: ScoreParts) -> float:
    """The weighted mean of the parts that apply."""
    total = weight_sum = 0.0
    for name, value in parts.model_dump().items():
        if value is not None:
            total += WEIGHTS[name] * value
            weight_sum += WEIGHTS[name]
    return round(total / weight_sum, 4)


class Scout:
    """Finds and ranks crates in a local directory registry or on crates.io."""

    def __init__(self, settings: Settings, *, http: httpx.AsyncClient | None = None) -> None:
        self.settings = settings
        self._http = http
        self._indexes: dict[Path, CrateIndex] = {}

    def local_index(self, directory: Path) -> CrateIndex:
        """The index of a directory registry, brought up to date with the directory."""
        directory = directory.resolve() if directory.exists() else directory
        index = self._indexes.get(directory)
        if index is None:
            index = CrateIndex(directory, index_path(self.settings.home, directory))
            self._indexes[directory] = index
        index.refresh()
        return index

    def close(self) -> None:
        for index in self._indexes.values():
            index.close()
        self._indexes.clear()

    async def scout(self, query: CrateQuery) -> list[CrateCandidate]:
        """Ranked candidates for the query, best first, at most `query.limit`."""
        source = query.registry.source
        if source == "local":
            candidates = self._scout_local(query)
        elif source == "crates-io":
            candidates = await self._scout_crates_io(query)
        else:
            assert_never(source)
        log.info(
            "crates_scouted",
            queries=list(query.queries),
            registry=str(query.registry),
            found=[candidate.name for candidate in candidates],
        )
        return candidates

    def _scout_local(self, query: CrateQuery) -> list[CrateCandidate]:
        index = self.local_index(Path(query.registry.location))
        relevance: dict[str, float] = {}
        crates: dict[str, IndexedCrate] = {}
        for position, text in enumerate(query.queries):
            hits = index.search(
                text, limit=query.limit * 4 + len(query.exclude), bins_only=query.bins_only
            )
            if not hits:
                continue
            top = hits[0].relevance
            for hit in hits:
                if hit.crate.name in query.exclude:
                    continue
                value = hit.relevance / top * NAMED_LEAD * QUERY_DECAY**position
                if value > relevance.get(hit.crate.name, 0.0):
                    relevance[hit.crate.name] = value
                    crates[hit.crate.name] = hit.crate
            for named in _named_crates(index, text, query):
                value = QUERY_DECAY**position  # a query word that is a crate's name: the best match
                if value > relevance.get(named.name, 0.0):
                    relevance[named.name] = value
                    crates[named.name] = named
        scored = []
        most = index.most_dependents()
        for name, crate in crates.items():
            parts = ScoreParts(
                relevance=round(relevance[name], 4),
                has_binary=(1.0 if crate.bin_names else 0.0) if query.prefer_binary else None,
                license=license_score(crate.license),
                resolves=1.0 if crate.resolves else 0.0,
                popularity=round(dependents_score(index.dependents(name), most), 4),
            )
            scored.append((combine(parts), crate, parts))
        scored.sort(key=lambda item: (-item[0], item[1].name))
        return [
            CrateCandidate(
                run_id=query.run_id,
                candidate_id=f"c{rank}-{crate.name}",
                name=crate.name,
                version=crate.version,
                description=crate.description,
                license=crate.license,
                repository=crate.repository,
                registry=query.registry,
                bin_names=list(crate.bin_names),
                has_lib=crate.has_lib,
                dependents=index.dependents(crate.name),
                score=score,
                score_parts=parts,
            )
            for rank, (score, crate, parts) in enumerate(scored[: query.limit], start=1)
        ]

    def crates_io_client(self, registry: RegistryRef) -> CratesIoClient:
        """crates.io's crawler policy (one request a second) for crates.io; other registries
        (a mirror, `registry serve`) are asked at most ten times a second."""
        crates_io = registry.location.rstrip("/") == CRATES_IO_API
        return CratesIoClient(
            base_url=registry.location,
            user_agent=self.settings.user_agent,
            http=self._http,
            cache=DiskCache(self.settings.home / "cache" / "crates-io", CACHE_TTL_S),
            limiter=PROCESS_LIMITER if crates_io else OTHER_REGISTRIES_LIMITER,
        )

    async def _scout_crates_io(self, query: CrateQuery) -> list[CrateCandidate]:
        client = self.crates_io_client(query.registry)
        try:
            relevance: dict[str, float] = {}
            summaries: dict[str, CrateSummary] = {}
            for position, text in enumerate(query.queries):
                found = await client.search(text, per_page=min(100, query.limit * 2))
                for rank, summary in enumerate(found):
                    if summary.name in query.exclude:
                        continue
                    value = 1.0 if summary.exact_match else NAMED_LEAD / (1 + 0.15 * rank)
                    value *= QUERY_DECAY**position
                    if value > relevance.get(summary.name, 0.0):
                        relevance[summary.name] = value
                        summaries[summary.name] = summary
            ordered = sorted(relevance, key=lambda name: -relevance[name])
            wanted = query.limit * (2 if query.bins_only else 1)
            details = []
            for name in ordered[:wanted]:
                try:
                    details.append(await client.crate(name))
                except CrateNotFound:  # listed by search, gone since (yanked or deleted)
                    log.warning("crate_vanished", crate=name, registry=str(query.registry))
        finally:
            await client.aclose()
        now = datetime.now(UTC)
        scored = []
        for detail in details:
            candidate = _remote_candidate(query, detail, relevance[detail.crate.name], now)
            if candidate is not None:
                scored.append(candidate)
        scored.sort(key=lambda candidate: (-candidate.score, candidate.name))
        return [
            candidate.model_copy(update={"candidate_id": f"c{rank}-{candidate.name}"})
            for rank, candidate in enumerate(scored[: query.limit], start=1)
        ]


def candidate_rank(candidate_id: str) -> int | None:
    """Where the scout ranked a candidate in its batch (1 first), from its id `c<rank>-<name>`."""
    match = _RANKED.match(candidate_id)
    return int(match.group(1)) if match else None


_RANKED = re.compile(r"^c([0-9]{1,4})-")
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


def _named_crates(index: CrateIndex, text: str, query: CrateQuery) -> list[IndexedCrate]:
    """The crates a query names outright: a word of it is the crate's name (`-` and `_` alike)."""
    found = []
    for word in dict.fromkeys(match.group().lower() for match in _WORD.finditer(text)):
        for name in dict.fromkeys((word, word.replace("-", "_"), word.replace("_", "-"))):
            if name in query.exclude:
                continue
            versions = index.versions(name)
            if versions and not (query.bins_only and not versions[0].bin_names):
                found.append(versions[0])
                break
    return found


def _remote_candidate(
    query: CrateQuery, detail: CrateDetail, relevance: float, now: datetime
) -> CrateCandidate | None:
    version = detail.best_version()
    if version is None:
        return None
    bin_names = [name for name in version.bin_names or [] if name]
    if query.bins_only and not bin_names:
        return None
    parts = ScoreParts(
        relevance=round(relevance, 4),
        has_binary=(1.0 if bin_names else 0.0) if query.prefer_binary else None,
        license=license_score(version.license),
        popularity=round(downloads_score(detail.crate.downloads), 4),
        recency=recency_score(version.created_at or detail.crate.updated_at, now),
    )
    return CrateCandidate(
        run_id=query.run_id,
        candidate_id=f"c0-{detail.crate.name}",
        name=detail.crate.name,
        version=version.num,
        description=" ".join((detail.crate.description or "").split()),
        license=version.license,
        repository=detail.crate.repository,
        registry=query.registry,
        bin_names=bin_names,
        has_lib=bool(version.has_lib),
        downloads=detail.crate.downloads,
        updated_at=version.created_at or detail.crate.updated_at,
        score=combine(parts),
        score_parts=parts,
    )
