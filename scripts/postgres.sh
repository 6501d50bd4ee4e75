#!/usr/bin/env bash
# A throwaway PostgreSQL server for tests, from Debian's packages. It never touches the system
# cluster: its own data dir, a free port on 127.0.0.1, and its unix socket in DIR.
#
#   scripts/postgres.sh start DIR [PORT]
#                                   initdb (first time) + start on PORT (default: a free port); prints
#                                   postgresql://floe:floe@127.0.0.1:<port>/floe (also written to DIR/uri).
#                                   Started again with the same DIR and PORT after `stop`, it serves
#                                   the same databases at the same address (an outage and a recovery)
#   scripts/postgres.sh stop DIR    stop it (fast shutdown)
#
# As root, the server runs as the `postgres` OS user (initdb refuses root), so DIR is chowned to it and
# every parent directory of DIR must be traversable by that user.
set -euo pipefail

START_TIMEOUT="${FLOE_PG_START_TIMEOUT:-60}"

die() { echo "postgres.sh: $*" >&2; exit 1; }
log() { echo "postgres.sh: $*" >&2; }

find_pgbin() {
  local d
  # Newest major version first.
  for d in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V -r); do
    [[ -x "$d/initdb" && -x "$d/pg_ctl" ]] && { echo "$d"; return 0; }
  done
  return 1
}

ensure_installed() {
  if ! PGBIN="$(find_pgbin)"; then
    [[ $(id -u) -eq 0 ]] || die "PostgreSQL server binaries not found and not root: apt-get install -y postgresql"
    log "installing PostgreSQL (apt-get install -y postgresql)..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null || die "apt-get update failed"
    apt-get install -y -qq postgresql >/dev/null || die "apt-get install -y postgresql failed"
    PGBIN="$(find_pgbin)" || die "postgresql installed but no /usr/lib/postgresql/*/bin/initdb"
  fi
}

# Run a server-side command as the user that owns the cluster.
as_owner() {
  if [[ $(id -u) -eq 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

running() { # DIR -> true if the server of DIR/pgdata is up
  [[ -f "$1/pgdata/postmaster.pid" ]] && as_owner "$PGBIN/pg_ctl" -D "$1/pgdata" status >/dev/null 2>&1
}

start() {
  local dir="$1" port="${2:-}"
  [[ -z $port || $port =~ ^[0-9]+$ ]] || die "PORT must be a number, got '$port'"
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  ensure_installed

  if running "$dir" && [[ -f "$dir/uri" ]]; then
    log "server already running in $dir"
    cat "$dir/uri"
    return 0
  fi
  rm -f "$dir/uri"

  if [[ $(id -u) -eq 0 ]]; then
    id postgres >/dev/null 2>&1 || die "no 'postgres' OS user (it comes with the postgresql package)"
    chown postgres:postgres "$dir"
    runuser -u postgres -- test -w "$dir" -a -x "$dir" ||
      die "user postgres cannot enter $dir: make its parent directories traversable (chmod o+x) or use another DIR"
  fi
  # The socket path has a 107-byte limit.
  ((${#dir} < 90)) || die "DIR path too long for a unix socket ($dir): use a shorter one"

  if [[ ! -f "$dir/pgdata/PG_VERSION" ]]; then
    rm -rf "$dir/pgdata"
    if ! as_owner "$PGBIN/initdb" -D "$dir/pgdata" -U postgres --auth=trust -E UTF8 --no-locale --no-sync \
        >"$dir/initdb.log" 2>&1; then
      cat "$dir/initdb.log" >&2
      die "initdb failed"
    fi
    # Throwaway server: trade durability for speed. Port and socket live in floe.conf, rewritten on
    # every start (a restart may need a new free port).
    cat >>"$dir/pgdata/postgresql.conf" <<'EOF'

# floe scripts/postgres.sh
listen_addresses = '127.0.0.1'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
include_if_exists = 'floe.conf'
EOF
  fi

  [[ -n $port ]] || port="$(free_port)"
  as_owner tee "$dir/pgdata/floe.conf" >/dev/null <<EOF
port = $port
unix_socket_directories = '$dir'
EOF

  if ! as_owner "$PGBIN/pg_ctl" -D "$dir/pgdata" -l "$dir/postgres.log" -W start >/dev/null 2>&1; then
    tail -n 30 "$dir/postgres.log" >&2 || true
    die "pg_ctl start failed (log: $dir/postgres.log)"
  fi

  local deadline=$((SECONDS + START_TIMEOUT))
  until "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$port" -d postgres -U postgres; do
    if ((SECONDS >= deadline)); then
      tail -n 30 "$dir/postgres.log" >&2 || true
      stop "$dir" || true
      die "server not ready after ${START_TIMEOUT}s (log: $dir/postgres.log)"
    fi
    sleep 0.2
  done

  # Role and database `floe` (idempotent: a restart of the same DIR finds them).
  local psql=("$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d postgres)
  "${psql[@]}" >/dev/null <<'EOF' || die "creating role floe failed"
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'floe') THEN
    CREATE ROLE floe LOGIN PASSWORD 'floe';
  END IF;
END $$;
EOF
  if [[ -z "$("${psql[@]}" -tA -c "SELECT 1 FROM pg_database WHERE datname = 'floe'")" ]]; then
    "${psql[@]}" -c 'CREATE DATABASE floe OWNER floe' >/dev/null || die "creating database floe failed"
  fi

  local uri="postgresql://floe:floe@127.0.0.1:$port/floe"
  echo "$uri" >"$dir/uri"
  log "server up in $dir (port $port, log $dir/postgres.log)"
  echo "$uri"
}

stop() {
  local dir="$1"
  ensure_installed
  if [[ ! -d "$dir/pgdata" ]] || ! running "$dir"; then
    log "no server running in $dir"
    return 0
  fi
  as_owner "$PGBIN/pg_ctl" -D "$dir/pgdata" stop -m fast -w -t 60 >/dev/null ||
    die "pg_ctl stop failed (log: $dir/postgres.log)"
  rm -f "$dir/uri"
  log "server in $dir stopped"
}

usage() {
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2
  exit 2
}

case "${1:-}" in
  start) [[ $# -eq 2 || $# -eq 3 ]] || usage; start "$2" "${3:-}" ;;
  stop) [[ $# -eq 2 ]] || usage; stop "$2" ;;
  *) usage ;;
esac
