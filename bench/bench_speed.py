"""End to end against the floor, on the demo: `flakebot run examples/hexview.yaml`, cold.

Each repeat runs the demo as a user does, `flakebot run` as a process, in a fresh FLAKEBOT_HOME
(no target dir, no kept result), with the tool's Nix outputs (and its dependencies' build)
deleted from the store first, so cargo and Nix build everything again. Three settings:

- `cold`: one candidate, Ray started by the run (no `flakebot up`);
- `up`: one candidate, on a cluster `flakebot up` keeps running for that home, with its pool of
  started workers (flakebot.worker_pool);
- `up3`: three candidates, on the cluster kept up;
- `up-nopool`, `up3-nopool`: the same on a cluster kept up without a pool (`--warm-workers 0`).

On a cluster with a pool, each run starts once the pool is full, and the floor is measured once
it is full again (its keeper refills it right after a run: that is not the floor's work).

For each run: its wall time from the process start to its exit, and when its first cargo command
started (the first sandboxed `cargo build` of that home: /proc is polled every 20 ms). After each
run the floor is measured alone (flakebot.bench.floor: the winner's `cargo build && cargo test` in
a fresh target dir, in the sandbox, and its flake's `nix build --rebuild`), then the run is
cleaned. Settings alternate within a repeat, so noise hits them alike.

    .venv/bin/python -m bench.bench_speed [--repeats 3] [--settings up,up3] [--out FILE]
                                          [--summarize]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from flakebot import cluster
from flakebot.bench.floor import FloorMeter
from flakebot.bench.timeline import read_journal
from flakebot.settings import Settings
from flakebot.worker_pool import wait_full
from messages import Deployment, Workspace

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DEMO = ["examples/hexview.yaml", "--model", "scripted:examples/hexview-script.yaml"]
# name: (candidates, kept up, warm workers)
SETTINGS = {
    "cold": (1, False, 0),
    "up": (1, True, 12),
    "up3": (3, True, 12),
    "up-nopool": (1, True, 0),
    "up3-nopool": (3, True, 0),
}
POOL_WAIT_S = 120.0


def wait_for_pool(home: Path) -> None:
    """Until the cluster kept up for `home` has its pool of started workers full again."""
    up = cluster.running(home)
    if up is None or not up.warm_workers:
        return
    raylet = up.raylet()
    assert raylet is not None, "the kept cluster's raylet is not found"
    assert wait_full(raylet, up.warm_workers, POOL_WAIT_S), "the worker pool did not fill"


def flakebot(home: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"FLAKEBOT_HOME": str(home)}
    return subprocess.run(
        [str(BIN / "flakebot"), *args], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip


def forget_tool_outputs() -> None:
    """Delete the demo tool's outputs left in the store by earlier runs, so the build is cold."""
    names = [p for p in Path("/nix/store").iterdir() if p.name[33:].startswith("hexview-0.8.0")]
    if names:
        subprocess.run(
            ["nix-store", "--delete", *map(str, names)], capture_output=True, check=False
        )


def first_cargo(home: Path, process: subprocess.Popen[str], started: float) -> float | None:
    """Seconds until a sandboxed `cargo build` of this home appears (None if the run ends)."""
    marker = str(home).encode()
    while process.poll() is None:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if argv.startswith(b"bwrap") and marker in argv and b"cargo\0build" in argv:
                return time.monotonic() - started
        time.sleep(0.02)
    return None


def one_run(home: Path, candidates: int) -> dict[str, float | None]:
    forget_tool_outputs()
    env = os.environ | {"FLAKEBOT_HOME": str(home)}
    argv = [str(BIN / "flakebot"), "run", *DEMO, "--candidates", str(candidates), "--json"]
    started = time.monotonic()
    process = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    cargo_at = first_cargo(home, process, started)
    stdout, _ = process.communicate(timeout=900)
    seconds = time.monotonic() - started
    if process.returncode != 0:
        raise SystemExit(f"the demo failed ({process.returncode}): {stdout[-2000:]}")
    run_id = json.loads(stdout)["run_id"]
    rows = read_journal(home / "runs" / run_id / "journal.jsonl")
    deployment = next(Deployment.model_validate(m) for _, m in rows if m["kind"] == "deployment")
    workspace = next(
        Workspace.model_validate(m)
        for _, m in rows
        if m["kind"] == "workspace" and m["candidate_id"] == deployment.candidate_id
    )
    settings = Settings.from_env(os.environ | {"FLAKEBOT_HOME": str(home)})
    wait_for_pool(home)
    floor = FloorMeter.here(settings).measure(workspace, deployment)
    cleaned = flakebot(home, "clean", run_id)
    assert cleaned.returncode == 0, cleaned.stderr
    return {
        "seconds": round(seconds, 2),
        "first_cargo_s": None if cargo_at is None else round(cargo_at, 2),
        "floor_cargo_s": floor.cargo_s,
        "floor_nix_s": floor.nix_s,
        "floor_s": round(floor.total_s, 2),
        "ratio": round(seconds / floor.total_s, 3),
    }


def _median(values: list[float | None]) -> float:
    return statistics.median(value for value in values if value is not None)


def summarize(samples: dict[str, list[dict[str, float | None]]]) -> dict[str, dict[str, float]]:
    """Medians per setting, and three candidates over one (and the pool against none): the ratio
    of the medians and the median of the ratios within each repeat (the settings alternate, so
    noise hits a pair alike)."""
    summary: dict[str, dict[str, float]] = {
        name: {key: _median([s[key] for s in rows]) for key in rows[0]}
        for name, rows in samples.items()
    }
    for three, one in (("up3", "up"), ("up3-nopool", "up-nopool"), ("up", "up-nopool")):
        if three not in samples or one not in samples:
            continue
        paired = [
            float(a["seconds"] or 0) / float(b["seconds"] or 1)
            for a, b in zip(samples[three], samples[one], strict=True)
        ]
        summary[f"{three}_over_{one}"] = {
            "ratio_of_medians": round(summary[three]["seconds"] / summary[one]["seconds"], 3),
            "median_of_paired_ratios": round(statistics.median(paired), 3),
        }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "speed.json")
    parser.add_argument("--summarize", action="store_true", help="only summarize --out again")
    parser.add_argument(
        "--settings", default="cold,up,up3", help="which settings, e.g. up,up3 (default: these)"
    )
    options = parser.parse_args()
    chosen = {name: SETTINGS[name] for name in options.settings.split(",")}
    if options.summarize:
        samples = json.loads(options.out.read_text())["samples"]
    else:
        samples = {name: [] for name in chosen}
        with tempfile.TemporaryDirectory(prefix="bench-speed-", dir="/var/tmp") as scratch:
            for repeat in range(options.repeats):
                for name, (candidates, keep_up, warm) in chosen.items():
                    home = Path(scratch) / f"{name}-{repeat}"
                    home.mkdir()
                    if keep_up:
                        assert flakebot(home, "up", "--warm-workers", str(warm)).returncode == 0
                        wait_for_pool(home)
                    try:
                        sample = one_run(home, candidates)
                    finally:
                        if keep_up:
                            flakebot(home, "down")
                    samples[name].append(sample)
                    print(name, repeat, sample, flush=True)
    summary = summarize(samples)
    options.out.write_text(json.dumps({"samples": samples, "medians": summary}, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
