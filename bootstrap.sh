#!/usr/bin/env bash
# Set up Flakebot on a Debian 12 machine: system packages, the Debian crate sources the demo and the
# tests use, and a virtualenv (.venv) holding the project with its test extras.
# Idempotent: on a ready machine it checks and returns in seconds. Run as root (or with sudo).
set -euo pipefail

cd "$(dirname "$0")"
ROOT=$(pwd)

# Debian packages: Nix, bubblewrap, and crate sources (they land in /usr/share/cargo/registry): the
# demo's (hexyl), the second example's (sha2), and the binary and library crates the tests use.
APT_PACKAGES=(
  nix-bin bubblewrap git ca-certificates
  librust-hexyl-dev librust-bat-dev
  librust-clap-dev librust-sha2-dev librust-csv-dev librust-base64-dev
  librust-regex-dev librust-serde-json-dev librust-anyhow-dev
  librust-crc32fast-dev librust-semver-dev librust-unicode-normalization-dev
)

step() { printf '\033[1m==> %s\033[0m\n' "$*"; }
note() { printf '    %s\n' "$*"; }
fail() {
  printf '\033[31mbootstrap failed:\033[0m %s\n' "$1" >&2
  [ $# -gt 1 ] && printf '  fix: %s\n' "$2" >&2
  exit 1
}
trap 'fail "the step above stopped at line $LINENO (exit $?)" "read the output above, fix it, and run ./bootstrap.sh again"' ERR

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else fail "installing system packages needs root" "run ./bootstrap.sh as root or install sudo"
  fi
}

command -v apt-get >/dev/null || fail "apt-get not found: this bootstrap is for Debian 12" \
  "install the packages listed in APT_PACKAGES with your system's package manager"

step "system packages"
missing=()
for package in "${APT_PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)
  [ "$status" = "install ok installed" ] || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  note "installing: ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null \
    || fail "apt-get update failed" "check the machine's apt sources and network"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "${missing[@]}" || fail "apt-get install failed for: ${missing[*]}" \
    "run apt-get install ${missing[*]} by hand to see why"
else
  note "all ${#APT_PACKAGES[@]} present"
fi
crates=$(find /usr/share/cargo/registry -mindepth 1 -maxdepth 1 -type d | wc -l)
note "crate sources in /usr/share/cargo/registry: $crates"

step "Nix build users"
# Nix run by root builds as one of these users: a builder running as root on the host could write
# /proc/sys (kernel.core_pattern: a program the kernel runs as root). Flakebot refuses to build
# as root without them.
made=0
getent group nixbld >/dev/null || as_root groupadd --system nixbld \
  || fail "could not make the group nixbld" "run: groupadd --system nixbld"
for i in $(seq 1 32); do
  if ! getent passwd "nixbld$i" >/dev/null; then
    as_root useradd --system --no-create-home --home-dir /var/empty --shell /usr/sbin/nologin \
      --gid nixbld --groups nixbld --comment "Nix build user $i" "nixbld$i" \
      || fail "could not make the build user nixbld$i" "see useradd's message above"
    made=$((made + 1))
  fi
done
members=$(getent group nixbld | cut -d: -f4 | tr ',' '\n' | grep -c . || true)
[ "$members" -gt 0 ] || fail "the group nixbld has no members" \
  "add the build users to it: usermod -a -G nixbld nixbld1 (and so on)"
note "group nixbld: $members build users ($made made now)"

step "Rust toolchain"
export PATH="$PATH:${CARGO_HOME:-$HOME/.cargo}/bin"
if ! command -v cargo >/dev/null; then
  note "no cargo on PATH or in ~/.cargo/bin: installing Debian's cargo and rustc"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends cargo rustc \
    || fail "could not install cargo" "install Rust with rustup and put ~/.cargo/bin on PATH"
fi
note "$(cargo --version), $(rustc --version)"
cargo clippy --version >/dev/null 2>&1 && note "$(cargo clippy --version)" \
  || note "clippy missing: the tester will skip lints (rustup component add clippy)"

step "Python virtualenv (.venv)"
PYTHON=${PYTHON:-python3}
command -v "$PYTHON" >/dev/null || fail "$PYTHON not found" "install Python 3.11 or newer"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || fail "$($PYTHON --version) is too old" "install Python 3.11 or newer, or set PYTHON=/path/to/python3.11"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv 2>/dev/null || {
    note "the venv module is missing: installing python3-venv"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv
    "$PYTHON" -m venv .venv
  } || fail "could not create .venv" "check that $PYTHON can run 'python -m venv'"
fi
stamp_want=$(cat pyproject.toml <(.venv/bin/python --version) | sha256sum | cut -d' ' -f1)
stamp_have=$(cat .venv/.flakebot-installed 2>/dev/null || true)
if [ "$stamp_want" != "$stamp_have" ] || ! .venv/bin/python -c 'import flakebot, ray' 2>/dev/null; then
  note "installing the project and its test extras (first time: a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip \
    || fail "pip could not upgrade itself" "check that PyPI is reachable"
  .venv/bin/python -m pip install -q -e "$ROOT[test]" \
    || fail "pip install failed" "read pip's message above; PyPI must be reachable"
  echo "$stamp_want" > .venv/.flakebot-installed
else
  note "up to date ($(.venv/bin/python --version))"
fi

trap - ERR
step "ready"
note "ready: .venv/bin/flakebot doctor checks each piece; .venv/bin/pytest runs the tests"
