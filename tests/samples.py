"""One realistic, valid instance of every message kind, shared by the protocol tests."""

from __future__ import annotations

from datetime import UTC, datetime

import messages as m

RUN = "run-20261121-hexview"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
STORE = "/nix/store/0c2pcdr9wn3ngw5i3n2fzwqnbkm1nkqc-hexview-0.8.0"
DEBIAN = m.RegistryRef(source="local", location="/usr/share/cargo/registry")

SPEC = m.ToolSpec(
    run_id=RUN,
    name="hexview",
    summary="A hex viewer that prints plain ASCII.",
    search_queries=["hex viewer"],
    requirements=["Never print ANSI colour codes."],
    acceptance=[
        m.AcceptanceCase(
            name="dumps_stdin",
            args=["--border", "none"],
            stdin="Flakebot",
            stdout=m.OutputCheck(match="contains", value="46 6c 61 6b"),
        ),
        m.AcceptanceCase(
            name="reads_a_file",
            args=["input.bin"],
            input_files={"data/input.bin": "hi"},
            stdout=m.OutputCheck(match="regex", value=r"68\s+69"),
        ),
    ],
)

REPORT = m.TestReport(
    run_id=RUN,
    candidate_id="c1-hexyl",
    attempt=1,
    commit=COMMIT,
    sandboxed=True,
    stages=[
        m.StageResult(
            stage="build",
            status="failed",
            duration_s=12.5,
            exit_code=101,
            diagnostics=[
                m.Diagnostic(
                    level="error",
                    code="E0308",
                    message="mismatched types",
                    file="src/main.rs",
                    line=42,
                    column=9,
                    rendered="error[E0308]: mismatched types\n --> src/main.rs:42:9",
                )
            ],
        ),
        m.StageResult(
            stage="test",
            status="failed",
            duration_s=3.0,
            exit_code=101,
            tests=[
                m.TestCaseResult(
                    name="acceptance::dumps_stdin", status="failed", output="left != right"
                ),
                m.TestCaseResult(name="squeeze", status="passed", duration_s=0.01),
            ],
        ),
        m.StageResult(stage="clippy", status="skipped", duration_s=0.0),
    ],
)

GREEN_REPORT = REPORT.model_copy(
    update={
        "stages": [
            m.StageResult(stage="build", status="passed", duration_s=10.0, exit_code=0),
            m.StageResult(stage="test", status="passed", duration_s=2.0, exit_code=0),
        ]
    }
)

SAMPLES: dict[str, m.Message] = {
    "tool_request": m.ToolRequest(
        run_id=RUN, text="I need a hex viewer that prints plain ASCII", requested_by="agent-7"
    ),
    "tool_spec": SPEC,
    "crate_query": m.CrateQuery(
        run_id=RUN, queries=["hex viewer"], registry=DEBIAN, bins_only=True
    ),
    "crate_candidate": m.CrateCandidate(
        run_id=RUN,
        candidate_id="c1-hexyl",
        name="hexyl",
        version="0.8.0",
        description="A command-line hex viewer",
        license="MIT/Apache-2.0",
        repository="https://github.com/sharkdp/hexyl",
        registry=DEBIAN,
        bin_names=["hexyl"],
        has_lib=True,
        score=0.91,
        score_parts=m.ScoreParts(relevance=0.8, has_binary=1.0, license=1.0, resolves=1.0),
    ),
    "workspace": m.Workspace(
        run_id=RUN,
        candidate_id="c1-hexyl",
        crate_name="hexyl",
        crate_version="0.8.0",
        path="/root/.local/share/flakebot/workspaces/run/c1-hexyl",
        branch=f"flakebot/{RUN}",
        head_commit=COMMIT,
        origin="registry-source",
        registry=m.RegistryRef(source="local", location="/usr/share/cargo/registry"),
        target_dir="/root/.local/share/flakebot/targets/hexyl-0.8.0-1.95.0",
        bin_names=["hexyl"],
        pruned=[m.PrunedItem(what="dev-dependency", name="assert_cmd", reason="not in registry")],
    ),
    "edit_proposal": m.EditProposal(
        run_id=RUN,
        candidate_id="c1-hexyl",
        attempt=1,
        summary="Default --color to never",
        edits=[
            m.ReplaceInFile(path="src/bin/hexyl.rs", search='"auto"', replace='"never"'),
            m.WriteFile(path="tests/plain.rs", content="#[test]\nfn plain() {}\n"),
            m.DeleteFile(path="examples/simple.rs"),
        ],
        dependency_changes=[
            m.DependencyChange(action="add", crate="anyhow", version_req="^1.0"),
            m.DependencyChange(action="remove", crate="ansi_term"),
        ],
    ),
    "test_report": REPORT,
    "candidate_result": m.CandidateResult(
        run_id=RUN,
        candidate_id="c1-hexyl",
        crate_name="hexyl",
        crate_version="0.8.0",
        status="green",
        ended_by="green",
        attempts=2,
        workspace_path="/tmp/ws",
        head_commit=COMMIT,
        last_report=GREEN_REPORT,
        score=0.91,
    ),
    "deployment": m.Deployment(
        run_id=RUN,
        candidate_id="c1-hexyl",
        flake_ref="path:/tmp/ws#default",
        system="x86_64-linux",
        commit=COMMIT,
        store_path=STORE,
        bin_path=f"{STORE}/bin/hexyl",
        nar_hash="sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
        gc_root="/root/.local/share/flakebot/gcroots/run/c1-hexyl",
    ),
    "tool_manifest": m.ToolManifest(
        run_id=RUN,
        name="hexview",
        summary="A hex viewer that prints plain ASCII.",
        tool_kind="cli",
        run_command=["nix", "run", "path:/tmp/ws#default", "--"],
        store_path=STORE,
        bin_path=f"{STORE}/bin/hexyl",
        help_text="hexyl 0.8.0\nA command-line hex viewer",
        examples=[
            m.WorkedExample(
                name="dumps_stdin",
                command=[f"{STORE}/bin/hexyl", "--border", "none"],
                stdin="Flakebot",
                stdout="00000000  46 6c 61 6b 65 62 6f 74  Flakebot\n",
                exit_code=0,
            )
        ],
        function_schema={
            "type": "function",
            "function": {"name": "hexview", "parameters": {"type": "object", "properties": {}}},
        },
        mcp_tool={"name": "hexview", "inputSchema": {"type": "object"}},
        provenance=m.Provenance(
            crate_name="hexyl",
            crate_version="0.8.0",
            license="MIT/Apache-2.0",
            repository="https://github.com/sharkdp/hexyl",
            registry=DEBIAN,
            fork_commit=COMMIT,
            toolchain="rustc 1.95.0",
            nar_hash="sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
        ),
        cleanup_command=["flakebot", "clean", RUN],
    ),
    "cleanup_request": m.CleanupRequest(run_id=RUN, reason="failed", candidate_id="c2-xxd"),
    "cleanup_report": m.CleanupReport(
        run_id=RUN,
        reason="failed",
        removed=[m.RemovedItem(what="workspace", path="/tmp/ws", bytes_freed=4096)],
        failures=[m.CleanupFailure(path="/nix/store/x", reason="still rooted")],
    ),
    "step_failed": m.StepFailed(
        run_id=RUN,
        candidate_id="c1-hexyl",
        step="deploy",
        error_type="CommandFailed",
        reason="nix build failed: cargoLock mismatch",
        evidence="error: hash mismatch",
        backtrack_to="code",
    ),
    "run_event": m.RunEvent(
        run_id=RUN,
        seq=0,
        at=datetime(2026, 11, 21, 23, 59, tzinfo=UTC),
        step="fork",
        candidate_id="c1-hexyl",
        event="crate_forked",
        data={"crate": "hexyl", "seconds": 1.5},
    ),
    "run_started": m.RunStarted(
        run_id=RUN,
        model="scripted:/work/examples/hexview-script.yaml",
        registry=DEBIAN,
        candidates=3,
        plan={"max_backtracks": 4, "steps": [{"step": "plan"}]},
    ),
}

# For each kind: a field, a value that field must reject, and the field's path in the error.
MALFORMED: dict[str, tuple[str, object]] = {
    "tool_request": ("text", ""),
    "tool_spec": ("name", "Hex Viewer!"),
    "crate_query": ("queries", []),
    "crate_candidate": ("version", "latest"),
    "workspace": ("head_commit", "HEAD"),
    "edit_proposal": ("attempt", 0),
    "test_report": ("stages", []),
    "candidate_result": ("ended_by", "gave_up"),
    "deployment": ("store_path", "/usr/bin/hexyl"),
    "tool_manifest": ("run_command", []),
    "cleanup_request": ("reason", "bored"),
    "cleanup_report": ("removed", [{"what": "workspace", "path": "/x", "bytes_freed": -1}]),
    "step_failed": ("step", "compile"),
    "run_event": ("event", "CrateForked"),
    "run_started": ("candidates", 0),
}
