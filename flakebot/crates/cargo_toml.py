"""Reading a published crate's Cargo.toml: metadata, targets, and the dependencies a build needs.

Crates in a directory registry (Debian's, or `cargo vendor` output) carry the normalised manifest
that `cargo publish` wrote. From it and the crate's files this module finds the library and binary
targets the way cargo's target auto-discovery does, and the dependencies a default build of the
crate on this host resolves: normal and build dependencies, optional ones only when the default
features enable them, and target-specific ones only when their `cfg(...)` holds here.
"""

from __future__ import annotations

import platform
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from flakebot import fork_files
from flakebot.errors import ManifestError
from flakebot.fork_files import UnsafePath, read_regular

README_CHARS = 20_000
MANIFEST_BYTES = 1_000_000
DepKind = Literal["normal", "build", "dev"]


@dataclass(frozen=True)
class Dependency:
    name: str  # the package name in the registry (after `package = ...` renames)
    req: str
    kind: DepKind
    optional: bool = False
    enabled_by_default: bool = False
    key: str = ""  # the name features use for it (the table key); defaults to `name`
    default_features: bool = True
    features: tuple[str, ...] = ()

    @property
    def feature_key(self) -> str:
        return self.key or self.name


@dataclass(frozen=True)
class CrateRecord:
    name: str
    version: str
    path: Path
    description: str = ""
    keywords: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    license: str | None = None
    repository: str | None = None
    readme: str = ""
    bin_names: tuple[str, ...] = ()  # every binary target cargo builds
    tool_bins: tuple[str, ...] = ()  # those that are the crate's tools, not fixtures or helpers
    has_lib: bool = False
    dependencies: tuple[Dependency, ...] = field(default=())
    features: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def build_dependencies(self) -> tuple[Dependency, ...]:
        """What a default build of this crate needs from the registry (no dev-dependencies)."""
        return tuple(
            dep
            for dep in self.dependencies
            if dep.kind != "dev" and (not dep.optional or dep.enabled_by_default)
        )


def read_crate(path: Path) -> CrateRecord:
    """Read the crate unpacked at `path`; raises ManifestError when its Cargo.toml is unusable."""
    manifest_path = path / "Cargo.toml"
    try:
        data = read_regular(manifest_path, limit=MANIFEST_BYTES)
    except UnsafePath as exc:
        raise ManifestError(exc.message) from None
    if data is None:
        raise ManifestError(f"{manifest_path} does not exist")
    try:
        manifest = tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ManifestError(f"{manifest_path} is not valid TOML: {exc}") from None
    package = manifest.get("package")
    if not isinstance(package, dict):
        raise ManifestError(f"{manifest_path} has no [package] (a virtual workspace manifest?)")
    name, version = package.get("name"), package.get("version")
    if not isinstance(name, str) or not isinstance(version, str):
        raise ManifestError(f"{manifest_path} lacks a string package.name and package.version")
    has_lib = _has_lib(path, manifest)
    bins = _binaries(path, name, manifest, has_lib=has_lib)
    return CrateRecord(
        name=name,
        version=version,
        path=path,
        description=" ".join(_text(package.get("description")).split()),
        keywords=_strings(package.get("keywords")),
        categories=_strings(package.get("categories")),
        license=_text(package.get("license")) or None,
        repository=_text(package.get("repository")) or None,
        readme=_readme(path, package.get("readme")),
        bin_names=tuple(bin_name for bin_name, _ in bins),
        tool_bins=tuple(bin_name for bin_name, tool in bins if tool),
        has_lib=has_lib,
        dependencies=_dependencies(manifest),
        features=_features(manifest),
    )


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _strings(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(item for item in value if isinstance(item, str))


def _readme(path: Path, setting: object) -> str:
    if setting is False:
        return ""
    candidates = [setting] if isinstance(setting, str) else ["README.md", "README", "README.txt"]
    for candidate in candidates:
        readme = (path / str(candidate)).resolve()
        if not readme.is_relative_to(path.resolve()):
            continue
        try:
            data = read_regular(readme, limit=README_CHARS * 4)
        except UnsafePath:
            continue
        if data is not None:
            return data.decode("utf-8", errors="replace")[:README_CHARS]
    return ""


_NOT_A_TOOL = re.compile(r"fixture|shim|(^|[-_])(test|tests|bench|example)s?([-_]|$)")
BIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}\Z")


def _binaries(
    path: Path, package_name: str, manifest: dict[str, object], *, has_lib: bool
) -> list[tuple[str, bool]]:
    """(name, is it a tool) for every binary target, found the way cargo finds them.

    Declared `[[bin]]` targets and `src/main.rs` are tools. A library crate's auto-discovered
    `src/bin/*` is often a test helper (clap's stdio-fixture, os_pipe's cat): those count as tools
    only when named after the package. Names that say fixture, shim, test or bench never do.
    Names cargo would not accept are left out."""
    found: list[tuple[str, bool]] = []
    explicit_paths: set[str] = set()
    bins = manifest.get("bin")
    for entry in bins if isinstance(bins, list) else []:
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            found.append((entry["name"], True))
            if isinstance(entry.get("path"), str):
                explicit_paths.add(str(Path(entry["path"])))
    package = manifest.get("package")
    autobins = package.get("autobins", True) if isinstance(package, dict) else True
    if autobins is not False:
        discovered: list[tuple[str, str, bool]] = []
        if _own_file(path, "src/main.rs"):
            discovered.append((package_name, "src/main.rs", True))
        bin_dir = path / "src" / "bin"
        if _own_dir(path, "src/bin"):
            for entry in sorted(bin_dir.iterdir()):
                if entry.suffix == ".rs" and _own_file(path, f"src/bin/{entry.name}"):
                    name, relative = entry.stem, f"src/bin/{entry.name}"
                elif _own_file(path, f"src/bin/{entry.name}/main.rs"):
                    name, relative = entry.name, f"src/bin/{entry.name}/main.rs"
                else:
                    continue
                tool = not has_lib or name == package_name or name.startswith(package_name)
                discovered.append((name, relative, tool))
        names = {name for name, _ in found}
        for name, relative, tool in discovered:
            if name not in names and relative not in explicit_paths:
                found.append((name, tool))
    return [
        (name, tool and not _NOT_A_TOOL.search(name.lower()))
        for name, tool in found
        if BIN_NAME.match(name)
    ]


def _has_lib(path: Path, manifest: dict[str, object]) -> bool:
    if isinstance(manifest.get("lib"), dict):
        return True
    package = manifest.get("package")
    autolib = package.get("autolib", True) if isinstance(package, dict) else True
    return autolib is not False and _own_file(path, "src/lib.rs")


def _own_file(path: Path, relative: str) -> bool:
    """Is `relative` a file of the crate's own, reached through no symlink? A crate's tree (or
    a fork a build has written to) may point `src` at a host directory, whose listing must not
    be read."""
    return fork_files.kind(path, relative) == "file"


def _own_dir(path: Path, relative: str) -> bool:
    return fork_files.kind(path, relative) == "dir"


def _features(manifest: dict[str, object]) -> dict[str, tuple[str, ...]]:
    features = manifest.get("features")
    if not isinstance(features, dict):
        return {}
    return {
        str(name): tuple(item for item in members if isinstance(item, str))
        for name, members in features.items()
        if isinstance(members, list)
    }


def enabled_optional(features: dict[str, tuple[str, ...]], roots: list[str]) -> set[str]:
    """Keys of the optional dependencies that features `roots` turn on, transitively.

    A name that is not a feature is an optional dependency's implicit feature. `x/f` turns on x
    (the feature f of x is not followed); `x?/f` does not turn x on.
    """
    table = features
    enabled: set[str] = set()
    seen: set[str] = set()
    pending = list(roots)
    while pending:
        feature = pending.pop()
        if feature in seen:
            continue
        seen.add(feature)
        members = table.get(feature)
        if members is None:
            enabled.add(feature)  # not a feature: an optional dependency's implicit feature
            continue
        for member in members:
            if not isinstance(member, str):
                continue
            if member.startswith("dep:"):
                enabled.add(member[4:])
            elif "?/" in member:
                continue  # enables a feature of x only if x is enabled some other way
            elif "/" in member:
                enabled.add(member.split("/", 1)[0])
            else:
                pending.append(member)
    return enabled


_SECTIONS: tuple[tuple[str, DepKind], ...] = (
    ("dependencies", "normal"),
    ("build-dependencies", "build"),
    ("dev-dependencies", "dev"),
)


def _dependencies(manifest: dict[str, object]) -> tuple[Dependency, ...]:
    default_on = enabled_optional(_features(manifest), ["default"])
    tables: list[tuple[dict[str, object], DepKind]] = []
    for section, kind in _SECTIONS:
        table = manifest.get(section)
        if isinstance(table, dict):
            tables.append((table, kind))
    targets = manifest.get("target")
    for target, spec in (targets if isinstance(targets, dict) else {}).items():
        if isinstance(spec, dict) and target_applies(str(target)):
            for section, kind in _SECTIONS:
                table = spec.get(section)
                if isinstance(table, dict):
                    tables.append((table, kind))
    found: list[Dependency] = []
    for table, kind in tables:
        for key, spec in table.items():
            if isinstance(spec, str):
                found.append(Dependency(name=key, req=spec, kind=kind, key=key))
            elif isinstance(spec, dict):
                if ("path" in spec and "version" not in spec) or "git" in spec:
                    continue  # not from a registry
                package = spec.get("package")
                optional = spec.get("optional") is True
                found.append(
                    Dependency(
                        name=package if isinstance(package, str) else key,
                        req=_text(spec.get("version")) or "*",
                        kind=kind,
                        optional=optional,
                        enabled_by_default=optional and key in default_on,
                        key=key,
                        default_features=spec.get(
                            "default-features", spec.get("default_features", True)
                        )
                        is not False,
                        features=_strings(spec.get("features")),
                    )
                )
    return tuple(found)


def _host_cfg() -> dict[str, set[str]]:
    machine = platform.machine().lower()
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    return {
        "target_os": {"linux"},
        "target_family": {"unix"},
        "target_arch": {arch},
        "target_env": {"gnu"},
        "target_vendor": {"unknown"},
        "target_pointer_width": {"64"},
        "target_endian": {"little"},
        "flags": {"unix"},
    }


_CFG_TOKEN = re.compile(
    r'\s*(?:(?P<ident>[A-Za-z_][A-Za-z0-9_]*)|(?P<str>"[^"]*")|(?P<punct>[(),=]))'
)


def target_applies(target: str) -> bool:
    """Does a `[target.X]` table apply to this host? X is a triple or a `cfg(...)` expression."""
    if not target.startswith("cfg("):
        machine = platform.machine().lower()
        return target.startswith(machine) and "linux" in target
    tokens = [m.group().strip() for m in _CFG_TOKEN.finditer(target)]
    host = _host_cfg()
    position = 0

    def expression() -> bool:
        nonlocal position
        name = tokens[position]
        position += 1
        if (
            name in ("all", "any", "not", "cfg")
            and position < len(tokens)
            and tokens[position] == "("
        ):
            position += 1
            values: list[bool] = []
            while tokens[position] != ")":
                values.append(expression())
                if tokens[position] == ",":
                    position += 1
            position += 1
            if name == "not":
                return not values[0]
            if name == "any":
                return any(values)
            return all(values)  # all(...) and cfg(...)
        if position < len(tokens) and tokens[position] == "=":
            value = tokens[position + 1].strip('"')
            position += 2
            return value in host.get(name, set())
        return name in host["flags"]

    try:
        return expression()
    except IndexError:
        return False


def package_dir(root: Path, name: str | None = None) -> Path:
    """The directory of package `name` in the tree at `root`: the root itself when its Cargo.toml
    has that [package], else a member of its (virtual) workspace. Without a name, the root's own
    package, or the workspace's only member with a binary."""
    try:
        own_text = read_regular(root / "Cargo.toml", limit=MANIFEST_BYTES) or b""
        own = tomllib.loads(own_text.decode("utf-8")).get("package")
    except (OSError, UnsafePath, UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError):
        own = None
    if isinstance(own, dict) and (name is None or own.get("name") == name):
        return root
    members = []
    for manifest in sorted(root.glob("*/Cargo.toml")) + sorted(root.glob("*/*/Cargo.toml")):
        member = manifest.parent
        if any(part.is_symlink() for part in (member, member.parent) if part != root):
            continue  # a member reached through a symlink is not part of this tree
        try:
            record = read_crate(member)
        except ManifestError:
            continue
        if name is not None and record.name == name:
            return member
        if name is None and record.bin_names:
            members.append(member)
    if name is None and len(members) == 1:
        return members[0]
    raise ManifestError(
        f"{root} has no package {name!r}" if name else f"{root} has no single binary package"
    )
