"""A client of a registry's sparse index and its downloads: crates.io's, or any compatible one's.

The sparse protocol is static files: `config.json` (the `dl` template for downloads and the `api`
base URL) and one file per crate with one JSON line per version (see index_entry). Downloads go
through the `dl` template (`{crate}`, `{version}`, `{prefix}`, `{lowerprefix}`,
`{sha256-checksum}`; a template with none of them gets `/{crate}/{version}/download` appended,
as cargo does) and are checked against the checksum the index publishes before anything reads
them. For crates.io the index lives at https://index.crates.io/; for any other registry URL at
`URL/index/`, which is where `flakebot registry serve` puts it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import structlog
from pydantic import BaseModel, ConfigDict, ValidationError

from flakebot.crates.crate_file import CrateRejected, sha256
from flakebot.crates.index_entry import IndexEntry, directory_prefix, index_file_path
from flakebot.crates.semver import SemverError, Version, VersionReq
from flakebot.errors import CrateNotFound, RegistryUnavailable
from flakebot.settings import CRATES_IO_API
from messages import RegistryRef

log = structlog.get_logger()

CRATES_IO_INDEX = "https://index.crates.io/"
MAX_CRATE_BYTES = 200 * 1024 * 1024
MAX_INDEX_BYTES = 32 * 1024 * 1024  # serde's whole index file is under 1 MiB
_MARKERS = ("{crate}", "{version}", "{prefix}", "{lowerprefix}", "{sha256-checksum}")


def index_url(registry: RegistryRef) -> str:
    """The sparse index URL of a crates.io-protocol registry, with a trailing slash."""
    if registry.location.rstrip("/") == CRATES_IO_API:
        return CRATES_IO_INDEX
    return registry.location.rstrip("/") + "/index/"


class RegistryConfig(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    dl: str
    api: str | None = None


def download_url(template: str, name: str, version: str, checksum: str) -> str:
    """A crate's download URL from the index's `dl` template, as cargo expands it."""
    if not any(marker in template for marker in _MARKERS):
        return f"{template.rstrip('/')}/{name}/{version}/download"
    prefix = directory_prefix(name)
    values = {
        "{crate}": name,
        "{version}": version,
        "{prefix}": prefix,
        "{lowerprefix}": prefix.lower(),
        "{sha256-checksum}": checksum,
    }
    for marker, value in values.items():
        template = template.replace(marker, value)
    return template


class SparseRegistry:
    """Reads one registry's sparse index and downloads its crates, verified."""

    def __init__(
        self,
        registry: RegistryRef,
        *,
        user_agent: str,
        http: httpx.Client | None = None,
        saved_config: Path | None = None,
        max_crate_bytes: int = MAX_CRATE_BYTES,
        timeout: float = 20.0,
        retries: int = 2,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.registry = registry
        self.index = index_url(registry)
        self._http = http or httpx.Client(timeout=timeout, follow_redirects=True)
        self._owns_http = http is None
        self._headers = {"User-Agent": user_agent}
        self._timeout = timeout
        self._retries = retries
        self._sleep = sleep
        self._config: RegistryConfig | None = None
        self._saved_config = saved_config
        self._max_crate_bytes = max_crate_bytes

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def config(self) -> RegistryConfig:
        if self._config is None:
            status, body = self._get(self.index + "config.json", limit=MAX_INDEX_BYTES)
            if status != 200:
                raise RegistryUnavailable(
                    f"{self.index}config.json answered {status}",
                    hint="is this a crates.io-protocol registry? `flakebot registry serve DIR` "
                    "serves one",
                )
            try:
                self._config = RegistryConfig.model_validate_json(body)
            except ValidationError:
                raise RegistryUnavailable(
                    f"{self.index}config.json is not a registry configuration"
                ) from None
            if self._saved_config is not None:  # the deployer's stand-in reads `dl` from it
                self._saved_config.parent.mkdir(parents=True, exist_ok=True)
                temporary = self._saved_config.with_suffix(f".{os.getpid()}.tmp")
                temporary.write_text(self._config.model_dump_json())
                temporary.replace(self._saved_config)
        return self._config

    def entries(self, name: str) -> list[IndexEntry]:
        """Every version of `name` the index lists, in its order (oldest first)."""
        try:
            path = index_file_path(name)
        except ValueError:
            raise CrateNotFound(f"{name!r} is not a crate name") from None
        status, body = self._get(self.index + path, limit=MAX_INDEX_BYTES)
        if status in (404, 410, 451):
            raise CrateNotFound(f"{self.registry} has no crate named {name!r}")
        if status != 200:
            raise RegistryUnavailable(f"{self.index}{path} answered {status}")
        entries = []
        text = body.decode("utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entries.append(IndexEntry.model_validate(json.loads(line)))
            except (ValidationError, json.JSONDecodeError) as exc:
                log.warning("index_line_skipped", crate=name, line=number, problem=str(exc)[:200])
        return [entry for entry in entries if entry.name.lower() == name.lower()]

    def download(self, name: str, version: str, checksum: str) -> bytes:
        """The `.crate` of `name` `version`, refused unless its sha256 is `checksum`."""
        url = download_url(self.config().dl, name, version, checksum)
        status, data = self._get(url, limit=self._max_crate_bytes)
        if status != 200:
            raise RegistryUnavailable(f"downloading {name} {version} from {url} answered {status}")
        actual = sha256(data)
        if actual != checksum:
            raise CrateRejected(
                f"the .crate of {name} {version} from {url} does not match the registry's "
                f"checksum (index: sha256 {checksum}, download: sha256 {actual}); refusing it",
                hint="the registry or something between it and you altered the crate; "
                "do not use this mirror until it is fixed",
            )
        return data

    def _get(self, url: str, *, limit: int) -> tuple[int, bytes]:
        """GET with retries on timeouts, 429 and 5xx; the body is read up to `limit` bytes."""
        problem = ""
        for attempt in range(self._retries + 1):
            try:
                with self._http.stream(
                    "GET", url, headers=self._headers, timeout=self._timeout
                ) as response:
                    status = response.status_code
                    if status != 429 and status < 500:
                        return status, _read_capped(response, url, limit)
                    problem = f"HTTP {status}"
            except httpx.TimeoutException as exc:
                problem = f"it did not answer within {self._timeout:g} s ({type(exc).__name__})"
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if attempt < self._retries:
                log.warning("registry_request_retried", url=url, problem=problem)
                self._sleep(0.5 * 2**attempt)
        raise RegistryUnavailable(
            f"the registry at {self.registry.location} failed for {url}: {problem} "
            f"({self._retries + 1} tries)",
            hint="check the network and the registry URL, or use --registry local",
        )


def _read_capped(response: httpx.Response, url: str, limit: int) -> bytes:
    body = bytearray()
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) > limit:
            raise RegistryUnavailable(
                f"{url} sent more than {limit // 2**20} MiB; refusing the rest",
                hint="a registry file that large is broken or hostile",
            )
    return bytes(body)


def pick_version(entries: list[IndexEntry], wanted: str | None, *, what: str) -> IndexEntry:
    """The version to fork: `wanted` if listed and not yanked, else the newest unyanked one that
    fits `^wanted` (any, without `wanted`); pre-releases only when nothing else fits."""
    usable = [entry for entry in entries if not entry.yanked]
    if not usable:
        raise CrateNotFound(
            f"every version of {what} is yanked ({len(entries)} listed)",
            hint="its authors withdrew it: pick another crate",
        )
    parsed: list[tuple[Version, IndexEntry]] = []
    for entry in usable:
        try:
            parsed.append((Version.parse(entry.vers), entry))
        except SemverError:
            continue
    if wanted is not None:
        exact = [entry for version, entry in parsed if entry.vers == wanted]
        if exact:
            return exact[0]
        try:
            requirement = VersionReq(f"^{wanted}")
        except SemverError:
            requirement = VersionReq("*")
        parsed = [(version, entry) for version, entry in parsed if requirement.matches(version)]
        if not parsed:
            raise CrateNotFound(
                f"{what} {wanted} is yanked and no unyanked version fits ^{wanted}",
                hint="pick another crate, or a version its registry still offers",
            )
    stable = [item for item in parsed if not item[0].pre] or parsed
    if not stable:
        raise CrateNotFound(f"{what} has no version with a valid semver number")
    return max(stable, key=lambda item: item[0])[1]
