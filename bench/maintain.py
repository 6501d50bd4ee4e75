#!/usr/bin/env python3
"""Compaction benchmark: query time of a simple aggregate over a table after many small commits
(an hour of 1 s commits = 3600), before and after `floe maintain compact`, and after
`floe maintain expire-snapshots`. The query runs in DuckDB (iceberg extension) on the table's
current metadata file; the median of 5 runs after one warm-up is reported.

Not a test: nothing is asserted; the figures go into docs/benchmarks.md with the machine.

    bench/maintain.py [--commits 3600] [--rows 50] [--dir DIR] [--floe PATH] [--generator PATH]

The table is made by examples/small_commits.rs (the library's own commits with a pipeline ledger,
no Kafka): build it with `cargo build --example small_commits` and floe with `cargo build`.
Run it with the test venv's Python (~/.cache/floe/venv/bin/python).
"""
import argparse
import glob
import os
import statistics
import subprocess
import sys
import tempfile
import time

import duckdb
from pyiceberg.catalog.sql import SqlCatalog

TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/floe/target"))
QUERY = "SELECT kind, count(*), round(sum(value), 3), epoch_us(max(ts)) FROM iceberg_scan('{m}') GROUP BY kind ORDER BY kind"


def duckdb_connect():
    import duckdb_extension_avro
    import duckdb_extension_iceberg

    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    for module, name in ((duckdb_extension_avro, "avro"), (duckdb_extension_iceberg, "iceberg")):
        pattern = os.path.join(os.path.dirname(module.__file__), "extensions", "*", f"{name}.duckdb_extension")
        con.execute(f"LOAD '{glob.glob(pattern)[0]}'")
    return con


def measure(catalog, label):
    table = catalog.load_table("default.events")
    con = duckdb_connect()
    sql = QUERY.format(m=table.metadata_location)
    result = con.execute(sql).fetchall()  # warm-up (and the answer, compared across stages)
    times = []
    for _ in range(5):
        t = time.perf_counter()
        con.execute(sql).fetchall()
        times.append(time.perf_counter() - t)
    stats = {
        "label": label,
        "snapshots": len(table.metadata.snapshots),
        "data_files": len(table.inspect.files()),
        "manifests": len(table.inspect.manifests()),
        "median_s": statistics.median(times),
        "result": result,
    }
    print(f"{label}: {stats['snapshots']} snapshots, {stats['data_files']} data files, "
          f"{stats['manifests']} manifests; query median {stats['median_s']*1000:.0f} ms", file=sys.stderr)
    return stats


def timed(cmd):
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    took = time.perf_counter() - t
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{p.stdout}\n{p.stderr}")
    print(p.stdout.strip(), file=sys.stderr)
    return took


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--commits", type=int, default=3600)
    ap.add_argument("--rows", type=int, default=50)
    ap.add_argument("--dir", help="data dir (reused if it already holds the table)")
    ap.add_argument("--floe", default=os.path.join(TARGET, "debug", "floe"))
    ap.add_argument("--generator", default=os.path.join(TARGET, "debug", "examples", "small_commits"))
    args = ap.parse_args()
    data_dir = os.path.abspath(args.dir or tempfile.mkdtemp(prefix="floe-bench-maintain-"))
    if not os.path.exists(os.path.join(data_dir, "catalog.db")):
        took = timed([args.generator, data_dir, str(args.commits), str(args.rows)])
        print(f"made {args.commits} commits in {took:.0f} s", file=sys.stderr)
    catalog = SqlCatalog("floe", uri=f"sqlite:///{data_dir}/catalog.db", warehouse=f"file://{data_dir}/warehouse")
    floe = [args.floe, "--data-dir", data_dir, "--log", "warn", "maintain", "--table", "default.events"]

    before = measure(catalog, "after small commits")
    compact_s = timed([*floe, "compact", "--target-file-size", "128MiB"])
    compacted = measure(catalog, "after compaction")
    expire_s = timed([*floe, "expire-snapshots", "--older-than", "0s", "--retain-last", "1"])
    expired = measure(catalog, "after expiry")
    assert before["result"] == compacted["result"] == expired["result"], "the answer changed"

    print("| table state | snapshots | data files | manifests | query (median of 5) |")
    print("|---|---:|---:|---:|---:|")
    for s in (before, compacted, expired):
        print(f"| {s['label']} | {s['snapshots']} | {s['data_files']} | {s['manifests']} | {s['median_s']*1000:.0f} ms |")
    print(f"\ncompaction took {compact_s:.1f} s, expiry {expire_s:.1f} s (wall, including process start)")


if __name__ == "__main__":
    main()
