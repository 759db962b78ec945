"""Scout speed: a full index of ~2,000 crates, an unchanged re-check, and query latency.

Debian ships one registry of a few hundred crates here, so the benchmark makes a larger one from
what is installed: each installed crate ten times under a new name (a rewritten Cargo.toml, the
rest of the crate's top-level files symlinked), which keeps the real manifests, readmes and target
layouts. Goals (issue 3): full index of 2,000 crates < 20 s, unchanged re-check < 1 s, a query
< 50 ms. Run: .venv/bin/python -m bench.bench_scout
"""

from __future__ import annotations

import asyncio
import re
import statistics
import tempfile
import time
from pathlib import Path

from bench._timing import median_seconds
from flakebot.crates.index import CrateIndex
from flakebot.logs import configure_logging
from flakebot.scout import Scout
from flakebot.settings import Settings
from messages import CrateQuery, RegistryRef

DEBIAN = Path("/usr/share/cargo/registry")
COPIES = 10
QUERIES = [
    "hex viewer",
    "sha256 hash",
    "command line argument parser",
    "csv reader writer",
    "base64 encode",
    "regular expressions",
]


def make_registry(target: Path) -> int:
    """Each Debian crate COPIES times, renamed `name_kN`; returns the number of crates made."""
    made = 0
    for source in sorted(DEBIAN.iterdir()):
        manifest = source / "Cargo.toml"
        if not manifest.is_file():
            continue
        text = manifest.read_text()
        for copy in range(COPIES):
            directory = target / f"{source.name}-k{copy}"
            directory.mkdir()
            renamed = re.sub(
                r'^(name = ")([^"]+)"', rf'\g<1>\g<2>_k{copy}"', text, count=1, flags=re.MULTILINE
            )
            (directory / "Cargo.toml").write_text(renamed)
            for entry in source.iterdir():
                if entry.name != "Cargo.toml":
                    (directory / entry.name).symlink_to(entry)
            made += 1
    return made


def main() -> None:
    configure_logging("warning")
    with tempfile.TemporaryDirectory(prefix="flakebot-bench-") as tmp:
        registry = Path(tmp) / "registry"
        registry.mkdir()
        crates = make_registry(registry)
        index = CrateIndex(registry, Path(tmp) / "index.sqlite")
        full = median_seconds(lambda: index.refresh(force=True), repeats=3, warmup=0)
        recheck = median_seconds(index.refresh, repeats=10)
        per_query = [
            median_seconds(lambda text=text: index.search(text, limit=5), repeats=30)
            for text in QUERIES
        ]
        settings = Settings.from_env({"FLAKEBOT_HOME": str(Path(tmp) / "home")})
        scout = Scout(settings)
        local = RegistryRef(source="local", location=str(registry))
        scout.local_index(registry)  # first index, not timed

        def scout_query(text: str) -> None:
            asyncio.run(scout.scout(CrateQuery(run_id="bench", queries=[text], registry=local)))

        scouted = [
            median_seconds(lambda text=text: scout_query(text), repeats=10) for text in QUERIES
        ]
        scout.close()
        debian_index = CrateIndex(DEBIAN, Path(tmp) / "debian.sqlite")
        started = time.perf_counter()
        debian_index.refresh(force=True)
        debian_full = time.perf_counter() - started
        debian_count = debian_index.count()
    print(f"synthetic registry: {crates} crates ({COPIES} renamed copies of each Debian crate)")
    print(f"  full index (median of 3)          {full:8.3f} s    goal < 20 s")
    print(f"  unchanged re-check (median of 10) {recheck * 1e3:8.1f} ms   goal < 1 s")
    print(f"  index.search, median per query    {statistics.median(per_query) * 1e3:8.2f} ms")
    print(f"    slowest query median            {max(per_query) * 1e3:8.2f} ms   goal < 50 ms")
    print(f"  scout.scout (re-check + search)   {statistics.median(scouted) * 1e3:8.2f} ms")
    print(f"    slowest query median            {max(scouted) * 1e3:8.2f} ms")
    print(f"Debian registry: {debian_count} crates, full index {debian_full:.3f} s")


if __name__ == "__main__":
    main()
