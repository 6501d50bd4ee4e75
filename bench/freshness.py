#!/usr/bin/env python3
"""Produce-to-visible latency under a steady load: a producer sends seed records at a fixed rate
while `floe run` commits; an independent reader polls the catalog (the SQLite catalog's row for the
table, then the metadata file it names) and notes when each snapshot's ledger became visible. Each
record's latency is the moment the first snapshot whose ledger covers its offset was seen, minus
the record's Kafka timestamp. The topic is created with `message.timestamp.type = LogAppendTime`,
so that timestamp is when the broker appended the record: a producer that falls behind its rate
(its own queue growing) does not count against floe. Every record counts.

Not a test: nothing is asserted; the figures go into docs/benchmarks.md with the machine.

    bench/freshness.py [--rate 100000] [--seconds 30] [--interval 500ms] [--partitions 4] [--floe PATH]

Build the binary with `cargo build --release --no-default-features` first.
"""
import argparse
import bisect
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

from confluent_kafka import Consumer, TopicPartition

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from loader import REPO, TABLE, proc_stats  # noqa: E402


def poll_catalog(db_path, pipeline, seen, stop):
    """Appends (seen_at_ms, {partition: end}) whenever the table's ledger moves."""
    last_location = None
    while not stop.is_set():
        try:
            con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=1)
            row = con.execute(
                "SELECT metadata_location FROM iceberg_tables WHERE table_name = 'events'").fetchone()
            con.close()
        except sqlite3.Error:
            row = None
        now_ms = time.time() * 1000
        if row and row[0] != last_location:
            last_location = row[0]
            path = row[0].removeprefix("file://")
            with open(path) as f:
                props = json.load(f).get("properties", {})
            raw = props.get(f"floe.ledger.{pipeline}")
            if raw:
                ends = {int(p): e for p, e in json.loads(raw).get("bench", {}).items()}
                seen.append((now_ms, ends))
        time.sleep(0.01)


def record_timestamps(bootstrap, partitions, ends):
    """(partition, offset) -> Kafka timestamp (ms) of every record up to `ends`."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "freshness-reader",
                  "enable.auto.commit": False, "enable.partition.eof": True})
    c.assign([TopicPartition("bench", p, 0) for p in range(partitions)])
    stamps = {p: [] for p in range(partitions)}
    done = set()
    while len(done) < partitions:
        for m in c.consume(10000, timeout=1.0):
            if m.error():
                if m.error().code() == -191:  # partition EOF
                    done.add(m.partition())
                continue
            if m.offset() < ends.get(m.partition(), 0):
                stamps[m.partition()].append(m.timestamp()[1])
    c.close()
    return stamps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=100_000)
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--interval", default="500ms")
    ap.add_argument("--partitions", type=int, default=4)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/floe/target"))
    ap.add_argument("--floe", default=os.path.join(target, "release", "floe"))
    args = ap.parse_args()
    if not os.path.exists(args.floe):
        sys.exit(f"{args.floe} not found: cargo build --release --no-default-features")
    work = tempfile.mkdtemp(prefix="floe-fresh-")
    out = subprocess.run([os.path.join(REPO, "scripts/kafka.sh"), "start", f"{work}/kafka"],
                         capture_output=True, text=True, check=True)
    bootstrap = out.stdout.strip().splitlines()[-1]
    try:
        cfg = os.path.join(work, "floe.toml")
        with open(cfg, "w") as f:
            f.write(f'data_dir = "{work}/data"\n[kafka]\n"bootstrap.servers" = "{bootstrap}"\n'
                    f'"group.id" = "bench"\n[source]\ntopics = ["bench"]\n[table]\nname = "default.events"\n'
                    f'[commit]\ninterval = "{args.interval}"\n')
        subprocess.run([args.floe, "--config", cfg, "table", "create", TABLE], check=True, capture_output=True)
        # The topic exists (with one record) before floe starts; that record is not measured.
        from confluent_kafka.admin import AdminClient, NewTopic
        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.create_topics([NewTopic("bench", args.partitions, 1,
                                      config={"message.timestamp.type": "LogAppendTime"})])["bench"].result(30)
        subprocess.run([args.floe, "--config", cfg, "publish-sample", "--topic", "bench", "--count", "1",
                        "--partitions", str(args.partitions)], check=True, stdout=subprocess.DEVNULL)
        db = os.path.join(work, "data", "catalog.db")
        log_path = os.path.join(work, "run.log")
        seen, stop = [], threading.Event()
        with open(log_path, "w") as log:
            proc = subprocess.Popen([args.floe, "--config", cfg, "run"], stdout=log, stderr=log)
            time.sleep(3)
            poller = threading.Thread(target=poll_catalog, args=(db, "bench", seen, stop), daemon=True)
            poller.start()
            count = args.rate * args.seconds
            t0 = time.time()
            subprocess.run([args.floe, "--config", cfg, "publish-sample", "--topic", "bench", "--count", str(count),
                            "--rate", str(args.rate), "--first-id", "2"], check=True, stdout=subprocess.DEVNULL)
            count += 1
            sent_for = time.time() - t0
            deadline = time.time() + 60
            while time.time() < deadline and not (seen and sum(seen[-1][1].values()) >= count):
                time.sleep(0.2)
            stop.set()
            poller.join()
            cpu, hwm = proc_stats(proc.pid)
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        final = seen[-1][1] if seen else {}
        if sum(final.values()) < count:
            sys.exit(f"only {sum(final.values())} of {count} records became visible; see {log_path}")
        stamps = record_timestamps(bootstrap, args.partitions, final)
        latencies = []
        for p, ts in stamps.items():
            # Visibility of offset o: the first poll whose ledger end for p is above o.
            moments = [(ends.get(p, 0), at) for at, ends in seen]
            offs = [e for e, _ in moments]
            for o, t in enumerate(ts):
                if t < t0 * 1000:
                    continue  # the record that created the topic
                i = bisect.bisect_right(offs, o)
                latencies.append(moments[i][1] - t)
        latencies.sort()
        pct = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]
        print(f"records            {count - 1} at {args.rate}/s (sent in {sent_for:.1f} s) over {args.partitions} partitions")
        print(f"commit interval    {args.interval}; snapshots seen by the reader: {len(seen)}")
        print(f"produce-to-visible p50 {pct(0.5):.0f} ms, p90 {pct(0.9):.0f} ms, p99 {pct(0.99):.0f} ms, "
              f"max {latencies[-1]:.0f} ms")
        print(f"floe CPU           {cpu:.1f} s user+sys; peak RSS {hwm / 2**20:.0f} MiB")
        print(f"producer           {count - 1} records in {sent_for:.1f} s = {(count - 1) / sent_for:,.0f}/s achieved")
    finally:
        subprocess.run([os.path.join(REPO, "scripts/kafka.sh"), "stop", f"{work}/kafka"], capture_output=True)
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
