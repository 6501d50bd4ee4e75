#!/usr/bin/env bash
# A throwaway AWS API emulator for tests: moto in server mode (S3, Glue, Secrets Manager, IAM, STS on
# one port), from the test venv (tests/py/requirements.txt pins moto[server]). It listens on a free port
# of 127.0.0.1 and checks signatures like AWS does: only the access key it creates at start is accepted
# (wrong keys get InvalidAccessKeyId / SignatureDoesNotMatch), so credential errors can be tested.
#
#   scripts/moto.sh start DIR   start it; prints http://127.0.0.1:<port> (also written to DIR/endpoint);
#                               the accepted key is DIR/access_key_id and DIR/secret_access_key
#   scripts/moto.sh stop DIR    stop it
#
# It runs moto through scripts/moto/floe_moto.py, which makes Glue's UpdateTable honour VersionId as
# the Glue API documents it (moto 5.2 ignores it; see that file): floe's Glue commit is conditioned on it.
set -euo pipefail

START_TIMEOUT="${FLOE_MOTO_START_TIMEOUT:-60}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

die() { echo "moto.sh: $*" >&2; exit 1; }
log() { echo "moto.sh: $*" >&2; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

running() { [[ -f "$1/pid" ]] && kill -0 "$(cat "$1/pid")" 2>/dev/null; }

start() {
  local dir="$1"
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  if running "$dir" && [[ -f "$dir/endpoint" ]]; then
    log "already running in $dir"
    cat "$dir/endpoint"
    return 0
  fi
  rm -f "$dir/endpoint" "$dir/access_key_id" "$dir/secret_access_key"
  local venv="${VENV:-}"
  [[ -n $venv ]] || venv="$("$REPO/scripts/python-env.sh" | tail -n 1)"
  [[ -x "$venv/bin/moto_server" ]] || die "$venv/bin/moto_server missing: is moto[server] in tests/py/requirements.txt?"
  local port t0=$SECONDS
  port="$(free_port)"
  # The first 3 requests (the IAM calls below) are let through without a key; every later one must be
  # signed with the key they create.
  INITIAL_NO_AUTH_ACTION_COUNT=3 setsid "$venv/bin/python" "$REPO/scripts/moto/floe_moto.py" -H 127.0.0.1 -p "$port" >"$dir/moto.log" 2>&1 </dev/null &
  echo $! >"$dir/pid"
  local endpoint="http://127.0.0.1:$port"
  local deadline=$((SECONDS + START_TIMEOUT))
  # /moto-api/ is moto's own dashboard: it does not count as an AWS request.
  until curl -fs -o /dev/null "$endpoint/moto-api/"; do
    running "$dir" || { tail -n 20 "$dir/moto.log" >&2; die "moto exited (log: $dir/moto.log)"; }
    if ((SECONDS >= deadline)); then
      stop "$dir" || true
      die "moto not up after ${START_TIMEOUT}s (log: $dir/moto.log)"
    fi
    sleep 0.1
  done
  ENDPOINT="$endpoint" DIR="$dir" "$venv/bin/python" - <<'PY' || { stop "$dir" || true; die "creating the test IAM user failed"; }
import json, os, boto3
iam = boto3.client("iam", endpoint_url=os.environ["ENDPOINT"], region_name="us-east-1",
                   aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
iam.create_user(UserName="floe-test")
iam.put_user_policy(UserName="floe-test", PolicyName="everything", PolicyDocument=json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
key = iam.create_access_key(UserName="floe-test")["AccessKey"]
d = os.environ["DIR"]
open(f"{d}/access_key_id", "w").write(key["AccessKeyId"])
open(f"{d}/secret_access_key", "w").write(key["SecretAccessKey"])
PY
  echo "$endpoint" >"$dir/endpoint"
  log "moto up in $((SECONDS - t0)) s at $endpoint (log $dir/moto.log)"
  echo "$endpoint"
}

stop() {
  local dir="$1"
  if running "$dir"; then
    local pid
    pid="$(cat "$dir/pid")"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$dir/pid" "$dir/endpoint"
}

case "${1:-}" in
  start) [[ $# -eq 2 ]] || die "usage: moto.sh start DIR"; start "$2" ;;
  stop) [[ $# -eq 2 ]] || die "usage: moto.sh stop DIR"; stop "$2" ;;
  *) die "usage: moto.sh start|stop DIR" ;;
esac
