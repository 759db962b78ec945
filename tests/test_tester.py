"""Forks and the sandboxed tester on real crates from Debian's registry: real cargo in real bwrap.

The forks share one FLAKEBOT_HOME for the session, so all hexyl attempts share one target dir and
rebuild incrementally, as they do in a run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from flakebot import acceptance
from flakebot.fork import Forker
from flakebot.proc import run
from flakebot.sandbox import Sandbox
from flakebot.settings import Settings
from flakebot.tester import Tester
from messages import AcceptanceCase, OutputCheck, RegistryRef, ToolSpec
from tests.conftest import Cli, candidate
from tests.registry_helpers import make_crate, tag_upstream

pytestmark = pytest.mark.slow


def hexview_spec() -> ToolSpec:
    return ToolSpec(
        run_id="t",
        name="hexview",
        summary="A hex viewer.",
        search_queries=["hex viewer"],
        acceptance=[
            AcceptanceCase(
                name="dumps_stdin",
                args=["--color", "never", "--border", "none"],
                stdin="Flakebot",
                stdout=OutputCheck(match="contains", value="46 6c 61 6b 65 62 6f 74"),
            ),
            AcceptanceCase(
                name="reads_a_file",
                args=["--color", "never", "data/in.bin"],
                input_files={"data/in.bin": "hi\n"},
                stdout=OutputCheck(match="regex", value=r"^.*68 69 0a\s"),
            ),
            AcceptanceCase(name="missing_file_fails", args=["no-such-file"], exit_code=1),
        ],
    )


def test_hexyl_forks_builds_and_passes_its_acceptance_cases(
    forker: Forker, sandbox: Sandbox
) -> None:
    workspace = forker.fork(candidate("hexyl", "0.8.0", "c1-hexyl"))
    root = Path(workspace.path)
    assert workspace.origin == "registry-source" and workspace.bin_names == ["hexyl"]
    assert (root / ".cargo" / "config.toml").is_file() and (root / "Cargo.lock").is_file()
    assert [attempt.message.split(":")[0] for attempt in forker.attempts(workspace)] == [
        "upstream",
        "flakebot",
    ]
    acceptance.install(root, hexview_spec(), "hexyl", registry_has_regex=True)
    report = Tester(sandbox).test(
        root, Path(workspace.target_dir), run_id="t", candidate_id="c1-hexyl", attempt=0
    )
    assert report.green, report.model_dump_json(indent=1)
    assert report.sandboxed
    statuses = {test.name: test.status for stage in report.stages for test in stage.tests}
    for case in ("dumps_stdin", "reads_a_file", "missing_file_fails"):
        assert statuses[f"flakebot_acceptance::case_{case}"] == "passed"
    assert statuses["lib::squeezer::tests::three_same_lines"] == "passed"
    assert [stage.stage for stage in report.stages] == ["build", "test", "clippy"]


def test_planted_compile_error_is_reported_with_file_line_and_code(
    forker: Forker, sandbox: Sandbox
) -> None:
    workspace = forker.fork(candidate("hexyl", "0.8.0", "c2-hexyl"))
    source = Path(workspace.path) / "src" / "squeezer.rs"
    lines = source.read_text().splitlines()
    lines.append('pub const PLANTED: u32 = "not a number";')
    source.write_text("\n".join(lines) + "\n")
    report = Tester(sandbox).test(
        Path(workspace.path), Path(workspace.target_dir), run_id="t", candidate_id="c2", attempt=1
    )
    build, test, clippy = report.stages
    assert build.status == "failed" and test.status == "skipped" and clippy.status == "skipped"
    (error,) = [d for d in report.errors if d.code == "E0308"]
    assert (error.file, error.line) == ("src/squeezer.rs", len(lines))
    assert error.rendered is not None and "mismatched types" in error.rendered


def test_planted_failing_test_is_reported_with_its_output(forker: Forker, sandbox: Sandbox) -> None:
    workspace = forker.fork(candidate("hexyl", "0.8.0", "c3-hexyl"))
    library = Path(workspace.path) / "src" / "lib.rs"
    library.write_text(
        library.read_text()
        + '\n#[test]\nfn planted() {\n    assert_eq!(1 + 1, 3, "planted failure");\n}\n'
    )
    report = Tester(sandbox).test(
        Path(workspace.path),
        Path(workspace.target_dir),
        run_id="t",
        candidate_id="c3",
        attempt=1,
        stages=("build", "test"),
    )
    assert [stage.stage for stage in report.stages] == ["build", "test"]
    assert report.stages[1].status == "failed"
    (failed,) = report.failed_tests
    assert failed.name == "lib::planted"
    assert "planted failure" in failed.output and "left: 2" in failed.output
    passed = [test for test in report.stages[1].tests if test.status == "passed"]
    assert len(passed) >= 12  # the crate's own tests still ran


def test_forks_sharing_a_target_dir_never_run_each_others_builds(
    forker: Forker, sandbox: Sandbox
) -> None:
    planted = forker.fork(candidate("hexyl", "0.8.0", "c4-hexyl"))
    library = Path(planted.path) / "src" / "lib.rs"
    library.write_text(library.read_text() + "\n#[test]\nfn only_in_c4() { panic!(); }\n")
    clean = forker.fork(candidate("hexyl", "0.8.0", "c5-hexyl"))  # files older than c4's build
    assert clean.target_dir == planted.target_dir
    tester = Tester(sandbox)
    for workspace, expect_planted in ((planted, True), (clean, False), (planted, True)):
        report = tester.test(
            Path(workspace.path),
            Path(workspace.target_dir),
            run_id="t",
            candidate_id=workspace.candidate_id,
            attempt=1,
            stages=("build", "test"),
        )
        names = {test.name for stage in report.stages for test in stage.tests}
        assert ("lib::only_in_c4" in names) is expect_planted, workspace.candidate_id
        assert report.green is not expect_planted


HOSTILE_BUILD_RS = """
use std::io::Write;
fn main() {{
    let outside = std::path::Path::new({outside});
    let wrote = std::fs::create_dir_all(outside.parent().unwrap())
        .and_then(|_| std::fs::File::create(outside))
        .and_then(|mut file| file.write_all(b"escaped"));
    eprintln!("writing outside the workspace: {{:?}}", wrote);
    let home = std::env::var("HOME").unwrap_or_default();
    let _ = std::fs::write("/root/.flakebot-escaped", b"escaped");
    match std::net::TcpStream::connect(("127.0.0.1", {port})) {{
        Ok(_) => println!("cargo:warning=the network was reachable from {{}}", home),
        Err(error) => panic!("the network is unreachable from the build script: {{}}", error),
    }}
}}
"""


def test_hostile_build_script_fails_in_the_sandbox_and_leaves_nothing_outside(
    tmp_path: Path, forker: Forker, sandbox: Sandbox, listener: tuple[int, list[str]]
) -> None:
    port, accepted = listener
    outside = tmp_path / "outside" / "escaped.txt"
    registry = tmp_path / "registry"
    make_crate(
        registry,
        "hostile",
        "0.1.0",
        files={
            "build.rs": HOSTILE_BUILD_RS.format(
                outside=acceptance.rust_string(str(outside)), port=port
            ),
            "src/main.rs": "fn main() {}\n",
        },
    )
    local = RegistryRef(source="local", location=str(registry))
    workspace = forker.fork(candidate("hostile", "0.1.0", "c1-hostile", local))
    confined = Sandbox(sandbox.toolchain, read_only=(registry,))
    report = Tester(confined).test(
        Path(workspace.path), Path(workspace.target_dir), run_id="t", candidate_id="c1", attempt=0
    )
    build = report.stages[0]
    assert build.status == "failed"
    assert "the network is unreachable from the build script" in build.log_tail
    assert accepted == []
    assert not outside.exists() and not outside.parent.exists()
    assert not Path("/root/.flakebot-escaped").exists()


def test_bat_builds_after_its_missing_dev_dependencies_are_pruned(
    forker: Forker, sandbox: Sandbox
) -> None:
    workspace = forker.fork(candidate("bat", "0.22.1", "c1-bat"))
    pruned = {(item.what, item.name) for item in workspace.pruned}
    assert ("dev-dependency", "assert_cmd") in pruned
    assert ("test", "tests/integration_tests.rs") in pruned
    assert not (Path(workspace.path) / "tests" / "integration_tests.rs").exists()
    assert (Path(workspace.path) / "tests" / "assets.rs").exists()  # untouched: no pruned crate
    setup = forker.attempts(workspace)[-1].message
    assert "pruned: dev-dependency assert_cmd" in setup
    report = Tester(sandbox).test(
        Path(workspace.path),
        Path(workspace.target_dir),
        run_id="t",
        candidate_id="c1-bat",
        attempt=0,
        stages=("build",),
    )
    assert report.green, report.stages[0].log_tail
    assert forker.fork(candidate("bat", "0.22.1", "c1-bat")).pruned == workspace.pruned


def test_cli_fork_and_test(cli: Cli, shared_settings: Settings, tmp_path: Path) -> None:
    env = {"FLAKEBOT_HOME": str(shared_settings.home)}
    forked = cli("fork", "hexyl", "--run", "cli", "--json", env=env)
    assert forked.code == 0, forked.stderr
    workspace = forked.json()
    assert isinstance(workspace, dict) and workspace["kind"] == "workspace"
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: hexview\nsummary: hex\nsearch_queries: [hex]\nacceptance:\n"
        "  - name: plain\n    args: [--color, never]\n    stdin: 'A'\n"
        "    stdout: {match: contains, value: '41'}\n"
    )
    tested = cli("test", workspace["path"], "--spec", str(spec), "--json", env=env)
    report = tested.json()
    assert isinstance(report, dict)
    failures = [t for stage in report["stages"] for t in stage["tests"] if t["status"] == "failed"]
    assert tested.code == 0, failures or tested.stderr[-2000:]
    assert isinstance(report, dict) and report["kind"] == "test_report"
    assert report["run_id"] == "cli" and report["candidate_id"] == "c1-hexyl"
    assert report["commit"] == workspace["head_commit"]
    readable = cli("test", workspace["path"], env=env)
    assert readable.code == 0 and "green (sandboxed)" in readable.stdout


def test_cli_fork_bad_input(cli: Cli) -> None:
    missing = cli("fork", "no-such-crate")
    assert missing.code == 2 and "has no crate named 'no-such-crate'" in missing.stderr
    wrong = cli("fork", "hexyl", "--version", "9.9.9")
    assert wrong.code == 2 and "it has 0.8.0" in wrong.stderr
    not_a_package = cli("test", "/tmp")
    assert not_a_package.code == 2 and "has no Cargo.toml" in not_a_package.stderr


def test_a_virtual_workspace_member_forks_tests_and_deploys(
    tmp_path: Path, shared_settings: Settings, sandbox: Sandbox
) -> None:
    """An upstream repository whose root Cargo.toml is a virtual manifest; the crate is a member."""

    from flakebot.deployer import Deployer
    from flakebot.janitor import Janitor
    from messages import CleanupRequest

    upstream = tmp_path / "upstream"
    (upstream / "crates").mkdir(parents=True)
    (upstream / "Cargo.toml").write_text(
        '[workspace]\nmembers = ["crates/tiny", "crates/helper"]\n'
    )
    make_crate(
        upstream / "crates",
        "helper",
        "0.3.0",
        files={"src/lib.rs": "pub fn shout(s: &str) -> String { s.to_uppercase() }\n"},
    )
    (upstream / "crates" / "helper-0.3.0").rename(upstream / "crates" / "helper")
    make_crate(
        upstream / "crates",
        "tiny",
        "0.3.0",
        extra_toml='[dependencies]\nhelper = { path = "../helper", version = "0.3.0" }\n',
        files={"src/main.rs": 'fn main() { println!("{}", helper::shout("tiny")); }\n'},
    )
    (upstream / "crates" / "tiny-0.3.0").rename(upstream / "crates" / "tiny")
    for checksum in upstream.rglob(".cargo-checksum.json"):
        checksum.unlink()
    tag_upstream(upstream, "0.3.0")
    registry = tmp_path / "registry"
    published = 'fn main() { println!("{}", helper::shout("tiny")); }\n'  # as upstream has it
    make_crate(registry, "tiny", "0.3.0", files={"src/main.rs": published})
    local = RegistryRef(source="local", location=str(registry))
    confined = Sandbox(sandbox.toolchain, read_only=(registry,))
    forker = Forker(shared_settings, confined)
    workspace = forker.fork(
        candidate("tiny", "0.3.0", "c1-tiny", local).model_copy(
            update={"repository": f"file://{upstream}", "run_id": "vw"}
        )
    )
    assert workspace.origin == "upstream-clone"
    assert workspace.manifest_path == "crates/tiny/Cargo.toml" and workspace.bin_names == ["tiny"]
    shouts = AcceptanceCase(name="shouts", stdout=OutputCheck(match="exact", value="TINY\n"))
    spec = ToolSpec(
        run_id="vw", name="tiny", summary="Shouts.", search_queries=["tiny"], acceptance=[shouts]
    )
    acceptance.install(
        Path(workspace.path) / "crates" / "tiny", spec, "tiny", registry_has_regex=False
    )
    report = Tester(confined).test(
        Path(workspace.path),
        Path(workspace.target_dir),
        run_id="vw",
        candidate_id="c1-tiny",
        attempt=0,
    )
    assert report.green, report.model_dump_json(indent=1)[-3000:]
    assert "flakebot_acceptance::case_shouts" in {t.name for s in report.stages for t in s.tests}
    deployment = Deployer(shared_settings, sandbox.toolchain).deploy(
        workspace, spec, forker, bin_name="tiny"
    )
    assert run([deployment.bin_path], timeout=30).stdout == "TINY\n"
    assert (
        Forker(shared_settings, confined).open(Path(workspace.path)).manifest_path
        == workspace.manifest_path
    )
    assert Janitor(shared_settings).clean(CleanupRequest(run_id="vw")).failures == []


def test_cases_named_main_and_case_main_compile_and_both_run(
    tmp_path: Path, forker: Forker, sandbox: Sandbox
) -> None:
    registry = tmp_path / "registry"
    make_crate(registry, "echoer", "0.1.0", files={"src/main.rs": 'fn main() { print!("hi"); }\n'})
    local = RegistryRef(source="local", location=str(registry))
    workspace = forker.fork(candidate("echoer", "0.1.0", "c1-echoer", local))
    hi = OutputCheck(match="exact", value="hi")
    names = ("main", "case_main", "fn", "run_case")
    spec = ToolSpec(
        run_id="t",
        name="echoer",
        summary="Says hi.",
        search_queries=["hi"],
        acceptance=[AcceptanceCase(name=name, stdout=hi) for name in names],
    )
    root = Path(workspace.path)
    acceptance.install(root, spec, "echoer", registry_has_regex=False)
    report = Tester(Sandbox(sandbox.toolchain, read_only=(registry,))).test(
        root, Path(workspace.target_dir), run_id="t", candidate_id="c1", attempt=0
    )
    assert report.green, report.model_dump_json(indent=1)[-3000:]
    ran = {test.name for stage in report.stages for test in stage.tests}
    assert {f"flakebot_acceptance::{acceptance.rust_test_name(c)}" for c in spec.acceptance} <= ran


def test_target_dirs_of_a_package_that_is_not_a_fork_are_cleaned(
    cli: Cli, tmp_path: Path, home: Path
) -> None:
    package = make_crate(tmp_path, "mine", "0.1.0", files={"src/main.rs": "fn main() {}\n"})
    tested = cli("test", str(package), "--json")
    assert tested.code == 0, tested.stderr
    targets = sorted(p for p in (home / "targets").iterdir() if p.name.startswith("mine-"))
    assert len(targets) == 1 and (targets[0] / "debug").is_dir()  # built, tested and linted there
    cleaned = cli("clean", "--all", "--json")
    assert cleaned.code == 0, cleaned.stderr
    assert [path for path in targets if path.exists()] == []


def test_a_malformed_cargo_config_in_a_fork_is_a_red_report_not_a_traceback(
    cli: Cli, tmp_path: Path
) -> None:
    registry = tmp_path / "registry"
    make_crate(registry, "plain", "0.1.0", files={"src/main.rs": "fn main() {}\n"})
    fork = cli("fork", "plain", "--registry", f"local:{registry}", "--run", "badcfg", "--json")
    assert fork.code == 0, fork.stderr
    root = Path(str(fork.json()["path"]))  # type: ignore[index]
    (root / ".cargo" / "config.toml").write_text("[source.crates-io\nreplace-with = \n")
    tested = cli("test", str(root))
    assert tested.code == 1 and "Traceback" not in tested.stderr + tested.stdout
    assert "red" in tested.stdout
    deployed = cli(
        "deploy", str(root), "--json"
    )  # the registry is the run record's, not the file's
    assert "Traceback" not in deployed.stderr


def test_clippy_lints_during_the_build_and_a_deny_lint_alone_still_lets_the_tests_run(
    tmp_path: Path, shared_settings: Settings, sandbox: Sandbox
) -> None:
    registry = tmp_path / "registry"
    make_crate(registry, "helper", "0.1.0", files={"src/lib.rs": "pub fn two() -> u32 { 2 }\n"})
    linty = (
        "fn main() {\n"
        "    let scale = 3.14159; // clippy::approx_constant: an error by default\n"
        '    println!("{} {}", helper::two(), scale);\n'
        "}\n"
        "#[test]\nfn runs() { assert_eq!(helper::two(), 2); }\n"
    )
    make_crate(
        registry,
        "linty",
        "0.1.0",
        extra_toml='[dependencies]\nhelper = "0.1.0"\n',
        files={"src/main.rs": linty},
    )
    local = RegistryRef(source="local", location=str(registry))
    seeing = Sandbox(sandbox.toolchain, read_only=(registry,))
    workspace = Forker(shared_settings, seeing).fork(candidate("linty", "0.1.0", "c1-linty", local))
    tester = Tester(seeing)
    report = tester.test(
        Path(workspace.path), Path(workspace.target_dir), run_id="t", candidate_id="c1", attempt=0
    )
    build, test, clippy = report.stages
    assert build.status == "passed" and not build.diagnostics  # built again without the driver
    assert test.status == "passed" and [t.name for t in test.tests] == ["bin::runs"]
    assert clippy.status == "failed" and not report.green
    assert [(d.level, d.code) for d in clippy.diagnostics] == [("error", "clippy::approx_constant")]
    assert "Checking" not in build.log_tail  # the dependency is compiled once, never checked
    warned = tester.test(
        Path(workspace.path),
        Path(workspace.target_dir),
        run_id="t",
        candidate_id="c1",
        attempt=1,
        lint_warn=["clippy::approx_constant"],
    )
    assert warned.green and [d.level for d in warned.stages[2].diagnostics] == ["warning"]


def test_only_lint_names_reach_the_clippy_driver(sandbox: Sandbox) -> None:
    from flakebot.tester import CLIPPY_ARGS_SEPARATOR, clippy_environment

    planted = f"clippy::x{CLIPPY_ARGS_SEPARATOR}--cfg"  # would add an argument of its own
    env = clippy_environment(sandbox, ["clippy::approx_constant", planted, "-Clinker=/x", "E0308"])
    assert env["CLIPPY_ARGS"].split(CLIPPY_ARGS_SEPARATOR) == ["-W", "clippy::approx_constant", ""]
    assert env["RUSTC_WORKSPACE_WRAPPER"].endswith("/clippy-driver")
