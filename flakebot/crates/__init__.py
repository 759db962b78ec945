"""Crates and their registries: a directory registry's search index, the crates.io API and sparse
index clients, downloads verified by checksum and unpacked safely, a crates.io-protocol mirror of a
directory registry, dependency resolution, semver, Cargo.toml reading and dev-dependency pruning."""
