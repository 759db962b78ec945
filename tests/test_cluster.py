"""A three-node Ray cluster on this machine (ray.cluster_utils): a head with no cargo slot and two
workers with one each. Every node has its own FLAKEBOT_HOME, as on separate machines, so a fork
that is not moved is not found.

- a run's two candidates are developed on the two workers, the winner is deployed on the head
  from the bundle its coder handed over, and the journal and the model replies reach the head;
- the model's key reaches the planner and the coders through the object store, and is nowhere in
  Ray's session files or any FLAKEBOT_HOME;
- a worker node killed while its candidate builds: the candidate goes on on the other worker,
  from the fork it handed over, and the run deploys.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import ray
from pydantic import SecretStr
from ray.cluster_utils import Cluster

from flakebot.driver import Flakebot
from flakebot.janitor import Janitor
from flakebot.journal import Journal
from flakebot.settings import Settings
from messages import CleanupRequest, RunEvent, TestReport
from tests.registry_helpers import QUICKHEX, make_crate, make_todohex
from tests.test_models import chat_completion

pytestmark = [pytest.mark.ray, pytest.mark.slow]

KEY = "gsk_clustertest0123456789abcdefSECRET"
SPEC = {
    "name": "hexdump",
    "summary": "Prints the bytes of stdin as hex.",
    "tool_kind": "cli",
    "search_queries": ["hex dump tool"],
    "acceptance": [
        {"name": "dumps", "stdin": "AB", "stdout": {"match": "contains", "value": "41 42"}}
    ],
}
FIX = {
    "summary": "print the bytes as hex",
    "edits": [{"op": "write", "path": "src/main.rs", "content": QUICKHEX}],
}


@dataclass
class FakeGroq:
    """Groq's chat API on loopback: the planner's spec, the coder's fix; records the keys sent."""

    keys: list[str] = field(default_factory=list)
    asked: list[str] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    def start(self) -> str:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.keys.append(self.headers.get("Authorization", ""))
                name = body["response_format"]["json_schema"]["name"]
                fake.asked.append(name)
                reply = SPEC if name == "ToolSpecDraft" else FIX
                data = json.dumps(chat_completion(json.dumps(reply))).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@dataclass
class ThreeNodes:
    cluster: Cluster
    head: Settings
    workers: dict[str, tuple[Any, Path]]  # node id -> (node, its FLAKEBOT_HOME)
    registry: Path
    groq: FakeGroq
    temp_dir: Path


@pytest.fixture(scope="module")
def three_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreeNodes]:
    root = tmp_path_factory.mktemp("cluster")
    registry = root / "registry"
    make_todohex(registry, build_s=4)
    make_crate(
        registry,
        "dumphex",
        "0.1.0",
        description="hex dump tool",
        files={"src/main.rs": 'fn main() { println!("todo"); }\n'},
    )
    groq = FakeGroq()
    url = groq.start()
    common = {
        "FLAKEBOT_FORBID_REAL_MODELS": "1",
        "FLAKEBOT_STANDIN_MODEL_URL": url,  # the one endpoint the model may call: FakeGroq
        "PATH": os.environ["PATH"],
        "GROQ_BASE_URL": url,
    }
    assert not ray.is_initialized()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "include_dashboard": False,
            "env_vars": {**common, "FLAKEBOT_HOME": str(root / "head")},
        },
    )
    workers: dict[str, tuple[Any, Path]] = {}
    for index in (1, 2):
        home = root / f"worker-{index}"
        node = cluster.add_node(
            num_cpus=1,
            resources={"cargo": 1},
            env_vars={**common, "FLAKEBOT_HOME": str(home)},
        )
        workers[node.node_id] = (node, home)
    cluster.wait_for_nodes()
    head = Settings.from_env({"FLAKEBOT_HOME": str(root / "head"), "GROQ_BASE_URL": url})
    temp_dir = Path(cluster.head_node.get_session_dir_path())
    yield ThreeNodes(cluster, head, workers, registry, groq, temp_dir)
    ray.shutdown()
    cluster.shutdown()
    assert groq.server is not None
    groq.server.shutdown()
    groq.server.server_close()


def forks_of(home: Path, run_id: str) -> set[str]:
    """The candidates whose fork this home made or received (its run record says)."""
    directory = home / "runs" / run_id / "forks"
    return {entry.stem for entry in directory.glob("*.json")}


def workspaces_of(home: Path, run_id: str) -> set[str]:
    directory = home / "workspaces" / run_id
    return {entry.name for entry in directory.iterdir()} if directory.is_dir() else set()


def files_holding(root: Path, needle: bytes) -> list[Path]:
    found = []
    for path in root.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink() and needle in path.read_bytes():
                found.append(path)
        except OSError:
            continue
    return found


def test_candidates_spread_over_workers_and_the_winner_moves_to_the_head(
    three_nodes: ThreeNodes,
) -> None:
    nodes = three_nodes
    keyed = nodes.head.model_copy(update={"groq_api_key": SecretStr(KEY)})
    events: list[RunEvent] = []
    bot = Flakebot(
        model="groq:llama-3.3-70b-versatile",
        registry=f"local:{nodes.registry}",
        candidates=2,
        address=nodes.cluster.address,
        settings=keyed,
    )
    manifest = bot.build("a tool that prints the bytes of stdin as hex", on_event=events.append)
    run_id = manifest.run_id

    # each worker developed one candidate, on its own disk; the head developed none
    per_worker = {node_id: forks_of(home, run_id) for node_id, (_, home) in nodes.workers.items()}
    assert sorted(len(forks) for forks in per_worker.values()) == [1, 1], per_worker
    won = [event.candidate_id for event in events if event.event == "candidate_won"]
    assert len(won) == 1 and won[0] in set().union(*per_worker.values())
    # the winner was deployed on the head, from the fork its coder handed over as a bundle
    head_home = nodes.head.home
    assert forks_of(head_home, run_id) == {won[0]}
    assert (head_home / "runs" / run_id / "kept" / won[0]).is_dir()
    assert workspaces_of(head_home, run_id) == {won[0]}
    for _, home in nodes.workers.values():  # the loser cleaned, the winner's copy superseded
        assert workspaces_of(home, run_id) == set()
    assert [example.stdout.strip() for example in manifest.examples] == ["41 42"]
    journal = Journal(nodes.head.journal_path)
    reports = [
        r for r in journal.messages_of(run_id, "test_report", won[0]) if isinstance(r, TestReport)
    ]
    assert reports and reports[-1].green
    # what the coders on the workers journalled reached the head's journal
    assert journal.messages_of(run_id, "edit_proposal")
    assert {reply.asker.split("/")[0] for reply in journal.replies(run_id)} == {"planner", "coder"}

    # the key reached the planner and the coders, and no file of the cluster or of any home
    assert "ToolSpecDraft" in nodes.groq.asked and "EditDraft" in nodes.groq.asked
    assert set(nodes.groq.keys) == {f"Bearer {KEY}"}
    for root in (nodes.temp_dir, head_home, *(home for _, home in nodes.workers.values())):
        assert files_holding(root, KEY.encode()) == [], root

    bot.close()
    report = Janitor(nodes.head).clean(CleanupRequest(run_id=run_id))
    assert not report.failures


def test_a_worker_node_that_dies_mid_build_hands_its_candidate_to_another(
    three_nodes: ThreeNodes, tmp_path: Path
) -> None:
    nodes = three_nodes
    registry = tmp_path / "registry"
    make_todohex(registry, build_s=6)
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"replies": [{"role": "coder", "attempt": 1, "json": FIX}]}))
    journal = Journal(nodes.head.journal_path)
    killed: list[str] = []

    def kill_the_node_mid_attempt() -> None:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            for row in journal.runs():
                if not journal.messages_of(row.run_id, "edit_proposal", "c1-todohex"):
                    continue
                for node_id, (node, home) in nodes.workers.items():
                    if "c1-todohex" in workspaces_of(home, row.run_id):
                        time.sleep(1.0)  # attempt 1 is building now
                        nodes.cluster.remove_node(node, allow_graceful=False)
                        killed.append(node_id)
                        return
            time.sleep(0.3)

    killer = threading.Thread(target=kill_the_node_mid_attempt, daemon=True)
    killer.start()
    spec = dict(SPEC, preferred_crates=["todohex"])
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    bot = Flakebot(
        model=f"scripted:{script}",
        registry=f"local:{registry}",
        candidates=1,
        address=nodes.cluster.address,
        settings=nodes.head,
    )
    manifest = bot.build(spec_file)
    killer.join()
    assert killed, "the candidate's node was never killed"
    run_id = manifest.run_id
    (survivor,) = [home for node_id, (_, home) in nodes.workers.items() if node_id not in killed]
    assert "c1-todohex" in forks_of(survivor, run_id)  # it went on on the other worker
    assert [example.stdout.strip() for example in manifest.examples] == ["41 42"]
    reports = journal.messages_of(run_id, "test_report", "c1-todohex")
    attempts = [r.attempt for r in reports if isinstance(r, TestReport)]
    assert attempts == [0, 1]  # the fork handed over at attempt 0 was not tested again
    replies = journal.replies(run_id)
    assert [(r.asker, r.requests, r.replays) for r in replies] == [
        ("coder/code/c1-todohex/1", 1, 1)
    ]
    bot.close()
    Janitor(nodes.head).clean(CleanupRequest(run_id=run_id))
