#!/usr/bin/env python3
"""floe against the Apache Iceberg Kafka Connect sink, side by side: one broker, one topic of N
preloaded seed records (`floe publish-sample`), two tables of the same schema and partitioning in
one PostgreSQL JDBC catalog (both created by `floe table create`), the same commit interval.

First `floe run` (group `bench-floe`) loads table default.events until its ledger covers N; it is
stopped. Then a standalone Kafka Connect worker (scripts/kafka-connect.sh) runs the Iceberg sink
(connector `bench-connect`, so consumer group `connect-bench-connect`) into default.events_connect
until that table's current snapshot holds N rows. For each: wall time from process start (startup
included), rows/s, CPU (user+sys of the process, from /proc) per million rows, peak RSS (VmHWM),
commits (append snapshots); the same rates counted from the first commit on (without startup and
warm-up); each process's CPU by thread; and the ratios floe/Connect. Afterwards an independent
reader (pyiceberg) reads both tables: rows, distinct ids, and the timestamp of every id, which must
agree.

Not a test: it asserts only sanity (both tables hold exactly N rows, the same ids and timestamps).
Run it with the test venv's Python (pyiceberg, psycopg2: scripts/python-env.sh):

    ~/.cache/floe/venv/bin/python bench/connect.py [--records 2000000] [--partitions 4]
        [--interval 1s] [--floe PATH] [--tasks N] [--flush-ms MS] [--iceberg VERSION [--rewrite-offsets]]

It starts its own throwaway broker (scripts/kafka.sh) and PostgreSQL (scripts/postgres.sh).
"""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

import psycopg2

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from loader import REPO, TABLE, proc_stats  # noqa: E402

FLOE_TABLE = "default.events"
CONNECT_TABLE = "default.events_connect"
TOPIC = "bench"


def interval_ms(text):
    m = re.fullmatch(r"(\d+)(ms|s)", text)
    if not m:
        sys.exit(f"--interval: expected a duration like 1s or 500ms, got {text!r}")
    return int(m.group(1)) * (1 if m.group(2) == "ms" else 1000)


def script(*args):
    """Runs one of scripts/*.sh, returns the last line it printed (the address it started)."""
    out = subprocess.run([os.path.join(REPO, "scripts", args[0]), *args[1:]], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"scripts/{args[0]} {' '.join(args[1:])} failed:\n{out.stderr[-3000:]}")
    return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""


def local_path(location):
    """file:/x, file:///x or /x (Java and floe write different forms) -> /x"""
    if location.startswith("file:"):
        location = location[len("file:"):]
        while location.startswith("//"):
            location = location[1:]
    return location


def current_snapshot(pg, table):
    """(metadata JSON, current snapshot or None) of a table of the PostgreSQL catalog."""
    ns, name = table.split(".")
    with psycopg2.connect(pg) as con, con.cursor() as cur:
        cur.execute("SELECT metadata_location FROM iceberg_tables WHERE catalog_name = 'floe' "
                    "AND table_namespace = %s AND table_name = %s", (ns, name))
        row = cur.fetchone()
    con.close()
    with open(local_path(row[0])) as f:
        meta = json.load(f)
    sid = meta.get("current-snapshot-id")
    snap = next((s for s in meta.get("snapshots", []) if s["snapshot-id"] == sid), None)
    return meta, snap


def ledger_total(pg):
    meta, _ = current_snapshot(pg, FLOE_TABLE)
    raw = meta.get("properties", {}).get("floe.ledger.bench-floe")
    return sum(json.loads(raw).get(TOPIC, {}).values()) if raw else 0


def connect_rows(pg):
    _, snap = current_snapshot(pg, CONNECT_TABLE)
    return int(snap["summary"].get("total-records", 0)) if snap else 0


def watch(pid, progress, target, alive, what, log_path, timeout):
    """Polls every 0.5 s until progress() >= target; returns [(seconds, CPU s, rows)] and the peak RSS."""
    samples, hwm, t0 = [], 0, time.time()
    deadline = t0 + timeout
    while True:
        cpu, hwm = proc_stats(pid)
        rows = progress()
        samples.append((time.time() - t0, cpu, rows))
        if rows >= target:
            return samples, hwm
        if not alive():
            sys.exit(f"{what} exited early; see {log_path}")
        if time.time() > deadline:
            sys.exit(f"{what} did not finish within {timeout} s; see {log_path}")
        time.sleep(0.5)


def thread_cpu(pid):
    """CPU seconds (user+sys) of a live process's threads, grouped by thread name with digits as #
    (for the JVM: task threads, C1/C2 JIT compiler threads, GC threads; for floe: its workers)."""
    ticks = os.sysconf("SC_CLK_TCK")
    groups = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                head, rest = f.read().rsplit(")", 1)
        except OSError:
            continue  # the thread ended
        name = re.sub(r"#+", "#", re.sub(r"\d+", "#", head.split("(", 1)[1]))
        fields = rest.split()
        groups[name] = groups.get(name, 0) + (int(fields[11]) + int(fields[12])) / ticks
    return sorted(groups.items(), key=lambda g: -g[1])


def after_first_commit(samples):
    """(rows/s, CPU-s per million rows) from the first poll that saw committed rows to the end: the
    rate once started and warmed up (JVM start, JIT, group join and the first interval excluded)."""
    first = next(s for s in samples if s[2] > 0)
    last = samples[-1]
    rows = last[2] - first[2]
    if rows <= 0 or last[0] <= first[0]:
        return float("nan"), float("nan")
    return rows / (last[0] - first[0]), (last[1] - first[1]) / (rows / 1e6)


def connect_alive(pid, connect_dir):
    """False when the worker exited; exits when a task of the connector failed (it would never finish)."""
    if not os.path.exists(f"/proc/{pid}"):
        return False
    uri_file = os.path.join(connect_dir, "uri")
    if os.path.exists(uri_file):
        try:
            with urllib.request.urlopen(open(uri_file).read().strip() + "/connectors/bench-connect/status",
                                        timeout=5) as r:
                status = json.load(r)
        except (OSError, ValueError):
            return True  # not answering yet (starting, or busy): the timeout still bounds the wait
        for task in status.get("tasks", []):
            if task.get("state") == "FAILED":
                trace = [l for l in task.get("trace", "").splitlines() if "Caused by" in l or "Exception" in l]
                sys.exit(f"Connect task {task.get('id')} failed: {' / '.join(trace[-2:])[:600]} "
                         f"(log: {connect_dir}/connect.log)")
    return True


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def verify(pg, warehouse, n):
    """An independent reader (pyiceberg) reads both tables; returns a line per table. Both must hold
    exactly n rows with n distinct ids, and the same timestamp for every id."""
    import pyarrow.compute as pc
    from pyiceberg.catalog.sql import SqlCatalog

    catalog = SqlCatalog("floe", uri=pg.replace("postgresql://", "postgresql+psycopg2://", 1),
                         warehouse=f"file://{warehouse}")
    lines, columns, appends = [], [], []
    for name in (FLOE_TABLE, CONNECT_TABLE):
        t = catalog.load_table(name)
        a = t.scan(selected_fields=("id", "timestamp")).to_arrow().sort_by("id")
        ids = pc.count_distinct(a["id"]).as_py()
        files = sum(1 for _ in t.scan().plan_files())
        appends.append(sum(1 for snap in t.snapshots() if snap.summary and snap.summary.operation.value == "append"))
        lines.append(f"{name:24} {a.num_rows} rows, {ids} distinct ids, {files} data files, "
                     f"{len(t.snapshots())} snapshots")
        if a.num_rows != n or ids != n:
            sys.exit(f"sanity: {name} holds {a.num_rows} rows ({ids} distinct ids), expected exactly {n}\n"
                     + "\n".join(lines))
        columns.append(a)
    if not (columns[0]["id"].equals(columns[1]["id"]) and columns[0]["timestamp"].equals(columns[1]["timestamp"])):
        sys.exit("sanity: the two tables do not hold the same ids with the same timestamps\n" + "\n".join(lines))
    lines.append("same ids, and the same timestamp for every id, in both tables")
    return lines, appends


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=2_000_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--interval", default="1s", help="commit interval of both (floe commit.interval, "
                    "the sink's iceberg.control.commit.interval-ms)")
    target = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/floe/target"))
    ap.add_argument("--floe", default=os.path.join(target, "release", "floe"))
    ap.add_argument("--tasks", type=int, help="the sink's tasks.max (default: --partitions)")
    ap.add_argument("--flush-ms", type=int, help="the worker's offset.flush.interval.ms, which bounds how "
                    "late an idle task answers a commit request (default: the commit interval)")
    ap.add_argument("--iceberg", help="the sink's Iceberg version (FLOE_CONNECT_ICEBERG_VERSION of "
                    "scripts/kafka-connect.sh; default: the script's)")
    ap.add_argument("--rewrite-offsets", action="store_true", help="rewrite the timestamps' +HH:mm offsets to "
                    "+HHmm before the sink (floe.connect.OffsetWithoutColon): needed with --iceberg 1.9.2, whose "
                    "sink cannot parse them; 1.12.0 can")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, tables) and print its path")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds each loader may take")
    args = ap.parse_args()
    if not os.path.exists(args.floe):
        sys.exit(f"{args.floe} not found: cargo build --release --no-default-features, or pass --floe")
    every_ms = interval_ms(args.interval)
    tasks = args.tasks or args.partitions
    if args.iceberg:
        os.environ["FLOE_CONNECT_ICEBERG_VERSION"] = args.iceberg
    flush_ms = args.flush_ms or every_ms

    # postgres.sh runs the server as the postgres user, which must be able to enter this directory.
    work = tempfile.mkdtemp(prefix="floe-connect-")
    os.chmod(work, 0o755)
    kafka_dir, pg_dir, connect_dir = (os.path.join(work, d) for d in ("kafka", "pg", "connect"))
    warehouse = os.path.join(work, "warehouse")
    connect_started = finished = False
    try:
        print(f"load average {loadavg()} (1, 5, 15 min) before starting", flush=True)
        bootstrap = script("kafka.sh", "start", kafka_dir)
        pg = script("postgres.sh", "start", pg_dir)
        script("kafka-connect.sh", "fetch")
        cfg = os.path.join(work, "floe.toml")
        with open(cfg, "w") as f:
            f.write(f'data_dir = "{work}/floe-data"\n[kafka]\n"bootstrap.servers" = "{bootstrap}"\n'
                    f'"group.id" = "bench-floe"\n[source]\ntopics = ["{TOPIC}"]\n[table]\nname = "{FLOE_TABLE}"\n'
                    f'[catalog]\ntype = "sql"\nuri = "{pg}"\nname = "floe"\nwarehouse = "{warehouse}"\n'
                    f'[commit]\ninterval = "{args.interval}"\n')
        for name in (FLOE_TABLE, CONNECT_TABLE):
            ddl = TABLE.replace("CREATE TABLE events ", f"CREATE TABLE {name.split('.')[1]} ", 1)
            subprocess.run([args.floe, "--config", cfg, "table", "create", ddl], check=True, capture_output=True)
        t = time.time()
        subprocess.run([args.floe, "--config", cfg, "publish-sample", "--topic", TOPIC, "--count", str(args.records),
                        "--partitions", str(args.partitions), "--spread", "3d"], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        print(f"preloaded {args.records} records into {args.partitions} partitions in {time.time() - t:.1f} s", flush=True)
        control = "bench-control"
        script("kafka.sh", "run", "org.apache.kafka.tools.TopicCommand", "--bootstrap-server", bootstrap,
               "--create", "--topic", control, "--partitions", "1", "--replication-factor", "1")

        # floe
        print(f"load average {loadavg()} before floe", flush=True)
        floe_log = os.path.join(work, "floe.log")
        with open(floe_log, "w") as log:
            t0 = time.time()
            proc = subprocess.Popen([args.floe, "--config", cfg, "run"], stdout=log, stderr=log)
            fsamples, fhwm = watch(proc.pid, lambda: ledger_total(pg), args.records, lambda: proc.poll() is None,
                                   "floe run", floe_log, args.timeout)
            fwall, fcpu = time.time() - t0, fsamples[-1][1]
            fthreads = thread_cpu(proc.pid)
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)

        # The Iceberg sink in a Connect worker
        print(f"load average {loadavg()} before Connect", flush=True)
        props = os.path.join(work, "bench-connect.properties")
        with open(props, "w") as f:
            f.write("\n".join([
                "name=bench-connect",
                "connector.class=org.apache.iceberg.connect.IcebergSinkConnector",
                f"tasks.max={tasks}",
                f"topics={TOPIC}",
                f"iceberg.tables={CONNECT_TABLE}",
                "iceberg.catalog=floe",
                "iceberg.catalog.catalog-impl=org.apache.iceberg.jdbc.JdbcCatalog",
                "iceberg.catalog.uri=jdbc:" + re.sub(r"//[^@]*@", "//", pg),
                "iceberg.catalog.jdbc.user=floe",
                "iceberg.catalog.jdbc.password=floe",
                "iceberg.catalog.jdbc.schema-version=V1",
                f"iceberg.catalog.warehouse=file://{warehouse}",
                "iceberg.catalog.io-impl=org.apache.iceberg.hadoop.HadoopFileIO",
                f"iceberg.control.topic={control}",
                f"iceberg.control.commit.interval-ms={every_ms}",
            ] + ([] if not args.rewrite_offsets else [
                "transforms=offset",
                "transforms.offset.type=floe.connect.OffsetWithoutColon",
                "transforms.offset.fields=timestamp",
            ])) + "\n")
        connect_log = os.path.join(connect_dir, "connect.log")
        env = dict(os.environ, FLOE_CONNECT_FLUSH_MS=str(flush_ms))
        t0 = time.time()
        starter = subprocess.Popen([os.path.join(REPO, "scripts/kafka-connect.sh"), "start", connect_dir, bootstrap,
                                    props], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        connect_started = True
        pid_file = os.path.join(connect_dir, "connect.pid")
        while not os.path.exists(pid_file) or not open(pid_file).read().strip():
            if time.time() - t0 > 60:
                sys.exit(f"no Connect worker pid in {pid_file} after 60 s")
            time.sleep(0.05)
        pid = int(open(pid_file).read())
        csamples, chwm = watch(pid, lambda: connect_rows(pg), args.records, lambda: connect_alive(pid, connect_dir),
                               "the Connect worker", connect_log, args.timeout)
        cwall, ccpu = time.time() - t0, csamples[-1][1]
        cthreads = thread_cpu(pid)
        starter.wait(timeout=60)
        up = re.search(r"^\[([^\],]+),(\d+)\] INFO Kafka Connect started", open(connect_log).read(), re.M)
        cstartup = (time.mktime(time.strptime(up.group(1), "%Y-%m-%d %H:%M:%S")) + int(up.group(2)) / 1000 - t0
                    if up else float("nan"))
        script("kafka-connect.sh", "stop", connect_dir)
        connect_started = False
        print(f"load average {loadavg()} after both", flush=True)

        checks, appends = verify(pg, warehouse, args.records)
        n = args.records / 1e6
        rows = [("floe run", fwall, fcpu, fhwm, appends[0], fsamples),
                ("Iceberg sink (Connect)", cwall, ccpu, chwm, appends[1], csamples)]
        print(f"\nrecords {args.records} over {args.partitions} partitions, commit interval {args.interval} "
              f"(sink: iceberg.control.commit.interval-ms={every_ms}, tasks.max={tasks}, "
              f"offset.flush.interval.ms={flush_ms})")
        print(f"{'':24} {'wall s':>8} {'rows/s':>10} {'CPU s':>8} {'cores':>6} {'CPU-s/M rows':>13} "
              f"{'peak RSS':>9} {'commits':>8} | after 1st commit: {'rows/s':>9} {'CPU-s/M rows':>13}")
        steady = []
        for name, wall, cpu, hwm, commits, samples in rows:
            rate, per_m = after_first_commit(samples)
            steady.append((rate, per_m))
            print(f"{name:24} {wall:8.1f} {args.records / wall:10,.0f} {cpu:8.1f} {cpu / wall:6.2f} {cpu / n:13.2f} "
                  f"{hwm / 2**20:7.0f}Mi {commits:8} | {'':17} {rate:9,.0f} {per_m:13.2f}")
        print(f"{'floe / Connect':24} {'':8} {cwall / fwall:9.2f}x {'':8} {'':6} {fcpu / ccpu:12.2f}x "
              f"{fhwm / chwm:8.2f}x {'':8} | {'':17} {steady[0][0] / steady[1][0]:8.2f}x "
              f"{steady[0][1] / steady[1][1]:12.2f}x")
        print(f"wall times include startup: the Connect worker logged 'Kafka Connect started' "
              f"{cstartup:.1f} s after it was launched")
        for name, threads in (("floe", fthreads), ("Connect worker", cthreads)):
            print(f"CPU by thread, {name}: " + ", ".join(f"{t} {c:.1f} s" for t, c in threads[:8] if c >= 0.1))
        print("independent reader (pyiceberg):")
        for line in checks:
            print("  " + line)
        finished = True
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip the cleanup
        if connect_started:
            subprocess.run([os.path.join(REPO, "scripts/kafka-connect.sh"), "stop", connect_dir], capture_output=True)
        subprocess.run([os.path.join(REPO, "scripts/kafka.sh"), "stop", kafka_dir], capture_output=True)
        subprocess.run([os.path.join(REPO, "scripts/postgres.sh"), "stop", pg_dir], capture_output=True)
        if args.keep or not finished:
            print(f"work directory kept: {work} (floe.log, connect/connect.log, warehouse/)", file=sys.stderr)
        else:
            subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
