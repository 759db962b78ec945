"""The repository's shape: layering rules, and the cluster and flake files that ship with it."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import jsonschema
import ray
import yaml

from flakebot.proc import run

ROOT = Path(__file__).resolve().parent.parent
ENTRY_POINTS = {"cli.py", "driver.py", "__main__.py"}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_plain_layer_does_not_import_ray() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "flakebot").rglob("*.py")
        if path.name not in ENTRY_POINTS and "ray" in _imports(path)
    ]
    assert offenders == []


def test_messages_depend_on_nothing_but_pydantic() -> None:
    allowed = {"__future__", "datetime", "typing", "re", "posixpath", "unicodedata"}
    allowed |= {"pydantic", "messages"}
    for path in (ROOT / "messages").glob("*.py"):
        assert _imports(path) <= allowed, path.name


def test_cluster_yaml_is_a_valid_ray_cluster_config() -> None:
    schema_path = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    jsonschema.validate(config, json.loads(schema_path.read_text()))
    assert config["provider"]["type"] == "local"
    assert any("bootstrap.sh" in command for command in config["setup_commands"])
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = " ".join(config[key])
        assert "--resources=" in start and 'cargo\\": $(nproc)' in start, start
        assert "RAY_AUTH_MODE=token" in start and "disabled" not in start, start
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=$DASHBOARD_HOST" in head and "DASHBOARD_HOST=127.0.0.1" in head
    assert "GROQ_API_KEY_FILE=" in head and "GROQ_API_KEY=" not in head  # no key in the config
    assert "/root/.ray/auth_token" in config["file_mounts"]  # every node gets the token


def test_flake_nix_parses() -> None:
    done = run(["nix-instantiate", "--parse", str(ROOT / "flake.nix")], timeout=60)
    assert done.ok, done.stderr
    assert "devShells" in done.stdout and "nixpkgs" in done.stdout
