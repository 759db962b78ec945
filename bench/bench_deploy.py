"""Deploy speed: `nix build` of a hexyl fork against `cargo build --release` of the same tree, and
a redeploy with nothing changed.

Both cold: the Nix build compiles everything in its sandbox; `cargo build --release` by hand gets a
fresh target dir. Runs alternate (cargo, nix, cargo, nix, ...), 3 of each; after each Nix build its
output is deleted so the next one is cold too. Goals (issue 6): nix / cargo < 1.2; redeploy < 1 s.
Run: .venv/bin/python -m bench.bench_deploy
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench._timing import hexyl_candidate, median_seconds, runs
from flakebot.deployer import Deployer
from flakebot.fork import Forker
from flakebot.janitor import Janitor
from flakebot.logs import configure_logging
from flakebot.proc import run
from flakebot.sandbox import Sandbox, Toolchain
from flakebot.settings import Settings
from messages import CleanupRequest, ToolSpec

REPEATS = 3
SPEC = ToolSpec(run_id="bench", name="hexview", summary="hex viewer", search_queries=["hex"])


def main() -> None:
    configure_logging("warning")
    store_before = set(os.listdir("/nix/store"))  # other runs' roots (the demo's) are not ours
    with tempfile.TemporaryDirectory(prefix="flakebot-bench-") as tmp:
        settings = Settings.from_env({"FLAKEBOT_HOME": str(Path(tmp) / "home")})
        toolchain = Toolchain.find()
        sandbox = Sandbox(toolchain)
        forker = Forker(settings, sandbox)
        workspace = forker.fork(hexyl_candidate())
        deployer = Deployer(settings, toolchain)
        # The first deploy renders the stand-in and writes flake.nix.
        warm = deployer.deploy(workspace, SPEC, forker, bin_name="hexyl")
        Path(warm.gc_root).unlink()
        deployer.nix.delete([warm.store_path])
        janitor = Janitor(settings)
        env = sandbox.environment(Path(tmp))
        cargo_runs, nix_runs = [], []
        for attempt in range(REPEATS):
            target = Path(tmp) / f"cargo-{attempt}"
            started = time.perf_counter()
            run(
                ["cargo", "build", "--release"],
                cwd=Path(workspace.path),
                env=env | {"CARGO_TARGET_DIR": str(target)},
                timeout=1800,
            ).check()
            cargo_runs.append(time.perf_counter() - started)
            shutil.rmtree(target)

            started = time.perf_counter()
            deployment = deployer.deploy(workspace, SPEC, forker, bin_name="hexyl")
            nix_runs.append(time.perf_counter() - started)
            assert Path(deployment.bin_path).exists()
            if attempt < REPEATS - 1:  # make the next build cold again
                Path(deployment.gc_root).unlink()
                deployer.nix.delete([deployment.store_path])
        redeploy = median_seconds(
            lambda: deployer.deploy(workspace, SPEC, forker, bin_name="hexyl"), repeats=5
        )
        janitor.clean(CleanupRequest(run_id="bench"))
        leftovers = set(os.listdir("/nix/store")) - store_before
    by_cargo, by_nix = statistics.median(cargo_runs), statistics.median(nix_runs)
    print(f"hexyl 0.8.0, cold release builds, median of {REPEATS}")
    print(f"  cargo build --release     {by_cargo:7.2f} s   runs: {runs(cargo_runs)}")
    print(f"  nix build (deploy)        {by_nix:7.2f} s   runs: {runs(nix_runs)}")
    print(f"  nix / cargo               {by_nix / by_cargo:7.3f}     goal < 1.2")
    print(f"  redeploy, no change       {redeploy:7.3f} s   (median of 5)   goal < 1 s")
    print(f"  store paths the benchmark left after clean: {len(leftovers)}")


if __name__ == "__main__":
    main()
