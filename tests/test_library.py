"""From crate to tool in both directions, on real crates of Debian's registry with scripted models:
a library crate becomes a CLI (the coder writes its binary on the crate's API, a compile error
goes back and is fixed), a flag and a dependency are removed from a binary crate, and lints the
crate had before any edit do not block while new ones do. Each ends deployed, and the deployed
binary is run."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from flakebot.coder import CodeLoop, LocalTestRunner
from flakebot.crates.index import CrateIndex
from flakebot.fork import Forker
from flakebot.janitor import Janitor
from flakebot.models import Budget, ScriptedModel, Transcript
from flakebot.models.scripted import Script
from flakebot.roles import DeployerRole
from flakebot.runstate import RunRecord
from flakebot.sandbox import Sandbox
from flakebot.settings import Settings
from flakebot.specs import load_spec
from flakebot.tester import Tester
from messages import (
    AcceptanceCase,
    CandidateResult,
    CleanupRequest,
    Deployment,
    OutputCheck,
    ToolManifest,
    ToolSpec,
    Workspace,
)
from tests.conftest import candidate

pytestmark = pytest.mark.slow
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def develop(
    settings: Settings,
    sandbox: Sandbox,
    index: CrateIndex,
    model: ScriptedModel,
    name: str,
    version: str,
    spec: ToolSpec,
    transcript: Transcript | None = None,
) -> tuple[Forker, Workspace, CandidateResult]:
    forker = Forker(settings, sandbox)
    workspace = forker.fork(
        candidate(name, version, f"c1-{name}").model_copy(update={"run_id": spec.run_id})
    )
    loop = CodeLoop(
        model=model,
        forker=forker,
        tester=LocalTestRunner(Tester(sandbox)),
        registry=index,
        budget=Budget(),
        transcript=transcript or Transcript(),
    )
    return forker, workspace, asyncio.run(loop.run(workspace, spec))


def deploy(
    settings: Settings, forker: Forker, workspace: Workspace, spec: ToolSpec
) -> ToolManifest:
    """Deploy the fork as it is now (the loop's commits included) and write its manifest."""
    made = RunRecord(settings.home, workspace.run_id).fork(workspace.candidate_id)
    assert made is not None
    role = DeployerRole(settings)
    outcome = role.deploy(forker.current(made), spec)
    assert isinstance(outcome, Deployment), outcome
    return role.instruct(workspace, spec, outcome)


def test_a_library_crate_becomes_a_cli_that_answers_and_outlives_its_workspace(
    settings: Settings, sandbox: Sandbox, debian_index: CrateIndex, tmp_path: Path
) -> None:
    spec = load_spec(EXAMPLES / "sha256sum.yaml", "lib1")
    model = ScriptedModel.from_file(EXAMPLES / "sha256sum-script.yaml")
    transcript = Transcript(tmp_path / "transcript.jsonl")
    forker, workspace, result = develop(
        settings, sandbox, debian_index, model, "sha2", "0.10.5", spec, transcript
    )
    assert workspace.bin_names == []  # a library, with no binary to start from
    assert result.status == "green" and result.attempts == 2, result.last_report
    second = model.calls[1][1][-1].content  # what attempt 2 was shown
    assert "E0308" in second and "mismatched types" in second
    assert "- attempt 1: Add the sha256sum binary" in second  # its memory of attempt 1
    assert "pub use digest::{self, Digest};" in second  # sha2's API
    manifest = deploy(settings, forker, workspace, spec)
    assert manifest.bin_path.endswith("/bin/sha256sum")
    by_name = {example.name: example for example in manifest.examples}
    assert by_name["hashes_stdin"].stdout == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad  -\n"
    )
    assert by_name["missing_file_fails"].exit_code == 1
    changes = {(change.status, change.path) for change in manifest.provenance.changes}
    assert ("added", "src/bin/sha256sum.rs") in changes
    assert ("modified", "Cargo.toml") in changes  # the pruned dev-dependency
    assert not any(path == "flake.nix" or path.startswith(".cargo") for _, path in changes)
    # The manifest's command keeps working once the workspace is gone.
    Janitor(settings).clean(CleanupRequest(run_id="lib1", keep_deployment=True))
    assert not Path(workspace.path).exists()
    again = subprocess.run(manifest.run_command, input="abc", capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    Janitor(settings).clean(CleanupRequest(run_id="lib1"))


def _between(text: str, start: str, end: str) -> str:
    return text[text.index(start) : text.index(end)]


def test_removing_a_flag_and_a_dependency_from_a_binary_crate(
    settings: Settings, sandbox: Sandbox, debian_index: CrateIndex
) -> None:
    source = Path("/usr/share/cargo/registry/hexyl-0.8.0/src/bin/hexyl.rs").read_text()
    color_arg = _between(
        source,
        '        .arg(\n            Arg::with_name("color")',
        '        .arg(\n            Arg::with_name("border")',
    )
    show_color = _between(source, "    let show_color = match", "    let border_style")
    edit = {
        "summary": "Remove --color: the tool never prints colours, and needs no atty",
        "edits": [
            {"op": "replace", "path": "src/bin/hexyl.rs", "search": color_arg, "replace": ""},
            {
                "op": "replace",
                "path": "src/bin/hexyl.rs",
                "search": show_color,
                "replace": "    let show_color = false;\n\n",
            },
            {
                "op": "replace",
                "path": "src/bin/hexyl.rs",
                "search": "use atty::Stream;\n\n",
                "replace": "",
            },
        ],
        "dependency_changes": [{"action": "remove", "crate": "atty"}],
    }
    spec = ToolSpec(
        run_id="rm1",
        name="hexplain",
        summary="A hex viewer with no colours at all, and no option to ask for them.",
        search_queries=["hex viewer"],
        acceptance=[
            AcceptanceCase(
                name="plain",
                args=["--border", "none"],
                stdin="Flakebot",
                stdout=OutputCheck(match="regex", value=r"\A[^\x1b]*46 6c 61 6b[^\x1b]*\z"),
            ),
            AcceptanceCase(name="no_color_option", args=["--color", "always"], exit_code=1),
        ],
    )
    model = ScriptedModel(Script.model_validate({"replies": [{"role": "coder", "json": edit}]}))
    forker, workspace, result = develop(
        settings, sandbox, debian_index, model, "hexyl", "0.8.0", spec
    )
    assert result.status == "green" and result.attempts == 1, result.last_report
    manifest_text = (Path(workspace.path) / "Cargo.toml").read_text()
    assert "atty" not in manifest_text  # the build proved nothing uses it any more
    manifest = deploy(settings, forker, workspace, spec)
    rejected = subprocess.run(
        [manifest.bin_path, "--color", "always"], input="x", capture_output=True, text=True
    )
    assert rejected.returncode == 1 and "--color" in rejected.stderr
    assert "--color" not in manifest.help_text
    Janitor(settings).clean(CleanupRequest(run_id="rm1"))


CRC32_WITH_A_NEW_LINT = """use std::io::Read;

fn main() {
    let mut input = Vec::new();
    std::io::stdin().read_to_end(&mut input).expect("read stdin");
    let _scale = 3.14159; // clippy::approx_constant: a correctness lint, an error by default
    println!("{:08x}", crc32fast::hash(&input));
}
"""
CRC32 = """use std::io::Read;

fn main() {
    let mut input = Vec::new();
    std::io::stdin().read_to_end(&mut input).expect("read stdin");
    println!("{:08x}", crc32fast::hash(&input));
}
"""


def test_lints_the_crate_had_do_not_block_and_lints_an_edit_adds_do(
    settings: Settings, sandbox: Sandbox, debian_index: CrateIndex
) -> None:
    replies = [
        {"role": "coder", "attempt": attempt, "json": {
            "summary": summary,
            "edits": [{"op": "write", "path": "src/bin/crc32.rs", "content": content}],
        }}
        for attempt, summary, content in (
            (1, "crc32 of stdin", CRC32_WITH_A_NEW_LINT),
            (2, "drop the stray approximation of pi", CRC32),
        )
    ]  # fmt: skip
    model = ScriptedModel(Script.model_validate({"replies": replies}))
    spec = ToolSpec(
        run_id="lint1",
        name="crc32",
        summary="Prints the CRC32 of stdin in hex.",
        search_queries=["crc32"],
        acceptance=[
            AcceptanceCase(name="abc", stdin="abc", stdout=OutputCheck(value="352441c2\n"))
        ],
    )
    forker, workspace, result = develop(
        settings, sandbox, debian_index, model, "crc32fast", "1.3.2", spec
    )
    assert result.status == "green" and result.attempts == 2, result.last_report
    history = [attempt.message for attempt in forker.attempts(workspace)]
    (recorded,) = [m for m in history if "upstream lints: " in m]
    assert "clippy::absurd_extreme_comparisons" in recorded  # crc32fast's own combine.rs
    first = next(m for m in history if m.startswith("attempt 1:"))
    assert "clippy failed" in first and "approx_constant" in first  # the edit's lint blocked it
    (clippy,) = [s for s in result.last_report.stages if s.stage == "clippy"]  # type: ignore[union-attr]
    upstream = [d for d in clippy.diagnostics if d.code == "clippy::absurd_extreme_comparisons"]
    assert clippy.status == "passed" and upstream and upstream[0].level == "warning"
    manifest = deploy(settings, forker, workspace, spec)
    assert [example.stdout for example in manifest.examples] == ["352441c2\n"]
    Janitor(settings).clean(CleanupRequest(run_id="lint1"))
