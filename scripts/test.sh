#!/usr/bin/env bash
# floe's test command: installs what is missing, builds, starts one Kafka broker and one PostgreSQL
# server for the whole run, runs the Rust tests and the Python tests, stops everything.
#
#   ./scripts/test.sh                 everything
#   ./scripts/test.sh rust [ARGS...]  only `cargo test --locked ARGS...`
#   ./scripts/test.sh py [ARGS...]    only `pytest -q tests/py ARGS...`
#
# Tests find the services and the binary through these variables:
#   FLOE_TEST_KAFKA     bootstrap address, 127.0.0.1:<port>
#   FLOE_TEST_POSTGRES  postgresql://floe:floe@127.0.0.1:<port>/floe
#   FLOE_TEST_REST      http://127.0.0.1:<port> (an Iceberg REST catalog, scripts/rest-catalog.sh)
#   FLOE_TEST_KAFKA_SASL_SSL, FLOE_TEST_KAFKA_SSL   the same broker's secured listeners, and
#   FLOE_TEST_KAFKA_TLS the directory of their CA, client certificate and key (see scripts/kafka.sh)
#   FLOE_TEST_AWS       http://127.0.0.1:<port>, moto (S3, Glue, Secrets Manager), with the one key it
#                       accepts in FLOE_TEST_AWS_ACCESS_KEY_ID / FLOE_TEST_AWS_SECRET_ACCESS_KEY
#   FLOE_BIN            the floe binary ($CARGO_TARGET_DIR/debug/floe)
#   FLOE_REPO           the repository root
# CARGO_TARGET_DIR defaults to ~/.cache/floe/target (a build cache outside the clone).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
T0=$SECONDS

say() { echo "test.sh: $*" >&2; }
die() { echo "test.sh: $*" >&2; exit 1; }

suite="${1:-all}"
[[ $# -gt 0 ]] && shift
case "$suite" in
  all) [[ $# -eq 0 ]] || die "extra arguments only go with 'rust' or 'py' (got: $*)" ;;
  rust | py) ;;
  -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
  *) die "unknown suite '$suite': use rust, py or nothing (both)" ;;
esac
run_rust=false run_py=false
[[ $suite == all || $suite == rust ]] && run_rust=true
[[ $suite == all || $suite == py ]] && run_py=true

# --- what the machine needs ---------------------------------------------------------------
# shellcheck source=scripts/setup.sh
source "$REPO/scripts/setup.sh"
setup_machine --python
# Trino for tests/py/test_trino.py (the suite starts it): ~800 MB from Maven Central on the first
# run, cached after that.
if $run_py; then scripts/trino.sh fetch; fi

# --- services: started now, in the background, so they boot while cargo builds ------------------
WORK="$(mktemp -d -t floe-test.XXXXXX)"
chmod 755 "$WORK" # the PostgreSQL server runs as user postgres and must enter it
kafka_job="" pg_job="" rest_job="" moto_job="" summary="" service_logs=false

# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  # A start still in progress finishes (bounded by its own deadline) so that it can be stopped.
  if [[ -n $kafka_job ]]; then wait "$kafka_job" 2>/dev/null || true; fi
  if [[ -n $pg_job ]]; then wait "$pg_job" 2>/dev/null || true; fi
  if [[ -n $rest_job ]]; then wait "$rest_job" 2>/dev/null || true; fi
  if [[ -n $moto_job ]]; then wait "$moto_job" 2>/dev/null || true; fi
  if ((rc != 0)) && $service_logs; then
    local f
    for f in "$WORK/kafka.start.log" "$WORK/kafka/kafka.log" "$WORK/pg.start.log" "$WORK/pg/postgres.log" \
      "$WORK/rest.start.log" "$WORK/rest/server.log" "$WORK/moto.start.log" "$WORK/moto/moto.log"; do
      [[ -s $f ]] || continue
      echo "---- last lines of $f ----" >&2
      tail -n 25 "$f" >&2
    done
  fi
  scripts/kafka.sh stop "$WORK/kafka" 2>/dev/null || say "could not stop Kafka in $WORK/kafka"
  scripts/postgres.sh stop "$WORK/pg" 2>/dev/null || say "could not stop PostgreSQL in $WORK/pg"
  scripts/rest-catalog.sh stop "$WORK/rest" 2>/dev/null || say "could not stop the REST catalog in $WORK/rest"
  scripts/moto.sh stop "$WORK/moto" 2>/dev/null || say "could not stop moto in $WORK/moto"
  rm -rf "$WORK"
  if [[ -n $summary ]]; then say "$summary"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Generous: the broker boots while rustc keeps both cores busy.
FLOE_KAFKA_START_TIMEOUT="${FLOE_KAFKA_START_TIMEOUT:-180}" scripts/kafka.sh start "$WORK/kafka" >"$WORK/kafka.start.log" 2>&1 &
kafka_job=$!
scripts/postgres.sh start "$WORK/pg" >"$WORK/pg.start.log" 2>&1 &
pg_job=$!
# About 2 s once fetched (the first run downloads ~80 MB of jars from Maven Central).
scripts/rest-catalog.sh start "$WORK/rest" >"$WORK/rest.start.log" 2>&1 &
rest_job=$!
scripts/moto.sh start "$WORK/moto" >"$WORK/moto.start.log" 2>&1 &
moto_job=$!

# --- build ---------------------------------------------------------------------------------
say "cargo build --locked --bins --tests (target dir $CARGO_TARGET_DIR)"
t=$SECONDS
if ! cargo build --locked --bins --tests --quiet; then
  summary="summary: cargo build FAILED; no tests ran"
  exit 1
fi
say "build done in $((SECONDS - t)) s"
export FLOE_BIN="$CARGO_TARGET_DIR/debug/floe"
[[ -x $FLOE_BIN ]] || die "build succeeded but $FLOE_BIN is missing"
export FLOE_REPO="$REPO"

service_logs=true # from here on, a failure may be the services' doing: show their logs
wait "$kafka_job" || { kafka_job=""; die "Kafka did not start"; }
kafka_job=""
wait "$pg_job" || { pg_job=""; die "PostgreSQL did not start"; }
pg_job=""
wait "$rest_job" || { rest_job=""; die "the REST catalog did not start"; }
rest_job=""
wait "$moto_job" || { moto_job=""; die "moto did not start"; }
moto_job=""
FLOE_TEST_AWS="$(cat "$WORK/moto/endpoint")"
FLOE_TEST_AWS_ACCESS_KEY_ID="$(cat "$WORK/moto/access_key_id")"
FLOE_TEST_AWS_SECRET_ACCESS_KEY="$(cat "$WORK/moto/secret_access_key")"
export FLOE_TEST_AWS FLOE_TEST_AWS_ACCESS_KEY_ID FLOE_TEST_AWS_SECRET_ACCESS_KEY
FLOE_TEST_KAFKA="$(cat "$WORK/kafka/bootstrap")"
FLOE_TEST_KAFKA_SASL_SSL="$(cat "$WORK/kafka/bootstrap_sasl_ssl")"
FLOE_TEST_KAFKA_SSL="$(cat "$WORK/kafka/bootstrap_ssl")"
FLOE_TEST_KAFKA_TLS="$WORK/kafka/tls"
export FLOE_TEST_KAFKA_SASL_SSL FLOE_TEST_KAFKA_SSL FLOE_TEST_KAFKA_TLS
FLOE_TEST_POSTGRES="$(cat "$WORK/pg/uri")"
FLOE_TEST_REST="$(cat "$WORK/rest/uri")"
export FLOE_TEST_KAFKA FLOE_TEST_POSTGRES FLOE_TEST_REST
say "Kafka at $FLOE_TEST_KAFKA, PostgreSQL at $FLOE_TEST_POSTGRES, REST catalog at $FLOE_TEST_REST, moto at $FLOE_TEST_AWS"

# --- tests: both suites run even if the first fails -----------------------------------------
rust_status="skipped" py_status="skipped" failed=0
if $run_rust; then
  say "cargo test --locked${*:+ $*}"
  if cargo test --locked "$@"; then rust_status="passed"; else rust_status="FAILED(exit $?)"; failed=1; fi
fi
if $run_py; then
  say "pytest -q tests/py${*:+ $*}"
  # Exit 5 means no test was collected: a failure here, since tests/py always has tests.
  if "$VENV/bin/pytest" -q tests/py "$@"; then py_status="passed"; else py_status="FAILED(exit $?)"; failed=1; fi
fi

# Printed last, by cleanup (after the service logs, if something failed).
summary="summary: rust tests ${rust_status}, python tests ${py_status}; $((SECONDS - T0)) s in all"
exit "$failed"
