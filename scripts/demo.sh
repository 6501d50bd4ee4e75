#!/usr/bin/env bash
# The local quickstart: a Kafka broker on 127.0.0.1, the seed table in the embedded SQLite catalog,
# sample records published to a topic, and what landed. Everything lives in ./floe-demo (or
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

say "done"
echo "The table is in $DEMO/data (catalog.db + warehouse/); the records wait in topic demo-events."
$keep && echo "Kafka keeps running at $BOOTSTRAP; stop it with: scripts/kafka.sh stop $DEMO/kafka"
