"""Settings, read once from the environment (or a mapping, in tests) and validated.

FLAKEBOT_HOME        journal, workspaces, GC roots, index ($XDG_DATA_HOME/flakebot or
                     ~/.local/share/flakebot)
FLAKEBOT_REGISTRY    local | local:DIR | crates-io | crates-io:URL (local:/usr/share/cargo/registry)
FLAKEBOT_MODEL       groq:NAME | openai:URL#NAME | scripted:FILE (unset: structured specs only)
GROQ_API_KEY         the key for groq: models; never logged, sandboxed or written to a manifest
GROQ_API_KEY_FILE    a file holding that key (when GROQ_API_KEY is unset)
GROQ_BASE_URL        Groq's API, or a gateway speaking it (https://api.groq.com)
FLAKEBOT_CONTACT     the contact in the crates.io User-Agent
FLAKEBOT_LOG_LEVEL   debug | info | warning | error (info)
FLAKEBOT_LOG_FORMAT  auto | json | console (auto: console on a terminal, else JSON)
FLAKEBOT_LEASE_TTL   seconds a run's resources live before `flakebot clean --expired` (86400)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError

from flakebot import redact
from flakebot.errors import ConfigError
from messages import RegistryRef

DEBIAN_REGISTRY = "/usr/share/cargo/registry"
CRATES_IO_API = "https://crates.io"
PROJECT_URL = "https://github.com/flakebot/flakebot"

LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["auto", "json", "console"]


class ModelRef(BaseModel):
    """Which model answers: a Groq model, an OpenAI-compatible endpoint, or a scripted model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    provider: Literal["groq", "openai", "scripted"]
    name: str | None = None
    url: str | None = None
    script: Path | None = None

    def __str__(self) -> str:
        if self.provider == "groq":
            return f"groq:{self.name}"
        if self.provider == "openai":
            return f"openai:{self.url}#{self.name}"
        return f"scripted:{self.script}"


def parse_model(text: str) -> ModelRef:
    """Read `groq:NAME`, `openai:URL#NAME` or `scripted:FILE`."""
    provider, sep, rest = text.partition(":")
    usage = "use groq:NAME, openai:URL#NAME or scripted:FILE"
    if not sep or not rest:
        raise ConfigError(f"model {text!r} names no model", hint=usage)
    if provider == "groq":
        return ModelRef(provider="groq", name=rest)
    if provider == "openai":
        url, hash_sign, name = rest.rpartition("#")
        if not hash_sign or not url or not name:
            raise ConfigError(f"model {text!r} needs a URL and a model name", hint=usage)
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"model URL {url!r} must start with http:// or https://", hint=usage)
        return ModelRef(provider="openai", url=url, name=name)
    if provider == "scripted":
        return ModelRef(provider="scripted", script=Path(rest).expanduser())
    raise ConfigError(f"unknown model provider {provider!r} in {text!r}", hint=usage)


def parse_registry(text: str) -> RegistryRef:
    """Read `local`, `local:DIR`, `crates-io` or `crates-io:URL`."""
    source, sep, rest = text.partition(":")
    usage = "use local, local:DIR, crates-io or crates-io:URL"
    if source == "local":
        directory = rest if sep and rest else DEBIAN_REGISTRY
        return RegistryRef(source="local", location=str(Path(directory).expanduser()))
    if source == "crates-io":
        url = rest if sep and rest else CRATES_IO_API
        if not url.startswith(("http://", "https://")):
            raise ConfigError(
                f"crates.io URL {url!r} must start with http:// or https://", hint=usage
            )
        return RegistryRef(source="crates-io", location=url.rstrip("/"))
    raise ConfigError(f"unknown registry {text!r}", hint=usage)


def tool_search_path(env: Mapping[str, str] | None = None) -> str:
    """Where to look for cargo, nix and bwrap: PATH, then rustup's bin dir if PATH lacks it."""
    env = os.environ if env is None else env
    entries = [entry for entry in env.get("PATH", "").split(os.pathsep) if entry]
    cargo_home = env.get("CARGO_HOME") or str(Path(env.get("HOME") or Path.home()) / ".cargo")
    rustup_bin = str(Path(cargo_home) / "bin")
    if rustup_bin not in entries:
        entries.append(rustup_bin)
    return os.pathsep.join(entries)


def _default_home(env: Mapping[str, str]) -> Path:
    xdg = env.get("XDG_DATA_HOME")
    if xdg:
        return Path(xdg) / "flakebot"
    home = env.get("HOME") or str(Path.home())
    return Path(home) / ".local" / "share" / "flakebot"


_ENV_NAMES = {
    "home": "FLAKEBOT_HOME",
    "contact": "FLAKEBOT_CONTACT",
    "log_level": "FLAKEBOT_LOG_LEVEL",
    "log_format": "FLAKEBOT_LOG_FORMAT",
    "lease_ttl": "FLAKEBOT_LEASE_TTL",
}


class Settings(BaseModel):
    """Validated settings; build with `Settings.from_env()`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    home: Path
    registry: RegistryRef
    model: ModelRef | None = None
    groq_api_key: SecretStr | None = None
    groq_base_url: str | None = None
    contact: str = PROJECT_URL
    log_level: LogLevel = "info"
    log_format: LogFormat = "auto"
    lease_ttl: float = 24 * 3600.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        home_text = env.get("FLAKEBOT_HOME", "").strip()
        home = Path(home_text).expanduser() if home_text else _default_home(env)
        model_text = env.get("FLAKEBOT_MODEL", "").strip()
        key = env.get("GROQ_API_KEY", "").strip() or _read_key(env.get("GROQ_API_KEY_FILE", ""))
        if key:
            redact.register(key)  # masked in every log, error, journal and transcript from now on
        raw = {
            "home": home.absolute(),
            "registry": parse_registry(env.get("FLAKEBOT_REGISTRY", "").strip() or "local"),
            "model": parse_model(model_text) if model_text else None,
            "groq_api_key": SecretStr(key) if key else None,
            "groq_base_url": env.get("GROQ_BASE_URL", "").strip() or None,
            "contact": env.get("FLAKEBOT_CONTACT", "").strip() or PROJECT_URL,
            "log_level": env.get("FLAKEBOT_LOG_LEVEL", "").strip().lower() or "info",
            "log_format": env.get("FLAKEBOT_LOG_FORMAT", "").strip().lower() or "auto",
            "lease_ttl": env.get("FLAKEBOT_LEASE_TTL", "").strip() or 24 * 3600.0,
        }
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(
                f"{_ENV_NAMES.get(str(error['loc'][0]), error['loc'][0])}: {error['msg']}"
                for error in exc.errors()
            )
            raise ConfigError(f"invalid setting: {problems}") from None

    @property
    def journal_path(self) -> Path:
        return self.home / "journal.sqlite"

    @property
    def workspaces_dir(self) -> Path:
        return self.home / "workspaces"

    @property
    def gcroots_dir(self) -> Path:
        return self.home / "gcroots"

    @property
    def index_dir(self) -> Path:
        return self.home / "index"

    @property
    def user_agent(self) -> str:
        from flakebot import __version__

        return f"flakebot/{__version__} ({self.contact})"


def _read_key(path: str) -> str:
    """The key in the file GROQ_API_KEY_FILE names ('' when unset); a ConfigError if unreadable."""
    if not path.strip():
        return ""
    try:
        return Path(path.strip()).expanduser().read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"GROQ_API_KEY_FILE {path.strip()} cannot be read: {getattr(exc, 'strerror', exc)}",
            hint="point it at a file holding only the key, readable by you",
        ) from None
