"""Running a deployed tool confined: the same bubblewrap sandbox as the tests, around a Nix closure.

The binary Flakebot just built is code a model or a crate author wrote; running it for `--help`, the
manifest's worked examples, or as a service happens here, never on the host as it is:

- it sees /usr and its own Nix closure (the store path and everything it references) read-only,
  nothing of FLAKEBOT_HOME, no other store path and no home directory of the host;
- it writes only a scratch directory Flakebot made for the call (a case's input files live there),
  plus a private /tmp and HOME that vanish afterwards;
- it has no network at all (a service gets its own network namespace, reached through a relay);
- no capabilities, a cleared environment, a time limit and an address-space limit.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from flakebot.cgroups import DEFAULT_TASKS, limited
from flakebot.errors import ConfigError
from flakebot.proc import MAX_OUTPUT, Completed, run
from flakebot.sandbox import (
    DEFAULT_MEMORY_BYTES,
    PASSED_THROUGH,
    SANDBOX_HOME,
    confinement,
    etc_files,
    require_bwrap,
)
from messages.base import check_relative_path


def tool_environment() -> dict[str, str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": SANDBOX_HOME, "TMPDIR": "/tmp"}
    for name in PASSED_THROUGH:
        if name in os.environ:
            env[name] = os.environ[name]
    env.setdefault("LANG", "C.UTF-8")
    return env


def _checked_files(files: Mapping[str, str]) -> dict[str, str]:
    """`files` by normal relative path; ConfigError for a path outside, two names of one file,
    or a file that another's path uses as a directory."""
    checked: dict[str, str] = {}
    given: dict[str, str] = {}
    for relative, content in files.items():
        try:
            normal = check_relative_path(relative)
        except ValueError as exc:
            raise ConfigError(
                f"input file {relative!r} is not a path inside the call's directory: {exc}",
                hint="name input files by relative paths such as 'data/input.txt'",
            ) from None
        if normal in checked:
            raise ConfigError(f"input files {given[normal]!r} and {relative!r} are the same file")
        checked[normal], given[normal] = content, relative
    for normal in checked:
        parent = posixpath.dirname(normal)
        while parent:
            if parent in checked:
                raise ConfigError(
                    f"input file {given[parent]!r} is also a directory of {given[normal]!r}",
                    hint="a path is either a file or a directory",
                )
            parent = posixpath.dirname(parent)
    return checked


@contextmanager
def scratch_dir(files: Mapping[str, str] | None = None) -> Iterator[Path]:
    """A fresh directory for one call, holding `files` (relative path to text); removed after.
    A path that is absolute or climbs out with '..' is refused (ConfigError) before anything is
    written: the caller (an agent, a spec) names paths inside the sandbox only."""
    checked = _checked_files(files or {})
    directory = Path(tempfile.mkdtemp(prefix="flakebot-call-"))
    try:
        for relative, content in checked.items():
            path = directory / relative
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(content, errors="replace")
            except OSError as exc:
                raise ConfigError(
                    f"input file {relative!r} could not be written: {exc.strerror}",
                    hint="use shorter paths and names",
                ) from None
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@dataclass(frozen=True)
class ToolSandbox:
    """How to run a deployed tool: its Nix closure, read-only, and nothing else of the host."""

    closure: tuple[str, ...]
    memory_bytes: int = DEFAULT_MEMORY_BYTES
    tasks: int = DEFAULT_TASKS

    def __post_init__(self) -> None:
        require_bwrap()

    def argv(
        self,
        command: Sequence[str],
        *,
        workdir: Path,
        data_fds: Mapping[str, int],
        read_only: Sequence[Path] = (),
        die_with_parent: bool = True,
    ) -> list[str]:
        limit = ["prlimit", f"--as={self.memory_bytes}", "--"]
        return [
            *limit,
            *confinement(
                read_only=[*(Path(path) for path in self.closure), *read_only],
                writable=[workdir],
                workdir=workdir,
                env=tool_environment(),
                data_fds=data_fds,
                die_with_parent=die_with_parent,
            ),
            *command,
        ]

    def run(
        self,
        command: Sequence[str],
        *,
        timeout: float,
        stdin: str | None = None,
        files: Mapping[str, str] | None = None,
        max_output: int = MAX_OUTPUT,
        stop_at_limit: bool = False,
    ) -> Completed:
        """Run `command` (the tool's path and arguments) in a fresh scratch dir holding `files`;
        its output is bounded as flakebot.proc.run bounds it."""
        with (
            scratch_dir(files) as workdir,
            etc_files() as data_fds,
            limited(self.memory_bytes, self.tasks) as group,
        ):
            argv = self.argv(command, workdir=workdir, data_fds=data_fds)
            done = run(
                [*group.join_argv(), *argv],
                timeout=timeout,
                env={"PATH": os.environ.get("PATH", "")},
                stdin=stdin if stdin is not None else "",
                pass_fds=list(data_fds.values()),
                max_output=max_output,
                stop_at_limit=stop_at_limit,
            )
            return group.told(done)
