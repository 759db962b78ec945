"""Nix: offline flake builds, and deleting our own store paths by name and nothing else."""

from __future__ import annotations

import grp
import os
import pwd
import secrets
from pathlib import Path

import pytest

from flakebot.errors import CommandFailed, MachineNotReady
from flakebot.nix import (
    BASE_SANDBOX_PATHS,
    BUILD_USERS_GROUP,
    Nix,
    build_users_group,
    current_system,
    offline_options,
)


def shell_flake(directory: Path, name: str, script: str) -> str:
    """A flake at `directory` whose package runs `script` in /bin/sh as its builder (a fresh
    derivation for each name: Nix does not build one again); its `path:` reference."""
    directory.mkdir(parents=True, exist_ok=True)
    body = "\n".join(f"        {line}" for line in script.strip().splitlines())
    text = SHELL_FLAKE.replace("SYSTEM", current_system()).replace("NAME", name)
    (directory / "flake.nix").write_text(text.replace("SCRIPT", body))
    return f"path:{directory}"


SHELL_FLAKE = """{
  outputs = { self }: {
    packages.SYSTEM.default = derivation {
      name = "NAME";
      system = "SYSTEM";
      builder = "/bin/sh";
      args = [ "-c" ''
SCRIPT
      '' ];
    };
  };
}
"""


def test_offline_options_disable_substituters_and_bind_host_paths() -> None:
    options = offline_options(["/bin/sh", "/usr"])
    assert options[options.index("substituters") + 1] == ""
    if os.geteuid() == 0:  # root builds as a build user
        assert options[options.index("build-users-group") + 1] == BUILD_USERS_GROUP
    else:  # another user leaves it to Nix's configuration (a daemon's, if it uses one)
        assert "build-users-group" not in options
    assert options[-1] == "/bin/sh /usr"
    assert "extra-sandbox-paths" not in offline_options(())


def test_delete_removes_only_the_paths_named(tmp_path: Path) -> None:
    nix = Nix()
    unique = tmp_path.name.replace("_", "-")[-20:]
    first_ref, second_ref = (
        shell_flake(tmp_path / name, f"flakebot-test-{name}", f"echo {name} > $out")
        for name in (f"a-{unique}", f"b-{unique}")
    )
    sources = [nix.source_path(first_ref), nix.source_path(second_ref)]
    first = nix.build(first_ref, timeout=300)
    second = nix.build(second_ref, timeout=300)
    first_out, second_out = first.out_paths["out"], second.out_paths["out"]
    assert Path(first_out).read_text().strip() == f"a-{unique}"
    try:
        deleted = nix.delete([first_out, first.drv_path])
        assert deleted == [first_out, first.drv_path]
        assert not Path(first_out).exists() and not Path(first.drv_path).exists()
        assert Path(second_out).exists() and Path(second.drv_path).exists()
        assert nix.delete([first_out]) == []  # already gone: nothing to do
    finally:
        nix.delete([second_out, second.drv_path, *sources])
    assert not Path(second_out).exists()
    assert not any(Path(source).exists() for source in sources)


def test_a_builder_cannot_write_the_host_paths_bound_into_its_sandbox(tmp_path: Path) -> None:
    """Nix binds extra-sandbox-paths writable for a root builder; Flakebot's build makes them
    read-only, so a build script in a fork cannot change /usr or the Rust toolchain."""
    toolchain = tmp_path / "toolchain"
    (toolchain / "bin").mkdir(parents=True)
    targets = [f"/usr/local/flakebot-escaped-{tmp_path.name}", str(toolchain / "bin" / "cargo")]
    script = f"""
for target in {" ".join(targets)}; do
  (echo escaped > "$target" && echo "wrote $target") >> $out 2>&1 || true
done
echo done >> $out
"""
    flake = shell_flake(tmp_path / "flake", "flakebot-test-builder-writes", script)
    nix = Nix()
    built = nix.build(flake, sandbox_paths=[*BASE_SANDBOX_PATHS, str(toolchain)])
    out = built.out_paths["out"]
    try:
        log = Path(out).read_text()
        assert log.rstrip().endswith("done") and "wrote" not in log, log
        assert not Path(targets[0]).exists() and not Path(targets[1]).exists()
    finally:
        nix.delete([out, built.drv_path])


def test_a_builder_is_not_root_on_the_host(tmp_path: Path) -> None:
    """A builder mapped to uid 0 could write /proc/sys (kernel.core_pattern: a program the kernel
    runs as root on the host). As root, Nix builds as a nixbld user. (A failing run writes back
    the same value.)"""
    script = """
read -r inside host count < /proc/self/uid_map
echo "host-uid $host" >> $out
v=$(cat /proc/sys/kernel/core_pattern)
(printf '%s' "$v" > /proc/sys/kernel/core_pattern && echo sysctl-written) >> $out 2>&1
echo done >> $out
"""
    flake = shell_flake(tmp_path, f"flakebot-test-builder-uid-{secrets.token_hex(6)}", script)
    nix = Nix()
    built = nix.build(flake, timeout=300)
    out = built.out_paths["out"]
    try:
        log = Path(out).read_text()
    finally:
        nix.delete([out, built.drv_path])
    assert log.rstrip().endswith("done") and "sysctl-written" not in log, log
    host_uid = int(log.split("host-uid ")[1].split()[0])
    assert host_uid != 0, log
    if os.geteuid() == 0:
        members = grp.getgrnam(BUILD_USERS_GROUP).gr_mem
        assert host_uid in {pwd.getpwnam(name).pw_uid for name in members}, log


def test_root_without_build_users_builds_nothing_and_says_how_to_fix_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(grp, "getgrnam", lambda name: (_ for _ in ()).throw(KeyError(name)))
    with pytest.raises(MachineNotReady, match="nixbld has no build users") as raised:
        build_users_group()
    assert "bootstrap.sh" in (raised.value.hint or "")
    assert build_users_group(building=False) == ""  # a query or a deletion runs no builder
    options = offline_options((), building=False)
    assert options[options.index("build-users-group") + 1] == ""
    assert options[options.index("allow-import-from-derivation") + 1] == "false"
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert build_users_group() is None and "build-users-group" not in offline_options(())


def test_nix_runs_without_the_models_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from flakebot.nix import nix_env

    monkeypatch.setenv("GROQ_API_KEY", "gsk_secretsecretsecret")
    monkeypatch.setenv("GROQ_API_KEY_FILE", "/run/keys/groq")
    env = nix_env()
    assert "GROQ_API_KEY" not in env and "GROQ_API_KEY_FILE" not in env
    assert env["PATH"] == os.environ["PATH"]  # the rest is this process's


def test_a_build_forking_without_end_stops_at_the_task_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A build script runs at deploy time too, in Nix's builder: its tree is in a cgroup."""
    from flakebot import nix as nix_module

    monkeypatch.setattr(nix_module, "BUILD_TASKS", 48)
    script = """
i=0
while [ $i -lt 200 ]; do /usr/bin/sleep 2 & i=$((i + 1)); done
echo done > $out
"""
    flake = shell_flake(tmp_path, f"flakebot-test-forks-{secrets.token_hex(6)}", script)
    with pytest.raises(CommandFailed, match=r"(?i)can(no|')t fork"):  # dash gives up there
        Nix().build(flake, timeout=300)
