"""Tester overhead and the shared build cache, on hexyl from Debian's registry.

1. Cold `cargo build` + `cargo test` through the tester (bubblewrap, JSON output, parsing) against
   the same two commands run by hand without a sandbox, each in a fresh target dir. Goal: < 1.05.
2. The rebuild after a one-line change through the tester against the cold run. Goal: < 0.25.
Runs alternate (hand, tester, hand, tester, ...) so machine noise hits both alike; medians of 3.
Run: .venv/bin/python -m bench.bench_tester
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench._timing import hexyl_candidate, runs
from flakebot.fork import Forker
from flakebot.logs import configure_logging
from flakebot.proc import run
from flakebot.sandbox import Sandbox, Toolchain
from flakebot.settings import Settings
from flakebot.tester import Tester

REPEATS = 3


def main() -> None:
    configure_logging("warning")
    with tempfile.TemporaryDirectory(prefix="flakebot-bench-") as tmp:
        settings = Settings.from_env({"FLAKEBOT_HOME": str(Path(tmp) / "home")})
        sandbox = Sandbox(Toolchain.find())
        forker = Forker(settings, sandbox)
        candidate = hexyl_candidate()
        root = Path(forker.fork(candidate).path)
        tester = Tester(sandbox)
        env = sandbox.environment(Path(tmp))
        hand, confined, rebuild = [], [], []
        for attempt in range(REPEATS):
            target = Path(tmp) / f"hand-{attempt}"
            started = time.perf_counter()
            for command in (["cargo", "build"], ["cargo", "test"]):
                run(
                    command, cwd=root, env=env | {"CARGO_TARGET_DIR": str(target)}, timeout=1800
                ).check()
            hand.append(time.perf_counter() - started)
            shutil.rmtree(target)

            target = Path(tmp) / f"tester-{attempt}"
            report = tester.test(
                root, target, run_id="bench", candidate_id="c1", attempt=0, stages=("build", "test")
            )
            assert report.green, report.stages
            confined.append(sum(stage.duration_s for stage in report.stages))

            squeezer = root / "src" / "squeezer.rs"
            squeezer.write_text(squeezer.read_text() + f"\n// edit {attempt}\n")
            report = tester.test(
                root, target, run_id="bench", candidate_id="c1", attempt=1, stages=("build", "test")
            )
            assert report.green, report.stages
            rebuild.append(sum(stage.duration_s for stage in report.stages))
            shutil.rmtree(target)
    by_hand, through_tester, after_edit = map(statistics.median, (hand, confined, rebuild))
    print(f"hexyl 0.8.0, cold cargo build + cargo test, median of {REPEATS}")
    print(f"  by hand, no sandbox       {by_hand:7.2f} s   runs: {runs(hand)}")
    print(f"  through the tester        {through_tester:7.2f} s   runs: {runs(confined)}")
    print(f"  tester / by hand          {through_tester / by_hand:7.3f}     goal < 1.05")
    print(f"  rebuild after 1-line edit {after_edit:7.2f} s   runs: {runs(rebuild)}")
    print(f"  rebuild / cold            {after_edit / through_tester:7.3f}     goal < 0.25")


if __name__ == "__main__":
    main()
