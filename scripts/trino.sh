#!/usr/bin/env bash
# A throwaway single-node Trino (coordinator that also runs the work) on 127.0.0.1 with the Iceberg
# connector, for the interoperability tests and for trying floe's tables by hand. The server and
# the CLI come from Maven Central through mvn (io.trino:trino-server tar.gz, io.trino:trino-cli
# executable jar), cached in ~/.m2 and unpacked once under ~/.cache/floe/trino-<version>.
#
#   scripts/trino.sh fetch              download and unpack (no-op when already there)
#   scripts/trino.sh start DIR [--catalog NAME=URI,FLOE_CATALOG,WAREHOUSE]...
#                                       start a server in DIR; prints http://127.0.0.1:<port>
#                                       (also in DIR/uri). Each --catalog adds a Trino catalog NAME
#                                       on floe's JDBC catalog: URI as in floe's [catalog] uri
#                                       (postgresql://user:password@host:port/db, or sqlite:<path>),
#                                       FLOE_CATALOG floe's [catalog] name, WAREHOUSE its warehouse
#                                       directory. More can be added at run time with CREATE CATALOG
#                                       (the server runs with dynamic catalog management).
#   scripts/trino.sh stop DIR           stop the server started in DIR
#   scripts/trino.sh cli DIR SQL...     run SQL through the Trino CLI against that server
#   scripts/trino.sh catalog-properties URI FLOE_CATALOG WAREHOUSE
#                                       print the Iceberg catalog properties for floe's catalog
#   scripts/trino.sh version            print the Trino version this script uses
#
# Trino 476 is the newest trino-server served; it needs Java 24 or newer, which it takes from
# FLOE_TRINO_JAVA_HOME, else /usr/lib/jvm/temurin-25-jdk-amd64, else the newest JDK >= 24 in
# /usr/lib/jvm (only Trino's processes see that JAVA_HOME). Only the Iceberg plugin is kept: the
# server loads every plugin directory at startup, and the other 60-odd cost time and memory.
set -euo pipefail

TRINO_VERSION="${FLOE_TRINO_VERSION:-476}"
TRINO_MIN_JAVA=24
CACHE="${FLOE_CACHE:-$HOME/.cache/floe}/trino-$TRINO_VERSION"
CLI_JAR="$CACHE/trino-cli-$TRINO_VERSION-executable.jar"
M2_REPO="${FLOE_M2_REPO:-$HOME/.m2/repository}"
HEAP="${FLOE_TRINO_HEAP:-2G}"
START_TIMEOUT="${FLOE_TRINO_START_TIMEOUT:-180}"
STOP_TIMEOUT="${FLOE_TRINO_STOP_TIMEOUT:-30}"
# The plugins the lean install keeps.
KEEP_PLUGINS=(iceberg)
# The Iceberg plugin brings only the PostgreSQL JDBC driver; this one lets Trino open floe's
# default SQLite catalog too (the driver is Maven Central's org.xerial:sqlite-jdbc).
SQLITE_JDBC_VERSION=3.54.1.0
# One directory per content: a server running from an older unpacked copy is never disturbed.
SERVER="$CACHE/server-${KEEP_PLUGINS[*]// /-}-sqlite-$SQLITE_JDBC_VERSION"

die() { echo "trino.sh: $*" >&2; exit 1; }
log() { echo "trino.sh: $*" >&2; }
need() { command -v "$1" >/dev/null 2>&1 || die "'$1' not found: $2"; }

java_major() { # JAVA_HOME -> major version, from its release file
  sed -n 's/^JAVA_VERSION="\([0-9]*\).*/\1/p' "$1/release" 2>/dev/null
}

find_java_home() {
  local d v best="" best_v=0
  for d in "${FLOE_TRINO_JAVA_HOME:-}" /usr/lib/jvm/temurin-25-jdk-amd64; do
    [[ -n $d && -x $d/bin/java ]] || continue
    v="$(java_major "$d")"
    if [[ -n $v ]] && ((v >= TRINO_MIN_JAVA)); then echo "$d"; return 0; fi
    [[ $d == "${FLOE_TRINO_JAVA_HOME:-}" ]] && die "FLOE_TRINO_JAVA_HOME=$d is Java ${v:-?}; Trino $TRINO_VERSION needs $TRINO_MIN_JAVA+"
  done
  for d in /usr/lib/jvm/*; do
    [[ -x $d/bin/java ]] || continue
    v="$(java_major "$d")"
    if [[ -n $v ]] && ((v >= TRINO_MIN_JAVA && v > best_v)); then best="$d" best_v="$v"; fi
  done
  [[ -n $best ]] || die "no JDK >= $TRINO_MIN_JAVA in /usr/lib/jvm (Trino $TRINO_VERSION needs one; set FLOE_TRINO_JAVA_HOME)"
  echo "$best"
}

mvn_get() { # G:A:V:TYPE[:CLASSIFIER] -> path in the local repository
  local coords="$1" g a v t c="" path
  IFS=: read -r g a v t c <<<"$coords"
  path="$M2_REPO/${g//.//}/$a/$v/$a-$v${c:+-$c}.$t"
  if [[ ! -s $path ]]; then
    need mvn "install Maven (apt-get install -y maven)"
    log "downloading $coords from Maven Central (first run only)..."
    local t0=$SECONDS
    if ! mvn -B -q -Dmaven.repo.local="$M2_REPO" dependency:get -Dartifact="$coords" -Dtransitive=false \
        >"$CACHE/mvn.log" 2>&1; then
      tail -n 20 "$CACHE/mvn.log" >&2
      die "mvn could not download $coords (log: $CACHE/mvn.log)"
    fi
    [[ -s $path ]] || die "mvn finished but $path is missing"
    log "downloaded $(du -m "$path" | cut -f1) MiB in $((SECONDS - t0)) s: $path"
  fi
  echo "$path"
}

fetch() {
  mkdir -p "$CACHE"
  # Two concurrent fetches on a fresh machine must not both unpack.
  exec 9>"$CACHE/.lock"
  flock 9
  if [[ -f "$SERVER/.complete" && -s $CLI_JAR ]]; then
    exec 9>&-
    return 0
  fi
  local tarball cli sqlite
  tarball="$(mvn_get "io.trino:trino-server:$TRINO_VERSION:tar.gz")"
  cli="$(mvn_get "io.trino:trino-cli:$TRINO_VERSION:jar:executable")"
  sqlite="$(mvn_get "org.xerial:sqlite-jdbc:$SQLITE_JDBC_VERSION:jar")"
  log "unpacking $tarball (keeping the plugins: ${KEEP_PLUGINS[*]})..."
  rm -rf "$SERVER.tmp"
  mkdir -p "$SERVER.tmp"
  # Plugins share jars through hard links inside the archive, so it is unpacked whole and the
  # unwanted plugins are removed afterwards.
  tar xzf "$tarball" -C "$SERVER.tmp" --strip-components=1 || die "could not unpack $tarball"
  local p keep k
  for p in "$SERVER.tmp"/plugin/*; do
    keep=false
    for k in "${KEEP_PLUGINS[@]}"; do [[ ${p##*/} == "$k" ]] && keep=true; done
    $keep || rm -rf "$p"
  done
  [[ -x "$SERVER.tmp/bin/launcher" ]] || die "no bin/launcher in $tarball"
  cp "$sqlite" "$SERVER.tmp/plugin/iceberg/" || die "could not add $sqlite to the Iceberg plugin"
  date -u +%FT%TZ >"$SERVER.tmp/.complete"
  rm -rf "$SERVER"
  mv "$SERVER.tmp" "$SERVER"
  cp "$cli" "$CLI_JAR.tmp" && chmod +x "$CLI_JAR.tmp" && mv "$CLI_JAR.tmp" "$CLI_JAR"
  log "Trino $TRINO_VERSION in $SERVER ($(du -sm "$SERVER" | cut -f1) MiB), CLI $CLI_JAR"
  exec 9>&-
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Iceberg connector properties for floe's JDBC catalog, one per line.
catalog_properties() { # URI FLOE_CATALOG WAREHOUSE
  python3 - "$@" <<'EOF'
import sys
from urllib.parse import unquote, urlsplit

uri, name, warehouse = sys.argv[1:4]
if not warehouse.startswith("/"):
    sys.exit(f"trino.sh: the warehouse must be an absolute directory, got {warehouse!r}")
props = [("connector.name", "iceberg"), ("iceberg.catalog.type", "jdbc")]
if uri.startswith("sqlite:"):
    # floe's sqlite:<path>; the driver is the sqlite-jdbc jar fetch() puts in the Iceberg plugin.
    path = uri[len("sqlite:"):]
    if not path.startswith("/"):
        sys.exit(f"trino.sh: give the SQLite catalog as sqlite:<absolute path>, got {uri!r}")
    props += [
        ("iceberg.jdbc-catalog.driver-class", "org.sqlite.JDBC"),
        ("iceberg.jdbc-catalog.connection-url", f"jdbc:sqlite:{path}"),
    ]
else:
    u = urlsplit(uri)
    if u.scheme not in ("postgresql", "postgres"):
        sys.exit(f"trino.sh: catalog URI must be postgresql://user:password@host:port/db or sqlite:<path>, got {uri!r}")
    host = u.hostname or "127.0.0.1"
    port = f":{u.port}" if u.port else ""
    props += [
        ("iceberg.jdbc-catalog.driver-class", "org.postgresql.Driver"),
        ("iceberg.jdbc-catalog.connection-url", f"jdbc:postgresql://{host}{port}{u.path}" + (f"?{u.query}" if u.query else "")),
        ("iceberg.jdbc-catalog.connection-user", unquote(u.username or "")),
        ("iceberg.jdbc-catalog.connection-password", unquote(u.password or "")),
    ]
props += [
    # floe's [catalog] name: the catalog_name column of iceberg_tables.
    ("iceberg.jdbc-catalog.catalog-name", name),
    # floe creates the catalog tables in the layout Java's JdbcCatalog calls V1 (with iceberg_type).
    ("iceberg.jdbc-catalog.schema-version", "V1"),
    ("iceberg.jdbc-catalog.default-warehouse-dir", "file://" + warehouse.rstrip("/")),
    # floe's metadata and data files are file:// URIs on the local disk.
    ("fs.native-local.enabled", "true"),
    ("local.location", "/"),
    ("iceberg.file-format", "PARQUET"),
    ("iceberg.compression-codec", "ZSTD"),
    # Lets expire_snapshots take any retention (the tests use 0s). remove_orphan_files keeps its
    # 7-day floor: files floe has written but not yet committed look like orphans.
    ("iceberg.expire-snapshots.min-retention", "0s"),
]
for k, v in props:
    print(f"{k}={v}")
EOF
}

is_our_server() { # PID -> true if it is a live Trino server
  [[ -n "$1" ]] && kill -0 "$1" 2>/dev/null && tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q 'io\.trino\.server\.TrinoServer'
}

alive() { [[ -n "$1" ]] && kill -0 "$1" 2>/dev/null && ! grep -q '^[0-9]* (.*) Z' "/proc/$1/stat" 2>/dev/null; }

# Runs one statement through the HTTP protocol; exit 0 and prints the first value when it succeeds.
http_query() { # URI SQL
  python3 - "$@" <<'EOF'
import json, sys, urllib.request
base, sql = sys.argv[1:3]
req = urllib.request.Request(base + "/v1/statement", data=sql.encode(), method="POST",
                             headers={"X-Trino-User": "floe"})
first = None
while True:
    with urllib.request.urlopen(req, timeout=10) as r:
        doc = json.load(r)
    if "error" in doc:
        sys.exit(doc["error"].get("message", "query failed"))
    if first is None and doc.get("data"):
        first = doc["data"][0][0]
    nxt = doc.get("nextUri")
    if not nxt:
        break
    req = urllib.request.Request(nxt, headers={"X-Trino-User": "floe"})
print(first)
EOF
}

server_starting() { # URI -> prints true/false from /v1/info, fails if the server does not answer
  python3 - "$1" <<'EOF' 2>/dev/null
import json, sys, urllib.request
with urllib.request.urlopen(sys.argv[1] + "/v1/info", timeout=2) as r:
    print(str(json.load(r).get("starting")).lower())
EOF
}

start() {
  local dir="$1"
  shift
  local catalogs=()
  while (($#)); do
    case "$1" in
      --catalog) [[ $# -ge 2 ]] || usage; catalogs+=("$2"); shift 2 ;;
      --catalog=*) catalogs+=("${1#--catalog=}"); shift ;;
      *) usage ;;
    esac
  done
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  if [[ -f "$dir/trino.pid" ]] && is_our_server "$(cat "$dir/trino.pid")" && [[ -f "$dir/uri" ]]; then
    log "server already running in $dir (pid $(cat "$dir/trino.pid"))"
    ((${#catalogs[@]} == 0)) || log "--catalog ignored: stop the server first, or use CREATE CATALOG"
    cat "$dir/uri"
    return 0
  fi
  rm -f "$dir/trino.pid" "$dir/uri"
  fetch
  need python3 "needed to find a free port and to talk to the server"
  local java_home port
  java_home="$(find_java_home)"
  port="$(free_port)"

  local etc="$dir/etc"
  rm -rf "$etc"
  mkdir -p "$etc/catalog" "$dir/data"
  cat >"$etc/node.properties" <<EOF
# generated by floe scripts/trino.sh
node.environment=floe_test
node.id=floe-trino-$port
node.data-dir=$dir/data
# Loopback only: nothing outside this machine talks to it.
node.bind-ip=127.0.0.1
node.internal-address=127.0.0.1
EOF
  # Small on purpose: the machine has 2 cores and is shared with Kafka, PostgreSQL, floe and the
  # tests. Single node: the coordinator schedules work on itself.
  cat >"$etc/config.properties" <<EOF
# generated by floe scripts/trino.sh
coordinator=true
node-scheduler.include-coordinator=true
http-server.http.port=$port
discovery.uri=http://127.0.0.1:$port
query.max-memory=1GB
query.max-memory-per-node=1GB
memory.heap-headroom-per-node=512MB
task.concurrency=2
task.max-worker-threads=4
catalog.management=dynamic
catalog.store=file
http-server.log.enabled=false
EOF
  cat >"$etc/jvm.config" <<EOF
-server
-Xms512M
-Xmx$HEAP
-XX:+UseG1GC
-XX:G1HeapRegionSize=32M
-XX:+ExplicitGCInvokesConcurrent
-XX:+ExitOnOutOfMemoryError
-XX:-OmitStackTraceInFastThrow
-XX:ReservedCodeCacheSize=256M
-XX:PerMethodRecompilationCutoff=10000
-XX:PerBytecodeRecompilationCutoff=10000
-XX:+EnableDynamicAgentLoading
-Djdk.attach.allowAttachSelf=true
-Djdk.nio.maxCachedBufferSize=2000000
-Dfile.encoding=UTF-8
-XX:ActiveProcessorCount=2
--enable-native-access=ALL-UNNAMED
EOF
  cat >"$etc/log.properties" <<'EOF'
io.trino=INFO
io.airlift=WARN
org.apache.iceberg=WARN
EOF
  local spec name rest cat_uri floe_catalog warehouse
  for spec in ${catalogs[@]+"${catalogs[@]}"}; do
    [[ $spec == *=*,*,* ]] || die "--catalog wants NAME=URI,FLOE_CATALOG,WAREHOUSE, got '$spec'"
    name="${spec%%=*}" rest="${spec#*=}"
    cat_uri="${rest%%,*}" rest="${rest#*,}"
    floe_catalog="${rest%%,*}" warehouse="${rest#*,}"
    [[ $name =~ ^[a-z][a-z0-9_]*$ ]] || die "Trino catalog name '$name': use lower case letters, digits and _"
    { echo "# generated by floe scripts/trino.sh"; catalog_properties "$cat_uri" "$floe_catalog" "$warehouse"; } \
      >"$etc/catalog/$name.properties" || die "bad --catalog $spec"
  done

  local launcher=("$SERVER/bin/launcher" --etc-dir "$etc" --data-dir "$dir/data" --jvm-dir "$java_home"
    --pid-file "$dir/launcher.pid" --launcher-log-file "$dir/launcher.log" --server-log-file "$dir/server.log")
  rm -f "$dir"/server.log* "$dir/launcher.log"
  local t0=$SECONDS
  JAVA_HOME="$java_home" PATH="$java_home/bin:$PATH" setsid "${launcher[@]}" start >"$dir/launcher.out" 2>&1 </dev/null ||
    { cat "$dir/launcher.out" "$dir/launcher.log" >&2 2>/dev/null; die "the launcher could not start Trino"; }
  local pid
  pid="$(cat "$dir/launcher.pid" 2>/dev/null || true)"
  [[ -n $pid ]] || die "the launcher wrote no pid file ($dir/launcher.pid)"
  echo "$pid" >"$dir/trino.pid"

  local uri="http://127.0.0.1:$port" deadline=$((SECONDS + START_TIMEOUT))
  until [[ "$(server_starting "$uri" || true)" == false ]] && http_query "$uri" "SELECT 1" >/dev/null 2>&1; do
    if ! alive "$pid"; then
      tail -n 40 "$dir/server.log" "$dir/launcher.log" >&2 2>/dev/null || true
      rm -f "$dir/trino.pid"
      die "Trino exited during startup (log: $dir/server.log)"
    fi
    if ((SECONDS >= deadline)); then
      tail -n 40 "$dir/server.log" >&2 || true
      stop "$dir" || true
      die "Trino not ready after ${START_TIMEOUT}s (log: $dir/server.log)"
    fi
    sleep 0.5
  done
  echo "$uri" >"$dir/uri"
  echo "$java_home" >"$dir/java_home"
  log "Trino $TRINO_VERSION up in $((SECONDS - t0)) s in $dir (pid $pid, Java $(java_major "$java_home") from $java_home, log $dir/server.log)"
  echo "$uri"
}

stop() {
  local dir="$1" pid
  [[ -f "$dir/trino.pid" ]] || { log "no Trino pid file in $dir: nothing to stop"; return 0; }
  pid="$(cat "$dir/trino.pid")"
  if ! is_our_server "$pid"; then
    log "Trino (pid $pid) is not running"
    rm -f "$dir/trino.pid" "$dir/uri"
    return 0
  fi
  # SIGTERM runs the server's shutdown hooks (the launcher's `stop` does the same).
  kill -TERM "$pid"
  local deadline=$((SECONDS + STOP_TIMEOUT))
  while alive "$pid"; do
    if ((SECONDS >= deadline)); then
      log "Trino (pid $pid) still running after ${STOP_TIMEOUT}s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.2
      break
    fi
    sleep 0.2
  done
  rm -f "$dir/trino.pid" "$dir/uri" "$dir/launcher.pid"
  log "Trino in $dir stopped"
}

cli() {
  local dir="$1"
  shift
  [[ -f "$dir/uri" ]] || die "no Trino running in $dir (no $dir/uri)"
  fetch
  local java_home
  java_home="$(find_java_home)"
  exec "$java_home/bin/java" -Xmx256m --enable-native-access=ALL-UNNAMED -Dorg.jline.terminal.dumb=true \
    -jar "$CLI_JAR" --server "$(cat "$dir/uri")" --user floe \
    --output-format "${FLOE_TRINO_CLI_FORMAT:-ALIGNED}" --execute "$*"
}

usage() {
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2
  exit 2
}

cmd="${1:-}"
case "$cmd" in
  fetch) [[ $# -eq 1 ]] || usage; fetch ;;
  start) [[ $# -ge 2 ]] || usage; shift; start "$@" ;;
  stop) [[ $# -eq 2 ]] || usage; stop "$2" ;;
  cli) [[ $# -ge 3 ]] || usage; shift; cli "$@" ;;
  catalog-properties) [[ $# -eq 4 ]] || usage; shift; catalog_properties "$@" ;;
  version) echo "$TRINO_VERSION" ;;
  *) usage ;;
esac
