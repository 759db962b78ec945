"""An async crates.io API client that follows its crawler policy.

At most one request a second across the process (one `RateLimiter` shared by every client; across a
cluster, one scout actor owns the client), an identifying User-Agent with a contact, retries with
backoff on 429 and 5xx (honouring Retry-After), and an on-disk cache with a TTL so that repeated
searches cost nothing. All HTTP goes through an injected `httpx.AsyncClient`; tests pass one on
`httpx.MockTransport`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path

import httpx
import structlog
from pydantic import BaseModel, ConfigDict, ValidationError

from flakebot.errors import CrateNotFound, RegistryUnavailable

log = structlog.get_logger()

Sleep = Callable[[float], Awaitable[None]]
_CRATE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}\Z")


class RateLimiter:
    """Spaces requests at least `interval` seconds apart, across threads and event loops."""

    def __init__(self, interval: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._next = 0.0

    def reserve(self) -> float:
        """Claim the next slot; returns how long to wait for it."""
        with self._lock:
            now = self._clock()
            slot = max(now, self._next)
            self._next = slot + self.interval
            return slot - now

    async def wait(self, sleep: Sleep = asyncio.sleep) -> None:
        delay = self.reserve()
        if delay > 0:
            await sleep(delay)


PROCESS_LIMITER = RateLimiter(1.0)


class DiskCache:
    """JSON responses on disk, keyed by URL, fresh for `ttl` seconds."""

    def __init__(self, directory: Path, ttl: float, clock: Callable[[], float] = time.time) -> None:
        self.directory = directory
        self.ttl = ttl
        self._clock = clock

    def _path(self, url: str) -> Path:
        return self.directory / (hashlib.sha256(url.encode()).hexdigest() + ".json")

    def get(self, url: str) -> tuple[int, object] | None:
        path = self._path(url)
        try:
            entry = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        if self._clock() - float(entry["fetched_at"]) > self.ttl:
            return None
        return int(entry["status"]), entry["body"]

    def put(self, url: str, status: int, body: object) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self._path(url)
        temporary = path.with_suffix(".tmp")
        entry = {"url": url, "fetched_at": self._clock(), "status": status, "body": body}
        temporary.write_text(json.dumps(entry))
        temporary.replace(path)


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class CrateSummary(_Model):
    """A crate as the search endpoint lists it."""

    name: str
    description: str | None = None
    downloads: int = 0
    max_version: str
    max_stable_version: str | None = None
    repository: str | None = None
    updated_at: datetime | None = None
    exact_match: bool = False


class VersionInfo(_Model):
    num: str
    license: str | None = None
    bin_names: list[str | None] | None = None
    has_lib: bool | None = None
    yanked: bool = False
    created_at: datetime | None = None


class CrateInfo(CrateSummary):
    keywords: list[str] | None = None
    categories: list[str] | None = None


class CrateDetail(_Model):
    """A crate as the show endpoint returns it: the crate and its versions, newest first."""

    crate: CrateInfo
    versions: list[VersionInfo]

    def best_version(self) -> VersionInfo | None:
        """The version cargo would pick for `*`: max_stable_version, else the newest unyanked."""
        unyanked = [version for version in self.versions if not version.yanked]
        for version in unyanked:
            if version.num == self.crate.max_stable_version:
                return version
        return unyanked[0] if unyanked else None


class _SearchPage(_Model):
    crates: list[CrateSummary]


class CratesIoClient:
    """`search` and `crate` against the crates.io API (or a mirror with the same API)."""

    def __init__(
        self,
        *,
        base_url: str,
        user_agent: str,
        http: httpx.AsyncClient | None = None,
        cache: DiskCache | None = None,
        limiter: RateLimiter = PROCESS_LIMITER,
        max_retries: int = 3,
        backoff: float = 0.5,
        timeout: float = 20.0,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = http or httpx.AsyncClient(timeout=timeout)
        self._owns_http = http is None
        self._headers = {"User-Agent": user_agent, "Accept": "application/json"}
        self._cache = cache
        self._limiter = limiter
        self._max_retries = max_retries
        self._backoff = backoff
        self._sleep = sleep

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def search(self, query: str, *, per_page: int = 10) -> list[CrateSummary]:
        params = httpx.QueryParams({"q": query, "per_page": str(per_page)})
        body = await self._get(f"/api/v1/crates?{params}")
        try:
            return _SearchPage.model_validate(body).crates
        except ValidationError as exc:
            raise RegistryUnavailable(
                f"crates.io sent an unexpected search response: {exc}"
            ) from None

    async def crate(self, name: str) -> CrateDetail:
        if not _CRATE_NAME.match(name):
            raise CrateNotFound(f"{name!r} is not a crate name", hint="letters, digits, '-', '_'")
        body = await self._get(f"/api/v1/crates/{name}", not_found=name)
        try:
            return CrateDetail.model_validate(body)
        except ValidationError as exc:
            raise RegistryUnavailable(
                f"crates.io sent an unexpected crate response: {exc}"
            ) from None

    async def _get(self, path: str, *, not_found: str | None = None) -> object:
        url = self.base_url + path
        cached = self._cache.get(url) if self._cache else None
        if cached is None:
            status, body = await self._fetch(url)
            if self._cache and status in (200, 404):
                self._cache.put(url, status, body)
        else:
            status, body = cached
        if status == 404 and not_found is not None:
            raise CrateNotFound(
                f"crates.io has no crate named {not_found!r}", hint="check the spelling"
            )
        return body

    async def _fetch(self, url: str) -> tuple[int, object]:
        last_problem = ""
        for attempt in range(self._max_retries + 1):
            await self._limiter.wait(self._sleep)
            try:
                response = await self._http.get(url, headers=self._headers)
            except httpx.HTTPError as exc:
                last_problem = f"{type(exc).__name__}: {exc}"
                delay = self._backoff * 2**attempt
            else:
                if response.status_code in (200, 404):
                    try:
                        return response.status_code, response.json()
                    except json.JSONDecodeError:
                        raise RegistryUnavailable(f"crates.io sent non-JSON for {url}") from None
                if response.status_code == 403:
                    raise RegistryUnavailable(
                        "crates.io refused the request (403)",
                        hint="its crawler policy needs an identifying User-Agent: "
                        "set FLAKEBOT_CONTACT to an e-mail address or URL",
                    )
                if response.status_code != 429 and response.status_code < 500:
                    raise RegistryUnavailable(
                        f"crates.io answered {response.status_code} for {url}: "
                        f"{response.text[:300]}"
                    )
                last_problem = f"HTTP {response.status_code}"
                delay = _retry_after(response) or self._backoff * 2**attempt
            if attempt < self._max_retries:
                log.warning("registry_request_retried", url=url, problem=last_problem, delay=delay)
                await self._sleep(delay)
        raise RegistryUnavailable(
            f"crates.io did not answer {url} after {self._max_retries + 1} tries ({last_problem})",
            hint="check the network, or search offline with --registry local",
        )


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
