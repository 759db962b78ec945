"""The sandbox every cargo run goes through: bubblewrap with no network and a read-only world.

Code that a model or a crate author wrote runs at compile time (build scripts, proc macros) and at
test time. Inside the sandbox it sees: the system's /usr read-only, the Rust toolchain read-only,
the crate registry read-only, the workspace and its target dir writable, and a private /tmp and
HOME that vanish afterwards. No network namespace is shared, so nothing can connect anywhere, not
even to loopback services outside. The environment is cleared to what cargo needs: no API keys, no
tokens. Each run has a time limit (the whole process tree is killed when it passes) and an
address-space limit per process.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from flakebot.errors import ConfigError, ToolMissing
from flakebot.proc import Completed, run

log = structlog.get_logger()

BWRAP_HINT = "apt-get install bubblewrap (or run ./bootstrap.sh); --no-sandbox runs unconfined"
DEFAULT_MEMORY_BYTES = 8 * 1024**3
SANDBOX_HOME = "/tmp/flakebot-home"
# Variables a cargo run keeps from the caller's environment, nothing else.
PASSED_THROUGH = ("LANG", "LC_ALL", "TERM", "SOURCE_DATE_EPOCH")


@dataclass(frozen=True)
class Toolchain:
    """A Rust toolchain: the directory holding bin/cargo, bin/rustc (and maybe cargo-clippy)."""

    root: Path

    @classmethod
    def find(cls, search_path: str | None = None) -> Toolchain:
        """The toolchain that `cargo` on PATH runs, seen through rustup's proxy if there is one."""
        cargo = shutil.which("cargo", path=search_path)
        if cargo is None:
            raise ToolMissing(
                "cargo",
                hint="install Rust with rustup (or apt-get install cargo) and add it to PATH",
            )
        rustup = shutil.which("rustup", path=search_path)
        if rustup is not None:
            done = run([rustup, "which", "cargo"], timeout=60)
            if done.ok:
                return cls(Path(done.stdout.strip()).resolve().parent.parent)
        return cls(Path(cargo).resolve().parent.parent)

    @property
    def bin_dir(self) -> Path:
        return self.root / "bin"

    @property
    def has_clippy(self) -> bool:
        return (self.bin_dir / "cargo-clippy").exists()

    def version(self) -> str:
        done = run([self.bin_dir / "rustc", "--version"], timeout=60).check()
        return done.stdout.strip()


@dataclass(frozen=True)
class Sandbox:
    """How to run a command on a workspace: under bwrap, or not (--no-sandbox, with a warning)."""

    toolchain: Toolchain
    read_only: tuple[Path, ...] = ()
    memory_bytes: int = DEFAULT_MEMORY_BYTES
    enabled: bool = True
    extra_env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.enabled and shutil.which("bwrap") is None:
            raise ToolMissing("bwrap", hint=BWRAP_HINT)
        if not self.enabled:
            log.warning("sandbox_disabled", reason="--no-sandbox: crate code runs unconfined")

    def environment(self, target_dir: Path) -> dict[str, str]:
        """The whole environment a sandboxed command gets."""
        env = {
            "PATH": f"{self.toolchain.bin_dir}:/usr/bin:/bin",
            "HOME": SANDBOX_HOME,
            "CARGO_HOME": f"{SANDBOX_HOME}/.cargo",
            "CARGO_TARGET_DIR": str(target_dir),
            "CARGO_TERM_COLOR": "never",
            "CARGO_NET_OFFLINE": "true",
            "TMPDIR": "/tmp",
            "RUST_BACKTRACE": "0",
        }
        for name in PASSED_THROUGH:
            if name in os.environ:
                env[name] = os.environ[name]
        env.update(self.extra_env)
        return env

    def argv(
        self, command: Sequence[str | Path], *, workdir: Path, writable: Sequence[Path]
    ) -> list[str]:
        """The full argv: bwrap's confinement around `command`, then the address-space limit."""
        limit = ["prlimit", f"--as={self.memory_bytes}", "--"]
        if not self.enabled:
            return [*limit, *map(str, command)]
        args = [
            "bwrap",
            "--unshare-all",
            "--die-with-parent",
            "--new-session",
            "--ro-bind", "/usr", "/usr",
            "--symlink", "usr/bin", "/bin",
            "--symlink", "usr/lib", "/lib",
            "--symlink", "usr/lib64", "/lib64",
            "--symlink", "usr/sbin", "/sbin",
            "--ro-bind-try", "/etc/alternatives", "/etc/alternatives",
            "--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache",
            "--ro-bind-try", "/etc/passwd", "/etc/passwd",
            "--ro-bind-try", "/etc/group", "/etc/group",
            "--proc", "/proc",
            "--dev", "/dev",
            "--tmpfs", "/tmp",
            "--dir", SANDBOX_HOME,
            "--ro-bind", str(self.toolchain.root), str(self.toolchain.root),
        ]  # fmt: skip
        for path in self.read_only:
            args += ["--ro-bind", str(path), str(path)]
        for path in writable:
            args += ["--bind", str(path), str(path)]
        args += ["--chdir", str(workdir), "--clearenv"]
        return [*limit, *args, *map(str, command)]

    def run(
        self,
        command: Sequence[str | Path],
        *,
        workdir: Path,
        target_dir: Path,
        timeout: float,
        writable: Sequence[Path] = (),
        stdin: str | None = None,
    ) -> Completed:
        """Run `command` in `workdir` with only `workdir`, `target_dir` and `writable` writable."""
        for path in (workdir, target_dir, *writable):
            if not path.is_absolute():
                raise ConfigError(f"sandbox paths must be absolute: {path}")
        target_dir.mkdir(parents=True, exist_ok=True)
        workdir, target_dir = workdir.resolve(), target_dir.resolve()  # bwrap binds real paths
        env = self.environment(target_dir)
        mounts = _outermost([workdir, target_dir, *writable])
        if self.enabled:
            argv = self.argv(command, workdir=workdir, writable=mounts)
            setenv = [part for name, value in env.items() for part in ("--setenv", name, value)]
            position = argv.index("--clearenv") + 1
            argv[position:position] = setenv
            return run(argv, timeout=timeout, env={"PATH": os.environ.get("PATH", "")}, stdin=stdin)
        argv = self.argv(command, workdir=workdir, writable=mounts)
        return run(argv, timeout=timeout, cwd=workdir, env=env, stdin=stdin)


def _outermost(paths: Sequence[Path]) -> list[Path]:
    """Drop paths nested in another path of the list (bwrap binds the parent already)."""
    resolved = sorted({path.resolve() for path in paths}, key=lambda path: len(path.parts))
    kept: list[Path] = []
    for path in resolved:
        if not any(path.is_relative_to(parent) for parent in kept):
            kept.append(path)
    return kept
