#!/usr/bin/env bash
# A throwaway Iceberg REST catalog on 127.0.0.1 for tests and for trying floe by hand: Apache
# Iceberg's own REST catalog server code (RESTCatalogAdapter + RESTCatalogServlet, from Maven
# Central's iceberg-core test jar, as in iceberg-open-api's test fixture) over a JdbcCatalog in a
# SQLite file, with the warehouse on local disk. The jars come through mvn (cached in ~/.m2, copied
# once to ~/.cache/floe/rest-catalog-<version>); a 50-line launcher (rest-catalog/FloeRestCatalog.java)
# binds it to 127.0.0.1, which the fixture's own main class cannot.
#
#   scripts/rest-catalog.sh fetch              download the jars and compile the launcher (no-op when there)
#   scripts/rest-catalog.sh start DIR [WAREHOUSE]
#                                              start a server in DIR (catalog database DIR/catalog.db,
#                                              warehouse WAREHOUSE, default DIR/warehouse); prints
#                                              http://127.0.0.1:<port> (also written to DIR/uri)
#   scripts/rest-catalog.sh stop DIR           stop the server started in DIR
#
# Starting takes about 3 s once fetched (JVM start and Jetty).
set -euo pipefail

ICEBERG_VERSION="${FLOE_REST_ICEBERG_VERSION:-1.10.0}"
JETTY_VERSION=11.0.25
SQLITE_JDBC_VERSION=3.50.3.0
HADOOP_VERSION=3.4.1
SLF4J_VERSION=2.0.17
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LAUNCHER_SRC="$HERE/rest-catalog/FloeRestCatalog.java"
CACHE="${FLOE_CACHE:-$HOME/.cache/floe}/rest-catalog-$ICEBERG_VERSION"
M2_REPO="${FLOE_M2_REPO:-$HOME/.m2/repository}"
START_TIMEOUT="${FLOE_REST_START_TIMEOUT:-60}"
STOP_TIMEOUT="${FLOE_REST_STOP_TIMEOUT:-15}"

die() { echo "rest-catalog.sh: $*" >&2; exit 1; }
log() { echo "rest-catalog.sh: $*" >&2; }
need() { command -v "$1" >/dev/null 2>&1 || die "'$1' not found: $2"; }

fetch() {
  mkdir -p "$CACHE"
  exec 9>"$CACHE/.lock"
  flock 9
  local stamp
  stamp="$(sha256sum "$LAUNCHER_SRC" | cut -c1-16)"
  if [[ -f "$CACHE/lib/.complete" && -f "$CACHE/classes/.complete-$stamp" ]]; then
    exec 9>&-
    return 0
  fi
  need java "install a JDK (apt-get install -y openjdk-17-jdk-headless)"
  need javac "install a JDK (apt-get install -y openjdk-17-jdk-headless)"
  if [[ ! -f "$CACHE/lib/.complete" ]]; then
    need mvn "install Maven (apt-get install -y maven)"
    log "downloading Iceberg $ICEBERG_VERSION's REST catalog and its dependencies from Maven Central (first run only)..."
    local t0=$SECONDS pom="$CACHE/pom.xml"
    cat >"$pom" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>floe.test</groupId><artifactId>rest-catalog</artifactId><version>1</version>
  <dependencies>
    <dependency><groupId>org.apache.iceberg</groupId><artifactId>iceberg-core</artifactId><version>$ICEBERG_VERSION</version></dependency>
    <dependency><groupId>org.apache.iceberg</groupId><artifactId>iceberg-core</artifactId><version>$ICEBERG_VERSION</version><classifier>tests</classifier></dependency>
    <dependency><groupId>org.eclipse.jetty</groupId><artifactId>jetty-servlet</artifactId><version>$JETTY_VERSION</version></dependency>
    <dependency><groupId>org.xerial</groupId><artifactId>sqlite-jdbc</artifactId><version>$SQLITE_JDBC_VERSION</version></dependency>
    <dependency><groupId>org.apache.hadoop</groupId><artifactId>hadoop-client-api</artifactId><version>$HADOOP_VERSION</version></dependency>
    <dependency><groupId>org.apache.hadoop</groupId><artifactId>hadoop-client-runtime</artifactId><version>$HADOOP_VERSION</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-simple</artifactId><version>$SLF4J_VERSION</version></dependency>
  </dependencies>
</project>
EOF
    rm -rf "$CACHE/lib.tmp"
    if ! mvn -B -q -f "$pom" -Dmaven.repo.local="$M2_REPO" dependency:copy-dependencies \
        -DoutputDirectory="$CACHE/lib.tmp" >"$CACHE/mvn.log" 2>&1; then
      tail -n 20 "$CACHE/mvn.log" >&2
      die "mvn could not download the REST catalog's jars (log: $CACHE/mvn.log)"
    fi
    date -u +%FT%TZ >"$CACHE/lib.tmp/.complete"
    rm -rf "$CACHE/lib"
    mv "$CACHE/lib.tmp" "$CACHE/lib"
    log "jars in $CACHE/lib ($(du -sm "$CACHE/lib" | cut -f1) MiB, $((SECONDS - t0)) s)"
  fi
  rm -rf "$CACHE/classes"
  mkdir -p "$CACHE/classes"
  javac -nowarn -cp "$CACHE/lib/*" -d "$CACHE/classes" "$LAUNCHER_SRC" || die "could not compile $LAUNCHER_SRC"
  touch "$CACHE/classes/.complete-$stamp"
  exec 9>&-
}

is_our_server() { # PID -> true if it is a live REST catalog of this script
  [[ -n "$1" ]] && kill -0 "$1" 2>/dev/null && tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q 'FloeRestCatalog'
}

alive() { [[ -n "$1" ]] && kill -0 "$1" 2>/dev/null && ! grep -q '^[0-9]* (.*) Z' "/proc/$1/stat" 2>/dev/null; }

start() {
  local dir="$1" warehouse="${2:-}"
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  if [[ -f "$dir/server.pid" ]] && is_our_server "$(cat "$dir/server.pid")" && [[ -s "$dir/uri" ]]; then
    log "server already running in $dir"
    cat "$dir/uri"
    return 0
  fi
  fetch
  [[ -n $warehouse ]] || warehouse="$dir/warehouse"
  mkdir -p "${warehouse#file://}"
  warehouse="$(cd "${warehouse#file://}" && pwd)"
  rm -f "$dir/uri" "$dir/port"
  local t0=$SECONDS
  # setsid: the server outlives this script, in its own process group.
  setsid java -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -cp "$CACHE/classes:$CACHE/lib/*" FloeRestCatalog \
    127.0.0.1 0 "file://$warehouse" "$dir/catalog.db" "$dir/port" >"$dir/server.log" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" >"$dir/server.pid"
  local deadline=$((SECONDS + START_TIMEOUT))
  until [[ -s "$dir/port" ]]; do
    if ! alive "$pid"; then
      tail -n 30 "$dir/server.log" >&2 || true
      die "the REST catalog exited while starting (log: $dir/server.log)"
    fi
    if ((SECONDS >= deadline)); then
      tail -n 30 "$dir/server.log" >&2 || true
      stop "$dir" || true
      die "REST catalog not up after ${START_TIMEOUT}s (log: $dir/server.log)"
    fi
    sleep 0.1
  done
  echo "http://127.0.0.1:$(cat "$dir/port")" >"$dir/uri"
  log "REST catalog up in $((SECONDS - t0)) s at $(cat "$dir/uri"), warehouse $warehouse"
  cat "$dir/uri"
}

stop() {
  local dir="$1" pid
  [[ -f "$dir/server.pid" ]] || { log "no server pid file in $dir: nothing to stop"; return 0; }
  pid="$(cat "$dir/server.pid")"
  if ! is_our_server "$pid"; then
    rm -f "$dir/server.pid"
    return 0
  fi
  kill -TERM "$pid"
  local deadline=$((SECONDS + STOP_TIMEOUT))
  while alive "$pid"; do
    if ((SECONDS >= deadline)); then
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.1
  done
  rm -f "$dir/server.pid"
}

usage() {
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2
  exit 2
}

case "${1:-}" in
  fetch) fetch ;;
  start) [[ $# -ge 2 ]] || usage; start "$2" "${3:-}" ;;
  stop) [[ $# -eq 2 ]] || usage; stop "$2" ;;
  *) usage ;;
esac
