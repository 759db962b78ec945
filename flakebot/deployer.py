"""The deployer: a flake.nix in the fork, `nix build`, a GC root, and (for a service) a process.

`Deployer.deploy` writes the standard flake (see flake_template), commits it, and builds the
fork as a git flake with `nixpkgs` overridden by the offline stand-in rendered for this machine.
The output gets a GC root under FLAKEBOT_HOME/gcroots/<run>/<candidate>; every store path the build
added is recorded for the janitor. A service is started on a loopback port Flakebot picks, its
health path polled, and its probes checked, before the Deployment is returned.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import subprocess
import time
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

import httpx
import structlog

from flakebot.acceptance import choose_binary
from flakebot.errors import CommandFailed, DeployError
from flakebot.flake_template import write_flake
from flakebot.nix import BASE_SANDBOX_PATHS, Nix, current_system
from flakebot.runstate import RunRecord
from flakebot.sandbox import Toolchain
from flakebot.settings import Settings
from flakebot.workspace import Forker, fork_registry
from messages import Deployment, ServiceInstance, ToolSpec, Workspace

log = structlog.get_logger()

STORE = Path("/nix/store")
HEALTH_TIMEOUT_S = 30.0
# Services this process started, kept so that stopping one can reap it (no zombie, no warning).
_STARTED: dict[int, subprocess.Popen[bytes]] = {}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Deployer:
    """Builds forks with Nix and starts services."""

    def __init__(self, settings: Settings, toolchain: Toolchain, *, nix: Nix | None = None) -> None:
        self.settings = settings
        self.toolchain = toolchain
        self.nix = nix or Nix()

    def offline_nixpkgs(self, registry: Path) -> Path:
        """The offline nixpkgs stand-in for this toolchain and registry (rendered once)."""
        template = resources.files("flakebot").joinpath("data/nix/nixpkgs-offline/flake.nix")
        text = (
            template.read_text()
            .replace("@TOOLCHAIN@", str(self.toolchain.root))
            .replace("@REGISTRY@", str(registry))
            .replace("@SYSTEM@", current_system())
        )
        digest = hashlib.sha256(text.encode()).hexdigest()[:12]
        directory = self.settings.home / "nix" / f"nixpkgs-offline-{digest}"
        if not (directory / "flake.nix").exists():
            directory.mkdir(parents=True, exist_ok=True)
            (directory / "flake.nix").write_text(text)
        return directory

    def flake_args(self, registry: Path) -> list[str]:
        return [
            "--override-input", "nixpkgs", f"path:{self.offline_nixpkgs(registry)}",
            "--no-write-lock-file",
        ]  # fmt: skip

    def sandbox_paths(self, registry: Path) -> list[str]:
        paths = [*BASE_SANDBOX_PATHS, "/etc/alternatives", str(self.toolchain.root)]
        if not registry.is_relative_to("/usr"):
            paths.append(str(registry))
        return paths

    def deploy(self, workspace: Workspace, spec: ToolSpec, forker: Forker) -> Deployment:
        root = Path(workspace.path)
        registry = fork_registry(root) or Path("/usr/share/cargo/registry")
        bin_name = choose_binary(spec, workspace.bin_names, workspace.crate_name)
        record = RunRecord(self.settings.home, workspace.run_id)
        if write_flake(
            root,
            pname=spec.name,
            version=workspace.crate_version,
            bin_name=bin_name,
            description=spec.summary,
            subdir=str(Path(workspace.manifest_path).parent),
        ):
            forker.commit(workspace, f"flakebot: flake.nix for {spec.name}")
        flake_ref = f"git+file://{root}"
        gc_root = self.settings.gcroots_dir / workspace.run_id / workspace.candidate_id
        gc_root.parent.mkdir(parents=True, exist_ok=True)
        record.add("gc_root", gc_root, candidate_id=workspace.candidate_id)
        before = set(os.listdir(STORE))
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
            for name in sorted(set(os.listdir(STORE)) - before):
                record.add("store_path", STORE / name, candidate_id=workspace.candidate_id)
        store_path = built.out_paths["out"]
        bin_path = f"{store_path}/bin/{bin_name}"
        if not Path(bin_path).exists():
            raise DeployError(f"{store_path} has no bin/{bin_name}", log_tail="")
        deployment = Deployment(
            run_id=workspace.run_id,
            candidate_id=workspace.candidate_id,
            flake_ref=flake_ref,
            system=current_system(),
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
        port = free_port()
        args = [arg.replace("{port}", str(port)) for arg in spec.service.args]
        logs = record.directory / f"service-{deployment.candidate_id}.log"
        logs.parent.mkdir(parents=True, exist_ok=True)
        with logs.open("ab") as output:
            process = subprocess.Popen(
                [deployment.bin_path, *args],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                start_new_session=True,
                env={"PATH": "/usr/bin:/bin", "LANG": os.environ.get("LANG", "C.UTF-8")},
            )
        _STARTED[process.pid] = process
        url = f"http://127.0.0.1:{port}"
        record.add("service", url, candidate_id=deployment.candidate_id, pid=process.pid)
        try:
            self._wait_healthy(url + spec.service.health_path, process)
            for probe in spec.service.probes:
                response = httpx.request(
                    probe.method, url + probe.path, content=probe.body, timeout=10
                )
                if response.status_code != probe.expect_status:
                    raise DeployError(
                        f"probe {probe.name}: {probe.method} {probe.path} answered "
                        f"{response.status_code}, expected {probe.expect_status}",
                        log_tail=response.text[:1_000],
                    )
                if probe.expect_body is not None and not probe.expect_body.matches(response.text):
                    raise DeployError(
                        f"probe {probe.name}: the body does not {probe.expect_body.match} "
                        f"{probe.expect_body.value!r}",
                        log_tail=response.text[:1_000],
                    )
        except BaseException:
            stop_process(process.pid)
            raise
        log.info("service_started", url=url, pid=process.pid)
        return ServiceInstance(pid=process.pid, port=port, url=url, started_at=datetime.now(UTC))

    def _wait_healthy(self, url: str, process: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + HEALTH_TIMEOUT_S
        problem = ""
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise DeployError(f"the service exited with {process.returncode}", log_tail="")
            try:
                if httpx.get(url, timeout=2).is_success:
                    return
                problem = "not 2xx"
            except httpx.HTTPError as exc:
                problem = type(exc).__name__
            time.sleep(0.2)
        raise DeployError(f"the service's health check {url} failed: {problem}", log_tail="")


def stop_process(pid: int, *, grace: float = 5.0) -> bool:
    """Stop a service's process group: TERM, then KILL after `grace` seconds. False if gone."""
    try:
        os.killpg(pid, 15)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return True
        _reap(pid)
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, 9)
    _reap(pid)
    return True


def _reap(pid: int) -> None:
    process = _STARTED.get(pid)
    if process is not None:
        if process.poll() is not None:
            del _STARTED[pid]
        return
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
