"""Nix behind a narrow interface: offline flake builds and deleting our own store paths by name.

This machine's Nix (2.8, Debian's nix-bin) needs flakes switched on per command and no
substituters (there is no network). Builds stay sandboxed; host paths a build needs (a shell,
libc, a toolchain) are bound in explicitly.

A build runs code of the crate's (build scripts, proc macros, the model's edits). Run by root
with no build users, Nix maps its builder to root on the host: it may then write /proc/sys (a
sysctl checks the uid only), e.g. kernel.core_pattern set to a program of its own, which the
kernel would run as root on the host. So as root a build runs as one of the `nixbld` group's
users (./bootstrap.sh makes nixbld1..nixbld32), and without them Flakebot builds nothing
(MachineNotReady naming the fix). A user other than root builds as itself.
Store paths are removed by name, never by a global collection, which would also delete unrooted
paths that are not ours. Deletion uses `nix-store --delete`: Nix 2.8's `nix store delete` reads a
`.drv` path as "the outputs of this derivation" and tries to build it instead of deleting it.

Nix binds `extra-sandbox-paths` into its build sandbox as they are: writable, for a builder that
runs as root. A build script in the source being built could then change the host's /usr or the
Rust toolchain. So `nix build` itself runs in a mount namespace (bubblewrap, everything else as
on the host) in which every one of those paths is a read-only bind; Nix's own binds inherit that.

`start_build` runs the same `nix build`, wrapped the same way, in the background (for
flakebot.prebuild): its output goes to files, and `BuildProcess.interrupt` stops it as Ctrl-C
would, so that Nix stops its builder and removes the build's chroot before it exits.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import platform
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from flakebot.cgroups import DEFAULT_TASKS, limited
from flakebot.errors import CommandFailed, MachineNotReady
from flakebot.proc import run, which
from flakebot.sandbox import require_bwrap

log = structlog.get_logger()

NIX_HINT = "apt-get install nix-bin (or run ./bootstrap.sh)"
BUILD_USERS_GROUP = "nixbld"
BUILD_USERS_HINT = (
    "run ./bootstrap.sh: it makes the group nixbld and the build users nixbld1..nixbld32 "
    "(groupadd --system nixbld; useradd --system --gid nixbld --groups nixbld ... nixbldN)"
)
EXPERIMENTAL = ["--extra-experimental-features", "nix-command flakes"]
# A build's whole process tree (nix, its builder, cargo and rustc, the crate's build scripts).
BUILD_MEMORY_BYTES = 8 * 1024**3
BUILD_TASKS = DEFAULT_TASKS
# What a sandboxed builder needs from the host to run /bin/sh and dynamically linked programs.
BASE_SANDBOX_PATHS = ("/bin/sh", "/lib", "/lib64", "/usr")


def build_users_group(*, building: bool = True) -> str | None:
    """The group whose users Nix builds as: `nixbld` for root (MachineNotReady if it has no
    users, when `building`); None for another user, who leaves the setting to Nix's own
    configuration (as a trusted user of a Nix daemon, an empty group would have the daemon,
    root, build as root)."""
    if os.geteuid() != 0:
        return None
    try:
        members = grp.getgrnam(BUILD_USERS_GROUP).gr_mem
    except KeyError:
        members = []
    if members:
        return BUILD_USERS_GROUP
    if building:
        raise MachineNotReady(
            f"Nix runs as root here and the group {BUILD_USERS_GROUP} has no build users: "
            "a build would run as root on the host",
            hint=BUILD_USERS_HINT,
        )
    return ""  # nothing is built (a query, a deletion): no builder runs


def offline_options(
    sandbox_paths: Sequence[str] = BASE_SANDBOX_PATHS, *, building: bool = True
) -> list[str]:
    """Flags for Nix with no network and host paths bound into the build sandbox; `building`
    if the command may build (then as a build user, never as root: build_users_group)."""
    options = ["--option", "substituters", ""]
    group = build_users_group(building=building)
    if group is not None:
        options += ["--option", "build-users-group", group]
    if not building:  # evaluation builds nothing either (no import-from-derivation)
        options += ["--option", "allow-import-from-derivation", "false"]
    if sandbox_paths:
        options += ["--option", "extra-sandbox-paths", " ".join(sandbox_paths)]
    return options


def nix_env() -> dict[str, str]:
    """The environment for `nix` commands that evaluate or build: this process's, without a
    model's API key (Nix passes none to a builder, but evaluation and its own logs need none)."""
    return {name: value for name, value in os.environ.items() if not name.startswith("GROQ_")}


def current_system() -> str:
    """This machine's Nix system string, e.g. x86_64-linux."""
    machine = platform.machine().lower()
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    return f"{arch}-{platform.system().lower()}"


def read_only_host(paths: Sequence[str]) -> list[str]:
    """A bwrap prefix: the host as it is, but `paths` (and what they resolve to) read-only."""
    real = sorted({str(Path(path).resolve()) for path in paths if Path(path).exists()})
    args = [require_bwrap(), "--dev-bind", "/", "/", "--die-with-parent"]
    for path in real:
        args += ["--ro-bind", path, path]
    return [*args, "--"]


def closure(store_path: str, nix_store: str) -> list[str]:
    """Every store path `store_path` needs at run time (itself included)."""
    done = run([nix_store, "--query", "--requisites", store_path], timeout=120).check()
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


@dataclass(frozen=True)
class BuildResult:
    drv_path: str
    out_paths: dict[str, str]


def built_result(json_text: str) -> BuildResult:
    """What `nix build --json` printed, for its one installable."""
    built = json.loads(json_text)[0]
    return BuildResult(drv_path=built["drvPath"], out_paths=dict(built["outputs"]))


@dataclass
class BuildProcess:
    """A `nix build` running in the background (Nix.start_build), in a session of its own."""

    argv: list[str]
    process: subprocess.Popen[bytes]
    output: Path
    log: Path

    def poll(self) -> int | None:
        return self.process.poll()

    def result(self) -> BuildResult:
        """What it built (waiting for it); CommandFailed unless it ended well."""
        code = self.process.wait()
        if code != 0:
            tail = self.log.read_bytes()[-4_000:].decode(errors="replace")
            raise CommandFailed(self.argv, code, tail)
        return built_result(self.output.read_text())

    def interrupt(self, grace: float = 30.0) -> int:
        """Stop it as Ctrl-C would: SIGINT to nix (bwrap's child), which stops its builder and
        cleans up; the whole session is killed if it has not ended after `grace` seconds."""
        pid = self.process.pid
        if self.process.poll() is None:
            try:
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                children = []
            with contextlib.suppress(ProcessLookupError):
                if children:
                    os.kill(int(children[0]), signal.SIGINT)
                else:  # nix has not started yet: bwrap goes, and takes it along
                    os.killpg(pid, signal.SIGINT)
        try:
            return self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            return self.process.wait()


class Nix:
    """The `nix` command, with this machine's flags."""

    def __init__(self, program: str = "nix", *, path: str | None = None) -> None:
        self.program = which(program, path=path, hint=NIX_HINT)
        self.nix_store = str(Path(self.program).with_name("nix-store"))

    def _argv(self, *args: str) -> list[str]:
        return [self.program, *EXPERIMENTAL, *args]

    def version(self) -> str:
        done = run(self._argv("--version"), timeout=30).check(hint=NIX_HINT)
        return done.stdout.strip().removeprefix("nix (Nix) ")

    def _build_argv(
        self,
        installable: str,
        *,
        sandbox_paths: Sequence[str],
        out_link: Path | None,
        extra_args: Sequence[str],
    ) -> list[str]:
        link = ["--out-link", str(out_link)] if out_link is not None else ["--no-link"]
        return self._argv(
            "build",
            *offline_options(sandbox_paths),
            *extra_args,
            *link,
            "--json",
            "--print-build-logs",
            installable,
        )

    def build(
        self,
        flake_ref: str,
        *,
        sandbox_paths: Sequence[str] = BASE_SANDBOX_PATHS,
        timeout: float = 1_800,
        out_link: Path | None = None,
        extra_args: Sequence[str] = (),
    ) -> BuildResult:
        """`nix build` offline; returns the derivation and its output paths."""
        argv = self._build_argv(
            flake_ref, sandbox_paths=sandbox_paths, out_link=out_link, extra_args=extra_args
        )
        with limited(BUILD_MEMORY_BYTES, BUILD_TASKS) as group:  # it runs the crate's build scripts
            done = run(
                [*group.join_argv(), *read_only_host(sandbox_paths), *argv],
                timeout=timeout,
                env=nix_env(),
            )
            done = group.told(done)
        if not done.ok:
            raise CommandFailed(argv, done.returncode, done.stderr[-4_000:])
        log.debug("flake_built", flake_ref=flake_ref, seconds=round(done.seconds, 2))
        return built_result(done.stdout)

    def start_build(
        self,
        installable: str,
        *,
        sandbox_paths: Sequence[str],
        extra_args: Sequence[str],
        output: Path,
        join: Sequence[str] = (),
    ) -> BuildProcess:
        """`nix build --no-link` started in the background, wrapped as `build` wraps it (`join`:
        the prefix that puts it in its caller's cgroup, flakebot.cgroups); its JSON goes to
        `output`, its log to `output` with the suffix `.log`."""
        argv = self._build_argv(
            installable, sandbox_paths=sandbox_paths, out_link=None, extra_args=extra_args
        )
        log_path = output.with_suffix(".log")
        with output.open("wb") as stdout, log_path.open("wb") as stderr:
            process = subprocess.Popen(
                [*join, *read_only_host(sandbox_paths), *argv],
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
                env=nix_env(),
            )
        return BuildProcess(argv, process, output, log_path)

    def derivation(self, installable: str, extra_args: Sequence[str] = ()) -> str:
        """The .drv path of a flake output (evaluated and written to the store, not built)."""
        argv = self._argv(
            "path-info",
            "--derivation",
            *offline_options((), building=False),
            *extra_args,
            installable,
        )
        done = run(argv, timeout=300, env=nix_env()).check()
        return done.stdout.strip().splitlines()[-1]

    def outputs(self, drv_paths: Sequence[str]) -> list[str]:
        """The output paths of these derivations (built or not)."""
        if not drv_paths:
            return []
        done = run([self.nix_store, "--query", "--outputs", *drv_paths], timeout=120).check()
        return [line.strip() for line in done.stdout.splitlines() if line.strip()]

    def closure(self, store_path: str) -> list[str]:
        return closure(store_path, self.nix_store)

    def nar_hash(self, store_path: str) -> str:
        """The narHash of a store path (sha256, SRI form)."""
        done = run(self._argv("path-info", "--json", store_path), timeout=120).check()
        info = json.loads(done.stdout)
        entry = info[0] if isinstance(info, list) else info[store_path]
        return str(entry["narHash"])

    def run_argv(self, flake_ref: str, extra_args: Sequence[str] = ()) -> list[str]:
        """`nix run FLAKE --` with this machine's flags; append the tool's arguments."""
        return self._argv("run", *offline_options(()), *extra_args, flake_ref, "--")

    def source_path(self, flake_ref: str, extra_args: Sequence[str] = ()) -> str:
        """The store path holding the flake's source (what `path:` copied into the store)."""
        argv = self._argv(
            "flake",
            "metadata",
            *offline_options((), building=False),
            *extra_args,
            "--json",
            flake_ref,
        )
        done = run(argv, timeout=120, env=nix_env()).check()
        path: str = json.loads(done.stdout)["path"]
        return path

    def delete(self, store_paths: Sequence[str]) -> list[str]:
        """Delete these store paths (and nothing else); returns those that were deleted."""
        present = [path for path in store_paths if Path(path).exists()]
        if not present:
            return []
        argv = [self.nix_store, *offline_options((), building=False), "--delete", *present]
        run(argv, timeout=300).check(hint="a path still rooted or in use cannot be deleted")
        return [path for path in present if not Path(path).exists()]
