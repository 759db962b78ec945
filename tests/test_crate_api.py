"""The public API the coder's model reads, parsed from a crate's source with Rust's grammar."""

from __future__ import annotations

from pathlib import Path

import pytest

from flakebot.coder_prompt import API_CHARS_TO_WRITE_A_BINARY, coder_prompt
from flakebot.crate_api import public_api
from flakebot.crates.cargo_toml import read_crate
from flakebot.fork import Forker
from messages import AcceptanceCase, OutputCheck, StageResult, TestReport, ToolSpec
from tests.conftest import candidate
from tests.registry_helpers import DEBIAN_REGISTRY, make_crate


def api_text(directory: str, crate: str, bound: int = 12_000) -> str:
    api = public_api(DEBIAN_REGISTRY / directory, crate)
    assert api is not None
    text = api.render(bound)
    assert len(text) <= bound
    return text


def test_functions_of_a_real_crate_with_their_signatures_and_docs() -> None:
    text = api_text("crc32fast-1.3.2", "crc32fast")
    assert "pub fn hash(buf: &[u8]) -> u32" in text
    assert "/// Computes the CRC32 hash of a byte slice." in text
    assert "impl Hasher { pub fn new() -> Self }" in text
    assert "impl Hasher { pub fn update(&mut self, buf: &[u8]) }" in text
    assert 'let checksum = crc32fast::hash(b"foo bar baz");' in text  # the crate docs


def test_re_exports_aliases_and_the_usage_examples_of_the_crate_docs() -> None:
    text = api_text("sha2-0.10.5", "sha2")
    assert "pub use digest::{self, Digest};" in text
    assert "pub type Sha256 = CoreWrapper<CtVariableCoreWrapper<Sha256VarCore, U32>>;" in text
    assert 'hasher.update(b"hello world");' in text and "let result = hasher.finalize();" in text


def test_items_of_private_modules_are_found_through_their_files() -> None:
    text = api_text("base64-0.13.0", "base64", bound=40_000)
    assert "pub fn encode<T: AsRef<[u8]>>(input: T) -> String" in text  # in src/encode.rs
    assert "pub fn decode<T: AsRef<[u8]>>(input: T) -> Result<Vec<u8>, DecodeError>" in text
    assert "// in base64::encode" in text


def test_the_bound_holds_and_says_what_it_left_out() -> None:
    text = api_text("base64-0.13.0", "base64", bound=3_000)
    assert "more public items" in text


def test_test_modules_hidden_items_and_private_items_are_left_out(tmp_path: Path) -> None:
    root = make_crate(
        tmp_path,
        "shapes",
        "0.1.0",
        files={
            "src/lib.rs": (
                "//! Shapes.\n"
                "/// The area.\npub fn area(w: u32, h: u32) -> u32 { w * h }\n"
                "fn private_helper() {}\n"
                "#[doc(hidden)]\npub fn hidden() {}\n"
                "pub(crate) fn internal() {}\n"
                "pub struct Rect { pub w: u32, h: u32 }\n"
                "#[cfg(test)]\nmod tests { pub fn in_tests() {} }\n"
                "pub mod more;\n"
            ),
            "src/more.rs": "/// Deeper.\npub fn deeper() -> bool { true }\n",
        },
    )
    api = public_api(root, "shapes")
    assert api is not None
    text = api.render(5_000)
    assert "pub fn area(w: u32, h: u32) -> u32" in text and "/// The area." in text
    assert "pub struct Rect { pub w: u32 }" in text
    assert "pub fn deeper() -> bool" in text and "// in shapes::more" in text
    for absent in ("private_helper", "hidden", "internal", "in_tests"):
        assert absent not in text


def test_a_module_file_that_is_a_symlink_is_not_read(tmp_path: Path) -> None:
    outside = tmp_path / "outside.rs"
    outside.write_text("pub fn secret_of_the_host() {}\n")
    root = make_crate(tmp_path / "reg", "linky", "0.1.0", files={"src/lib.rs": "pub mod more;\n"})
    (root / "src" / "more.rs").symlink_to(outside)
    api = public_api(root, "linky")
    assert api is not None and "secret_of_the_host" not in api.render(5_000)


@pytest.mark.slow
def test_the_prompt_for_a_library_candidate_holds_its_api_and_asks_for_the_binary(
    forker: Forker,
) -> None:
    workspace = forker.fork(candidate("sha2", "0.10.5", "c1-sha2"))
    spec = ToolSpec(
        run_id="t",
        name="sha256sum",
        summary="Prints the SHA-256 of stdin.",
        search_queries=["sha256"],
        acceptance=[AcceptanceCase(name="abc", stdin="abc", stdout=OutputCheck(value="x\n"))],
    )
    report = TestReport(
        run_id="t",
        candidate_id="c1-sha2",
        attempt=0,
        stages=[StageResult(stage="build", status="passed", duration_s=1.0)],
        sandboxed=True,
    )
    crate = read_crate(Path(workspace.path))
    text = coder_prompt(workspace, spec, crate, "sha256sum", report, [], [])
    assert "which the crate does not have yet" in text and "src/bin/sha256sum.rs" in text
    api = text.split("# The crate's public API (from its source)\n", 1)[1]
    api = api.split("\n\n# Relevant sources\n", 1)[0]
    assert len(api) <= API_CHARS_TO_WRITE_A_BINARY
    assert "pub use digest::{self, Digest};" in api and "pub type Sha256 =" in api
    assert "hasher.finalize()" in api
