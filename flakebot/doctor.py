"""`flakebot doctor`: is every piece Flakebot needs here, and does it work?

Each check runs the real thing (a tiny offline flake build, a sandboxed connection attempt, a local
Ray cluster) and reports a status, what it saw, and a hint for fixing it. A failed required check
makes the doctor exit non-zero; a failed optional one (clippy) is a warning.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from flakebot.crates.sparse import SparseRegistry
from flakebot.errors import FlakebotError, MachineNotReady
from flakebot.nix import Nix, current_system
from flakebot.proc import run, tail, which
from flakebot.settings import Settings, tool_search_path

Status = Literal["ok", "warn", "fail"]
CheckName = Literal["python", "home", "cargo", "rustc", "clippy", "nix", "bwrap", "registry", "ray"]
CHECK_NAMES: tuple[CheckName, ...] = (
    "python", "home", "cargo", "rustc", "clippy", "nix", "bwrap", "registry", "ray",
)  # fmt: skip

RUST_HINT = "install Rust with rustup (or apt-get install cargo) and put ~/.cargo/bin on PATH"
NIX_HINT = "apt-get install nix-bin (or run ./bootstrap.sh)"
BWRAP_HINT = "apt-get install bubblewrap (or run ./bootstrap.sh)"
REGISTRY_HINT = (
    "apt-get install librust-<crate>-dev for the crates you need (./bootstrap.sh installs the "
    "demo's), or set FLAKEBOT_REGISTRY=local:DIR to a directory of unpacked crates"
)


class CheckResult(BaseModel):
    """One doctor check's outcome."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: CheckName
    status: Status
    required: bool
    detail: str
    hint: str | None = None
    seconds: float


class DoctorReport(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    checks: list[CheckResult]

    @property
    def healthy(self) -> bool:
        return all(check.status != "fail" for check in self.checks if check.required)


class _CheckFailed(Exception):
    def __init__(self, detail: str, hint: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.hint = hint


class Doctor:
    """Runs the checks against a PATH (the process's own unless given) and the settings."""

    def __init__(self, settings: Settings, *, path: str | None = None) -> None:
        self.settings = settings
        self.path = tool_search_path() if path is None else path

    def preflight(self) -> DoctorReport:
        """The checks a run needs before anything starts, in milliseconds: a writable home, and
        cargo, nix, bwrap and the registry present (no builds, no cluster)."""
        quick: dict[CheckName, tuple[bool, Callable[[], str], str | None]] = {
            "home": (True, self.check_home, None),
            "cargo": (True, lambda: self._which("cargo", RUST_HINT), RUST_HINT),
            "nix": (True, lambda: self._which("nix", NIX_HINT), NIX_HINT),
            "bwrap": (True, lambda: self._which("bwrap", BWRAP_HINT), BWRAP_HINT),
            "registry": (True, self.check_registry, REGISTRY_HINT),
        }
        return self._report(quick, tuple(quick))

    def run(self, only: Sequence[CheckName] = CHECK_NAMES) -> DoctorReport:
        table: dict[CheckName, tuple[bool, Callable[[], str], str | None]] = {
            "python": (True, self.check_python, None),
            "home": (True, self.check_home, None),
            "cargo": (True, lambda: self._version("cargo", RUST_HINT), RUST_HINT),
            "rustc": (True, lambda: self._version("rustc", RUST_HINT), RUST_HINT),
            "clippy": (False, self.check_clippy, "rustup component add clippy"),
            "nix": (True, self.check_nix, NIX_HINT),
            "bwrap": (True, self.check_bwrap, BWRAP_HINT),
            "registry": (True, self.check_registry, REGISTRY_HINT),
            "ray": (True, self.check_ray, "pip install 'ray[default]' into the venv"),
        }
        return self._report(table, only)

    def _report(
        self,
        table: dict[CheckName, tuple[bool, Callable[[], str], str | None]],
        only: Sequence[CheckName],
    ) -> DoctorReport:
        results = []
        for name in CHECK_NAMES:
            if name not in only or name not in table:
                continue
            required, check, default_hint = table[name]
            started = time.monotonic()
            try:
                detail, status, hint = check(), "ok", None
            except _CheckFailed as exc:
                detail, hint = exc.detail, exc.hint or default_hint
                status = "fail" if required else "warn"
            except FlakebotError as exc:
                detail, hint = exc.message, exc.hint or default_hint
                status = "fail" if required else "warn"
            results.append(
                CheckResult(
                    name=name,
                    status=status,
                    required=required,
                    detail=detail,
                    hint=hint,
                    seconds=round(time.monotonic() - started, 3),
                )
            )
        return DoctorReport(checks=results)

    def _env(self) -> dict[str, str]:
        return {**os.environ, "PATH": self.path}

    def _which(self, program: str, hint: str) -> str:
        return which(program, path=self.path, hint=hint)

    def _version(self, program: str, hint: str) -> str:
        binary = self._which(program, hint)
        done = run([binary, "--version"], timeout=60, env=self._env())
        if not done.ok:
            raise _CheckFailed(f"{binary} --version failed: {tail(done.stderr, 300)}", hint)
        return f"{done.stdout.strip()} ({binary})"

    def check_python(self) -> str:
        return f"Python {sys.version.split()[0]} ({sys.executable})"

    def check_home(self) -> str:
        home = self.settings.home
        try:
            home.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=home, prefix=".doctor-"):
                pass
        except OSError as exc:
            raise _CheckFailed(
                f"FLAKEBOT_HOME {home} is not writable: {exc.strerror}",
                "set FLAKEBOT_HOME to a writable directory",
            ) from None
        return str(home)

    def check_clippy(self) -> str:
        cargo = self._which("cargo", RUST_HINT)
        done = run([cargo, "clippy", "--version"], timeout=60, env=self._env())
        if not done.ok:
            raise _CheckFailed("clippy is not installed; the tester will skip its lint stage")
        return done.stdout.strip()

    def check_nix(self) -> str:
        nix = Nix(path=self.path)
        version = nix.version()
        nonce = secrets.token_hex(6)
        with tempfile.TemporaryDirectory(prefix="flakebot-doctor-") as tmp:
            probe = _PROBE_FLAKE.replace("NONCE", nonce).replace("SYSTEM", current_system())
            (Path(tmp) / "flake.nix").write_text(probe)
            flake_ref = f"path:{tmp}"
            source = nix.source_path(flake_ref)
            built = nix.build(flake_ref, timeout=300)
            out = built.out_paths["out"]
            content = Path(out).read_text().strip()
            nix.delete([out, built.drv_path, source])
        if content != f"flakebot-doctor {nonce}":
            raise _CheckFailed(f"the probe flake built {out} with unexpected content {content!r}")
        return f"Nix {version}; an offline flake build works (built and deleted {out})"

    def check_bwrap(self) -> str:
        bwrap = self._which("bwrap", BWRAP_HINT)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
            server.bind(("127.0.0.1", 0))
            server.listen(4)
            port = str(server.getsockname()[1])
            control = run([sys.executable, "-c", _NET_PROBE, port], timeout=30)
            if "reached" not in control.stdout:
                raise _CheckFailed(
                    f"the network probe failed outside the sandbox: {control.stdout}"
                )
            sandboxed = run(
                [
                    bwrap, "--unshare-net", "--die-with-parent", "--ro-bind", "/", "/",
                    "--dev", "/dev", "--proc", "/proc",
                    sys.executable, "-c", _NET_PROBE, port,
                ],
                timeout=30,
            )  # fmt: skip
        if not sandboxed.ok:
            raise _CheckFailed(
                f"bwrap could not start a sandbox: {tail(sandboxed.stderr, 400)}",
                "bwrap needs root or unprivileged user namespaces "
                "(sysctl kernel.unprivileged_userns_clone=1); try `bwrap --ro-bind / / true`",
            )
        seen = sandboxed.stdout.strip()
        if not seen.startswith("blocked"):
            raise _CheckFailed(f"a sandboxed process reached the network: {seen}")
        return f"{bwrap}: sandboxed connections fail ({seen})"

    def check_registry(self) -> str:
        registry = self.settings.registry
        if registry.source != "local":
            client = SparseRegistry(
                registry, user_agent=self.settings.user_agent, timeout=10.0, retries=0
            )
            try:
                config = client.config()
            except FlakebotError as exc:
                raise _CheckFailed(
                    exc.message, exc.hint or "check --registry crates-io:URL"
                ) from None
            finally:
                client.close()
            return f"{registry}: its sparse index answers ({client.index}, downloads {config.dl})"
        directory = Path(registry.location)
        if not directory.is_dir():
            raise _CheckFailed(f"registry directory {directory} does not exist")
        crates = sum(1 for entry in directory.iterdir() if (entry / "Cargo.toml").is_file())
        if crates == 0:
            raise _CheckFailed(f"registry directory {directory} holds no crates")
        return f"{directory}: {crates} crates"

    def check_ray(self) -> str:
        done = run(
            [sys.executable, "-m", "actors.health"],
            timeout=180,
            env={**self._env(), "RAY_ADDRESS": ""},
        )
        lines = done.stdout.strip().splitlines()
        if not done.ok or not lines:
            raise _CheckFailed(f"a local Ray cluster did not start: {tail(done.stderr, 600)}")
        seen = json.loads(lines[-1])
        return (
            f"Ray {seen['ray_version']}: a local cluster started in {seen['start_s']:.1f} s, "
            f"ran a task on {seen['nodes']} node(s) and stopped"
        )


_PROBE_FLAKE = """{
  description = "flakebot doctor probe";
  outputs = { self }: {
    packages.SYSTEM.default = derivation {
      name = "flakebot-doctor-probe";
      system = "SYSTEM";
      builder = "/bin/sh";
      args = [ "-c" "echo flakebot-doctor NONCE > $out" ];
    };
  };
}
"""

# Connects to a loopback port that is listening outside; prints what happened and the interfaces.
_NET_PROBE = """
import socket, sys
names = sorted(name for _, name in socket.if_nameindex())
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=3).close()
    print("reached; interfaces:", ",".join(names))
except OSError as exc:
    print("blocked:", exc.strerror or exc, "; interfaces:", ",".join(names))
"""


def require_ready(settings: Settings, *, path: str | None = None) -> None:
    """MachineNotReady naming every missing piece and its fix, unless the preflight passes."""
    failed = [
        check for check in Doctor(settings, path=path).preflight().checks if check.status == "fail"
    ]
    if failed:
        problems = "; ".join(f"{check.name}: {check.detail}" for check in failed)
        fixes = "; ".join(dict.fromkeys(check.hint for check in failed if check.hint))
        raise MachineNotReady(
            f"this machine is not ready for a run: {problems}",
            hint=f"{fixes} (`flakebot doctor` checks each piece)",
        )
