"""The crates.io client on httpx.MockTransport with crates.io-shaped responses: politeness, retries,
cache, and errors a person can act on."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from flakebot.crates.api import CratesIoClient, DiskCache, RateLimiter
from flakebot.errors import CrateNotFound, RegistryUnavailable

FIXTURES = Path(__file__).parent / "fixtures" / "crates_io"
UA = "flakebot/test (ops@example.org)"


def fixture(name: str) -> object:
    return json.loads((FIXTURES / name).read_text())


def crates_io(request: httpx.Request) -> httpx.Response:
    """Answers like crates.io for the crates in the fixtures."""
    path = request.url.path
    if path == "/api/v1/crates":
        return httpx.Response(200, json=fixture("search_hex_viewer.json"))
    name = path.rsplit("/", 1)[-1]
    if (FIXTURES / f"show_{name}.json").exists():
        return httpx.Response(200, json=fixture(f"show_{name}.json"))
    body = fixture("not_found.json")
    text = json.dumps(body).replace("does-not-exist", name)
    return httpx.Response(404, content=text, headers={"content-type": "application/json"})


class Recorder:
    """A MockTransport handler that records requests and answers from a script, then crates.io."""

    def __init__(self, script: list[Callable[[httpx.Request], httpx.Response]] | None = None):
        self.requests: list[httpx.Request] = []
        self.script = list(script or [])

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.script:
            return self.script.pop(0)(request)
        return crates_io(request)


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 3))
        self.now += seconds


def client(
    handler: Recorder, time: FakeTime, *, cache: DiskCache | None = None, retries: int = 3
) -> CratesIoClient:
    return CratesIoClient(
        base_url="https://crates.io",
        user_agent=UA,
        http=httpx.AsyncClient(transport=httpx.MockTransport(handler)),
        cache=cache,
        limiter=RateLimiter(1.0, clock=time.clock),
        max_retries=retries,
        backoff=0.5,
        sleep=time.sleep,
    )


def test_search_and_show_parse_real_shapes() -> None:
    handler, time = Recorder(), FakeTime()
    api = client(handler, time)
    found = asyncio.run(api.search("hex viewer", per_page=5))
    assert [crate.name for crate in found][:2] == ["hexyl", "hexplay"]
    assert found[0].downloads == 1_200_000
    detail = asyncio.run(api.crate("hexyl"))
    best = detail.best_version()
    assert best is not None and best.num == "0.16.0"
    assert best.bin_names == ["hexyl"] and best.has_lib
    assert detail.crate.keywords == ["hex", "hexdump", "viewer"]
    search_request = handler.requests[0]
    assert search_request.url.params["q"] == "hex viewer"
    assert search_request.url.params["per_page"] == "5"
    assert all(request.headers["User-Agent"] == UA for request in handler.requests)


def test_requests_are_spaced_a_second_apart() -> None:
    handler, time = Recorder(), FakeTime()
    api = client(handler, time)

    async def three() -> None:
        for name in ("hexyl", "hexplay", "hexyl"):
            await api.crate(name)

    asyncio.run(three())
    assert time.sleeps == [1.0, 1.0]
    assert len(handler.requests) == 3


def test_limiter_is_shared_across_clients_and_threads() -> None:
    time = FakeTime()
    limiter = RateLimiter(1.0, clock=time.clock)
    delays = [limiter.reserve() for _ in range(4)]
    assert delays == [0.0, 1.0, 2.0, 3.0]


def test_retries_on_503_and_429_honouring_retry_after() -> None:
    handler = Recorder(
        [
            lambda _: httpx.Response(503, text="busy"),
            lambda _: httpx.Response(429, headers={"Retry-After": "7"}, text="slow down"),
        ]
    )
    time = FakeTime()
    detail = asyncio.run(client(handler, time).crate("hexyl"))
    assert detail.crate.name == "hexyl"
    assert len(handler.requests) == 3
    assert 0.5 in time.sleeps and 7.0 in time.sleeps


def test_network_failure_ends_with_a_clear_error() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    handler = Recorder([refuse] * 10)
    with pytest.raises(RegistryUnavailable) as caught:
        asyncio.run(client(handler, FakeTime(), retries=2).search("hex"))
    assert "after 3 tries" in caught.value.message and "ConnectError" in caught.value.message
    assert caught.value.hint is not None and "--registry local" in caught.value.hint
    assert len(handler.requests) == 3


def test_forbidden_names_the_user_agent_fix() -> None:
    handler = Recorder([lambda _: httpx.Response(403, text="We require a User-Agent")])
    with pytest.raises(RegistryUnavailable) as caught:
        asyncio.run(client(handler, FakeTime()).search("hex"))
    assert caught.value.hint is not None and "FLAKEBOT_CONTACT" in caught.value.hint
    assert len(handler.requests) == 1  # a 403 is not retried


def test_unknown_crate_is_not_found() -> None:
    with pytest.raises(CrateNotFound, match="no crate named 'nope'"):
        asyncio.run(client(Recorder(), FakeTime()).crate("nope"))
    with pytest.raises(CrateNotFound, match="not a crate name"):
        asyncio.run(client(Recorder(), FakeTime()).crate("../../admin"))


def test_disk_cache_serves_until_the_ttl(tmp_path: Path) -> None:
    time = FakeTime()
    cache = DiskCache(tmp_path / "cache", ttl=60, clock=time.clock)
    handler = Recorder()
    api = client(handler, time, cache=cache)
    asyncio.run(api.crate("hexyl"))
    asyncio.run(api.crate("hexyl"))
    with pytest.raises(CrateNotFound):
        asyncio.run(api.crate("nope"))
    with pytest.raises(CrateNotFound):
        asyncio.run(api.crate("nope"))  # a cached 404
    assert len(handler.requests) == 2
    time.now += 61
    asyncio.run(api.crate("hexyl"))
    assert len(handler.requests) == 3
