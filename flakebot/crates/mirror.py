"""`flakebot registry serve`: a directory registry served as a crates.io-protocol registry.

A directory registry (Debian's, or `cargo vendor` output) becomes what cargo and Flakebot's
crates.io path expect of a registry:

    GET /index/config.json                      {"dl": ..., "api": ...}
    GET /index/<prefix>/<name>                  the sparse index: one JSON line per version
    GET /api/v1/crates/<name>/<version>/download  the .crate, packed reproducibly
    GET /api/v1/crates?q=...&per_page=N         search, from the scout's index of the directory
    GET /api/v1/crates/<name>                   the crate and its versions

Each version's `cksum` is the sha256 of the `.crate` this server sends, so cargo's and Flakebot's
checksum checks hold end to end. Versions can be served as yanked (`--yank NAME@VERSION`), as an
operator withdraws a bad release. The server binds loopback unless told otherwise; when it binds
another address for a cluster's nodes, `public_url` is the URL they reach it by.
"""

from __future__ import annotations

import json
import re
import threading
import tomllib
from collections.abc import Iterable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import structlog

from flakebot.crates.crate_file import pack, sha256
from flakebot.crates.index import CrateIndex, IndexedCrate, index_path
from flakebot.crates.index_entry import entry_of, index_file_path
from flakebot.errors import ConfigError
from flakebot.fork_files import read_regular

log = structlog.get_logger()

_DOWNLOAD = re.compile(r"^/api/v1/crates/([A-Za-z0-9_-]+)/([^/]+)/download\Z")
_CRATE = re.compile(r"^/api/v1/crates/([A-Za-z0-9_-]+)\Z")
_INDEX = re.compile(r"^/index/(?:1|2|3/[^/]+|[^/]{2}/[^/]{2})/([A-Za-z0-9_-]+)\Z")


class Mirror:
    """What the server answers, for one directory registry; thread-safe."""

    def __init__(
        self, directory: Path, home: Path, *, public_url: str, yanked: Iterable[str] = ()
    ) -> None:
        self.directory = directory.resolve()
        self.public_url = public_url.rstrip("/")
        self.yanked = set(yanked)
        self._index = CrateIndex(self.directory, index_path(home, self.directory))
        self._index.refresh()
        self._lock = threading.Lock()
        self._packed: dict[tuple[str, str], bytes] = {}
        self._lines: dict[str, str] = {}
        self.downloads = 0

    def close(self) -> None:
        self._index.close()

    def count(self) -> int:
        with self._lock:
            return self._index.count()

    def config(self) -> dict[str, str]:
        return {"dl": f"{self.public_url}/api/v1/crates", "api": self.public_url}

    def _versions(self, name: str) -> list[IndexedCrate]:
        with self._lock:
            return self._index.versions(name)

    def crate_file(self, name: str, version: str) -> bytes | None:
        key = (name, version)
        with self._lock:
            if key not in self._packed:
                listed = self._index.versions(name)
                crate = next((c for c in listed if c.version == version), None)
                if crate is None:
                    return None
                self._packed[key] = pack(crate.path, crate.name, crate.version)
            return self._packed[key]

    def index_lines(self, name: str) -> str | None:
        if name in self._lines:
            return self._lines[name]
        versions = self._versions(name)
        if not versions:
            return None
        lines = []
        for crate in reversed(versions):  # oldest first, as crates.io's index
            data = self.crate_file(crate.name, crate.version)
            manifest = read_regular(crate.path / "Cargo.toml")
            if data is None or manifest is None:
                continue
            entry = entry_of(
                tomllib.loads(manifest.decode()),
                sha256(data),
                yanked=f"{crate.name}@{crate.version}" in self.yanked,
            )
            lines.append(json.dumps(entry.model_dump(exclude_none=True)))
        self._lines[name] = "\n".join(lines) + "\n"
        return self._lines[name]

    def search(self, text: str, per_page: int) -> dict[str, object]:
        with self._lock:
            hits = self._index.search(text, limit=max(per_page, 1) * 2) if text.strip() else []
        wanted = text.strip().lower().replace("_", "-")
        summaries = [
            self._summary(hit.crate, exact=hit.crate.name.lower().replace("_", "-") == wanted)
            for hit in hits
        ]
        summaries.sort(key=lambda summary: not summary["exact_match"])  # stable: exact first
        shown = summaries[:per_page]
        return {"crates": shown, "meta": {"total": len(summaries), "next_page": None}}

    def crate(self, name: str) -> dict[str, object] | None:
        versions = self._versions(name)
        if not versions:
            return None
        newest = versions[0]
        return {
            "crate": {
                **self._summary(newest, exact=True),
                "keywords": list(newest.keywords),
                "categories": list(newest.categories),
                "versions": list(range(1, len(versions) + 1)),
            },
            "versions": [
                {
                    "id": number,
                    "crate": crate.name,
                    "num": crate.version,
                    "dl_path": f"/api/v1/crates/{crate.name}/{crate.version}/download",
                    "license": crate.license,
                    "bin_names": list(crate.bin_names),
                    "has_lib": crate.has_lib,
                    "yanked": f"{crate.name}@{crate.version}" in self.yanked,
                    "checksum": sha256(self.crate_file(crate.name, crate.version) or b""),
                    "created_at": _mtime(crate.path),
                    "updated_at": _mtime(crate.path),
                    "downloads": 0,
                }
                for number, crate in enumerate(versions, start=1)
            ],
            "keywords": [],
            "categories": [],
        }

    def _summary(self, crate: IndexedCrate, *, exact: bool) -> dict[str, object]:
        versions = self._versions(crate.name)
        unyanked = [c for c in versions if f"{c.name}@{c.version}" not in self.yanked]
        stable = [c for c in unyanked if "-" not in c.version]
        return {
            "id": crate.name,
            "name": crate.name,
            "description": crate.description,
            "downloads": 0,  # a mirror counts no downloads: the scout leaves popularity out
            "recent_downloads": None,
            "max_version": versions[0].version if versions else crate.version,
            "max_stable_version": stable[0].version if stable else None,
            "newest_version": versions[0].version if versions else crate.version,
            "repository": crate.repository,
            "homepage": None,
            "documentation": None,
            "created_at": _mtime(crate.path),
            "updated_at": _mtime(crate.path),
            "exact_match": exact,
            "default_version": stable[0].version if stable else versions[0].version,
            "num_versions": len(versions),
            "yanked": not unyanked,
            "keywords": list(crate.keywords),
            "categories": list(crate.categories),
            "badges": [],
            "links": {"versions": f"/api/v1/crates/{crate.name}/versions"},
        }


def _mtime(path: Path) -> str:
    stamp = (path / "Cargo.toml").stat().st_mtime
    return datetime.fromtimestamp(stamp, UTC).isoformat().replace("+00:00", "Z")


class _Handler(BaseHTTPRequestHandler):
    mirror: Mirror
    server_version = "flakebot-registry"

    def log_message(self, format: str, *args: object) -> None:
        log.debug("registry_request", line=format % args)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        path = url.path
        try:
            if path == "/index/config.json":
                self._json(self.mirror.config())
            elif match := _INDEX.match(path):
                name = match.group(1)
                lines = self.mirror.index_lines(name)
                if lines is None or index_file_path(name) != path.removeprefix("/index/"):
                    self._error(404, f"no crate {name}")
                else:
                    self._send(200, lines.encode(), "text/plain")
            elif match := _DOWNLOAD.match(path):
                data = self.mirror.crate_file(match.group(1), match.group(2))
                if data is None:
                    self._error(404, "no such crate version")
                else:
                    self.mirror.downloads += 1
                    self._send(200, data, "application/gzip")
            elif path == "/api/v1/crates":
                query = parse_qs(url.query)
                per_page = int((query.get("per_page") or ["10"])[0] or 10)
                self._json(self.mirror.search((query.get("q") or [""])[0], min(per_page, 100)))
            elif match := _CRATE.match(path):
                detail = self.mirror.crate(match.group(1))
                if detail is None:
                    self._error(404, "Not Found")
                else:
                    self._json(detail)
            else:
                self._error(404, "Not Found")
        except (ValueError, OSError) as exc:
            log.warning("registry_request_failed", path=path, error=str(exc))
            self._error(500, "the mirror could not answer")

    def _json(self, body: object) -> None:
        self._send(200, json.dumps(body).encode(), "application/json")

    def _error(self, status: int, detail: str) -> None:
        body = json.dumps({"errors": [{"detail": detail}]}).encode()
        self._send(status, body, "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class MirrorServer:
    """The HTTP server around a Mirror; `start` serves in a thread, `serve_forever` in this one."""

    def __init__(
        self,
        directory: Path,
        home: Path,
        *,
        bind: str = "127.0.0.1",
        port: int = 0,
        public_url: str | None = None,
        yanked: Iterable[str] = (),
    ) -> None:
        handler: type[_Handler] = type("Handler", (_Handler,), {})
        try:
            self.httpd = ThreadingHTTPServer((bind, port), handler)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve on {bind}:{port}: {exc.strerror}",
                hint="pick another --port, or stop what already listens there",
            ) from None
        self.httpd.daemon_threads = True
        host, bound_port = self.httpd.server_address[:2]
        shown = host.decode() if isinstance(host, bytes) else host
        self.url = public_url or f"http://{shown}:{bound_port}"
        self.mirror = Mirror(directory, home, public_url=self.url, yanked=yanked)
        handler.mirror = self.mirror
        self._thread: threading.Thread | None = None

    def start(self) -> MirrorServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.mirror.close()

    def __enter__(self) -> MirrorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
