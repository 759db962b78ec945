"""The crates.io path end to end, without internet: `flakebot run --registry crates-io:URL` against
`flakebot registry serve` of Debian's registry. Search through the API, a fork downloaded with its
checksum verified, dependencies fetched outside the sandbox, the offline build and tests inside,
a Nix build whose stand-in fetches every locked crate by checksum, and a manifest with the
provenance of it all."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from flakebot.proc import run
from flakebot.runstate import RunRecord
from tests.conftest import FLAKEBOT, Cli
from tests.registry_helpers import DEBIAN_REGISTRY

pytestmark = pytest.mark.slow
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`flakebot registry serve` of Debian's registry; yields its URL and its log file."""
    log = tmp_path / "serve.log"
    env = {
        **os.environ,
        "FLAKEBOT_HOME": str(tmp_path / "mirror-home"),
        "FLAKEBOT_LOG_LEVEL": "debug",
        "FLAKEBOT_LOG_FORMAT": "json",
    }
    with log.open("w") as errors:
        process = subprocess.Popen(
            [str(FLAKEBOT), "registry", "serve", str(DEBIAN_REGISTRY), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            env=env,
        )
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith("Serving "), first
        try:
            yield first.rsplit(" at ", 1)[1].strip(), log
        finally:
            process.terminate()
            process.wait(timeout=10)
            process.stdout.close()


def test_run_end_to_end_against_a_served_registry(
    cli: Cli, home: Path, served: tuple[str, Path]
) -> None:
    url, log = served
    result = cli(
        "run", str(EXAMPLES / "hexview.yaml"),
        "--model", f"scripted:{EXAMPLES / 'hexview-script.yaml'}",
        "--registry", f"crates-io:{url}",
        "--candidates", "1",
        "--json",
        timeout=1200,
    )  # fmt: skip
    assert result.code == 0, result.stderr[-3000:]
    manifest = result.json()
    assert isinstance(manifest, dict)
    provenance = manifest["provenance"]
    assert isinstance(provenance, dict) and provenance["crate_name"] == "hexyl"
    source = provenance["source"]
    served_crate = httpx.get(f"{url}/api/v1/crates/hexyl/0.8.0/download").content
    assert source["registry"] == {"source": "crates-io", "location": url}
    assert source["checksum"] == hashlib.sha256(served_crate).hexdigest()
    assert source["upstream_repository"] == "https://github.com/sharkdp/hexyl"
    assert "not reachable" in source["note"]  # no internet here: the fork is the .crate

    run_command = manifest["run_command"]
    assert isinstance(run_command, list)
    done = run([*run_command, "--border", "none"], timeout=300, stdin="Flakebot")
    assert done.ok, done.stderr
    assert "46 6c 61 6b 65 62 6f 74" in done.stdout and "\x1b[" not in done.stdout

    run_id = str(manifest["run_id"])
    deployed = next((home / "deployments" / run_id).iterdir())
    lock = tomllib.loads((deployed / "Cargo.lock").read_text())
    clap = next(p for p in lock["package"] if p["name"] == "clap")
    index = httpx.get(f"{url}/index/cl/ap/clap").text.splitlines()
    published = [json.loads(line) for line in index]
    assert clap["checksum"] == next(e["cksum"] for e in published if e["vers"] == clap["version"])
    store = [item.path for item in RunRecord(home, run_id).items("store_path")]
    assert any(f"crate-clap-{clap['version']}.tar.gz" in path for path in store)  # Nix fetched it
    assert list(home.glob(f"crates/*/vendor/clap-{clap['version']}/.cargo-checksum.json"))

    requests = log.read_text()
    for path in ("/api/v1/crates?q=", "/index/config.json", "/index/cl/ap/clap", "/download"):
        assert path in requests, path
    cleaned = cli("clean", run_id)
    assert cleaned.code == 0, cleaned.stderr
    assert not (home / "workspaces" / run_id).exists()
