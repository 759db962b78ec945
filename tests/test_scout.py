"""The scout: ranked candidates with score parts, on Debian's registry and on crates.io's shapes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from flakebot.scout import Scout, combine, license_score, recency_score
from flakebot.settings import Settings
from messages import CrateQuery, RegistryRef, ScoreParts
from tests.conftest import Cli
from tests.registry_helpers import copy_crates, make_crate
from tests.test_crates_api import Recorder

DEBIAN = RegistryRef(source="local", location="/usr/share/cargo/registry")


def scout_names(settings: Settings, *queries: str, **options: object) -> list[str]:
    scout = Scout(settings)
    query = CrateQuery.model_validate(
        {"run_id": "t", "queries": list(queries), "registry": DEBIAN, **options}
    )
    try:
        return [candidate.name for candidate in asyncio.run(scout.scout(query))]
    finally:
        scout.close()


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("hex viewer", "hexyl"),
        ("sha256 hash", "sha2"),
        ("command line argument parser", "clap"),
        ("csv reader writer", "csv"),
        ("base64 encode", "base64"),
        ("regular expressions", "regex"),
    ],
)
def test_expected_crate_is_in_the_top_3_on_debian(
    settings: Settings, query: str, expected: str
) -> None:
    top = scout_names(settings, query, limit=3)
    assert expected in top, top


def test_candidates_carry_score_parts_and_ids(settings: Settings) -> None:
    scout = Scout(settings)
    query = CrateQuery(
        run_id="r1", queries=["hex viewer"], registry=DEBIAN, prefer_binary=True, limit=3
    )
    first, *rest = asyncio.run(scout.scout(query))
    scout.close()
    assert (first.candidate_id, first.name, first.bin_names) == ("c1-hexyl", "hexyl", ["hexyl"])
    assert first.score_parts.has_binary == 1.0 and first.score_parts.resolves == 1.0
    assert first.score_parts.popularity is not None  # dependents in the registry
    assert first.score == combine(first.score_parts)
    assert all(candidate.score <= first.score for candidate in rest)
    assert [candidate.candidate_id for candidate in rest] == [
        f"c{rank}-{candidate.name}" for rank, candidate in enumerate(rest, start=2)
    ]


def test_exclude_skips_tried_crates_and_later_queries_count_less(settings: Settings) -> None:
    assert "hexyl" not in scout_names(settings, "hex viewer", exclude=["hexyl"])
    names = scout_names(settings, "base64 encode", "hex viewer", limit=2)
    assert names == ["base64", "hexyl"]


def test_new_crates_are_found_without_a_forced_reindex(tmp_path: Path, settings: Settings) -> None:
    registry = copy_crates(tmp_path / "registry", "base64-0.13.0")
    local = RegistryRef(source="local", location=str(registry))
    scout = Scout(settings)
    query = CrateQuery(run_id="t", queries=["hex viewer"], registry=local)
    assert asyncio.run(scout.scout(query)) == []
    copy_crates(registry, "hexyl-0.8.0")
    assert [c.name for c in asyncio.run(scout.scout(query))] == ["hexyl"]
    scout.close()


def test_crates_io_candidates(settings: Settings) -> None:
    handler = Recorder()
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    scout = Scout(settings, http=http)
    registry = RegistryRef(source="crates-io", location="https://crates.io")
    query = CrateQuery(run_id="r1", queries=["hex viewer"], registry=registry, limit=2)
    first, second = asyncio.run(scout.scout(query))
    assert (first.name, first.version, first.bin_names) == ("hexyl", "0.16.0", ["hexyl"])
    assert first.downloads == 1_200_000 and first.score_parts.popularity is not None
    assert first.score_parts.resolves is None and first.score_parts.recency is not None
    assert second.name == "hexplay"
    only_bins = asyncio.run(scout.scout(query.model_copy(update={"bins_only": True})))
    assert [candidate.name for candidate in only_bins] == ["hexyl"]
    assert all(r.headers["User-Agent"] == settings.user_agent for r in handler.requests)


@pytest.mark.parametrize(
    ("expression", "score"),
    [
        ("MIT", 1.0),
        ("MIT/Apache-2.0", 1.0),
        ("MIT OR Apache-2.0", 1.0),
        ("Apache-2.0 WITH LLVM-exception", 1.0),
        ("GPL-3.0-or-later", 0.3),
        ("GPL-3.0 OR MIT", 1.0),
        ("Proprietary", 0.5),
        (None, 0.5),
    ],
)
def test_license_score(expression: str | None, score: float) -> None:
    assert license_score(expression) == score


def test_combine_uses_only_the_parts_that_apply() -> None:
    assert combine(ScoreParts(relevance=1.0)) == 1.0
    assert combine(ScoreParts(relevance=1.0, has_binary=0.0)) == round(0.55 / 0.60, 4)
    assert recency_score(None, __import__("datetime").datetime.now()) is None


def test_cli_search_json_and_table(cli: Cli) -> None:
    result = cli("search", "hex", "viewer", "--json", "--limit", "3")
    assert result.code == 0, result.stderr
    candidates = result.json()
    assert isinstance(candidates, list) and candidates[0]["name"] == "hexyl"
    assert candidates[0]["kind"] == "crate_candidate" and len(candidates) <= 3
    table = cli("search", "hex", "viewer", "--bins-only")
    assert table.code == 0
    assert "hexyl 0.8.0" in table.stdout and "bins: hexyl" in table.stdout


def test_cli_search_bad_input(cli: Cli, tmp_path: Path) -> None:
    empty = cli("search", " ")
    assert empty.code == 2 and "the search query is empty" in empty.stderr
    missing = cli("search", "hex", "--registry", f"local:{tmp_path}/nowhere")
    assert missing.code == 2 and "does not exist" in missing.stderr
    assert "Traceback" not in empty.stderr + missing.stderr


def test_cli_search_network_failure(cli: Cli) -> None:
    result = cli("search", "hex", "--registry", "crates-io:http://127.0.0.1:9", timeout=120)
    assert result.code == 3  # the work failed (not the usage)
    assert "crates.io did not answer" in result.stderr
    assert "--registry local" in result.stderr and "Traceback" not in result.stderr


def test_cli_index_reports_skipped_crates(cli: Cli, tmp_path: Path) -> None:
    registry = copy_crates(tmp_path / "registry", "hexyl-0.8.0")
    (registry / "bad-0.1.0").mkdir()
    (registry / "bad-0.1.0" / "Cargo.toml").write_text("not toml [")
    result = cli("index", "--registry", f"local:{registry}", "--json")
    assert result.code == 0, result.stderr
    report = result.json()
    assert isinstance(report, dict) and report["crates"] == 1
    assert report["skipped"][0]["directory"] == "bad-0.1.0"
    text = cli("index", "--registry", f"local:{registry}")
    assert "Indexed 1 crates" in text.stdout and "skipped bad-0.1.0" in text.stdout


def test_a_library_named_by_the_request_beats_a_binary_that_is_not(settings: Settings) -> None:
    # hexyl's binary once ranked it above base64 for this: a binary is a mild preference now.
    top = scout_names(settings, "base64 encode decode", limit=3, prefer_binary=True)
    assert top[0] == "base64", top
    assert scout_names(settings, "sha2 checksum", limit=1, prefer_binary=True) == ["sha2"]


def test_test_fixtures_are_not_tools(settings: Settings) -> None:
    scout = Scout(settings)
    index = scout.local_index(Path(DEBIAN.location))
    try:
        clap = index.versions("clap")[0]  # src/bin/stdio-fixture.rs beside a library
        hexyl = index.versions("hexyl")[0]  # src/bin/hexyl.rs beside a library: its tool
        assert clap.bin_names == () and hexyl.bin_names == ("hexyl",)
    finally:
        scout.close()


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("csv parser", "csv"),
        ("regex engine", "regex"),  # ahead of fancy-regex, whose text matches better
        ("clap argument parser", "clap"),
        ("url parser", "url"),
        ("log facade", "log"),
        ("glob patterns", "glob"),
        ("time library", "time"),
        ("bytes buffer", "bytes"),
        ("yaml parser", "yaml-rust"),
    ],
)
def test_a_query_word_that_is_a_crates_name_ranks_that_crate_first(
    settings: Settings, query: str, expected: str
) -> None:
    assert scout_names(settings, query, limit=3)[0] == expected


@pytest.mark.parametrize(
    ("query", "expected", "namesakes"),
    [
        ("random number generator", "rand", ["const-random", "rand_core", "rand_chacha"]),
        ("serialization framework", "serde", ["serde_fmt", "erased-serde", "sval"]),
        ("regular expressions", "regex", ["fancy-regex", "onig", "regex-automata"]),
    ],
)
def test_the_widely_used_crate_beats_its_less_used_near_namesakes(
    settings: Settings, query: str, expected: str, namesakes: list[str]
) -> None:
    ranked = scout_names(settings, query, limit=10)
    assert expected in ranked[:3], ranked
    for other in namesakes:
        if other in ranked:
            assert ranked.index(expected) < ranked.index(other), ranked


def test_dependents_count_as_popularity_in_a_local_registry(
    settings: Settings, tmp_path: Path
) -> None:
    registry = tmp_path / "registry"
    wordy = "tiny markup formatter: formats markup, a markup formatter for markup"
    make_crate(registry, "markup-fmt-lite", "0.1.0", description=wordy)
    make_crate(registry, "markup_fmt_extra", "0.1.0", description=wordy)
    make_crate(registry, "prettymark", "2.0.0", description="Markup formatter")
    for user in ("site", "docs", "blog", "wiki"):
        make_crate(registry, user, "1.0.0", extra_toml='[dependencies]\nprettymark = "2"\n')
    scout = Scout(settings)
    index = scout.local_index(registry)
    assert index.dependents("prettymark") == 4 and index.most_dependents() == 4
    query = CrateQuery(
        run_id="t",
        queries=["markup formatter"],
        registry=RegistryRef(source="local", location=str(registry)),
        limit=3,
    )
    try:
        found = asyncio.run(scout.scout(query))
    finally:
        scout.close()
    assert found[0].name == "prettymark", [(c.name, c.score, c.score_parts) for c in found]
    assert found[0].dependents == 4 and found[0].score_parts.popularity == 1.0
    assert all(c.score_parts.popularity == 0.0 for c in found[1:])
