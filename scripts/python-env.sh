#!/usr/bin/env bash
# Creates (if missing) the Python venv used by floe's tests and installs tests/py/requirements.txt into
# it. The pip call is skipped while requirements.txt is unchanged since the last successful install
# (hash stamp inside the venv). Prints the venv path as the last stdout line.
#
#   scripts/python-env.sh            venv at ${FLOE_VENV:-$HOME/.cache/floe/venv}
set -euo pipefail

die() { echo "python-env.sh: $*" >&2; exit 1; }
log() { echo "python-env.sh: $*" >&2; }

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REQ="$REPO/tests/py/requirements.txt"
VENV="${FLOE_VENV:-$HOME/.cache/floe/venv}"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.floe-requirements.sha256"

[[ -f "$REQ" ]] || die "missing $REQ"
command -v "$PYTHON" >/dev/null || die "'$PYTHON' not found: install Python 3.10+ (apt-get install -y python3 python3-venv)"

if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
    # Debian's python3 needs python3-venv for ensurepip.
    if [[ $(id -u) -eq 0 ]] && [[ "$(command -v "$PYTHON")" == /usr/bin/* ]]; then
      log "installing python3-venv..."
      export DEBIAN_FRONTEND=noninteractive
      if ! { apt-get update -qq >/dev/null && apt-get install -y -qq python3-venv >/dev/null; }; then
        die "apt-get install -y python3-venv failed"
      fi
      rm -rf "$VENV"
      "$PYTHON" -m venv "$VENV" || die "could not create a venv at $VENV"
    else
      die "'$PYTHON -m venv $VENV' failed (missing venv/ensurepip support?)"
    fi
  fi
  log "created venv $VENV ($("$VENV/bin/python" --version))"
fi

want="$(cat "$REQ" <("$VENV/bin/python" --version) | sha256sum | cut -d' ' -f1)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
  echo "$VENV"
  exit 0
fi

log "installing $REQ into $VENV..."
rm -f "$STAMP"
pip_log="$VENV/pip-install.log"
if ! "$VENV/bin/python" -m pip install --disable-pip-version-check -q -r "$REQ" >"$pip_log" 2>&1; then
  tail -n 30 "$pip_log" >&2
  die "pip install -r $REQ failed (log: $pip_log)"
fi
echo "$want" >"$STAMP"
log "venv ready"
echo "$VENV"
