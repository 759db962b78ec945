"""A fork's second commit: make it build offline, against the registry its run chose.

Flakebot writes the fork's `.cargo/config.toml` whole (a crate's own cargo configuration is never
followed) and resolves `Cargo.lock` with cargo in the sandbox:

- a directory registry: cargo resolves offline against the directory itself;
- a crates.io-protocol registry: cargo resolves against the registry's sparse index, in a sandbox
  that keeps the network but runs no build (`cargo generate-lockfile` compiles nothing), with
  cargo's index cache shared across runs. The lock carries the registry's real checksums. Every
  locked crate is then fetched outside the sandbox into the shared vendor directory
  (crates.fetch), verified against the lock, and the configuration is rewritten to build from
  that directory, offline, like a local registry.

When resolution fails on a dev-dependency the registry lacks, that dev-dependency and the tests,
benches and examples that use it are pruned, recorded, and resolution runs again.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pygit2

from flakebot import fork_files
from flakebot.crates.cargo_toml import package_dir
from flakebot.crates.fetch import Fetcher, cargo_home, dependency_dir
from flakebot.crates.pruning import prune_dev_dependency, unresolved_dependency
from flakebot.crates.sparse import CRATES_IO_INDEX, index_url
from flakebot.errors import ForkError
from flakebot.fork_sources import commit_all
from flakebot.sandbox import Sandbox
from messages import CrateCandidate, PrunedItem, RegistryRef

LOCK_TIMEOUT_S = 300.0
SETUP_PREFIX = "flakebot: build offline against "
HEADER = "# Written by flakebot: build offline against a directory registry.\n"


def toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def directory_config(directory: Path) -> str:
    """cargo configuration that builds offline against a directory registry."""
    return (
        HEADER + '[source.crates-io]\nreplace-with = "flakebot-local"\n\n'
        f"[source.flakebot-local]\ndirectory = {toml_string(str(directory))}\n\n"
        "[net]\noffline = true\n"
    )


def resolving_config(registry: RegistryRef) -> str:
    """cargo configuration that resolves against a crates.io-protocol registry's sparse index."""
    index = index_url(registry)
    if index == CRATES_IO_INDEX:
        return "# Written by flakebot: resolve against crates.io.\n"
    return (
        "# Written by flakebot: resolve against a crates.io-protocol registry.\n"
        '[source.crates-io]\nreplace-with = "flakebot-remote"\n\n'
        f"[source.flakebot-remote]\nregistry = {toml_string('sparse+' + index)}\n"
    )


def make_offline(
    candidate: CrateCandidate,
    path: Path,
    *,
    sandbox: Sandbox,
    target: Path,
    home: Path,
    fetcher: Fetcher | None,
) -> list[PrunedItem]:
    """Write the configuration, resolve the lock (pruning what cannot resolve), fetch what a
    remote registry's lock names, and commit; returns what was pruned."""
    _replace_cargo_dir(path)
    registry = candidate.registry
    remote = registry.source != "local"
    writable: list[Path] = []  # a remote registry: cargo's index cache, shared across runs
    if remote:
        fork_files.write_text(path, ".cargo/config.toml", resolving_config(registry))
        writable.append(cargo_home(home, registry))
        writable[0].mkdir(parents=True, exist_ok=True)
        command = ["cargo", "generate-lockfile"]
    else:
        fork_files.write_text(
            path, ".cargo/config.toml", directory_config(Path(registry.location).resolve())
        )
        command = ["cargo", "generate-lockfile", "--offline"]
    fork_files.remove(path, "Cargo.lock")
    where = registry.location if remote else str(Path(registry.location).resolve())
    pruned: list[PrunedItem] = []
    for _ in range(64):
        done = sandbox.run(
            command,
            workdir=path,
            target_dir=target,
            timeout=LOCK_TIMEOUT_S,
            network=remote,
            writable=writable,
            env={"CARGO_HOME": str(writable[0])} if remote else None,
        )
        if done.ok:
            break
        missing = unresolved_dependency(done.stderr)
        if missing is None:
            raise ForkError(
                f"{candidate.name} {candidate.version} does not resolve against {where}:\n"
                + done.stderr.strip()[-2_000:]
            )
        removed = prune_dev_dependency(
            package_dir(path, candidate.name), missing, reason=f"{missing} is not in {where}"
        )
        if not removed:
            raise ForkError(
                f"{candidate.name} {candidate.version} needs {missing}, which {where} lacks "
                "(not only as a dev-dependency, so it cannot be pruned)",
                hint="try another candidate, or install the crate's sources "
                f"(apt-get install librust-{missing.replace('_', '-')}-dev)",
            )
        pruned.extend(removed)
    else:
        raise ForkError(f"{candidate.name} {candidate.version}: resolution did not settle")
    built_against = dependency_dir(home, registry).resolve() if not remote else None
    if remote:
        assert fetcher is not None
        lock = fork_files.read_text(path, "Cargo.lock")
        if lock is None:
            raise ForkError("cargo resolved the fork but wrote no Cargo.lock")
        fetcher.vendor_lock(lock)
        built_against = fetcher.vendor_dir
        built_against.mkdir(parents=True, exist_ok=True)
        fork_files.write_text(path, ".cargo/config.toml", directory_config(built_against))
    repo = pygit2.Repository(str(path))
    summary = f"pruned {len(pruned)}" if pruned else "nothing pruned"
    body = "\n".join(f"pruned: {item.what} {item.name}: {item.reason}" for item in pruned)
    commit_all(
        repo,
        f"{SETUP_PREFIX}{where} ({summary})\n\n{body}".rstrip(),
        force=("Cargo.lock", ".cargo/config.toml"),
    )
    return pruned


def _replace_cargo_dir(path: Path) -> None:
    """The crate's own cargo configuration (an upstream repository may carry one: aliases,
    runners, rustflags, other sources) is removed whole: never followed."""
    existing = fork_files.kind(path, ".cargo")
    if existing == "dir":
        shutil.rmtree(path / ".cargo")  # rmtree does not follow symlinks inside
    elif existing is not None:
        fork_files.remove(path, ".cargo")
