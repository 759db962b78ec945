"""Crates from a crates.io-protocol registry, fetched outside the sandbox into a shared cache.

Per registry, FLAKEBOT_HOME/crates/<registry>/ holds:

    downloads/<name>-<version>.crate   forked crates as downloaded (re-verified on every use)
    vendor/<name>-<version>/           every dependency a fork's Cargo.lock names, unpacked, with
                                       `.cargo-checksum.json` {"package": <sha256>}: a directory
                                       registry that the sandboxed stages build against offline
    cargo-home/                        cargo's index cache, for resolving locks against the registry

`vendor_lock` reads a Cargo.lock that cargo resolved against the registry (its checksums are the
index's), downloads each locked crate the vendor directory lacks, checks the sha256 against the
lock, and unpacks it safely, once for all runs: an entry is written to a temporary directory and
renamed into place, so concurrent forks never see half a crate. Cargo itself later verifies every
crate it builds against the lock, through the `package` checksum.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import structlog

from flakebot import fork_files
from flakebot.crates.crate_file import CrateRejected, sha256, unpack
from flakebot.crates.index_entry import IndexEntry
from flakebot.crates.sparse import SparseRegistry, pick_version
from flakebot.errors import ForkError
from messages import RegistryRef

log = structlog.get_logger()

CRATES_IO_SOURCE = "registry+https://github.com/rust-lang/crates.io-index"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
_SAFE_VERSION = re.compile(r"^[0-9A-Za-z.+-]{1,64}\Z")


def registry_slug(registry: RegistryRef) -> str:
    """A directory name for a registry: readable host and port, plus a digest of the URL."""
    parts = urlsplit(registry.location)
    readable = re.sub(r"[^a-z0-9]+", "-", f"{parts.hostname or ''}-{parts.port or ''}").strip("-")
    digest = hashlib.sha256(registry.location.encode()).hexdigest()[:10]
    return f"{readable or 'registry'}-{digest}"


def registry_cache(home: Path, registry: RegistryRef) -> Path:
    return home / "crates" / registry_slug(registry)


def dependency_dir(home: Path, registry: RegistryRef) -> Path:
    """The directory registry a fork's sandboxed cargo builds against: the local registry
    itself, or the shared vendor directory of a remote one (made if missing)."""
    if registry.source == "local":
        return Path(registry.location)
    vendor = registry_cache(home, registry) / "vendor"
    vendor.mkdir(parents=True, exist_ok=True)
    return vendor


def cargo_home(home: Path, registry: RegistryRef) -> Path:
    return registry_cache(home, registry) / "cargo-home"


@dataclass(frozen=True)
class Downloaded:
    entry: IndexEntry
    data: bytes


class Fetcher:
    """Downloads, verifies and caches one remote registry's crates."""

    def __init__(self, home: Path, client: SparseRegistry) -> None:
        self.client = client
        self.cache = registry_cache(home, client.registry)
        self.vendor_dir = self.cache / "vendor"

    def crate(self, name: str, wanted: str | None) -> Downloaded:
        """The `.crate` of the version of `name` to fork, verified against the index."""
        entry = pick_version(
            self.client.entries(name), wanted, what=f"{name} in {self.client.registry}"
        )
        cached = self.cache / "downloads" / f"{entry.name}-{entry.vers}.crate"
        if cached.is_file() and sha256(cached.read_bytes()) == entry.cksum:
            return Downloaded(entry, cached.read_bytes())
        data = self.client.download(entry.name, entry.vers, entry.cksum)
        cached.parent.mkdir(parents=True, exist_ok=True)
        temporary = cached.with_suffix(f".{os.urandom(4).hex()}.tmp")
        temporary.write_bytes(data)
        temporary.replace(cached)
        return Downloaded(entry, data)

    def vendor_lock(self, lock_text: str) -> list[str]:
        """Make every registry crate the lock names present in the vendor directory; returns
        `name version` of those downloaded now."""
        fetched = []
        for name, version, checksum in locked_crates(lock_text):
            entry = self.vendor_dir / f"{name}-{version}"
            if entry.is_dir():
                present = package_checksum(entry)
                if present == checksum:
                    continue
                raise CrateRejected(
                    f"{name} {version} in {self.client.registry} now has checksum {checksum}, "
                    f"but {present} when Flakebot fetched it before; refusing it",
                    hint="a registry must never change a published version; check the mirror",
                )
            data = self.client.download(name, version, checksum)
            self.vendor_dir.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{name}-{version}.", dir=self.vendor_dir))
            try:
                unpacked = staging / "crate"
                unpack(data, name, version, unpacked)
                fork_files.write_text(
                    unpacked,
                    ".cargo-checksum.json",
                    json.dumps({"files": {}, "package": checksum}),
                )
                try:
                    unpacked.rename(entry)
                except OSError:  # another fork put it there first: it must be the same crate
                    if package_checksum(entry) != checksum:
                        raise
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            fetched.append(f"{name} {version}")
        if fetched:
            log.info("dependencies_fetched", registry=str(self.client.registry), crates=fetched)
        return fetched


def locked_crates(lock_text: str) -> list[tuple[str, str, str]]:
    """(name, version, checksum) of every registry package in a Cargo.lock; refuses sources
    Flakebot cannot fetch by checksum (git, other registries)."""
    try:
        lock = tomllib.loads(lock_text)
    except tomllib.TOMLDecodeError as exc:
        raise ForkError(f"Cargo.lock is not valid TOML: {exc}") from None
    found = []
    for package in lock.get("package", []):
        source = package.get("source")
        if source is None:
            continue  # a path package: the fork itself or a workspace member
        name, version = str(package.get("name", "")), str(package.get("version", ""))
        if source != CRATES_IO_SOURCE:
            raise ForkError(
                f"{name} {version} comes from {source}; forks resolve only against their registry",
                hint="pick another candidate (git and other-registry dependencies are not fetched)",
            )
        checksum = package.get("checksum")
        if not isinstance(checksum, str) or not re.fullmatch(r"[0-9a-f]{64}", checksum):
            raise ForkError(f"Cargo.lock gives {name} {version} no sha256 checksum")
        if not _SAFE_NAME.match(name) or not _SAFE_VERSION.match(version):
            raise ForkError(f"Cargo.lock names a malformed package {name!r} {version!r}")
        found.append((name, version, checksum))
    return found


def package_checksum(entry: Path) -> str | None:
    """The `package` sha256 a directory registry's `.cargo-checksum.json` records, if any."""
    text = fork_files.read_text(entry, ".cargo-checksum.json")
    try:
        value = json.loads(text or "{}").get("package")
    except (json.JSONDecodeError, AttributeError):
        return None
    return value if isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value) else None
