"""The sandbox: bubblewrap with no capabilities, no network and a read-only world.

Code that a model or a crate author wrote runs at compile time (build scripts, proc macros), at test
time, and when a deployed tool runs (`--help`, worked examples, services). All of it runs here:

- every capability is dropped (the bounding set too) and no_new_privs is set, so the process,
  though uid 0 inside, cannot remount a read-only bind writable, unmount what covers a directory,
  or regain privileges through a setuid program;
- it sees the system's /usr, the Rust toolchain and the crate registry (or a tool's Nix closure)
  read-only, and writes only where Flakebot says: a fork and its target dir, or a scratch dir;
- a fork's `.git` and `.cargo` are bound read-only over the writable fork, so nothing inside can
  plant a git option that runs a command, or change the registry config Flakebot wrote;
- the parts of /proc that set the kernel's behaviour (/proc/sys, /proc/sysrq-trigger, ...) are
  read-only: uid 0 may write them without any capability;
- /etc holds only a synthetic passwd and group and what the dynamic linker needs; /tmp and HOME
  are private and vanish afterwards;
- no network namespace is shared: nothing can connect anywhere, not even to loopback services
  outside (a service is reached through a relay: see flakebot.services);
- the environment is cleared to what cargo needs (no API keys, no tokens); each run has a time
  limit (the whole process tree is killed when it passes) and an address-space limit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from flakebot.cgroups import DEFAULT_TASKS, limited
from flakebot.errors import ConfigError, ToolMissing
from flakebot.priority import launcher
from flakebot.proc import Completed, run

log = structlog.get_logger()

BWRAP_HINT = "apt-get install bubblewrap (or run ./bootstrap.sh); --no-sandbox runs unconfined"
DEFAULT_MEMORY_BYTES = 8 * 1024**3
SANDBOX_HOME = "/tmp/flakebot-home"
# Variables a sandboxed run keeps from the caller's environment, nothing else.
PASSED_THROUGH = ("LANG", "LC_ALL", "TERM", "SOURCE_DATE_EPOCH")
# Directories of a fork that stay read-only inside the sandbox even though the fork is writable.
PROTECTED_IN_FORK = (".git", ".cargo")
# Parts of /proc that change the kernel, not the sandbox: the process runs as uid 0 (without
# capabilities), and a sysctl write or /proc/sysrq-trigger checks the uid only. core_pattern or
# modprobe set to a program of the fork's would have the kernel run it as root on the host. They
# are bound read-only over the sandbox's own /proc (Docker covers the same ones).
PROC_READ_ONLY = tuple(
    f"/proc/{name}"
    for name in ("sys", "sysrq-trigger", "fs", "irq", "bus", "acpi", "scsi", "latency_stats")
)
# What a process with the network needs from /etc to resolve names and check certificates.
NETWORK_FILES = (
    "/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/ssl", "/etc/ca-certificates",
    "/etc/pki",
)  # fmt: skip
PASSWD = (
    "root:x:0:0:root:/tmp/flakebot-home:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
)
GROUP = "root:x:0:\nnogroup:x:65534:\n"


@dataclass(frozen=True)
class Toolchain:
    """A Rust toolchain: the directory holding bin/cargo, bin/rustc (and maybe clippy)."""

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
            # from /, not the current directory: rustup honours a rust-toolchain.toml there and
            # in its parents, and a build script can plant one in a fork naming its own "rustc",
            # which version() would then run on the host
            done = run([rustup, "which", "cargo"], timeout=60, cwd=Path("/"), env=_rust_env())
            if done.ok:
                return cls(Path(done.stdout.strip()).resolve().parent.parent)
        return cls(Path(cargo).resolve().parent.parent)

    @property
    def bin_dir(self) -> Path:
        return self.root / "bin"

    @property
    def has_clippy(self) -> bool:
        return all((self.bin_dir / name).exists() for name in ("cargo-clippy", "clippy-driver"))

    def version(self) -> str:
        rustc = self.bin_dir / "rustc"
        done = run([rustc, "--version"], timeout=60, cwd=Path("/"), env=_rust_env()).check()
        return done.stdout.strip()


def _rust_env() -> dict[str, str]:
    """What rustup and rustc need of the environment on the host: no secret."""
    names = ("PATH", "HOME", "RUSTUP_HOME", "CARGO_HOME", "RUSTUP_TOOLCHAIN", "LANG", "LC_ALL")
    return {name: os.environ[name] for name in names if name in os.environ}


def require_bwrap() -> str:
    found = shutil.which("bwrap")
    if found is None:
        raise ToolMissing("bwrap", hint=BWRAP_HINT)
    return found


def confinement(
    *,
    read_only: Sequence[Path] = (),
    writable: Sequence[Path] = (),
    protected: Sequence[Path] = (),
    workdir: Path,
    env: Mapping[str, str],
    data_fds: Mapping[str, int] | None = None,
    die_with_parent: bool = True,
    network: bool = False,
) -> list[str]:
    """bwrap's arguments up to the command: what is visible, what is writable, the environment.

    `protected` paths are bound read-only after (so over) the `writable` ones; `data_fds` maps a
    path inside to a file descriptor whose content becomes that read-only file. `network` keeps
    the host's network (and the files that name servers and certificate authorities), for the one
    stage that fetches: resolving a fork's dependencies against a remote registry.
    """
    args = [
        "bwrap",
        "--unshare-all",
        "--cap-drop", "ALL",
        "--new-session",
        "--ro-bind", "/usr", "/usr",
        "--symlink", "usr/bin", "/bin",
        "--symlink", "usr/lib", "/lib",
        "--symlink", "usr/lib64", "/lib64",
        "--symlink", "usr/sbin", "/sbin",
        "--ro-bind-try", "/etc/alternatives", "/etc/alternatives",
        "--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache",
        "--proc", "/proc",
        *[arg for part in PROC_READ_ONLY for arg in ("--ro-bind-try", part, part)],
        "--dev", "/dev",
        "--tmpfs", "/tmp",
        "--dir", SANDBOX_HOME,
    ]  # fmt: skip
    if die_with_parent:
        args.insert(1, "--die-with-parent")
    if network:
        args.insert(args.index("--unshare-all") + 1, "--share-net")
        for shared in NETWORK_FILES:
            args += ["--ro-bind-try", shared, shared]
    for inside, fd in (data_fds or {}).items():
        args += ["--ro-bind-data", str(fd), inside]
    for path in _outermost(read_only):
        args += ["--ro-bind", str(path), str(path)]
    for path in _outermost(writable):
        args += ["--bind", str(path), str(path)]
    for path in protected:
        args += ["--ro-bind", str(path), str(path)]
    args += ["--chdir", str(workdir), "--clearenv"]
    for name, value in env.items():
        args += ["--setenv", name, value]
    return [*args, "--"]


@contextlib.contextmanager
def etc_files() -> Iterator[dict[str, int]]:
    """Pipes holding the sandbox's synthetic /etc/passwd and /etc/group, for `data_fds`."""
    fds: dict[str, int] = {}
    try:
        for inside, text in (("/etc/passwd", PASSWD), ("/etc/group", GROUP)):
            read_end, write_end = os.pipe()
            os.write(write_end, text.encode())
            os.close(write_end)
            fds[inside] = read_end
        yield fds
    finally:
        for fd in fds.values():
            os.close(fd)


def protected_dirs(workdir: Path) -> list[Path]:
    """The fork's directories that must stay read-only inside: real directories only."""
    found = []
    for name in PROTECTED_IN_FORK:
        path = workdir / name
        if path.is_dir() and not path.is_symlink():
            found.append(path)
    return found


@dataclass(frozen=True)
class Sandbox:
    """How to run cargo on a fork: under bwrap, or not (--no-sandbox, with a warning)."""

    toolchain: Toolchain
    read_only: tuple[Path, ...] = ()
    memory_bytes: int = DEFAULT_MEMORY_BYTES  # each process's address space, and all of them
    tasks: int = DEFAULT_TASKS  # processes and threads at once (flakebot.cgroups)
    enabled: bool = True
    extra_env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.enabled:
            require_bwrap()
        else:
            log.warning("sandbox_disabled", reason="--no-sandbox: crate code runs unconfined")

    @classmethod
    def for_registry(cls, toolchain: Toolchain, registry: Path, *, enabled: bool = True) -> Sandbox:
        """A sandbox that sees `registry` (system paths under /usr are visible already)."""
        read_only = () if registry.is_relative_to("/usr") else (registry,)
        return cls(toolchain, read_only=read_only, enabled=enabled)

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

    def run(
        self,
        command: Sequence[str | Path],
        *,
        workdir: Path,
        target_dir: Path,
        timeout: float,
        writable: Sequence[Path] = (),
        stdin: str | None = None,
        network: bool = False,
        env: Mapping[str, str] | None = None,
        nice: int = 0,
    ) -> Completed:
        """Run `command` in `workdir` with only `workdir`, `target_dir` and `writable` writable;
        `network` for the fetch stage only (no build runs there), `env` added to the sandbox's;
        `nice` lowers the scheduling priority of the whole process tree (flakebot.priority)."""
        for path in (workdir, target_dir, *writable):
            if not path.is_absolute():
                raise ConfigError(f"sandbox paths must be absolute: {path}")
        target_dir.mkdir(parents=True, exist_ok=True)
        workdir, target_dir = workdir.resolve(), target_dir.resolve()  # bwrap binds real paths
        env = {**self.environment(target_dir), **(env or {})}
        if network:
            env["CARGO_NET_OFFLINE"] = "false"
        limit = ["prlimit", f"--as={self.memory_bytes}", "--"]
        lowered = launcher(nice) if nice else []  # in the command's own session: see priority
        if not self.enabled:
            argv = [*limit, *lowered, *map(str, command)]
            return run(argv, timeout=timeout, cwd=workdir, env=env, stdin=stdin)
        with etc_files() as data_fds, limited(self.memory_bytes, self.tasks) as group:
            argv = [
                *group.join_argv(),
                *limit,
                *confinement(
                    read_only=[self.toolchain.root, *self.read_only],
                    writable=[workdir, target_dir, *writable],
                    protected=protected_dirs(workdir),
                    workdir=workdir,
                    env=env,
                    data_fds=data_fds,
                    network=network,
                ),
                *lowered,
                *map(str, command),
            ]
            done = run(
                argv,
                timeout=timeout,
                env={"PATH": os.environ.get("PATH", "")},
                stdin=stdin,
                pass_fds=list(data_fds.values()),
            )
            return group.told(done)


def _outermost(paths: Sequence[Path]) -> list[Path]:
    """Real paths, without those nested in another path of the list (the parent binds them)."""
    resolved = sorted({path.resolve() for path in paths}, key=lambda path: len(path.parts))
    kept: list[Path] = []
    for path in resolved:
        if not any(path.is_relative_to(parent) for parent in kept):
            kept.append(path)
    return kept
