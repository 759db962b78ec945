"""Applying a model's edits: inside the fork only, hunks that match once, registry-checked
dependencies, and all or nothing."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from flakebot.crates.index import CrateIndex
from flakebot.edits import apply_proposal
from messages import DeleteFile, DependencyChange, EditProposal, ReplaceInFile, WriteFile
from tests.registry_helpers import make_crate


@pytest.fixture
def fork(tmp_path: Path) -> Path:
    root = make_crate(
        tmp_path / "forks",
        "tool",
        "1.0.0",
        files={
            "src/main.rs": 'fn main() {\n    println!("colour");\n    println!("colour");\n}\n',
            "src/lib.rs": "pub fn f() {}\n",
            "README.md": "tool\n",
        },
    )
    (root / ".git").mkdir()
    return root


@pytest.fixture
def index(tmp_path: Path) -> CrateIndex:
    registry = tmp_path / "registry"
    make_crate(registry, "anyhow", "1.0.69", extra_toml='[features]\ndefault = ["std"]\nstd = []\n')
    make_crate(registry, "anyhow", "0.9.0")
    crate_index = CrateIndex(registry, tmp_path / "index.sqlite")
    crate_index.refresh()
    return crate_index


def proposal(*edits: object, changes: tuple[DependencyChange, ...] = ()) -> EditProposal:
    return EditProposal(
        run_id="r",
        candidate_id="c1",
        attempt=1,
        summary="s",
        edits=list(edits),  # type: ignore[arg-type]
        dependency_changes=list(changes),
    )


def test_write_replace_delete(fork: Path, index: CrateIndex) -> None:
    problems = apply_proposal(
        fork,
        proposal(
            WriteFile(path="src/new/mod.rs", content="pub fn g() {}\n"),
            ReplaceInFile(
                path="src/lib.rs", search="pub fn f() {}", replace="pub fn f() -> u8 { 1 }"
            ),
            ReplaceInFile(path="src/new/mod.rs", search="g()", replace="h()"),
            DeleteFile(path="README.md"),
        ),
        index.versions,
    )
    assert problems == []
    assert (fork / "src" / "new" / "mod.rs").read_text() == "pub fn h() {}\n"
    assert "-> u8" in (fork / "src" / "lib.rs").read_text()
    assert not (fork / "README.md").exists()


def test_problems_are_named_and_nothing_is_written(
    fork: Path, index: CrateIndex, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (fork / "escape").symlink_to(outside)
    before = {path: path.read_bytes() for path in fork.rglob("*") if path.is_file()}
    problems = apply_proposal(
        fork,
        proposal(
            WriteFile(path="src/ok.rs", content="// fine on its own\n"),
            ReplaceInFile(path="src/main.rs", search='println!("colour");', replace=""),
            ReplaceInFile(path="src/lib.rs", search="fn missing()", replace=""),
            ReplaceInFile(path="src/none.rs", search="x", replace="y"),
            WriteFile(path="escape/owned.rs", content="x"),
            WriteFile(path=".git/hooks/post-commit", content="x"),
            WriteFile(path=".cargo/config.toml", content="x"),
            WriteFile(path="Cargo.lock", content="x"),
            WriteFile(path="tests/flakebot_acceptance.rs", content="x"),
            DeleteFile(path="src/gone.rs"),
        ),
        index.versions,
    )
    assert len(problems) == 9
    joined = "\n".join(problems)
    assert "edit 2: the search text matches 2 times in src/main.rs; add context" in joined
    assert "edit 3: the search text was not found in src/lib.rs" in joined
    assert "src/none.rs does not exist; use a write edit" in joined
    assert "goes through a symlink (escape)" in joined
    assert "files under .git/" in joined and "files under .cargo/" in joined
    assert joined.count("flakebot manages this file") == 2
    assert "edit 10: src/gone.rs does not exist" in joined
    after = {path: path.read_bytes() for path in fork.rglob("*") if path.is_file()}
    assert after == before and not (outside / "owned.rs").exists()


def test_dependency_changes_go_through_the_registry(fork: Path, index: CrateIndex) -> None:
    added = apply_proposal(
        fork,
        proposal(
            changes=(
                DependencyChange(action="add", crate="anyhow", version_req="1", features=["std"]),
            )
        ),
        index.versions,
    )
    assert added == []
    manifest = tomllib.loads((fork / "Cargo.toml").read_text())
    assert manifest["dependencies"]["anyhow"] == {"version": "1", "features": ["std"]}
    problems = apply_proposal(
        fork,
        proposal(
            changes=(
                DependencyChange(action="add", crate="ghost", version_req="1"),
                DependencyChange(action="add", crate="anyhow", version_req="^2"),
                DependencyChange(
                    action="add", crate="anyhow", version_req="1", features=["nightly"]
                ),
                DependencyChange(action="remove", crate="serde"),
            )
        ),
        index.versions,
    )
    assert problems == [
        "the registry has no crate named ghost",
        "anyhow ^2: the registry has only 1.0.69, 0.9.0",
        "anyhow 1.0.69 has no features ['nightly']",
        "serde is not in [dependencies]",
    ]
    removed = apply_proposal(
        fork, proposal(changes=(DependencyChange(action="remove", crate="anyhow"),)), index.versions
    )
    assert (
        removed == []
        and "anyhow" not in tomllib.loads((fork / "Cargo.toml").read_text())["dependencies"]
    )
