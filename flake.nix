{
  description = "Flakebot: agents ask for a tool; Flakebot forks a Rust crate, proves it and deploys it as a flake";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.05";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      # `nix develop`: everything ./bootstrap.sh installs with apt, from nixpkgs instead.
      # Crate sources then come from crates.io or FLAKEBOT_REGISTRY=local:DIR.
      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = [
            pkgs.python311
            pkgs.cargo
            pkgs.rustc
            pkgs.clippy
            pkgs.bubblewrap
            pkgs.git
            pkgs.nix
          ];
          shellHook = ''
            if [ ! -x .venv/bin/python ]; then
              python -m venv .venv && .venv/bin/pip install -q -e '.[test]'
            fi
            export PATH="$PWD/.venv/bin:$PATH"
          '';
        };
      });
    };
}
