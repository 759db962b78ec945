"""A directory registry served on loopback with crates.io's protocols, read by Flakebot's own
clients: the sparse index, verified downloads, the search and crate API, the shared vendor
directory, and the errors a tampered, yanked or silent registry gets."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from flakebot.crates.api import CratesIoClient, RateLimiter
from flakebot.crates.crate_file import CrateRejected, pack, sha256
from flakebot.crates.fetch import Fetcher, locked_crates
from flakebot.crates.index_entry import index_file_path
from flakebot.crates.mirror import MirrorServer
from flakebot.crates.sparse import SparseRegistry, download_url, index_url, pick_version
from flakebot.errors import CrateNotFound, ForkError, RegistryUnavailable
from messages import RegistryRef
from tests.conftest import Cli
from tests.registry_helpers import StaticRegistry, make_crate

FIXTURES = Path(__file__).parent / "fixtures" / "crates_io"
UA = "flakebot/test (ops@example.org)"
ALPHA_TOML = """
[dependencies]
beta = "0.3"
quiet = { version = "1", optional = true }
renamed = { version = "0.3", package = "beta", default-features = false, features = ["x"] }

[dev-dependencies]
devonly = "2"

[target.'cfg(windows)'.dependencies]
winthing = "0.1"

[features]
default = ["fast"]
fast = []
loud = ["dep:quiet"]
"""


def registry(tmp_path: Path) -> Path:
    directory = tmp_path / "registry"
    make_crate(directory, "alpha", "1.0.0", extra_toml=ALPHA_TOML, description="alpha parser")
    make_crate(directory, "alpha", "1.1.0", description="alpha parser, newer")
    make_crate(directory, "beta", "0.3.2", description="beta helper for alpha")
    make_crate(directory, "alphabet", "0.1.0", description="alpha alpha alpha alpha")
    return directory


@pytest.fixture
def served(tmp_path: Path) -> Iterator[MirrorServer]:
    with MirrorServer(registry(tmp_path), tmp_path / "home", yanked=["alpha@1.1.0"]) as server:
        yield server


def client(server: MirrorServer, **options: object) -> SparseRegistry:
    return SparseRegistry(
        RegistryRef(source="crates-io", location=server.url),
        user_agent=UA,
        **options,  # type: ignore[arg-type]
    )


def test_index_paths_and_download_templates() -> None:
    assert [index_file_path(n) for n in ("a", "ab", "abc", "Serde")] == [
        "1/a", "2/ab", "3/a/abc", "se/rd/serde",
    ]  # fmt: skip
    assert download_url("https://static.crates.io/crates", "serde", "1.0.0", "0" * 64) == (
        "https://static.crates.io/crates/serde/1.0.0/download"
    )
    template = "https://m.example/{prefix}/{lowerprefix}/{crate}-{version}.crate?{sha256-checksum}"
    assert download_url(template, "Serde", "1.0.0", "ab" * 32) == (
        f"https://m.example/Se/rd/se/rd/Serde-1.0.0.crate?{'ab' * 32}"
    )
    assert index_url(RegistryRef(source="crates-io", location="https://crates.io")) == (
        "https://index.crates.io/"
    )
    assert index_url(RegistryRef(source="crates-io", location="http://127.0.0.1:9/")) == (
        "http://127.0.0.1:9/index/"
    )


def test_the_sparse_index_lists_every_version_with_the_checksum_of_its_download(
    served: MirrorServer,
) -> None:
    sparse = client(served)
    assert sparse.config().dl == f"{served.url}/api/v1/crates"
    entries = sparse.entries("alpha")
    assert [(e.vers, e.yanked) for e in entries] == [("1.0.0", False), ("1.1.0", True)]
    first = entries[0]
    assert sha256(sparse.download("alpha", "1.0.0", first.cksum)) == first.cksum
    deps = {(d.name, d.kind): d for d in first.deps}
    assert deps[("beta", "normal")].req == "0.3" and deps[("quiet", "normal")].optional
    renamed = deps[("renamed", "normal")]
    assert renamed.package == "beta" and renamed.crate == "beta"
    assert not renamed.default_features and renamed.features == ["x"]
    assert deps[("devonly", "dev")].req == "2"
    assert deps[("winthing", "normal")].target == "cfg(windows)"
    assert first.features == {"default": ["fast"], "fast": []}
    assert first.features2 == {"loud": ["dep:quiet"]} and first.v == 2
    with pytest.raises(CrateNotFound, match="no crate named 'gamma'"):
        sparse.entries("gamma")


def test_the_search_and_crate_api_answer_in_crates_io_shape(served: MirrorServer) -> None:
    async def ask() -> tuple[list[str], bool, object]:
        api = CratesIoClient(base_url=served.url, user_agent=UA, limiter=RateLimiter(0))
        try:
            found = await api.search("alpha", per_page=5)
            detail = await api.crate("alpha")
        finally:
            await api.aclose()
        return [c.name for c in found], found[0].exact_match, detail

    names, exact, detail = asyncio.run(ask())
    assert names[0] == "alpha" and exact and "alphabet" in names  # the exact match first
    assert detail.crate.max_stable_version == "1.0.0"  # 1.1.0 is yanked
    assert detail.best_version().num == "1.0.0"  # type: ignore[attr-defined,union-attr]
    body = httpx.get(f"{served.url}/api/v1/crates/alpha").json()
    shape = json.loads((FIXTURES / "show_hexyl.json").read_text())
    wanted = {"id", "name", "description", "downloads", "max_version", "max_stable_version",
              "newest_version", "repository", "updated_at", "exact_match", "keywords",
              "num_versions", "yanked"}  # fmt: skip
    assert wanted <= set(shape["crate"]) and wanted <= set(body["crate"])
    version_keys = {"num", "license", "bin_names", "has_lib", "yanked", "checksum", "dl_path"}
    assert version_keys <= set(shape["versions"][0]) and version_keys <= set(body["versions"][0])
    entry = client(served).entries("alpha")[0]
    assert body["versions"][1]["checksum"] == entry.cksum  # versions newest first


class Tampering(httpx.BaseTransport):
    """Between Flakebot and the registry: alters the body of every download."""

    def __init__(self) -> None:
        self.real = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.real.handle_request(request)
        if not request.url.path.endswith("/download"):
            return response
        body = response.read()
        return httpx.Response(200, content=body[:-8] + b"tampered", headers=response.headers)


def test_a_tampered_crate_is_refused_and_not_cached(served: MirrorServer, tmp_path: Path) -> None:
    sparse = client(served, http=httpx.Client(transport=Tampering()))
    entry = sparse.entries("beta")[0]
    fetcher = Fetcher(tmp_path / "fb", sparse)
    with pytest.raises(CrateRejected) as caught:
        fetcher.crate("beta", "0.3.2")
    assert "does not match the registry's checksum" in caught.value.message
    assert entry.cksum in caught.value.message and caught.value.hint
    assert not list((fetcher.cache / "downloads").glob("*.crate"))


def test_yanked_versions_are_skipped_and_a_yanked_only_crate_is_refused(tmp_path: Path) -> None:
    with MirrorServer(
        registry(tmp_path), tmp_path / "home", yanked=["alpha@1.1.0", "beta@0.3.2"]
    ) as server:
        fetcher = Fetcher(tmp_path / "fb", client(server))
        assert fetcher.crate("alpha", None).entry.vers == "1.0.0"
        with pytest.raises(CrateNotFound, match=r"alpha in .* 1\.1\.0 is yanked"):
            fetcher.crate("alpha", "1.1.0")  # nothing unyanked fits ^1.1.0
        with pytest.raises(CrateNotFound) as caught:
            fetcher.crate("beta", "0.3.2")
    assert "every version of beta" in caught.value.message and "yanked" in caught.value.message


def test_pick_version_prefers_the_wanted_then_the_newest_that_fits(served: MirrorServer) -> None:
    entries = client(served).entries("alpha")
    unyanked = [e.model_copy(update={"yanked": False}) for e in entries]
    assert pick_version(unyanked, None, what="alpha").vers == "1.1.0"
    assert pick_version(unyanked, "1.0.0", what="alpha").vers == "1.0.0"
    with pytest.raises(CrateNotFound, match="no unyanked version fits"):
        pick_version(entries, "2.0.0", what="alpha")


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP server that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    listener.close()


def test_a_registry_that_never_answers_fails_clearly_and_promptly(silent_server: str) -> None:
    reference = RegistryRef(source="crates-io", location=silent_server)
    sparse = SparseRegistry(reference, user_agent=UA, timeout=0.5, retries=1, sleep=lambda _: None)
    started = time.monotonic()
    with pytest.raises(RegistryUnavailable) as caught:
        sparse.entries("hexyl")
    assert time.monotonic() - started < 5
    assert "did not answer within 0.5 s" in caught.value.message
    assert silent_server in caught.value.message and "2 tries" in caught.value.message

    async def search() -> None:
        api = CratesIoClient(
            base_url=silent_server, user_agent=UA, limiter=RateLimiter(0), max_retries=0,
            timeout=0.5,
        )  # fmt: skip
        try:
            await api.search("hex viewer")
        finally:
            await api.aclose()

    with pytest.raises(RegistryUnavailable, match="did not answer"):
        asyncio.run(search())


def lock(*packages: tuple[str, str, str | None, str]) -> str:
    text = "version = 4\n"
    for name, version, checksum, source in packages:
        text += f'\n[[package]]\nname = "{name}"\nversion = "{version}"\nsource = "{source}"\n'
        if checksum:
            text += f'checksum = "{checksum}"\n'
    return text


CRATES_IO = "registry+https://github.com/rust-lang/crates.io-index"


def test_locked_crates_are_vendored_once_verified_and_other_sources_refused(
    served: MirrorServer, tmp_path: Path
) -> None:
    sparse = client(served)
    beta = sparse.entries("beta")[0]
    alpha = sparse.entries("alpha")[0]
    fetcher = Fetcher(tmp_path / "fb", sparse)
    text = lock(
        ("beta", "0.3.2", beta.cksum, CRATES_IO), ("alpha", "1.0.0", alpha.cksum, CRATES_IO)
    )
    assert fetcher.vendor_lock(text) == ["beta 0.3.2", "alpha 1.0.0"]
    vendored = fetcher.vendor_dir / "beta-0.3.2"
    assert json.loads((vendored / ".cargo-checksum.json").read_text())["package"] == beta.cksum
    assert (vendored / "Cargo.toml").is_file()
    downloads = served.mirror.downloads
    assert fetcher.vendor_lock(text) == [] and served.mirror.downloads == downloads  # cached
    assert sorted(p.name for p in fetcher.vendor_dir.iterdir()) == ["alpha-1.0.0", "beta-0.3.2"]
    with pytest.raises(CrateRejected, match="does not match"):
        fetcher.vendor_lock(lock(("alphabet", "0.1.0", "0" * 64, CRATES_IO)))
    assert not (fetcher.vendor_dir / "alphabet-0.1.0").exists()
    with pytest.raises(ForkError, match="comes from git"):
        locked_crates(lock(("x", "1.0.0", None, "git+https://example.org/x#abc")))
    with pytest.raises(ForkError, match="no sha256 checksum"):
        locked_crates(lock(("x", "1.0.0", None, CRATES_IO)))


def test_registry_serve_on_the_command_line(tmp_path: Path) -> None:
    directory = registry(tmp_path)
    env = {"FLAKEBOT_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    command = [str(Path(sys.executable).parent / "flakebot"), "registry", "serve", str(directory)]
    bad = subprocess.run([*command, "--yank", "alpha"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "NAME@VERSION" in bad.stderr
    process = subprocess.Popen(
        [*command, "--port", "0"], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith("Serving 4 crates from") and " at http://127.0.0.1:" in first
        url = first.rsplit(" at ", 1)[1].strip()
        assert httpx.get(f"{url}/index/config.json").json()["api"] == url
        assert httpx.get(f"{url}/index/al/ph/alpha").text.count("\n") == 2
    finally:
        process.terminate()
        process.wait(timeout=10)
        assert process.stdout is not None
        process.stdout.close()


def test_the_cli_names_a_yanked_only_or_tampered_crate_in_one_line(
    cli: Cli, home: Path, tmp_path: Path
) -> None:
    with MirrorServer(registry(tmp_path), tmp_path / "mirror", yanked=["beta@0.3.2"]) as server:
        yanked = cli("fork", "beta", "--registry", f"crates-io:{server.url}")
    assert yanked.code == 3 and "Traceback" not in yanked.stderr
    errors = [line for line in yanked.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "every version of beta" in errors[0] and "yanked" in errors[0]

    crate = make_crate(tmp_path / "plain", "tidy", "0.1.0")
    manifest = {"package": {"name": "tidy", "version": "0.1.0"}}
    with StaticRegistry(tmp_path / "static") as static:
        static.publish("tidy", "0.1.0", pack(crate, "tidy", "0.1.0"), manifest)
        served_file = tmp_path / "static" / "crates" / "tidy-0.1.0.crate"
        (crate / "src" / "lib.rs").write_text("pub fn injected() {}\n")
        served_file.write_bytes(pack(crate, "tidy", "0.1.0"))  # replaced behind the index's back
        tampered = cli("fork", "tidy", "--registry", f"crates-io:{static.url}", "--run", "tamper")
    assert tampered.code == 3 and "Traceback" not in tampered.stderr
    assert "does not match the registry's checksum" in tampered.stderr
    assert not (home / "workspaces" / "tamper").exists() or not any(
        (home / "workspaces" / "tamper").iterdir()
    )


def test_a_download_larger_than_the_limit_is_cut_off(served: MirrorServer) -> None:
    def endless(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/download"):
            return httpx.Response(200, content=iter([b"\0" * 65536] * 64))  # 4 MiB, streamed
        return httpx.get(str(request.url))

    transport = httpx.MockTransport(endless)
    sparse = client(served, http=httpx.Client(transport=transport), max_crate_bytes=2**20)
    entry = sparse.entries("beta")[0]
    with pytest.raises(RegistryUnavailable, match="sent more than 1 MiB; refusing the rest"):
        sparse.download("beta", "0.3.2", entry.cksum)
