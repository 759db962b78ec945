"""The bench's report: a leaderboard per model, a table per task, and plots, in Markdown.

Plots are PNGs beside the report: `timeline-<task>-<model>-<repeat>.png` for every run (one lane
for the run and one per candidate, a bar per stage) and `overhead.png` (each task's end-to-end
time over its floor, median over repeats, per model).
"""

from __future__ import annotations

import os
import re
import statistics
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from flakebot.bench.runner import TrialResult
from flakebot.bench.timeline import RUN_LANE, STAGES

COLOURS = {
    "plan": "#8c564b",
    "scout": "#bcbd22",
    "fork": "#7f7f7f",
    "code": "#9467bd",
    "test": "#1f77b4",
    "deploy": "#2ca02c",
    "instruct": "#17becf",
    "clean": "#d62728",
}
OVERHEAD_GOAL = 1.10


def median(values: Iterable[float | int | None]) -> float | None:
    present = [float(value) for value in values if value is not None]
    return statistics.median(present) if present else None


def _fmt(value: float | None, digits: int = 1, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{suffix}"


def plot_name(result: TrialResult) -> str:
    safe = re.sub(r"[^A-Za-z0-9.-]+", "_", f"{result.task}-{result.model}-{result.repeat}")
    return f"timeline-{safe}.png"


def timeline_plot(result: TrialResult, path: Path) -> None:
    """One run: a lane per candidate (and one for the run), a bar per stage."""
    lanes = [RUN_LANE, *sorted({s["lane"] for s in result.spans if s["lane"] != RUN_LANE})]
    figure, axes = plt.subplots(figsize=(10, 1.6 + 0.5 * len(lanes)))
    for row, lane in enumerate(lanes):
        for span in (s for s in result.spans if s["lane"] == lane):
            width = max(span["end"] - span["start"], 0.003 * result.seconds)  # still visible
            axes.broken_barh(
                [(span["start"], width)],
                (row - 0.35, 0.7),
                facecolors=COLOURS.get(span["stage"], "#000000"),
                edgecolor="white",
                linewidth=0.5,
            )
    axes.set_yticks(range(len(lanes)), labels=lanes)
    axes.invert_yaxis()
    axes.set_xlabel("seconds since the run started")
    floor = f", floor {result.floor_s:.1f} s" if result.floor_s else ""
    axes.set_title(
        f"{result.task} · {result.model} · #{result.repeat}: {result.status}, "
        f"{result.seconds:.1f} s{floor}",
        fontsize=10,
    )
    if result.floor_s:
        axes.axvline(result.floor_s, color="black", linestyle="--", linewidth=0.8)
    handles: list[Any] = [Patch(color=COLOURS[stage], label=stage) for stage in STAGES]
    if result.floor_s:
        handles.append(Line2D([], [], color="black", linestyle="--", linewidth=0.8, label="floor"))
    axes.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    axes.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def overhead_plot(results: Sequence[TrialResult], path: Path) -> bool:
    """Median end-to-end time over the floor per task and model; False when nothing had a floor."""
    by: dict[tuple[str, str], list[float]] = defaultdict(list)
    for result in results:
        if result.overhead is not None:
            by[(result.task, result.model)].append(result.overhead)
    if not by:
        return False
    tasks = sorted({task for task, _ in by})
    models = sorted({model for _, model in by})
    width = 0.8 / len(models)
    figure, axes = plt.subplots(figsize=(max(6, 1.1 * len(tasks) + 2), 4.5))
    for index, model in enumerate(models):
        heights = [median(by.get((task, model), [])) or 0.0 for task in tasks]
        positions = [n + (index - (len(models) - 1) / 2) * width for n in range(len(tasks))]
        bars = axes.bar(positions, heights, width=width, label=model)
        axes.bar_label(bars, fmt="%.2f", fontsize=7)
    axes.axhline(1.0, color="black", linewidth=0.8)
    axes.axhline(OVERHEAD_GOAL, color="#d62728", linestyle="--", linewidth=0.8,
                 label=f"goal {OVERHEAD_GOAL:.2f}")  # fmt: skip
    axes.set_xticks(range(len(tasks)), labels=tasks, rotation=30, ha="right")
    axes.set_ylabel("end-to-end / floor (median)")
    axes.set_title("Overhead over the floor (cargo build + test, and nix build, alone)")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def leaderboard(results: Sequence[TrialResult]) -> list[str]:
    lines = [
        "| model | trials | success | median attempts | median tokens | median seconds "
        "| median overhead | cost |",
        "|---|---|---|---|---|---|---|---|",
    ]
    by: dict[str, list[TrialResult]] = defaultdict(list)
    for result in results:
        by[result.model].append(result)
    ranked = sorted(
        by.items(), key=lambda item: (-_rate(item[1]), median(r.seconds for r in item[1]) or 0)
    )
    for model, rows in ranked:
        costs = [row.cost_usd for row in rows]
        cost = "unknown" if any(c is None for c in costs) else f"${sum(c or 0 for c in costs):.4f}"
        lines.append(
            f"| {model} | {len(rows)} | {_rate(rows):.0%} "
            f"| {_fmt(median(r.attempts for r in rows if r.success), 1)} "
            f"| {_fmt(median(r.prompt_tokens + r.completion_tokens for r in rows), 0)} "
            f"| {_fmt(median(r.seconds for r in rows))} "
            f"| {_fmt(median(r.overhead for r in rows), 2)} | {cost} |"
        )
    return lines


def _rate(rows: Sequence[TrialResult]) -> float:
    return sum(row.success for row in rows) / len(rows) if rows else 0.0


def task_table(results: Sequence[TrialResult]) -> list[str]:
    head = "| task | kind | model | success | attempts | seconds | floor | overhead | first cargo |"
    lines = [head + "".join(f" {stage} |" for stage in STAGES),
             "|---" * (9 + len(STAGES)) + "|"]  # fmt: skip
    by: dict[tuple[str, str], list[TrialResult]] = defaultdict(list)
    for result in results:
        by[(result.task, result.model)].append(result)
    for (task, model), rows in sorted(by.items()):
        stages = "".join(
            f" {_fmt(median(r.stages.get(stage) for r in rows))} |" for stage in STAGES
        )
        lines.append(
            f"| {task} | {rows[0].kind} | {model} | {sum(r.success for r in rows)}/{len(rows)} "
            f"| {_fmt(median(r.attempts for r in rows), 0)} "
            f"| {_fmt(median(r.seconds for r in rows))} | {_fmt(median(r.floor_s for r in rows))} "
            f"| {_fmt(median(r.overhead for r in rows), 2)} "
            f"| {_fmt(median(r.first_cargo_s for r in rows))} |{stages}"
        )
    return lines


def write_report(
    results: Sequence[TrialResult], out_dir: Path, *, suite: str, options: str
) -> Path:
    """report.md and its plots in `out_dir`; returns the report's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ordered = sorted(results, key=lambda r: (r.task, r.model, r.repeat))
    lines = [
        f"# Bench: {suite}",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}, {os.cpu_count()} cores; {options}.",
        "Times are medians over repeats, in seconds. Success: deployed, and every check of the "
        "deployed tool passed. Floor: the winner's `cargo build` + `cargo test` in a fresh "
        "target dir and its flake's `nix build` from nothing, alone, after the run.",
        "",
        "## Leaderboard",
        "",
        *leaderboard(ordered),
        "",
        "## Tasks",
        "",
        *task_table(ordered),
        "",
    ]
    if overhead_plot(ordered, out_dir / "overhead.png"):
        lines += ["## Overhead over the floor", "", "![overhead](overhead.png)", ""]
    failures = [r for r in ordered if not r.success]
    if failures:
        lines += ["## Failures", ""]
        for r in failures:
            failed = "; ".join(f"{c.name}: {c.detail}" for c in r.checks if not c.passed)
            why = f"{r.step}: {r.error_type}: {r.reason}" if r.status == "failed" else failed
            lines.append(f"- {r.task} · {r.model} · #{r.repeat} ({r.run_id}): {why}")
        lines.append("")
    lines += ["## Timelines", ""]
    for result in ordered:
        name = plot_name(result)
        timeline_plot(result, out_dir / name)
        lines += [
            f"### {result.task} · {result.model} · #{result.repeat}",
            "",
            f"![{name}]({name})",
            "",
        ]
    report = out_dir / "report.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    return report
