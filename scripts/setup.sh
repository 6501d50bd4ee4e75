#!/usr/bin/env bash
# Installs what building and running floe needs on a Debian machine of this kind, skipping what is
# already there: Debian packages (compiler toolchain and C libraries for librdkafka, PostgreSQL, Java
# and Maven for the local Kafka), the Kafka broker jars (Maven Central, cached in ~/.m2), and with
# `--python` the Python test venv and Chromium (the status page test). Sourced by scripts/test.sh and scripts/demo.sh, or run on its own.
#
#   scripts/setup.sh [--python]
set -euo pipefail

SETUP_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

setup_say() { echo "setup.sh: $*" >&2; }
setup_die() { echo "setup.sh: $*" >&2; exit 1; }

apt_updated=false
apt_install() { # PKG... : installs those not already installed
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  [[ $(id -u) -eq 0 ]] || setup_die "missing Debian packages: ${missing[*]} (run as root, or apt-get install -y them)"
  setup_say "installing ${missing[*]}..."
  export DEBIAN_FRONTEND=noninteractive
  local out
  out="$(mktemp)"
  if ! $apt_updated; then
    apt-get update -qq >"$out" 2>&1 || { cat "$out" >&2; setup_die "apt-get update failed"; }
    apt_updated=true
  fi
  apt-get install -y -qq "${missing[@]}" >"$out" 2>&1 || { tail -n 30 "$out" >&2; setup_die "apt-get install -y ${missing[*]} failed"; }
  rm -f "$out"
}

setup_machine() { # [--python]
  apt_install build-essential cmake pkg-config libssl-dev libsasl2-dev zlib1g-dev libcurl4-openssl-dev \
    postgresql python3-venv
  command -v java >/dev/null || apt_install openjdk-17-jre-headless
  command -v mvn >/dev/null || apt_install maven
  if ! command -v cargo >/dev/null; then
    [[ -x "$HOME/.cargo/bin/cargo" ]] && export PATH="$HOME/.cargo/bin:$PATH"
    command -v cargo >/dev/null || setup_die "cargo not found: install Rust with rustup (see Cargo.toml rust-version)"
  fi
  "$SETUP_REPO/scripts/kafka.sh" fetch
  if [[ ${1:-} == --python ]]; then
    # Headless Chromium renders the status page in tests/py/test_http.py.
    command -v chromium >/dev/null || apt_install chromium
    VENV="$("$SETUP_REPO/scripts/python-env.sh" | tail -n 1)"
    export VENV
  fi
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/floe/target}"
  mkdir -p "$CARGO_TARGET_DIR"
}

# Run directly (not sourced): set the machine up.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  setup_machine "$@"
fi
