"""`flakebot up`, then `flakebot bench` of a two-task suite joining that cluster, then `flakebot
down`: real Ray, cargo, bwrap and Nix. One task passes as published (a binary crate), the other
is fixed by its scripted model after a red first attempt. The bench checks both deployed tools,
measures their floors, writes its results, report and plots, and run again does nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flakebot import cluster
from tests.conftest import Cli
from tests.registry_helpers import QUICKHEX, TODOHEX_FIX, make_crate, make_todohex

pytestmark = [pytest.mark.slow]
KEY = "gsk-bench-test-not-a-real-key"


def spec(name: str, crate: str) -> dict[str, object]:
    return {
        "name": name,
        "summary": f"{name}: prints the bytes of stdin as hex.",
        "tool_kind": "cli",
        "search_queries": ["hex dump tool"],
        "preferred_crates": [crate],
        "acceptance": [
            {"name": "dumps", "stdin": "AB", "stdout": {"match": "contains", "value": "41 42"}}
        ],
    }


def suite(tmp_path: Path) -> Path:
    directory = tmp_path / "suite"
    directory.mkdir()
    (directory / "quick.json").write_text(json.dumps(spec("quickdump", "quickhex")))
    (directory / "todo.json").write_text(json.dumps(spec("tododump", "todohex")))
    (directory / "quick-script.yaml").write_text("replies: []\n")
    (directory / "todo-script.yaml").write_text(json.dumps({"replies": [TODOHEX_FIX]}))
    check = {"name": "empty_input", "stdin": "", "stdout": {"match": "exact", "value": "\n"}}
    hello = {"name": "hello", "stdin": "hi", "stdout": {"match": "regex", "value": "^68 69$"}}
    tasks = [
        {"id": "quick", "spec": "quick.json", "script": "quick-script.yaml", "checks": [hello]},
        {"id": "todo", "spec": "todo.json", "script": "todo-script.yaml", "checks": [check]},
    ]
    (directory / "suite.yaml").write_text(json.dumps({"name": "two-tasks", "tasks": tasks}))
    return directory / "suite.yaml"


def worker_logs(up: cluster.LocalCluster) -> set[str]:
    logs = Path(up.temp_dir) / "session_latest" / "logs"
    return {path.name for path in logs.glob("worker-*")}


def test_bench_of_two_tasks_on_a_cluster_kept_up(cli: Cli, home: Path, tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    make_crate(registry, "quickhex", "0.1.0", description="hex dump tool",
               files={"src/main.rs": QUICKHEX})  # fmt: skip
    make_todohex(registry, build_s=0)
    suite_file = suite(tmp_path)
    out = tmp_path / "out"
    started = cli("up", "--cores", "2", "--warm-workers", "4", env={"GROQ_API_KEY": KEY})
    assert started.code == 0, started.stderr
    up = cluster.running(home)
    try:
        assert up is not None and "(2 cores, 4 workers kept started)" in started.stdout
        processes = up.processes()
        assert processes, "the cluster's processes are found"
        for pid in processes:  # the key of the shell that started it is not in its environment
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            assert KEY.encode() not in environ
        before = worker_logs(up)
        argv = ["bench", str(suite_file), "--parallel", "2", "--out", str(out),
                "--registry", f"local:{registry}"]  # fmt: skip
        done = cli(*argv, timeout=900)
        assert done.code == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert worker_logs(up) - before, "the bench's actors ran on the cluster kept up"
        assert "2 runs: 2 succeeded, 0 did not" in done.stdout

        lines = (out / "results.jsonl").read_text().splitlines()
        results = {result["task"]: result for result in map(json.loads, lines)}
        assert sorted(results) == ["quick", "todo"]
        quick, todo = results["quick"], results["todo"]
        assert quick["success"] and todo["success"]
        assert quick["winner"] == "c1-quickhex" and todo["winner"] == "c1-todohex"
        assert quick["attempts"] == 0 and todo["attempts"] == 1  # red first, then fixed
        assert todo["model_calls"] == 1 and todo["prompt_tokens"] > 0
        assert [c["passed"] for c in todo["checks"]] == [True]
        for result in (quick, todo):
            assert result["floor_cargo_s"] > 0 and result["floor_nix_s"] > 0
            assert result["overhead"] == pytest.approx(result["seconds"] / result["floor_s"], 0.01)
            assert {"scout", "fork", "test", "deploy", "instruct", "clean"} <= {
                span["stage"] for span in result["spans"]
            }
            assert 0 < result["first_cargo_s"] < result["seconds"]
        assert {s["stage"] for s in todo["spans"] if s["lane"] == "c1-todohex"} >= {"code", "test"}

        report = (out / "report.md").read_text()
        assert "| scripted | 2 | 100% |" in report
        for name in (
            "overhead.png",
            "timeline-quick-scripted-1.png",
            "timeline-todo-scripted-1.png",
        ):
            assert (out / name).read_bytes()[:4] == b"\x89PNG" and f"]({name})" in report
        for result in (quick, todo):  # each run was cleaned after it was measured
            assert not (home / "workspaces" / result["run_id"]).exists()

        again = cli(*argv, timeout=300)
        assert again.code == 0 and "0 run now" in again.stdout, again.stderr
        assert len((out / "results.jsonl").read_text().splitlines()) == 2
    finally:
        stopped = cli("down")
    assert stopped.code == 0 and "stopped" in stopped.stdout
    assert up.processes() == [] and cluster.running(home) is None
    assert not Path(up.temp_dir).exists()


def test_a_stale_cluster_record_is_forgotten(home: Path) -> None:
    address = f"127.0.0.1:{cluster.free_port()}"  # nothing listens there
    stale = cluster.LocalCluster(address, "/nonexistent", "/nonexistent/t", "0" * 16, cores=2)
    cluster.record_path(home).write_text(json.dumps(stale.__dict__))
    assert cluster.running(home) is None
    assert not cluster.record_path(home).exists()
