"""Whole runs through one shared local Ray cluster: real actors, cargo, bwrap and Nix.

- end to end on hexyl with the scripted model, to a manifest whose `nix run` works;
- two candidates in parallel, the first of which cannot build: the second wins, the first is
  cancelled promptly and cleaned;
- a deploy failure sends the run back to the coder with the Nix log, and it then succeeds;
- a first batch of three that all fail fast on two cargo slots goes on to the next batch;
- a candidate whose actor is killed is a failed candidate, and the run goes on;
- a tester or coder whose worker process dies is restarted, and the run deploys (the coder going
  on from the journal, its model reply replayed);
- `build_many` returns every request's result, whichever fail;
- after every run the cluster's cargo slots are all free again.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
import structlog.testing

from flakebot.driver import Flakebot
from flakebot.errors import RunFailed
from flakebot.janitor import Janitor
from flakebot.journal import Journal
from flakebot.proc import run
from flakebot.settings import Settings
from messages import (
    AcceptanceCase,
    CleanupRequest,
    OutputCheck,
    RunEvent,
    TestReport,
    ToolSpec,
    parse_message,
)
from tests.registry_helpers import QUICKHEX, TODOHEX_FIX, make_crate, make_todohex

pytestmark = [pytest.mark.ray, pytest.mark.slow]
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="session")
def ray_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """One local Ray cluster for the session, its workers sharing one FLAKEBOT_HOME."""
    home = tmp_path_factory.mktemp("ray-home")
    settings = Settings.from_env({"FLAKEBOT_HOME": str(home)})
    env = {
        "FLAKEBOT_HOME": str(home),
        "FLAKEBOT_FORBID_REAL_MODELS": "1",
        "PATH": os.environ["PATH"],
    }
    ray.init(
        num_cpus=2,
        resources={"cargo": 2},
        include_dashboard=False,
        runtime_env={"env_vars": env},
        log_to_driver=False,
    )
    yield settings
    ray.shutdown()


def journal(settings: Settings, run_id: str) -> list[object]:
    lines = (settings.home / "runs" / run_id / "journal.jsonl").read_text().splitlines()
    return [parse_message(json.dumps(json.loads(line)["message"])) for line in lines]


def test_ray_messages_to_the_driver_stay_off_stdout(
    ray_home: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    # What Ray's driver prints when a candidate's actor is killed mid-task: stdout carries the
    # manifest (and `--json`), so it must not.
    Flakebot(settings=ray_home).connect()
    message = "Task CoderActor.develop failed. There are 2 retries remaining"
    worker = ray._private.worker
    with structlog.testing.capture_logs() as logged:
        worker.print_to_stdstream({"lines": [message], "pid": "raylet", "is_err": False}, False)
    assert message not in capsys.readouterr().out
    assert [(e["event"], e["message"]) for e in logged] == [("ray_message", message)]


def test_end_to_end_on_hexyl(ray_home: Settings) -> None:
    events: list[RunEvent] = []
    store_before = set(os.listdir("/nix/store"))
    bot = Flakebot(
        model=f"scripted:{EXAMPLES / 'hexview-script.yaml'}", candidates=2, settings=ray_home
    )
    manifest = bot.build(EXAMPLES / "hexview.yaml", on_event=events.append)
    assert manifest.name == "hexview" and manifest.provenance.crate_name == "hexyl"
    done = run([*manifest.run_command, "--border", "none"], timeout=300, stdin="Flakebot")
    assert done.ok, done.stderr
    assert "46 6c 61 6b 65 62 6f 74" in done.stdout and "\x1b[" not in done.stdout  # no colours
    assert all("\x1b[" not in example.stdout for example in manifest.examples)
    assert "[default: never]" in manifest.help_text  # the coder's edit is in the built tool

    kinds = [event.event for event in events]
    assert kinds[0] == "spec_planned" and kinds[-1] == "run_finished"
    assert "candidate_won" in kinds and "tool_deployed" in kinds
    assert [event.seq for event in events] == list(range(len(events)))
    recorded = journal(ray_home, manifest.run_id)
    seen = {message.kind for message in recorded}
    assert {"tool_spec", "crate_query", "crate_candidate", "workspace", "candidate_result",
            "deployment", "tool_manifest", "run_event"} <= seen  # fmt: skip
    durable = Journal(ray_home.journal_path)  # the same history, committed to SQLite
    row = durable.run(manifest.run_id)
    assert row is not None and row.state == "finished" and row.tool == "hexview"
    assert [entry.message for entry in durable.entries(manifest.run_id)] == recorded
    durable.close()
    report = Janitor(ray_home).clean(CleanupRequest(run_id=manifest.run_id))
    assert report.failures == [] and not (ray_home.workspaces_dir / manifest.run_id).exists()
    assert set(os.listdir("/nix/store")) <= store_before  # what the run added is gone
    assert cargo_slots_all_free()


def test_two_candidates_first_cannot_build_second_wins(ray_home: Settings, tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    make_crate(
        registry,
        "slowbreak",
        "0.1.0",
        description="hex dump tool that never builds",
        files={
            "build.rs": "use std::time::Duration;\nfn main() {\n"
            "    std::thread::sleep(Duration::from_secs(120));\n"
            '    panic!("slowbreak never builds");\n}\n',
            "src/main.rs": "fn main() {}\n",
        },
    )
    make_crate(
        registry, "quickhex", "0.1.0", description="hex dump tool", files={"src/main.rs": QUICKHEX}
    )
    spec = ToolSpec(
        run_id="x",
        name="hexdump",
        summary="Prints the bytes of stdin as hex.",
        search_queries=["hex dump tool"],
        preferred_crates=["slowbreak", "quickhex"],
        acceptance=[
            AcceptanceCase(
                name="dumps", stdin="AB", stdout=OutputCheck(match="contains", value="41 42")
            )
        ],
    )
    events: list[RunEvent] = []
    started = time.monotonic()
    manifest = Flakebot(registry=f"local:{registry}", candidates=2, settings=ray_home).build(
        spec, on_event=events.append
    )
    elapsed = time.monotonic() - started
    assert manifest.provenance.crate_name == "quickhex"
    assert elapsed < 115, "the loser was waited for instead of cancelled"
    cancelled = [e for e in events if e.event == "candidate_cancelled"]
    assert [str(e.candidate_id).split("-", 1)[1] for e in cancelled] == ["slowbreak"]
    workspaces = ray_home.workspaces_dir / manifest.run_id
    assert not list(workspaces.glob("*-slowbreak"))  # cleaned
    assert list(workspaces.glob("*-quickhex"))
    still_sleeping = run(["pgrep", "-f", "slowbreak"], timeout=10)
    assert still_sleeping.returncode == 1, still_sleeping.stdout
    Janitor(ray_home).clean(CleanupRequest(run_id=manifest.run_id))


RELFAIL_BUILD = """fn main() {
    if std::env::var("PROFILE").as_deref() == Ok("release") {
        panic!("relfail: release builds are switched off by this check");
    }
}
"""


def test_a_deploy_failure_goes_back_to_the_coder_with_the_nix_log(
    ray_home: Settings, tmp_path: Path
) -> None:
    registry = tmp_path / "registry"
    make_crate(
        registry,
        "relfail",
        "0.1.0",
        description="release tool",
        files={"build.rs": RELFAIL_BUILD, "src/main.rs": 'fn main() { println!("relfail ok"); }\n'},
    )
    script = tmp_path / "script.yaml"
    script.write_text(
        "replies:\n"
        "  - role: coder\n    candidate: relfail\n    json:\n"
        "      summary: drop the check that refuses release builds\n"
        '      edits:\n        - {op: write, path: build.rs, content: "fn main() {}\\n"}\n'
    )
    spec = ToolSpec(
        run_id="x",
        name="relfail",
        summary="Says ok.",
        search_queries=["release tool"],
        acceptance=[
            AcceptanceCase(name="says_ok", stdout=OutputCheck(match="contains", value="ok"))
        ],
    )
    events: list[RunEvent] = []
    manifest = Flakebot(
        model=f"scripted:{script}", registry=f"local:{registry}", candidates=1, settings=ray_home
    ).build(spec, on_event=events.append)
    kinds = [event.event for event in events]
    order = [kinds.index(name) for name in ("deploy_failed", "run_backtracked", "tool_deployed")]
    assert order == sorted(order)
    backtrack = next(event for event in events if event.event == "run_backtracked")
    assert backtrack.data["to"] == "code" and "Nix log" in backtrack.detail
    transcript = ray_home.home / "runs" / manifest.run_id / "model-transcript.jsonl"
    prompts = [
        json.loads(line)["messages"][-1]["content"] for line in transcript.read_text().splitlines()
    ]
    assert any("release builds are switched off" in prompt for prompt in prompts)
    assert run([manifest.bin_path], timeout=30).stdout == "relfail ok\n"
    Janitor(ray_home).clean(CleanupRequest(run_id=manifest.run_id))


def test_one_budget_is_shared_by_every_coder_of_a_run(ray_home: Settings) -> None:
    from actors.roles import BudgetActor, SharedBudget
    from flakebot.errors import BudgetExceeded
    from flakebot.models import Usage

    actor = BudgetActor.remote()  # type: ignore[attr-defined]
    first, second = SharedBudget(actor), SharedBudget(actor)

    async def spend() -> None:
        for _ in range(30):
            await first.arecord("scripted:x", Usage(prompt_tokens=10, completion_tokens=5))
            await second.arecord("scripted:x", Usage(prompt_tokens=10, completion_tokens=5))
        await first.acheck()

    with pytest.raises(BudgetExceeded) as caught:
        asyncio.run(spend())
    assert caught.value.bound == "call_budget"
    assert ray.get(actor.spent.remote())["calls"] == 60
    ray.kill(actor)


def cargo_slots_all_free(timeout: float = 20.0) -> bool:
    """Do the cluster's cargo resources return to their total (actors die asynchronously)?"""
    deadline = time.monotonic() + timeout
    total = ray.cluster_resources().get("cargo")
    while time.monotonic() < deadline:
        if ray.available_resources().get("cargo") == total:
            return True
        time.sleep(0.2)
    return False


FAILS_FAST = 'fn main() { panic!("this crate never builds"); }\n'


def hexdump_spec(**update: object) -> ToolSpec:
    spec = ToolSpec(
        run_id="x",
        name="hexdump",
        summary="Prints the bytes of stdin as hex.",
        search_queries=["hex dump tool"],
        acceptance=[
            AcceptanceCase(
                name="dumps", stdin="AB", stdout=OutputCheck(match="contains", value="41 42")
            )
        ],
    )
    return spec.model_copy(update=update)


def test_a_first_batch_that_all_fails_fast_goes_on_to_the_next_batch(
    ray_home: Settings, tmp_path: Path
) -> None:
    registry = tmp_path / "registry"
    for name in ("afail", "bfail", "cfail"):
        make_crate(
            registry,
            name,
            "0.1.0",
            description="hex dump tool that never builds",
            files={"build.rs": FAILS_FAST, "src/main.rs": "fn main() {}\n"},
        )
    make_crate(registry, "quickhex", "0.1.0", description="a tool", files={"src/main.rs": QUICKHEX})
    events: list[RunEvent] = []
    bot = Flakebot(registry=f"local:{registry}", candidates=3, settings=ray_home)
    manifest = bot.build(hexdump_spec(), on_event=events.append)  # two cargo slots, three forks
    assert manifest.provenance.crate_name == "quickhex"
    failed = [e for e in events if e.event == "candidate_failed"]
    assert sorted(str(e.candidate_id).split("-", 1)[1] for e in failed) == [
        "afail",
        "bfail",
        "cfail",
    ]
    assert all("build failed" in e.detail or "compiler errors" in e.detail for e in failed), failed
    assert [e.data["to"] for e in events if e.event == "run_backtracked"] == ["scout"]
    assert cargo_slots_all_free()
    Janitor(ray_home).clean(CleanupRequest(run_id=manifest.run_id))


def test_a_candidate_whose_actor_is_killed_fails_and_the_run_goes_on(
    ray_home: Settings, tmp_path: Path
) -> None:
    registry = tmp_path / "registry"
    sleeps = "fn main() { std::thread::sleep(std::time::Duration::from_secs(120)); }\n"
    make_crate(
        registry,
        "sleepyhex",
        "0.1.0",
        description="hex dump tool",
        files={"build.rs": sleeps, "src/main.rs": "fn main() {}\n"},
    )
    make_crate(registry, "quickhex", "0.1.0", description="a tool", files={"src/main.rs": QUICKHEX})
    killed: list[str] = []

    def kill_the_coder() -> None:
        # The run's one coder is the warm pair started while it planned (named
        # flakebot/<run>/warm/coder/N); the first candidate, c1-sleepyhex, takes it. It is
        # killed mid-build: while sleepyhex's build script sleeps.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            building = run(["pgrep", "-f", "sleepyhex-[0-9a-f]+/build-script-build"], timeout=10)
            coders = [
                actor
                for actor in ray.util.list_named_actors(all_namespaces=True)
                if "/warm/coder/" in actor["name"]
            ]
            if building.returncode == 0 and coders:
                (actor,) = coders
                ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]))
                killed.append(actor["name"])
                return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_the_coder, daemon=True)
    killer.start()
    events: list[RunEvent] = []
    started = time.monotonic()
    bot = Flakebot(registry=f"local:{registry}", candidates=1, settings=ray_home)
    manifest = bot.build(hexdump_spec(preferred_crates=["sleepyhex"]), on_event=events.append)
    killer.join()
    assert killed and manifest.provenance.crate_name == "quickhex"
    assert time.monotonic() - started < 110, "the killed candidate was waited for"
    (failed,) = [e for e in events if e.event == "candidate_failed"]
    assert failed.candidate_id == "c1-sleepyhex" and "died" in failed.detail
    assert run(["pgrep", "-f", "sleepyhex"], timeout=10).returncode == 1  # its build went too
    assert cargo_slots_all_free()
    Janitor(ray_home).clean(CleanupRequest(run_id=manifest.run_id))


def test_build_many_returns_every_result_whichever_requests_fail(
    ray_home: Settings, tmp_path: Path
) -> None:
    registry = tmp_path / "registry"
    make_crate(
        registry,
        "quickhex",
        "0.1.0",
        description="a hex dump tool",
        files={"src/main.rs": QUICKHEX},
    )
    bot = Flakebot(registry=f"local:{registry}", candidates=1, settings=ray_home)
    backreference = hexdump_spec(
        acceptance=[AcceptanceCase(name="c", stdout=OutputCheck(match="regex", value=r"(a)\1"))]
    )
    results = bot.build_many([hexdump_spec(), "a tool, in words, with no model", backreference])
    good, no_model, bad_pattern = results
    assert not isinstance(good, RunFailed) and good.provenance.crate_name == "quickhex"
    assert isinstance(no_model, RunFailed) and "needs a model" in no_model.failure.reason
    assert isinstance(bad_pattern, RunFailed) and bad_pattern.failure.step == "plan"
    assert "backreferences" in bad_pattern.failure.reason or "\\1" in bad_pattern.failure.reason
    assert cargo_slots_all_free()
    Janitor(ray_home).clean(CleanupRequest(run_id=good.run_id))


SLOW_BUILD = "fn main() { std::thread::sleep(std::time::Duration::from_secs(8)); }\n"


def test_a_tester_whose_worker_dies_mid_build_is_restarted_and_the_run_deploys(
    ray_home: Settings, tmp_path: Path
) -> None:
    registry = tmp_path / "registry"
    make_crate(
        registry,
        "slowhex",
        "0.1.0",
        description="hex dump tool",
        files={"build.rs": SLOW_BUILD, "src/main.rs": QUICKHEX},
    )
    killed: list[int] = []

    def kill_the_tester_mid_build() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            building = run(["pgrep", "-f", "slowhex-.*/build-script-build"], timeout=10)
            testers = run(["pgrep", "-f", "^ray::TesterActor"], timeout=10).stdout.split()
            if building.returncode == 0 and len(testers) == 1:  # the run's only tester
                os.kill(int(testers[0]), signal.SIGKILL)  # its worker process, not ray.kill
                killed.append(int(testers[0]))
                return
            time.sleep(0.3)

    killer = threading.Thread(target=kill_the_tester_mid_build, daemon=True)
    killer.start()
    events: list[RunEvent] = []
    bot = Flakebot(registry=f"local:{registry}", candidates=1, settings=ray_home)
    manifest = bot.build(hexdump_spec(preferred_crates=["slowhex"]), on_event=events.append)
    killer.join()
    assert killed, "the tester's build was never seen"
    assert manifest.provenance.crate_name == "slowhex" and manifest.store_path
    assert not [e for e in events if e.event == "candidate_failed"]
    with pytest.raises(ProcessLookupError):
        os.kill(killed[0], 0)
    assert cargo_slots_all_free()
    Janitor(ray_home).clean(CleanupRequest(run_id=manifest.run_id))


def test_a_coder_whose_worker_dies_mid_loop_is_restarted_and_goes_on_from_the_journal(
    ray_home: Settings, tmp_path: Path
) -> None:
    registry = tmp_path / "registry"
    make_todohex(registry, build_s=8)
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"replies": [TODOHEX_FIX]}))
    journal_db = Journal(ray_home.journal_path)
    killed: list[int] = []

    def kill_the_coder_mid_attempt() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            proposed = [
                run_row.run_id
                for run_row in journal_db.runs()
                if journal_db.messages_of(run_row.run_id, "edit_proposal", "c1-todohex")
            ]
            building = run(["pgrep", "-f", "todohex-.*/build-script-build"], timeout=10)
            coders = run(["pgrep", "-f", "^ray::CoderActor"], timeout=10).stdout.split()
            if proposed and building.returncode == 0 and len(coders) == 1:
                os.kill(int(coders[0]), signal.SIGKILL)  # its worker process, not ray.kill
                killed.append(int(coders[0]))
                return
            time.sleep(0.3)

    killer = threading.Thread(target=kill_the_coder_mid_attempt, daemon=True)
    killer.start()
    events: list[RunEvent] = []
    bot = Flakebot(
        model=f"scripted:{script}", registry=f"local:{registry}", candidates=1, settings=ray_home
    )
    manifest = bot.build(hexdump_spec(preferred_crates=["todohex"]), on_event=events.append)
    killer.join()
    assert killed, "the coder's attempt was never seen"
    assert manifest.provenance.crate_name == "todohex" and manifest.store_path
    assert not [e for e in events if e.event == "candidate_failed"]
    replies = journal_db.replies(manifest.run_id)
    assert [(r.asker, r.requests, r.replays) for r in replies] == [
        ("coder/code/c1-todohex/1", 1, 1)  # the restarted coder was given it, not the model
    ]
    reports = journal_db.messages_of(manifest.run_id, "test_report", "c1-todohex")
    assert [r.attempt for r in reports if isinstance(r, TestReport)] == [0, 1]
    assert cargo_slots_all_free()
    Janitor(ray_home).clean(CleanupRequest(run_id=manifest.run_id))
