"""The flake.nix written into a fork: nixpkgs' standard `rustPlatform.buildRustPackage` form.

It takes `nixpkgs` as an input, so it builds unchanged on a machine with real nixpkgs; here the
deployer overrides that input with the offline stand-in (flakebot/data/nix/nixpkgs-offline). The
source is filtered to what cargo needs: the fork's `.cargo/` (local-registry config), git and
Nix files and build output are left out, so they cannot change the hash, and a git flake ignores
untracked files already.
"""

from __future__ import annotations

from pathlib import Path

from flakebot import fork_files
from flakebot.nix import current_system

TEMPLATE = """{
  description = "@DESCRIPTION@";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.05";

  outputs = { self, nixpkgs }:
    let
      systems = [ "@SYSTEM@" ];
      forAllSystems = f:
        builtins.listToAttrs (map (system: { name = system; value = f system; }) systems);
      excluded = [ ".cargo" ".git" "target" "result" "flake.nix" "flake.lock" ];
      package = system:
        let pkgs = nixpkgs.legacyPackages.${system};
        in pkgs.rustPlatform.buildRustPackage {
          pname = "@PNAME@";
          version = "@VERSION@";
          src = pkgs.lib.cleanSourceWith {
            src = ./.;
            filter = path: type: !(builtins.elem (baseNameOf path) excluded);
          };
          cargoLock.lockFile = ./Cargo.lock;@SUBDIR@
          doCheck = false; # flakebot's tester ran cargo test in its sandbox before deploying
          meta.mainProgram = "@BIN@";
          meta.description = "@DESCRIPTION@";
        };
    in
    {
      packages = forAllSystems (system: { default = package system; });
      apps = forAllSystems (system: {
        default = { type = "app"; program = "${package system}/bin/@BIN@"; };
      });
      devShells = forAllSystems (system: {
        default = nixpkgs.legacyPackages.${system}.mkShell { inputsFrom = [ (package system) ]; };
      });
    };
}
"""


def nix_string(text: str) -> str:
    """`text` made safe inside a Nix double-quoted string."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${").replace("\n", " ")


def render_flake(
    *, pname: str, version: str, bin_name: str, description: str, subdir: str = "."
) -> str:
    values = {
        "@SUBDIR@": ""
        if subdir in ("", ".")
        else f'\n          buildAndTestSubdir = "{nix_string(subdir)}";',
        "@DESCRIPTION@": nix_string(description),
        "@SYSTEM@": current_system(),
        "@PNAME@": nix_string(pname),
        "@VERSION@": nix_string(version),
        "@BIN@": nix_string(bin_name),
    }
    text = TEMPLATE
    for key, value in values.items():
        text = text.replace(key, value)
    return text


def write_flake(root: Path, **fields: str) -> bool:
    """Write flake.nix into the fork (never through a symlink); returns whether it changed."""
    text = render_flake(**fields)
    present = fork_files.kind(root, "flake.nix") == "file"
    if present and fork_files.read_text(root, "flake.nix") == text:
        return False
    fork_files.write_text(root, "flake.nix", text)
    return True
