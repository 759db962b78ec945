"""Settings come from the environment, with defaults, and errors that name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from flakebot.errors import ConfigError
from flakebot.settings import Settings, parse_model, parse_registry, tool_search_path


def test_defaults_follow_xdg_then_home() -> None:
    settings = Settings.from_env({"HOME": "/home/ann"})
    assert settings.home == Path("/home/ann/.local/share/flakebot")
    assert settings.registry.source == "local"
    assert settings.registry.location == "/usr/share/cargo/registry"
    assert settings.model is None and settings.groq_api_key is None
    xdg = Settings.from_env({"HOME": "/home/ann", "XDG_DATA_HOME": "/data"})
    assert xdg.home == Path("/data/flakebot")
    assert xdg.journal_path == Path("/data/flakebot/journal.sqlite")


def test_flakebot_home_wins(tmp_path: Path) -> None:
    settings = Settings.from_env({"FLAKEBOT_HOME": str(tmp_path), "XDG_DATA_HOME": "/data"})
    assert settings.home == tmp_path
    assert settings.workspaces_dir == tmp_path / "workspaces"


@pytest.mark.parametrize(
    ("text", "source", "location"),
    [
        ("local", "local", "/usr/share/cargo/registry"),
        ("local:/srv/vendor", "local", "/srv/vendor"),
        ("crates-io", "crates-io", "https://crates.io"),
        ("crates-io:http://127.0.0.1:9000/", "crates-io", "http://127.0.0.1:9000"),
    ],
)
def test_registry_forms(text: str, source: str, location: str) -> None:
    registry = parse_registry(text)
    assert (registry.source, registry.location) == (source, location)


def test_model_forms() -> None:
    assert parse_model("groq:llama-3.3-70b-versatile").name == "llama-3.3-70b-versatile"
    openai = parse_model("openai:http://127.0.0.1:8080/v1#qwen2.5-coder")
    assert (openai.url, openai.name) == ("http://127.0.0.1:8080/v1", "qwen2.5-coder")
    scripted = parse_model("scripted:examples/demo.yaml")
    assert scripted.script == Path("examples/demo.yaml")
    assert str(openai) == "openai:http://127.0.0.1:8080/v1#qwen2.5-coder"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"FLAKEBOT_REGISTRY": "pypi"}, "unknown registry 'pypi'"),
        ({"FLAKEBOT_REGISTRY": "crates-io:ftp://x"}, "must start with http"),
        ({"FLAKEBOT_MODEL": "gpt"}, "names no model"),
        ({"FLAKEBOT_MODEL": "claude:x"}, "unknown model provider 'claude'"),
        ({"FLAKEBOT_MODEL": "openai:http://x"}, "needs a URL and a model name"),
        ({"FLAKEBOT_LOG_LEVEL": "loud"}, "FLAKEBOT_LOG_LEVEL"),
        ({"FLAKEBOT_LOG_FORMAT": "xml"}, "FLAKEBOT_LOG_FORMAT"),
    ],
)
def test_bad_values_name_what_is_wrong(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"HOME": "/home/ann", **env})
    assert named in str(caught.value)


def test_api_key_is_secret() -> None:
    settings = Settings.from_env({"HOME": "/h", "GROQ_API_KEY": "gsk_abcdefghijklmnopqrstuvwxyz"})
    assert settings.groq_api_key is not None
    assert "gsk_" not in repr(settings) and "gsk_" not in settings.model_dump_json()
    assert settings.groq_api_key.get_secret_value().startswith("gsk_")


def test_tool_search_path_appends_rustup_bin_once() -> None:
    assert tool_search_path({"PATH": "/usr/bin", "HOME": "/h"}) == "/usr/bin:/h/.cargo/bin"
    assert tool_search_path({"PATH": "/c/bin:/usr/bin", "CARGO_HOME": "/c"}) == "/c/bin:/usr/bin"


def test_user_agent_names_the_contact() -> None:
    settings = Settings.from_env({"HOME": "/h", "FLAKEBOT_CONTACT": "ops@example.org"})
    assert settings.user_agent.startswith("flakebot/")
    assert settings.user_agent.endswith("(ops@example.org)")
