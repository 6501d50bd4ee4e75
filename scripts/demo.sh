#!/usr/bin/env bash
# The local quickstart: a Kafka broker on 127.0.0.1, the seed table in the embedded SQLite catalog,
# sample records published to a topic, the loader moving them into the table, and a query showing
# the rows. Everything lives in ./floe-demo (or
# $FLOE_DEMO_DIR); the broker is stopped at the end unless --keep is given.
#
#   ./scripts/demo.sh [--keep]
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
keep=false
[[ ${1:-} == --keep ]] && keep=true

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# shellcheck source=scripts/setup.sh
source "$REPO/scripts/setup.sh"
setup_machine

say "building floe (first build takes several minutes on 2 cores)"
cargo build --locked --bin floe --quiet
FLOE="$CARGO_TARGET_DIR/debug/floe"

DEMO="$(mkdir -p "${FLOE_DEMO_DIR:-$REPO/floe-demo}" && cd "${FLOE_DEMO_DIR:-$REPO/floe-demo}" && pwd)"
# Every run starts from nothing: a broker left by an earlier --keep run is stopped, its data removed.
scripts/kafka.sh stop "$DEMO/kafka" >/dev/null 2>&1 || true
rm -rf "${DEMO:?}"/*
say "starting a local Kafka broker in $DEMO/kafka"
BOOTSTRAP="$(scripts/kafka.sh start "$DEMO/kafka" | tail -n 1)"
$keep || trap 'scripts/kafka.sh stop "$DEMO/kafka" >/dev/null 2>&1 || true' EXIT
echo "Kafka is at $BOOTSTRAP"

cat >"$DEMO/floe.toml" <<TOML
# floe demo configuration (see the README's configuration reference)
data_dir = "data"

[kafka]
"bootstrap.servers" = "$BOOTSTRAP"
"group.id" = "floe-demo"

[source]
topics = ["demo-events"]

[table]
name = "default.test_table"

[commit]
interval = "2s"
TOML
echo "wrote $DEMO/floe.toml"

say "creating the seed table from its Trino DDL"
"$FLOE" --config "$DEMO/floe.toml" table create "CREATE TABLE IF NOT EXISTS test_table (
   bool BOOLEAN, floating DOUBLE, integer BIGINT, string VARCHAR,
   bools ARRAY(BOOLEAN), floatings ARRAY(DOUBLE), integers ARRAY(BIGINT), strings ARRAY(VARCHAR),
   string_map MAP(VARCHAR, VARCHAR), nested ROW(key VARCHAR, value BIGINT),
   timestamp TIMESTAMP(6) WITH TIME ZONE)
WITH (format = 'PARQUET', partitioning = ARRAY['day(timestamp)'])"
"$FLOE" --config "$DEMO/floe.toml" table describe

say "publishing the seed record, then 1000 varied samples over the last 3 days"
"$FLOE" --config "$DEMO/floe.toml" publish-sample --partitions 4
"$FLOE" --config "$DEMO/floe.toml" publish-sample --count 1000 --first-id 2 --spread 3d

say "running the loader (floe run) until every record is in the table"
"$FLOE" --config "$DEMO/floe.toml" run >"$DEMO/run.log" 2>&1 &
loader=$!
trap 'kill -TERM $loader 2>/dev/null || true; wait $loader 2>/dev/null || true; $keep || scripts/kafka.sh stop "$DEMO/kafka" >/dev/null 2>&1 || true' EXIT
want=1001
deadline=$((SECONDS + 120))
while :; do
  have="$("$FLOE" --config "$DEMO/floe.toml" query "SELECT count(*) AS n FROM \"default\".test_table" 2>/dev/null | grep -Eo '[0-9]+' | head -n 1 || true)"
  [[ ${have:-0} -ge $want ]] && break
  ((SECONDS < deadline)) || { tail -n 20 "$DEMO/run.log"; echo "demo: the loader did not catch up within 120 s" >&2; exit 1; }
  sleep 1
done
kill -TERM "$loader"
wait "$loader" || { tail -n 20 "$DEMO/run.log"; echo "demo: the loader did not stop cleanly" >&2; exit 1; }
grep -E "batch committed" "$DEMO/run.log" | tail -n 3 | sed 's/^/  /'

say "querying the table (floe query, DataFusion over the Iceberg table)"
"$FLOE" --config "$DEMO/floe.toml" query "SELECT date_trunc('day', \"timestamp\") AS day, count(*) AS records, min(integer) AS first_id, max(integer) AS last_id FROM \"default\".test_table GROUP BY 1 ORDER BY 1"
"$FLOE" --config "$DEMO/floe.toml" query "SELECT integer, string, nested, \"timestamp\" FROM \"default\".test_table ORDER BY integer LIMIT 3"

say "done"
echo "The table is in $DEMO/data (catalog.db + warehouse/); 'floe --config $DEMO/floe.toml table describe' shows its ledger."
if $keep; then
  echo "Kafka keeps running at $BOOTSTRAP; stop it with: scripts/kafka.sh stop $DEMO/kafka"
fi
