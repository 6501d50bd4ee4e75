#!/usr/bin/env python3
"""Loader throughput benchmark: preload N seed-shaped records into a topic, then time `floe run`
from start until its ledger covers all of them.

Prints sustained rows/s and MB/s (of Kafka payload), CPU use of the floe process (user+sys over
wall), its peak RSS, and commit latency percentiles (from the loader's `batch committed` log lines).
Not a test: nothing is asserted; the figures go into docs/benchmarks.md with the machine.

    bench/loader.py [--records 2000000] [--partitions 4] [--interval 5s] [--floe PATH] [--kafka HOST:PORT]

Without --kafka it starts a throwaway broker with scripts/kafka.sh. Build the binary with
`cargo build --release --no-default-features` first (the default is target/release/floe under
$CARGO_TARGET_DIR or ~/.cache/floe/target).
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

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TABLE = (
    "CREATE TABLE events (id BIGINT, bool BOOLEAN, floating DOUBLE, integer BIGINT, string VARCHAR, "
    "bools ARRAY(BOOLEAN), floatings ARRAY(DOUBLE), integers ARRAY(BIGINT), strings ARRAY(VARCHAR), "
    "string_map MAP(VARCHAR, VARCHAR), nested ROW(key VARCHAR, value BIGINT), "
    "timestamp TIMESTAMP(6) WITH TIME ZONE) WITH (partitioning = ARRAY['day(timestamp)'])"
)


def proc_stats(pid):
    """(user+sys seconds, peak RSS bytes) of a live process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    hwm = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) * 1024
    return cpu, hwm


def ledger_total(floe, cfg):
    out = subprocess.run([floe, "--config", cfg, "table", "describe", "default.events"],
                         capture_output=True, text=True, check=True).stdout
    m = re.search(r"floe\.ledger\.\S+ = (\{.*\})", out)
    if not m:
        return 0
    return sum(sum(p.values()) for p in json.loads(m.group(1)).values())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=2_000_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--interval", default="5s")
    target = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/floe/target"))
    ap.add_argument("--floe", default=os.path.join(target, "release", "floe"))
    ap.add_argument("--kafka")
    ap.add_argument("--topic", default="bench")
    ap.add_argument("--reuse", action="store_true",
                    help="with --kafka: read the records already in --topic (preloaded by an earlier run) instead of preloading")
    ap.add_argument("--perf", action="store_true", help="profile floe with `perf record` and print where its time goes")
    ap.add_argument("--workers", type=int, help="commit.workers (default: the cores available)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (perf.data, the run's log)")
    ap.add_argument("--kafka-prop", action="append", default=[], metavar="KEY=VALUE",
                    help="a librdkafka property for floe's consumer (repeatable)")
    ap.add_argument("--commit-prop", action="append", default=[], metavar="KEY=VALUE",
                    help="a [commit] key, its VALUE in TOML (repeatable), e.g. max_buffered_bytes='\"64MiB\"'")
    args = ap.parse_args()
    if not os.path.exists(args.floe):
        sys.exit(f"{args.floe} not found: cargo build --release --no-default-features")

    work = tempfile.mkdtemp(prefix="floe-bench-")
    started_kafka = False
    bootstrap = args.kafka
    if not bootstrap:
        out = subprocess.run([os.path.join(REPO, "scripts/kafka.sh"), "start", f"{work}/kafka"],
                             capture_output=True, text=True, check=True)
        bootstrap = out.stdout.strip().splitlines()[-1]
        started_kafka = True
    try:
        cfg = os.path.join(work, "floe.toml")
        with open(cfg, "w") as f:
            kafka = "".join(f'"{k}" = "{v}"\n' for k, v in (kv.split("=", 1) for kv in args.kafka_prop))
            commit = "".join(f"{k} = {v}\n" for k, v in (kv.split("=", 1) for kv in args.commit_prop))
            f.write(f'data_dir = "{work}/data"\n[kafka]\n"bootstrap.servers" = "{bootstrap}"\n'
                    f'"group.id" = "bench-{os.getpid()}-{int(time.time())}"\n{kafka}[source]\ntopics = ["{args.topic}"]\n[table]\nname = "default.events"\n'
                    f'[commit]\ninterval = "{args.interval}"\n'
                    + (f"workers = {args.workers}\n" if args.workers else "") + commit)
        subprocess.run([args.floe, "--config", cfg, "table", "create", TABLE], check=True, capture_output=True)
        if not args.reuse:
            t = time.time()
            subprocess.run([args.floe, "--config", cfg, "publish-sample", "--topic", args.topic,
                            "--count", str(args.records), "--partitions", str(args.partitions), "--spread", "3d"],
                           check=True, stdout=subprocess.DEVNULL)
            print(f"preloaded {args.records} records in {time.time() - t:.1f}s", flush=True)
        payload = sample_payload_bytes(args.floe, cfg, args.records)

        log_path = os.path.join(work, "run.log")
        with open(log_path, "w") as log:
            t0 = time.time()
            proc = subprocess.Popen([args.floe, "--config", cfg, "run"], stdout=log, stderr=log)
            perf = None
            if args.perf:
                perf = subprocess.Popen(["perf", "record", "-F", "199", "-g", "-p", str(proc.pid), "-o",
                                         os.path.join(work, "perf.data")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            cpu = hwm = 0
            while True:
                time.sleep(0.5)
                cpu, hwm = proc_stats(proc.pid)
                if ledger_total(args.floe, cfg) >= args.records:
                    break
                if proc.poll() is not None:
                    sys.exit(f"floe run exited early; see {log_path}")
            wall = time.time() - t0
            if perf:
                perf.send_signal(signal.SIGINT)
                perf.wait(timeout=60)
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        latencies = []
        with open(log_path) as f:
            for line in f:
                if "batch committed" in line:
                    m = re.search(r"millis\D*(\d+)", line)
                    if m:
                        latencies.append(int(m.group(1)))
        latencies.sort()
        pct = lambda p: latencies[min(len(latencies) - 1, int(p * len(latencies)))] if latencies else 0
        print(f"records            {args.records} over {args.partitions} partitions, commit interval {args.interval}")
        print(f"wall time          {wall:.1f} s (start to ledger covering every record; includes startup)")
        print(f"rows/s             {args.records / wall:,.0f}")
        print(f"MB/s (JSON)        {payload / wall / 1e6:.1f}")
        print(f"CPU                {cpu:.1f} s user+sys = {cpu / wall:.2f} cores, "
              f"{cpu / (args.records / 1e6):.2f} CPU-s per million rows")
        print(f"peak RSS           {hwm / 2**20:.0f} MiB")
        print(f"commits            {len(latencies)}; commit latency p50 {pct(0.5)} ms, p99 {pct(0.99)} ms, max {pct(1.0)} ms")
        if args.perf:
            report = subprocess.run(["perf", "report", "-i", os.path.join(work, "perf.data"), "--stdio",
                                     "--no-children", "--sort", "comm,dso", "-g", "none", "--percent-limit", "1"],
                                    capture_output=True, text=True).stdout
            print("where floe's CPU goes (threads and libraries):")
            print("\n".join(l for l in report.splitlines() if l and not l.startswith("#")))
            report = subprocess.run(["perf", "report", "-i", os.path.join(work, "perf.data"), "--stdio",
                                     "--no-children", "--sort", "sym", "-g", "none", "--percent-limit", "1.5"],
                                    capture_output=True, text=True).stdout
            print("hottest functions:")
            print("\n".join(l[:150] for l in report.splitlines() if l and not l.startswith("#")))
    finally:
        if started_kafka:
            subprocess.run([os.path.join(REPO, "scripts/kafka.sh"), "stop", f"{work}/kafka"], capture_output=True)
        if args.keep:
            print(f"kept {work} (perf.data, run.log)")
        else:
            subprocess.run(["rm", "-rf", work])


def sample_payload_bytes(floe, cfg, n):
    """Average JSON size from 1000 printed samples, times n."""
    out = subprocess.run([floe, "--config", cfg, "publish-sample", "--topic", "bench-size",
                          "--count", "1000", "--print"], capture_output=True, text=True, check=True).stdout
    lines = [l for l in out.splitlines() if l.startswith("{")]
    return sum(len(l.encode()) for l in lines) / len(lines) * n


if __name__ == "__main__":
    main()
