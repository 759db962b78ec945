"""The deployer: a flake.nix in the fork, `nix build` of a clean export, a GC root, and services.

`Deployer.deploy` writes the standard flake (see flake_template) into the fork and commits it.
Then it exports that commit's tree into FLAKEBOT_HOME/deployments/<run>/<candidate> (Flakebot
writes every file of it; nothing of the fork's `.git` or work tree comes along) and builds that
directory as a `path:` flake, with `nixpkgs` overridden by the offline stand-in rendered for this
machine. Nix never runs git on the fork, and the export outlives the fork: it is the flake the
manifest's `nix run` names, kept with the deployment when a run is cleaned with
`--keep-deployment`. The output gets a GC root under FLAKEBOT_HOME/gcroots/<run>/<candidate>; every
store path the build added is recorded for the janitor. A service is started in the tool sandbox
(flakebot.services), its health path polled, its listening addresses checked (loopback only), and
its probes run, before the Deployment is returned.

`Deployer.prebuild` starts building the fork's dependencies alone (flakebot.prebuild) from an
export of its current commit and the same flake, so that the deploy later compiles only the crate.

Which registry the build may see comes from the Workspace message (the run's own record of the
fork), never from the fork's files.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

import httpx
import structlog

from flakebot import services
from flakebot.crates.fetch import registry_cache
from flakebot.crates.sparse import SparseRegistry
from flakebot.errors import CommandFailed, DeployError
from flakebot.flake_template import nix_string, write_flake
from flakebot.fork import Forker
from flakebot.matching import output_matches
from flakebot.nix import BASE_SANDBOX_PATHS, Nix, current_system
from flakebot.prebuild import (
    Prebuild,
    PrebuildJob,
    prebuild_dir,
    stop_runner,
    tree_manifests,
)
from flakebot.proc import start_time
from flakebot.runstate import RunRecord, all_runs
from flakebot.sandbox import Toolchain
from flakebot.service_host import ServiceJob
from flakebot.settings import Settings
from messages import Deployment, RegistryRef, ServiceInstance, ToolSpec, Workspace

log = structlog.get_logger()

STORE = Path("/nix/store")
HEALTH_TIMEOUT_S = 30.0


def store_names() -> set[str]:
    """The names in the Nix store now; empty before the first build has made the store."""
    try:
        return set(os.listdir(STORE))
    except FileNotFoundError:
        return set()


class Deployer:
    """Builds forks with Nix and starts services."""

    def __init__(self, settings: Settings, toolchain: Toolchain, *, nix: Nix | None = None) -> None:
        self.settings = settings
        self.toolchain = toolchain
        self.nix = nix or Nix()

    def offline_nixpkgs(self, registry: RegistryRef) -> Path:
        """The offline nixpkgs stand-in for this toolchain and registry (rendered once): a local
        registry is read as it is; a crates.io-protocol registry's crates are fetched by URL and
        checksum, as nixpkgs' importCargoLock does."""
        template = resources.files("flakebot").joinpath("data/nix/nixpkgs-offline/flake.nix")
        local = registry.source == "local"
        text = (
            template.read_text()
            .replace("@TOOLCHAIN@", str(self.toolchain.root))
            .replace("@REGISTRY@", str(Path(registry.location)) if local else "")
            .replace("@DOWNLOADS@", "" if local else nix_string(self.download_template(registry)))
            .replace("@SYSTEM@", current_system())
        )
        digest = hashlib.sha256(text.encode()).hexdigest()[:12]
        directory = self.settings.home / "nix" / f"nixpkgs-offline-{digest}"
        if not (directory / "flake.nix").exists():
            directory.mkdir(parents=True, exist_ok=True)
            (directory / "flake.nix").write_text(text)
        return directory

    def download_template(self, registry: RegistryRef) -> str:
        """The registry's `dl` template with its markers (cargo's default path when it has
        none): saved when a fork fetched from it, else asked of the registry."""
        saved = registry_cache(self.settings.home, registry) / "config.json"
        try:
            dl = str(json.loads(saved.read_text())["dl"])
        except (OSError, ValueError, KeyError, TypeError):
            client = SparseRegistry(registry, user_agent=self.settings.user_agent)
            try:
                dl = client.config().dl
            finally:
                client.close()
        return dl if "{" in dl else dl.rstrip("/") + "/{crate}/{version}/download"

    def flake_args(self, registry: RegistryRef) -> list[str]:
        return [
            "--override-input", "nixpkgs", f"path:{self.offline_nixpkgs(registry)}",
            "--no-write-lock-file",
        ]  # fmt: skip

    def sandbox_paths(self, registry: RegistryRef) -> list[str]:
        paths = [*BASE_SANDBOX_PATHS, "/etc/alternatives", str(self.toolchain.root)]
        directory = Path(registry.location)
        if registry.source == "local" and not directory.is_relative_to("/usr"):
            paths.append(str(directory))
        return paths

    def source_dir(self, workspace: Workspace) -> Path:
        """Where the deployed flake's source lives: Flakebot's export of the fork's commit."""
        return self.settings.home / "deployments" / workspace.run_id / workspace.candidate_id

    def flake_into(
        self, root: Path, workspace: Workspace, spec: ToolSpec, *, bin_name: str
    ) -> bool:
        """Write the fork's flake.nix into `root` (the fork, or an export of it)."""
        return write_flake(
            root,
            pname=spec.name,
            version=workspace.crate_version,
            bin_name=bin_name,
            description=spec.summary,
            subdir=str(Path(workspace.manifest_path).parent),
        )

    def prebuild(
        self,
        workspace: Workspace,
        spec: ToolSpec,
        forker: Forker,
        *,
        bin_name: str,
        prepare: Callable[[Path], None] | None = None,
    ) -> Prebuild:
        """Start building the dependencies of the fork's current commit in the background: its
        export, with the flake its deploy will write (flakebot.prebuild). `prepare` changes the
        export first, as the fork will be changed before its deploy (the acceptance cases)."""
        record = RunRecord(self.settings.home, workspace.run_id)
        for earlier in record.items("prebuild", workspace.candidate_id):
            if earlier.pid is not None:  # a coder restarted: its earlier prebuild goes first
                stop_runner(earlier.pid, earlier.started)
        directory = prebuild_dir(self.settings.home, workspace.run_id, workspace.candidate_id)
        record.add("prebuild", directory, candidate_id=workspace.candidate_id)
        (directory / "status.json").unlink(missing_ok=True)
        flake = directory / "flake"
        forker.export(workspace, flake)
        if prepare is not None:
            prepare(flake)
        self.flake_into(flake, workspace, spec, bin_name=bin_name)
        me = os.getpid()
        job = PrebuildJob(
            home=str(self.settings.home),
            run_id=workspace.run_id,
            candidate_id=workspace.candidate_id,
            directory=str(directory),
            flake=f"path:{flake}",
            attribute=f"packages.{current_system()}.default.flakebotDeps",
            standin=f"path:{self.offline_nixpkgs(workspace.registry)}",
            sandbox_paths=self.sandbox_paths(workspace.registry),
            extra_args=self.flake_args(workspace.registry),
            watch_pid=me,
            watch_started=start_time(me) or 0,
            manifests=tree_manifests(flake),
        )
        return Prebuild.start(job)

    def deploy(
        self, workspace: Workspace, spec: ToolSpec, forker: Forker, *, bin_name: str
    ) -> Deployment:
        root = Path(workspace.path)
        registry = workspace.registry
        record = RunRecord(self.settings.home, workspace.run_id)
        if self.flake_into(root, workspace, spec, bin_name=bin_name):
            forker.commit(workspace, f"flakebot: flake.nix for {spec.name}")
        source = self.source_dir(workspace)
        record.add("deployment", source, candidate_id=workspace.candidate_id)
        commit = forker.export(workspace, source)
        flake_ref = f"path:{source}"
        gc_root = self.settings.gcroots_dir / workspace.run_id / workspace.candidate_id
        gc_root.parent.mkdir(parents=True, exist_ok=True)
        record.add("gc_root", gc_root, candidate_id=workspace.candidate_id)
        before = store_names()
        started = time.monotonic()
        try:
            built = self.nix.build(
                flake_ref,
                sandbox_paths=self.sandbox_paths(registry),
                out_link=gc_root,
                extra_args=self.flake_args(registry),
            )
        except CommandFailed as exc:
            raise DeployError(
                f"nix build of {workspace.candidate_id} failed", log_tail=exc.output_tail
            ) from None
        finally:
            for name in sorted(store_names() - before):
                record.add("store_path", STORE / name, candidate_id=workspace.candidate_id)
        store_path = built.out_paths["out"]
        for path in _built_by_other_runs(self.settings.home, workspace.run_id, store_path):
            # the same tool deployed before (a reused result): this run holds what that
            # deploy built too, so cleaning the other run leaves it and the last one removes it
            record.add("store_path", path, candidate_id=workspace.candidate_id)
        bin_path = f"{store_path}/bin/{bin_name}"
        if not Path(bin_path).is_file():
            raise DeployError(f"{store_path} has no bin/{bin_name}", log_tail="")
        deployment = Deployment(
            run_id=workspace.run_id,
            candidate_id=workspace.candidate_id,
            flake_ref=flake_ref,
            system=current_system(),
            commit=commit,
            store_path=store_path,
            bin_path=bin_path,
            nar_hash=self.nix.nar_hash(store_path),
            gc_root=str(gc_root),
        )
        log.info(
            "flake_deployed",
            candidate=workspace.candidate_id,
            store_path=store_path,
            seconds=round(time.monotonic() - started, 2),
        )
        if spec.tool_kind == "service":
            deployment = deployment.model_copy(
                update={"service": self.start_service(deployment, spec, record)}
            )
        return deployment

    def start_service(
        self, deployment: Deployment, spec: ToolSpec, record: RunRecord
    ) -> ServiceInstance:
        assert spec.service is not None
        logs = record.directory / f"service-{deployment.candidate_id}.log"
        job = ServiceJob(
            bin_path=deployment.bin_path,
            args=list(spec.service.args),
            closure=self.nix.closure(deployment.store_path),
            log=str(logs),
        )
        process = services.start(job)
        record.add(
            "service",
            process.url,
            candidate_id=deployment.candidate_id,
            pid=process.pid,
            started=process.started,
        )
        try:
            self._wait_healthy(process.url + spec.service.health_path, process, logs)
            services.check_loopback_only(process)
            for probe in spec.service.probes:
                response = httpx.request(
                    probe.method, process.url + probe.path, content=probe.body, timeout=10
                )
                if response.status_code != probe.expect_status:
                    raise DeployError(
                        f"probe {probe.name}: {probe.method} {probe.path} answered "
                        f"{response.status_code}, expected {probe.expect_status}",
                        log_tail=response.text[:1_000],
                    )
                if probe.expect_body is not None and not output_matches(
                    probe.expect_body, response.text
                ):
                    raise DeployError(
                        f"probe {probe.name}: the body does not {probe.expect_body.match} "
                        f"{probe.expect_body.value!r}",
                        log_tail=response.text[:1_000],
                    )
        except BaseException:
            services.stop(process.pid, process.started)
            raise
        log.info("service_started", url=process.url, pid=process.pid)
        return ServiceInstance(
            pid=process.pid, port=process.port, url=process.url, started_at=datetime.now(UTC)
        )

    def _wait_healthy(self, url: str, process: services.ServiceProcess, logs: Path) -> None:
        deadline = time.monotonic() + HEALTH_TIMEOUT_S
        problem = ""
        while time.monotonic() < deadline:
            if not services.alive(process):
                tail = logs.read_text(errors="replace")[-2_000:] if logs.exists() else ""
                raise DeployError("the service exited before it answered", log_tail=tail)
            try:
                if httpx.get(url, timeout=2).is_success:
                    return
                problem = "not 2xx"
            except httpx.HTTPError as exc:
                problem = type(exc).__name__
            time.sleep(0.2)
        raise DeployError(f"the service's health check {url} failed: {problem}", log_tail="")


def _built_by_other_runs(home: Path, run_id: str, store_path: str) -> list[str]:
    """What other runs' deploys that built `store_path` recorded (it, its .drv, fetches)."""
    built = []
    for other in all_runs(home):
        if other.run_id == run_id:
            continue
        items = other.items("store_path")
        for candidate in {item.candidate_id for item in items if item.path == store_path}:
            built += [item.path for item in items if item.candidate_id == candidate]
    return sorted(set(built))
