"""The crates.io path against a loopback mirror: what a fork costs from a remote registry.

Measured in one run, medians over REPEATS, with `flakebot registry serve` of Debian's registry in
this process (a thread):

- the mirror's start (indexing Debian's registry) and its first answer for hexyl's whole
  dependency graph (packing each .crate once, reproducibly);
- forking hexyl from the local directory registry (the baseline);
- forking hexyl from the mirror with an empty vendor cache (download, verify, unpack, resolve
  against the sparse index, fetch 31 locked crates) and with a warm one (the crate and every
  dependency already cached: resolution only).

Run: .venv/bin/python -m bench.bench_registry
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench._timing import hexyl_candidate, runs
from flakebot.crates.fetch import dependency_dir, registry_cache
from flakebot.crates.mirror import MirrorServer
from flakebot.fork import Forker
from flakebot.logs import configure_logging
from flakebot.sandbox import Sandbox, Toolchain
from flakebot.settings import Settings
from messages import RegistryRef

REPEATS = 3
DEBIAN = Path("/usr/share/cargo/registry")


def fork_seconds(forker: Forker, registry: RegistryRef, run: str, *, cold: bool) -> float:
    candidate = hexyl_candidate().model_copy(update={"registry": registry, "run_id": run})
    if cold and registry.source != "local":
        shutil.rmtree(registry_cache(forker.settings.home, registry), ignore_errors=True)
        dependency_dir(forker.settings.home, registry)
    started = time.perf_counter()
    forker.fork(candidate)
    return time.perf_counter() - started


def main() -> None:
    configure_logging("warning", "console")
    toolchain = Toolchain.find()
    with tempfile.TemporaryDirectory(prefix="flakebot-bench-registry-") as scratch:
        home = Path(scratch) / "home"
        settings = Settings.from_env({"FLAKEBOT_HOME": str(home)})
        started = time.perf_counter()
        server = MirrorServer(DEBIAN, Path(scratch) / "mirror").start()
        start_s = time.perf_counter() - started
        remote = RegistryRef(source="crates-io", location=server.url)
        local = RegistryRef(source="local", location=str(DEBIAN))
        try:
            started = time.perf_counter()
            for name in ("hexyl", "clap", "libc", "winapi", "rustix", "regex", "textwrap"):
                server.mirror.index_lines(name)
            first_lines_s = time.perf_counter() - started
            local_forker = Forker(settings, Sandbox.for_registry(toolchain, DEBIAN))
            remote_forker = Forker(
                settings, Sandbox.for_registry(toolchain, dependency_dir(home, remote))
            )
            samples: dict[str, list[float]] = {"local": [], "cold": [], "warm": []}
            for repeat in range(REPEATS):
                samples["local"].append(fork_seconds(local_forker, local, f"l{repeat}", cold=False))
                samples["cold"].append(fork_seconds(remote_forker, remote, f"c{repeat}", cold=True))
                samples["warm"].append(
                    fork_seconds(remote_forker, remote, f"w{repeat}", cold=False)
                )
        finally:
            server.stop()
    medians = {key: statistics.median(values) for key, values in samples.items()}
    print(f"mirror start (index {DEBIAN}): {start_s:.2f} s")
    print(f"first index lines for 7 crates of hexyl's graph (packing): {first_lines_s:.2f} s")
    for key, label in (
        ("local", "fork hexyl, local directory registry"),
        ("cold", "fork hexyl, mirror, empty vendor cache"),
        ("warm", "fork hexyl, mirror, warm vendor cache"),
    ):
        print(f"{label}: median {medians[key]:.2f} s ({runs(samples[key])})")
    print(f"cold / local: {medians['cold'] / medians['local']:.2f}")
    print(f"warm / local: {medians['warm'] / medians['local']:.2f}")


if __name__ == "__main__":
    main()
