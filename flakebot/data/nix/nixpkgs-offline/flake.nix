{
  # An offline stand-in for nixpkgs, for machines that cannot fetch it. It offers the few
  # attributes Flakebot's generated flakes use -- lib.cleanSourceWith,
  # rustPlatform.buildRustPackage and mkShell -- built on the host's Rust toolchain instead of
  # nixpkgs' own. A generated flake builds against it with
  #   nix build --override-input nixpkgs path:<this directory> ...
  # and builds unchanged against real nixpkgs elsewhere. Flakebot renders this template into
  # FLAKEBOT_HOME/nix/nixpkgs-offline, filling in the values below.
  #
  # Dependencies come from one of two places. With a local directory registry (`registry`), the
  # build reads it as it is. With a crates.io-protocol registry (`downloads`, its `dl` template),
  # it does what nixpkgs' importCargoLock does: every registry package in Cargo.lock is fetched
  # by a fixed-output derivation, by URL and by the lock's sha256, and unpacked into a vendor
  # directory with a `.cargo-checksum.json` naming that checksum, which cargo checks again.
  description = "Offline nixpkgs stand-in: rustPlatform.buildRustPackage on the host toolchain";

  outputs = { self }:
    let
      toolchain = "@TOOLCHAIN@";
      registry = "@REGISTRY@";
      downloads = "@DOWNLOADS@";
      systems = [ "@SYSTEM@" ];

      # Lock fields reach a URL and a shell command: only well-formed ones are accepted.
      checked = p:
        if builtins.match "[A-Za-z0-9_-]+" p.name == null
          || builtins.match "[0-9A-Za-z.+-]+" p.version == null
          || builtins.match "[0-9a-f]{64}" p.checksum == null
        then throw "Cargo.lock has a malformed package entry: ${p.name or "?"}"
        else p;
      # cargo's `dl` template (Flakebot appends /{crate}/{version}/download when it has none).
      upper = [ "A" "B" "C" "D" "E" "F" "G" "H" "I" "J" "K" "L" "M" "N" "O" "P" "Q" "R" "S" "T" "U" "V" "W" "X" "Y" "Z" ];
      lower = [ "a" "b" "c" "d" "e" "f" "g" "h" "i" "j" "k" "l" "m" "n" "o" "p" "q" "r" "s" "t" "u" "v" "w" "x" "y" "z" ];
      prefixOf = n:
        let size = builtins.stringLength n; in
        if size <= 2 then toString size
        else if size == 3 then "3/${builtins.substring 0 1 n}"
        else "${builtins.substring 0 2 n}/${builtins.substring 2 2 n}";
      crateUrl = p: builtins.replaceStrings
        [ "{crate}" "{version}" "{sha256-checksum}" "{prefix}" "{lowerprefix}" ]
        [ p.name p.version p.checksum (prefixOf p.name) (builtins.replaceStrings upper lower (prefixOf p.name)) ]
        downloads;
      fetchCrate = p: derivation {
        name = "crate-${p.name}-${p.version}.tar.gz";
        builder = "builtin:fetchurl";
        system = "builtin";
        url = crateUrl p;
        urls = [ (crateUrl p) ];
        outputHashMode = "flat";
        outputHashAlgo = "sha256";
        outputHash = p.checksum;
        executable = false;
        unpack = false;
        preferLocalBuild = true;
        impureEnvVars = [ "http_proxy" "https_proxy" "ftp_proxy" "all_proxy" "no_proxy" ];
      };
      vendorLock = system: name: lockFile:
        let
          lock = builtins.fromTOML (builtins.readFile lockFile);
          fromRegistry = p: p ? source && p ? checksum
            && builtins.substring 0 9 p.source == "registry+";
          crates = map checked (builtins.filter fromRegistry (lock.package or [ ]));
          unpackOne = p: ''
            mkdir -p $out/${p.name}-${p.version}
            tar -xzf ${fetchCrate p} -C $out/${p.name}-${p.version} --strip-components=1 --no-same-owner
            printf '{"files":{},"package":"%s"}' ${p.checksum} > $out/${p.name}-${p.version}/.cargo-checksum.json
          '';
        in
        derivation {
          name = "${name}-vendor";
          inherit system;
          builder = "/bin/sh";
          args = [ "-c" ("set -e\nexport PATH=/usr/bin:/bin\nmkdir -p $out\n" + builtins.concatStringsSep "\n" (map unpackOne crates)) ];
        };

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
            dependencies =
              if downloads == "" then registry
              else if cargoLock == null then throw "a crates.io-protocol build needs cargoLock.lockFile"
              else vendorLock system "${pname}-${version}" cargoLock.lockFile;
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
                printf '[source.crates-io]\nreplace-with = "local"\n\n[source.local]\ndirectory = "%s"\n\n[net]\noffline = true\n' ${dependencies} > $CARGO_HOME/config.toml
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
