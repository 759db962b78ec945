"""The floor of a run: the builds it cannot avoid, measured alone.

For the winner's commit: `cargo build` then `cargo test` in a fresh target dir (in the same sandbox
the tester uses: the fork is model-written code, so it never builds outside one), and the
deployed flake's `nix build` again from nothing (`--rebuild`: Nix builds the derivation once more
beside the output it has, so nothing is taken from the store). When the flake's build is split
into the dependencies and the crate, both are rebuilt.

A run's end-to-end time over this floor is what the rest of Flakebot costs.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from flakebot.crates.fetch import dependency_dir
from flakebot.deployer import Deployer
from flakebot.errors import CommandFailed
from flakebot.nix import Nix
from flakebot.sandbox import Sandbox, Toolchain
from flakebot.settings import Settings
from flakebot.tester import Tester
from messages import Deployment, Workspace

log = structlog.get_logger()
DEPS_ATTRIBUTE = "flakebotDeps"  # the stand-in's dependencies-only derivation
NONDETERMINISTIC = "may not be deterministic"


@dataclass(frozen=True)
class Floor:
    cargo_s: float
    nix_s: float
    green: bool  # the cargo stages passed again

    @property
    def total_s(self) -> float:
        return self.cargo_s + self.nix_s


@dataclass
class FloorMeter:
    settings: Settings
    toolchain: Toolchain
    nix: Nix

    @classmethod
    def here(cls, settings: Settings) -> FloorMeter:
        return cls(settings, Toolchain.find(), Nix())

    def measure(self, workspace: Workspace, deployment: Deployment) -> Floor:
        cargo_s, green = self.cargo(workspace)
        return Floor(cargo_s=cargo_s, nix_s=self.nix_build(workspace, deployment), green=green)

    def cargo(self, workspace: Workspace) -> tuple[float, bool]:
        """`cargo build && cargo test` of the fork as it is, in a fresh target dir."""
        directory = dependency_dir(self.settings.home, workspace.registry)
        tester = Tester(Sandbox.for_registry(self.toolchain, directory))
        scratch = self.settings.home / "bench"
        scratch.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="floor-", dir=scratch) as temporary:
            started = time.monotonic()
            report = tester.test(
                Path(workspace.path),
                Path(temporary) / "target",
                run_id=workspace.run_id,
                candidate_id=workspace.candidate_id,
                attempt=0,
                stages=("build", "test"),
            )
            seconds = time.monotonic() - started
        return round(seconds, 3), report.green

    def nix_build(self, workspace: Workspace, deployment: Deployment) -> float:
        """The deployed flake built again from nothing: its dependencies' derivation (when the
        build is split) and the tool's."""
        deployer = Deployer(self.settings, self.toolchain, nix=self.nix)
        registry = workspace.registry
        args = [*deployer.flake_args(registry), "--rebuild"]
        paths = deployer.sandbox_paths(registry)
        package = f"{deployment.flake_ref}#packages.{deployment.system}.default"
        seconds = 0.0
        for ref, optional in ((f"{package}.{DEPS_ATTRIBUTE}", True), (package, False)):
            started = time.monotonic()
            try:
                self.nix.build(ref, sandbox_paths=paths, extra_args=args)
            except CommandFailed as exc:
                if optional and "does not provide attribute" in exc.output_tail:
                    continue  # a build that is not split
                if NONDETERMINISTIC not in exc.output_tail:  # built, and compared
                    raise
            seconds += time.monotonic() - started
        return round(seconds, 3)
