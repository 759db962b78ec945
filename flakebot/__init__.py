"""Flakebot: agents ask for a tool; Flakebot forks a Rust crate, proves it at compile time, deploys
it as a Nix flake and hands back a manifest. This package is plain Python, testable without Ray."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("flakebot")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"
