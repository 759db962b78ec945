"""Nix behind a narrow interface: offline flake builds and deleting our own store paths by name.

This machine's Nix (2.8, Debian's nix-bin) needs flakes switched on per command, no substituters
(there is no network), and, as root without a `nixbld` group, an empty `build-users-group`. Builds
stay sandboxed; host paths a build needs (a shell, libc, a toolchain) are bound in explicitly.
Store paths are removed by name, never by a global collection, which would also delete unrooted
paths that are not ours. Deletion uses `nix-store --delete`: Nix 2.8's `nix store delete` reads a
`.drv` path as "the outputs of this derivation" and tries to build it instead of deleting it.

Nix binds `extra-sandbox-paths` into its build sandbox as they are: writable, for a builder that
runs as root. A build script in the source being built could then change the host's /usr or the
Rust toolchain. So `nix build` itself runs in a mount namespace (bubblewrap, everything else as
on the host) in which every one of those paths is a read-only bind; Nix's own binds inherit that.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from flakebot.errors import CommandFailed
from flakebot.proc import run, which
from flakebot.sandbox import require_bwrap

log = structlog.get_logger()

NIX_HINT = "apt-get install nix-bin (or run ./bootstrap.sh)"
EXPERIMENTAL = ["--extra-experimental-features", "nix-command flakes"]
# What a sandboxed builder needs from the host to run /bin/sh and dynamically linked programs.
BASE_SANDBOX_PATHS = ("/bin/sh", "/lib", "/lib64", "/usr")


def offline_options(sandbox_paths: Sequence[str] = BASE_SANDBOX_PATHS) -> list[str]:
    """Flags for a build with no network, as root, with host paths bound into the sandbox."""
    options = [
        "--option", "substituters", "",
        "--option", "build-users-group", "",
    ]  # fmt: skip
    if sandbox_paths:
        options += ["--option", "extra-sandbox-paths", " ".join(sandbox_paths)]
    return options


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
        link = ["--out-link", str(out_link)] if out_link is not None else ["--no-link"]
        argv = self._argv(
            "build",
            *offline_options(sandbox_paths),
            *extra_args,
            *link,
            "--json",
            "--print-build-logs",
            flake_ref,
        )
        done = run([*read_only_host(sandbox_paths), *argv], timeout=timeout)
        if not done.ok:
            raise CommandFailed(argv, done.returncode, done.stderr[-4_000:])
        built = json.loads(done.stdout)[0]
        log.debug("flake_built", flake_ref=flake_ref, seconds=round(done.seconds, 2))
        return BuildResult(drv_path=built["drvPath"], out_paths=dict(built["outputs"]))

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

    def source_path(self, flake_ref: str) -> str:
        """The store path holding the flake's source (what `path:` copied into the store)."""
        argv = self._argv("flake", "metadata", *offline_options(()), "--json", flake_ref)
        done = run(argv, timeout=120).check()
        path: str = json.loads(done.stdout)["path"]
        return path

    def delete(self, store_paths: Sequence[str]) -> list[str]:
        """Delete these store paths (and nothing else); returns those that were deleted."""
        present = [path for path in store_paths if Path(path).exists()]
        if not present:
            return []
        argv = [self.nix_store, *offline_options(()), "--delete", *present]
        run(argv, timeout=300).check(hint="a path still rooted or in use cannot be deleted")
        return [path for path in present if not Path(path).exists()]
