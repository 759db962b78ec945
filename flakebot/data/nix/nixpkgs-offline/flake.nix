{
  # An offline stand-in for nixpkgs, for machines that cannot fetch it. It offers the few
  # attributes Flakebot's generated flakes use -- lib.cleanSourceWith,
  # rustPlatform.buildRustPackage and mkShell -- built on the host's Rust toolchain and a local
  # crate registry instead of nixpkgs' own. A generated flake builds against it with
  #   nix build --override-input nixpkgs path:<this directory> ...
  # and builds unchanged against real nixpkgs elsewhere. Flakebot renders this template into
  # FLAKEBOT_HOME/nix/nixpkgs-offline, filling in the paths below.
  description = "Offline nixpkgs stand-in: rustPlatform.buildRustPackage on the host toolchain";

  outputs = { self }:
    let
      toolchain = "@TOOLCHAIN@";
      registry = "@REGISTRY@";
      systems = [ "@SYSTEM@" ];

      lib = {
        cleanSourceWith = { src, filter ? (_: _: true), name ? "source" }:
          builtins.path { path = src; inherit filter name; };
        cleanSource = src: lib.cleanSourceWith { inherit src; };
      };

      forSystem = system: {
        inherit lib;

        rustPlatform.buildRustPackage =
          { pname, version, src, cargoLock ? null, buildFeatures ? [ ], buildAndTestSubdir ? ".", meta ? { }, ... }:
          let
            features = if buildFeatures == [ ] then "" else "--features ${builtins.concatStringsSep "," buildFeatures}";
            drv = derivation {
              name = "${pname}-${version}";
              inherit system src;
              builder = "/bin/sh";
              args = [ "-c" ''
                set -e
                export PATH=${toolchain}/bin:/usr/bin:/bin
                export HOME=$TMPDIR CARGO_HOME=$TMPDIR/cargo-home CARGO_TARGET_DIR=$TMPDIR/target
                mkdir -p $CARGO_HOME
                printf '[source.crates-io]\nreplace-with = "local"\n\n[source.local]\ndirectory = "%s"\n\n[net]\noffline = true\n' ${registry} > $CARGO_HOME/config.toml
                cp -r $src $TMPDIR/src
                chmod -R u+w $TMPDIR/src
                cd $TMPDIR/src
                cargo install --path ${buildAndTestSubdir} --root $out --offline --locked ${features}
                rm -f $out/.crates.toml $out/.crates2.json
              '' ];
            };
          in drv // { inherit meta pname version; };

        mkShell = { packages ? [ ], inputsFrom ? [ ], ... }:
          derivation {
            name = "flakebot-offline-shell";
            inherit system;
            builder = "/bin/sh";
            args = [ "-c" "echo ${toolchain}/bin > $out" ];
            PATH = "${toolchain}/bin:/usr/bin:/bin";
          };
      };
    in
    {
      inherit lib;
      legacyPackages = builtins.listToAttrs (map (system: { name = system; value = forSystem system; }) systems);
    };
}
