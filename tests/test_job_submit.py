"""`ray job submit --working-dir . -- flakebot batch ...` against a head started with `ray start
--head`, token authentication on: a five-request batch completes with one result line per
request, a client without the token is refused, and `flakebot clean --all` on the head then
leaves no workspace, GC root or store path of the batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ray_head import LocalHead
from tests.registry_helpers import QUICKHEX, make_crate

pytestmark = [pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def head(tmp_path: Path) -> Iterator[LocalHead]:
    started = LocalHead(home=tmp_path / "head-home")
    try:
        started.start(FLAKEBOT_FORBID_REAL_MODELS="1")
        yield started
    finally:
        started.stop()
    assert started.processes() == []


def spec(name: str) -> dict[str, object]:
    return {
        "name": name,
        "summary": f"{name}: prints the bytes of stdin as hex.",
        "tool_kind": "cli",
        "search_queries": ["hex dump tool"],
        "acceptance": [
            {"name": "dumps", "stdin": "AB", "stdout": {"match": "contains", "value": "41 42"}}
        ],
    }


def submit(head: LocalHead, *argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(env["PATH"].split(":")[0]) / "ray"), "job", "submit",
         f"--address={head.address}", f"--working-dir={ROOT}", "--", *argv],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip


def test_a_five_request_batch_through_ray_job_submit_with_token_auth(
    head: LocalHead, tmp_path: Path
) -> None:
    registry = tmp_path / "registry"
    make_crate(
        registry, "quickhex", "0.1.0", description="hex dump tool", files={"src/main.rs": QUICKHEX}
    )
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "hexfile.json").write_text(json.dumps(spec("hexfile")))
    lines = [{"id": f"hex{index}", "spec": spec(f"hex{index}")} for index in range(1, 5)]
    lines.append({"id": "from-a-file", "request": "specs/hexfile.json"})  # beside the requests
    requests = tmp_path / "requests.jsonl"
    requests.write_text("".join(json.dumps(line) + "\n" for line in lines))
    results = tmp_path / "results.jsonl"
    argv = ["flakebot", "batch", str(requests), f"--out={results}", "--parallel=5",
            "--candidates=1", f"--registry=local:{registry}"]  # fmt: skip

    refused = submit(head, *argv, env=head.client_env() | {"RAY_AUTH_TOKEN": "0" * 64})
    assert refused.returncode != 0 and not results.exists()
    assert "token authentication is enabled" in refused.stderr

    done = submit(head, *argv, env=head.client_env())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    written = [json.loads(line) for line in results.read_text().splitlines()]
    assert sorted(result["id"] for result in written) == [
        "from-a-file", "hex1", "hex2", "hex3", "hex4"
    ]  # fmt: skip
    assert {result["status"] for result in written} == {"deployed"}
    for result in written:
        examples = result["manifest"]["examples"]
        assert [example["stdout"].strip() for example in examples] == ["41 42"]
    assert "5 requests: 5 deployed, 0 failed" in done.stdout

    # run again, the batch has nothing left to do
    again = submit(head, *argv, env=head.client_env())
    assert again.returncode == 0 and "0 run now" in again.stdout
    assert len(results.read_text().splitlines()) == 5

    store_paths = [result["manifest"]["store_path"] for result in written]
    cleaned = subprocess.run(
        [str(Path(sys.executable).parent / "flakebot"), "clean", "--all"],
        env=os.environ | {"FLAKEBOT_HOME": str(head.home)},
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert cleaned.returncode == 0, cleaned.stdout[-3000:] + cleaned.stderr[-3000:]
    assert [path for path in store_paths if Path(path).exists()] == []
    for leftover in ("workspaces", "gcroots", "deployments"):
        directory = head.home / leftover
        assert not directory.exists() or list(directory.iterdir()) == [], leftover
