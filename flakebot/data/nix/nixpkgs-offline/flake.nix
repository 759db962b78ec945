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
  #
  # buildRustPackage builds in two derivations, as crane's buildDepsOnly does. The first,
  # `flakebotDeps` on the package, sees only the manifests cargo loads (the package's Cargo.toml,
  # its workspace's and its path dependencies', and Cargo.lock), chosen when the flake is
  # evaluated, so its store path stays the same when the crate's own sources change. It writes
  # an empty file for each target those manifests name or cargo would find (a lib, bins, a build
  # script, declared tests, benches and examples), runs the final build's cargo command on them,
  # and keeps the target dir as a tar archive (which keeps its mtimes: a copy in the store gets
  # mtime 1, and cargo would rerun build scripts). The package unpacks it before
  # `cargo install`, so only the crate itself compiles there. A dependencies-only build that
  # fails keeps what it built; the package compiles the rest.
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
        # As nixpkgs' does: the store path, and the original source and filter it came from.
        cleanSourceWith = { src, filter ? (_: _: true), name ? "source" }:
          let
            origSrc = src.origSrc or src;
            both = if src ? filter then (path: type: src.filter path type && filter path type) else filter;
          in {
            inherit origSrc name;
            filter = both;
            outPath = builtins.path { path = origSrc; filter = both; inherit name; };
          };
        cleanSource = src: lib.cleanSourceWith { inherit src; };
      };

      # Reading the manifests when the flake is evaluated. Paths come from the fork's Cargo.toml
      # files: only plain relative ones that stay inside the source are used.
      strings = v: if builtins.isList v then builtins.filter builtins.isString v else [ ];
      listOf = v: if builtins.isList v then v else [ ];
      attrsOf = v: if builtins.isAttrs v then v else { };
      namesOf = type: entries: builtins.filter (name: entries.${name} == type) (builtins.attrNames entries);
      initOf = l: builtins.genList (builtins.elemAt l) (builtins.length l - 1);
      plain = p: builtins.match "[A-Za-z0-9_.+@=-]+(/[A-Za-z0-9_.+@=-]+)*" p != null;
      normalize = p:
        let
          parts = builtins.filter (s: builtins.isString s && s != "" && s != ".") (builtins.split "/" p);
          step = kept: part:
            if kept == null then null
            else if part == ".." then (if kept == [ ] then null else initOf kept)
            else kept ++ [ part ];
          kept = builtins.foldl' step [ ] parts;
        in
        if builtins.substring 0 1 p == "/" || kept == null then null
        else if kept == [ ] then "." else builtins.concatStringsSep "/" kept;
      # `rel`, relative to the directory `dir` (both relative to the source), or null.
      within = dir: rel:
        let joined = if builtins.isString rel then normalize (if dir == "." then rel else "${dir}/${rel}") else null;
        in if joined != null && plain joined then joined else null;
      ancestors = dir:
        let parts = builtins.filter builtins.isString (builtins.split "/" dir);
        in if dir == "." then [ ] else
          builtins.genList (n: builtins.concatStringsSep "/" (builtins.genList (builtins.elemAt parts) n)) (builtins.length parts);

      # The manifests cargo loads to build the package in `subdir` of `root`: the package's,
      # those of the directories above it, its workspace's members and every path dependency.
      manifestDirs = root: subdir:
        let
          has = dir: dir != null && builtins.pathExists (root + "/${dir}/Cargo.toml");
          read = dir: builtins.fromTOML (builtins.readFile (root + "/${dir}/Cargo.toml"));
          tables = m: [ m.dependencies or { } m.dev-dependencies or { } m.build-dependencies or { } ]
            ++ builtins.concatMap (t: [ (attrsOf t).dependencies or { } (attrsOf t).dev-dependencies or { } (attrsOf t).build-dependencies or { } ])
              (builtins.attrValues (attrsOf (m.target or { })))
            ++ builtins.attrValues (attrsOf (m.patch or { }));
          pathDeps = dir: m: builtins.concatMap
            (table: builtins.concatMap (d: if builtins.isAttrs d && d ? path then [ (within dir d.path) ] else [ ])
              (builtins.attrValues (attrsOf table)))
            (tables m);
          globbed = dir: pattern:
            let prefix = builtins.match "(.*)/[*]" pattern;
                base = if pattern == "*" then dir else if prefix == null then null else within dir (builtins.head prefix);
            in
            if pattern != "*" && prefix == null then [ (within dir pattern) ]
            else if base == null || !builtins.pathExists (root + "/${base}") then [ ]
            else map (within base) (namesOf "directory" (builtins.readDir (root + "/${base}")));
          members = dir: m:
            let
              workspace = attrsOf (m.workspace or { });
              excluded = map (within dir) (strings (workspace.exclude or [ ]));
            in
            builtins.filter (d: !(builtins.elem d excluded))
              (builtins.concatMap (globbed dir) (strings (workspace.members or [ ])));
          next = dir: let m = read dir; in builtins.filter has (pathDeps dir m ++ members dir m);
          start = builtins.filter has (ancestors subdir ++ [ subdir ]);
        in
        map (item: item.key) (builtins.genericClosure {
          startSet = map (dir: { key = dir; }) start;
          operator = item: map (dir: { key = dir; }) (next item.key);
        });

      # The source files to stand in for each package's targets, and its name:
      # [ libs mains [ name ] ] (relative paths).
      dummiesOf = root: dir:
        let
          m = builtins.fromTOML (builtins.readFile (root + "/${dir}/Cargo.toml"));
          package = attrsOf (m.package or { });
          at = within dir;
          exists = rel: rel != null && builtins.pathExists (root + "/${rel}");
          found = builtins.filter exists;
          named = sub: name: found [ (at "${sub}/${name}.rs") (at "${sub}/${name}/main.rs") ];
          declared = key: sub: builtins.concatMap
            (target: let t = attrsOf target; in
              if builtins.isString (t.path or null) then [ (at t.path) ]
              else if builtins.isString (t.name or null) then named sub t.name ++ (if key == "bin" then found [ (at "src/main.rs") ] else [ ])
              else [ ])
            (listOf (m.${key} or [ ]));
          binDir = at "src/bin";
          autoBins = if (package.autobins or true) == false then [ ] else
            found [ (at "src/main.rs") ] ++ (if !(exists binDir) then [ ] else
              builtins.concatMap (name: found [ (within binDir "${name}/main.rs") ])
                (namesOf "directory" entries)
              ++ map (within binDir) (builtins.filter (name: builtins.match ".*[.]rs" name != null)
                (namesOf "regular" entries)));
          entries = builtins.readDir (root + "/${binDir}");
          lib = let l = attrsOf (m.lib or { }); in
            if builtins.isString (l.path or null) then [ (at l.path) ] else found [ (at "src/lib.rs") ];
          build = if builtins.isString (package.build or null) then [ (at package.build) ]
            else if (package.build or true) == false then [ ] else found [ (at "build.rs") ];
          present = builtins.filter (p: p != null);
          name = if builtins.isString (package.name or null) && builtins.match "[A-Za-z0-9_-]+" package.name != null then [ package.name ] else [ ];
        in
        if !(m ? package) then [ [ ] [ ] [ ] ] else [
          (present lib)
          (present (autoBins ++ declared "bin" "src/bin" ++ build ++ declared "test" "tests"
            ++ declared "bench" "benches" ++ declared "example" "examples"))
          name
        ];

      # The settings both builds share: the toolchain, cargo's home and registry, the source.
      prelude = dependencies: ''
        set -e
        export PATH=${toolchain}/bin:/usr/bin:/bin
        export HOME=$TMPDIR CARGO_HOME=$TMPDIR/cargo-home CARGO_TARGET_DIR=$TMPDIR/target
        mkdir -p $CARGO_HOME
        printf '[source.crates-io]\nreplace-with = "local"\n\n[source.local]\ndirectory = "%s"\n\n[net]\noffline = true\n' ${dependencies} > $CARGO_HOME/config.toml
        cp -r $src $TMPDIR/src
        chmod -R u+w $TMPDIR/src
        cd $TMPDIR/src
      '';

      depsOf = { system, name, src, dependencies, subdir, features }:
        let
          root = src.origSrc or src;
          dirs = manifestDirs root subdir;
          prefix = toString root + "/";
          relative = path: builtins.substring (builtins.stringLength prefix) (-1) path;
          needed = path: type:
            let rel = relative path; in
            if type == "directory" then builtins.any (dir: dir == rel || builtins.substring 0 (builtins.stringLength rel + 1) dir == "${rel}/") dirs
            else type == "regular" && builtins.elem (baseNameOf path) [ "Cargo.toml" "Cargo.lock" ]
              && builtins.elem (dirOf rel) dirs;
          filter = if src ? filter then (path: type: src.filter path type && needed path type) else needed;
          dummies = map (dummiesOf root) dirs;
        in
        {
          # The packages whose targets stand in: the package build compiles them anew.
          packages = builtins.concatStringsSep " " (builtins.concatMap (d: builtins.elemAt d 2) dummies);
          drv = derivation {
            name = "${name}-deps";
            inherit system subdir;
            src = builtins.path { path = root; name = "source"; inherit filter; };
            libs = builtins.concatStringsSep "\n" (builtins.concatMap builtins.head dummies);
            mains = builtins.concatStringsSep "\n" (builtins.concatMap (d: builtins.elemAt d 1) dummies);
            builder = "/bin/sh";
            args = [ "-c" (prelude dependencies + ''
              printf '%s\n' "$libs" | while IFS= read -r file; do
                [ -n "$file" ] || continue
                mkdir -p "$(dirname "$file")" && printf '#![allow(warnings)]\n' > "$file" || :
              done
              printf '%s\n' "$mains" | while IFS= read -r file; do
                [ -n "$file" ] || continue
                mkdir -p "$(dirname "$file")" && printf '#![allow(warnings)]\nfn main() {}\n' > "$file" || :
              done
              mkdir -p $CARGO_TARGET_DIR $out
              cargo build --release --offline --locked --manifest-path "$subdir/Cargo.toml" ${features} \
                || echo "flakebot: the dependencies-only build failed; the package builds the rest" >&2
              tar -cf $out/target.tar -C $TMPDIR target
            '') ];
          };
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
            splits = builtins.isPath (src.origSrc or src);
            deps = depsOf {
              inherit system src dependencies features;
              name = "${pname}-${version}";
              subdir = buildAndTestSubdir;
            };
            drv = derivation ({
              name = "${pname}-${version}";
              inherit system src;
              builder = "/bin/sh";
              args = [ "-c" (prelude dependencies + ''
                if [ -n "$deps" ]; then
                  tar -xf "$deps/target.tar" -C $TMPDIR --no-same-owner
                  for package in $packages; do  # their own stand-ins never count as built
                    rm -rf $CARGO_TARGET_DIR/release/.fingerprint/$package-*
                  done
                fi
                cargo install --path ${buildAndTestSubdir} --root $out --offline --locked ${features}
                rm -f $out/.crates.toml $out/.crates2.json
              '') ];
            } // (if splits then { deps = deps.drv; inherit (deps) packages; } else { }));
          in drv // { inherit meta pname version; } // (if splits then { flakebotDeps = deps.drv; } else { });

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
