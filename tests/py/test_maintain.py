"""floe maintain against tables that pyiceberg writes: pyiceberg and DuckDB must read exactly the
same rows before and after floe compacts, expires and trims them, and pyiceberg must be able to
keep committing afterwards (DESIGN.md §8: other engines' metadata is carried forward exactly)."""

from __future__ import annotations

import math
import os
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
from conftest import duckdb_connect
from test_trino import trino_server, trino_table  # noqa: F401 - fixtures of the Trino test below

DDL = (
    "CREATE TABLE events (id BIGINT, ts TIMESTAMP(6) WITH TIME ZONE, payload VARCHAR) "
    "WITH (partitioning = ARRAY['day(ts)'])"
)
LEDGER_KEY = "floe.ledger.maint"
LEDGER = '{"events":{"0":12345}}'


def rows_for(table, ids: range, base: datetime, spread_days: int = 3) -> pa.Table:
    rows = [
        {"id": i, "ts": base - timedelta(days=i % spread_days, seconds=i % 997), "payload": f"row {i} " + "x" * 40}
        for i in ids
    ]
    return pa.Table.from_pylist(rows, schema=table.schema().as_arrow())


def pyiceberg_rows(table) -> list[tuple]:
    t = table.scan(selected_fields=("id", "ts")).to_arrow()
    return sorted(zip(t.column("id").to_pylist(), (x.timestamp() for x in t.column("ts").to_pylist())))


def duckdb_rows(table) -> list[tuple]:
    con = duckdb_connect()
    got = con.execute(f"SELECT id, epoch_us(ts) FROM iceberg_scan('{table.metadata_location}') ORDER BY id").fetchall()
    return sorted((i, us / 1e6) for i, us in got)


def live_files(table) -> list:
    return list(table.inspect.files().to_pylist())


def test_compaction_of_300_pyiceberg_commits(catalog):
    catalog.floe.run("table", "create", DDL)
    cat = catalog.pyiceberg()
    table = cat.load_table("default.events")
    with table.transaction() as tx:
        tx.set_properties({LEDGER_KEY: LEDGER})
    base = datetime.now(timezone.utc).replace(microsecond=0)
    for c in range(300):
        table.append(rows_for(table, range(c * 20, c * 20 + 20), base))
    # A foreign delete: its DELETED manifest entries must never come back as live files.
    table.delete("id < 600")
    table = cat.load_table("default.events")
    before = pyiceberg_rows(table)
    assert len(before) == 6000 - 600
    assert duckdb_rows(table) == before

    files = live_files(table)
    bytes_per_day = Counter()
    for f in files:
        bytes_per_day[str(f["partition"])] += f["file_size_in_bytes"]
    target = 1 << 20
    out = catalog.floe.run("maintain", "--table", "default.events", "compact", "--target-file-size", "1MiB").stdout
    assert "committed snapshot" in out, out

    table = cat.load_table("default.events")
    snap = table.current_snapshot()
    assert snap.summary.operation.value == "replace"
    summary = snap.summary.additional_properties
    assert summary["total-records"] == str(len(before)), summary
    assert summary["total-data-files"] == str(len(live_files(table))), summary
    files_per_day = Counter(str(f["partition"]) for f in live_files(table))
    for day, nbytes in bytes_per_day.items():
        assert files_per_day[day] <= math.ceil(nbytes / target) + 1, (day, files_per_day[day], nbytes)
    assert sum(files_per_day.values()) < len(files) / 10
    assert len(table.inspect.manifests()) <= 2
    assert pyiceberg_rows(table) == before
    assert duckdb_rows(table) == before
    assert table.properties[LEDGER_KEY] == LEDGER

    # pyiceberg keeps committing on floe's metadata.
    table.append(rows_for(table, range(10_000, 10_010), base))
    table = cat.load_table("default.events")
    assert len(pyiceberg_rows(table)) == len(before) + 10
    assert duckdb_rows(table) == pyiceberg_rows(table)


def test_expiry_retention_and_orphans(catalog):
    catalog.floe.run("table", "create", DDL)
    cat = catalog.pyiceberg()
    table = cat.load_table("default.events")
    with table.transaction() as tx:
        tx.set_properties({LEDGER_KEY: LEDGER})
    base = datetime.now(timezone.utc)
    for c in range(10):
        table.append(rows_for(table, range(c * 100, c * 100 + 100), base, spread_days=6))
    table = cat.load_table("default.events")
    rows = pyiceberg_rows(table)

    def per_day(rs):
        return Counter(datetime.fromtimestamp(t, timezone.utc).date() for _, t in rs)

    # Retention: keep 3.5 days.
    cutoff = base.timestamp() - 3.5 * 86400
    dry = catalog.floe.run("maintain", "--table", "default.events", "--dry-run", "retention", "--column", "ts", "--keep", "3d 12h").stdout
    assert "would remove" in dry, dry
    assert pyiceberg_rows(cat.load_table("default.events")) == rows
    catalog.floe.run("maintain", "--table", "default.events", "retention", "--column", "ts", "--keep", "3d 12h")
    table = cat.load_table("default.events")
    after = pyiceberg_rows(table)
    # Rows within a few seconds of the cutoff depend on when floe ran; none are generated there.
    expected = [r for r in rows if r[1] >= cutoff]
    assert after == expected
    assert duckdb_rows(table) == expected
    want_days, got_days = per_day(expected), per_day(after)
    assert got_days == want_days, (per_day(rows), got_days)
    assert table.current_snapshot().summary.operation.value in ("delete", "overwrite")

    # Expiry: everything but the newest snapshot; the ledger stays; no unreachable file remains.
    catalog.floe.run("maintain", "--table", "default.events", "expire-snapshots", "--older-than", "0s", "--retain-last", "1")
    table = cat.load_table("default.events")
    assert len(table.metadata.snapshots) == 1
    assert table.properties[LEDGER_KEY] == LEDGER
    assert pyiceberg_rows(table) == expected
    assert duckdb_rows(table) == expected
    location = Path(table.location().removeprefix("file://"))
    on_disk = {p for p in location.rglob("*") if p.is_file() and not p.name.endswith(".metadata.json")}
    reachable = {Path(table.current_snapshot().manifest_list.removeprefix("file://"))}
    for m in table.inspect.manifests().to_pylist():
        reachable.add(Path(m["path"].removeprefix("file://")))
    for f in live_files(table):
        reachable.add(Path(f["file_path"].removeprefix("file://")))
    assert on_disk - reachable == set(), sorted(on_disk - reachable)

    # Orphans: an old unreferenced file goes, a young one and every referenced file stay.
    old = datetime.now().timestamp() - 5 * 86400
    orphan = location / "data" / "crashed.parquet"
    young = location / "data" / "in-flight.parquet"
    orphan.write_bytes(b"x")
    young.write_bytes(b"x")
    for p in location.rglob("*"):
        if p.is_file() and p != young:
            os.utime(p, (old, old))
    out = catalog.floe.run("maintain", "--table", "default.events", "remove-orphans", "--older-than", "3d").stdout
    assert not orphan.exists() and young.exists(), out
    table = cat.load_table("default.events")
    assert pyiceberg_rows(table) == expected
    assert duckdb_rows(table) == expected


def test_scheduled_compaction_beside_a_loader_under_load(tmp_path, floe_bin, kafka_bootstrap, procs):
    """`floe run` with `[maintenance] compact_every`: the loader's commits keep landing every
    interval while compactions replace its files, and every id is in the table exactly once."""
    from loader_harness import Pipeline, assert_each_id_once

    n = 30_000
    p = Pipeline(tmp_path / "sched", floe_bin, kafka_bootstrap, procs, prefix="floe-maint")
    p.write_config(interval="1s")
    with open(p.config, "a") as f:
        f.write('\n[maintenance]\ncompact_every = "3s"\ntarget_file_size = "1MiB"\n'
                'expire_every = "5s"\nexpire_older_than = "10s"\nretain_last = 5\n')
    p.create_table()
    publisher = p.publish_in_background(n, 1, 2, rate=1500, spread="2d")
    loader = p.start_loader("maint")
    publisher.join(timeout=120)
    p.wait_rows(n, timeout=120, alive=[loader])
    loader.sigterm_ok()

    log = loader.log()
    assert "table maintenance scheduled" in log, loader.tail()
    table = p.table()
    assert_each_id_once(p.ids().to_pylist(), range(1, n + 1))
    assert p.ledger() == p.end_offsets()
    history = [(s.timestamp_ms, s.summary.operation.value, s.summary.additional_properties) for s in table.metadata.snapshots]
    replaces = [h for h in history if h[1] == "replace"]
    committed = log.count("batch committed")
    assert log.count("task=Compact") >= 2, loader.tail(80)
    assert committed >= 15, f"only {committed} loader commits in ~20 s of load"
    # Expiry ran too: old snapshots are gone, the ledger is still there.
    assert len(history) < committed, f"{len(history)} snapshots left of {committed}+ commits"
    files = live_files(table)
    assert len(files) < committed, f"{len(files)} data files after compaction, {committed} commits"
    print(f"{committed} loader commits, {len(replaces)} replace snapshots still in the history, {len(files)} live files")


def test_floe_and_trino_maintenance_while_floe_ingests(trino_table):
    """floe's maintenance and Trino's on one table while floe's loader keeps ingesting: floe
    compacts around Trino's position deletes (never bringing deleted rows back), Trino optimizes
    floe's compacted table, floe expires everything Trino and floe left; every id is counted
    through Trino and pyiceberg afterwards (test_trino.Ingesting)."""
    from test_trino import Ingesting, instant

    tt = trino_table("fmaint")
    run = Ingesting(tt, "fmaint", seeded=20_000, spread="3d")

    def floe(*args: str) -> str:
        p = run.p.floe("maintain", *args, timeout=300)
        assert p.returncode == 0, f"floe maintain {args} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
        run.log.append(f"floe maintain {' '.join(args)}: {p.stdout.strip()}")
        return p.stdout

    out = floe("compact", "--target-file-size", "4MiB")
    assert "committed snapshot" in out, out
    run.floe_commits_again("floe's compaction")

    stamps = {rid: instant(r["timestamp"]) for rid, r in run.seeded.records.items()}
    cutoff = sorted(stamps.values())[len(stamps) * 2 // 5]
    removed = {rid for rid, ts in stamps.items() if ts < cutoff}
    cutoff_sql = cutoff.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f UTC")
    res = run.trino(f"DELETE FROM {{t}} WHERE timestamp < TIMESTAMP '{cutoff_sql}'")
    assert res.update_count == len(removed)
    run.floe_commits_again("Trino's delete")
    # Files Trino's position deletes apply to are left alone; the rest is compacted.
    floe("compact", "--target-file-size", "4MiB")
    run.floe_commits_again("floe's compaction around the deletes")
    assert tt.q("SELECT count(*) FROM {t} WHERE id IN (" + ",".join(map(str, sorted(removed)[:500])) + ")").scalar() == 0

    run.trino("ALTER TABLE {t} EXECUTE optimize")
    run.floe_commits_again("Trino's optimize")
    floe("compact", "--target-file-size", "4MiB")
    floe("expire-snapshots", "--older-than", "0s", "--retain-last", "1")
    run.floe_commits_again("floe's expiry")
    floe("remove-orphans", "--older-than", "1h")
    run.finish(removed)


def test_branch_and_tag_retention_survive_floe_appends_compaction_and_expiry(tmp_path, floe_bin, kafka_bootstrap, procs):
    """Retention that pyiceberg sets (main's own, a branch's, a tag's, the table's
    history.expire.* defaults) is carried through floe's appends and compaction unchanged, and
    floe's expiry applies exactly Iceberg's rules to it (DESIGN.md §8)."""
    from loader_harness import Pipeline, assert_each_id_once

    p = Pipeline(tmp_path / "refs", floe_bin, kafka_bootstrap, procs, prefix="floe-refs")
    p.write_config(interval="1s")
    with open(p.config, "a") as f:
        f.write("\n[maintenance]\nenabled = false\n")
    p.create_table()
    table = p.table()
    base = datetime.now(timezone.utc).replace(microsecond=0)
    arrow = table.schema().as_arrow()
    for c in range(6):
        rows = [{"id": 100_000 + c * 10 + i, "timestamp": base - timedelta(hours=i)} for i in range(10)]
        table.append(pa.Table.from_pylist(rows, schema=arrow))
    table = p.table()
    snaps = [s.snapshot_id for s in table.snapshots()]
    assert len(snaps) == 6
    rows_at = {sid: table.scan(snapshot_id=sid).count() for sid in snaps}
    main_retention = {"min_snapshots_to_keep": 3, "max_snapshot_age_ms": 1, "max_ref_age_ms": 10 * 86_400_000}
    (
        table.manage_snapshots()
        .create_branch(snaps[-1], "main", **main_retention)
        .create_branch(snaps[1], "audit", min_snapshots_to_keep=2, max_snapshot_age_ms=1)
        .create_tag(snaps[2], "keep")
        .create_tag(snaps[3], "old", max_ref_age_ms=1)
        .commit()
    )
    with p.table().transaction() as tx:
        # Everything is old by the table's default age; one snapshot per branch at least.
        tx.set_properties({"history.expire.max-snapshot-age-ms": "1", "history.expire.min-snapshots-to-keep": "1"})

    def refs(t) -> dict[str, tuple]:
        return {
            name: (r.snapshot_id, r.snapshot_ref_type.value, r.min_snapshots_to_keep, r.max_snapshot_age_ms, r.max_ref_age_ms)
            for name, r in t.metadata.refs.items()
        }

    before = refs(p.table())
    assert before["main"][2:] == (3, 1, 10 * 86_400_000), before

    # floe appends: several loader commits on top.
    n = 3000
    publisher = p.publish_in_background(n, 1, 1, rate=1000)
    loader = p.start_loader("refs")
    publisher.join(timeout=120)
    p.wait_rows(n + 60, timeout=120, alive=[loader])
    loader.sigterm_ok()
    table = p.table()
    after = refs(table)
    floe_snaps = [s for s in table.snapshots() if s.snapshot_id not in rows_at]
    assert len(floe_snaps) >= 2, "the loader committed more than once"
    assert after["main"][0] == table.current_snapshot().snapshot_id != snaps[-1]
    assert after["main"][1:] == before["main"][1:], "floe's appends keep main's retention"
    assert {k: v for k, v in after.items() if k != "main"} == {k: v for k, v in before.items() if k != "main"}

    # floe's compaction: main moves, its retention and every other ref stay.
    out = p.floe("maintain", "compact", "--target-file-size", "1MiB")
    assert out.returncode == 0 and "committed snapshot" in out.stdout, out.stdout + out.stderr
    table = p.table()
    assert table.current_snapshot().summary.operation.value == "replace"
    after = refs(table)
    assert after["main"][1:] == before["main"][1:], "compaction keeps main's retention"
    assert {k: v for k, v in after.items() if k != "main"} == {k: v for k, v in before.items() if k != "main"}

    # floe's expiry, with the table's defaults (no --older-than): Iceberg's rules.
    history = [s.snapshot_id for s in table.snapshots()]
    main_chain = []
    s = table.current_snapshot()
    while s is not None:
        main_chain.append(s.snapshot_id)
        s = table.snapshot_by_id(s.parent_snapshot_id) if s.parent_snapshot_id else None
    out = p.floe("maintain", "expire-snapshots")
    assert out.returncode == 0, out.stdout + out.stderr
    table = p.table()
    kept = {s.snapshot_id for s in table.snapshots()}
    # main keeps its own 3; audit its 2 (snaps[1] and its parent snaps[0]); the tag "keep" its
    # snapshot; the tag "old" is past its max-ref-age and goes, and with it snaps[3].
    want = set(main_chain[:3]) | {snaps[1], snaps[0], snaps[2]}
    assert kept == want, (sorted(kept), sorted(want), history)
    after = refs(table)
    assert set(after) == {"main", "audit", "keep"}, after
    assert after["main"][1:] == before["main"][1:]
    assert after["audit"] == before["audit"] and after["keep"] == before["keep"]
    # What is kept still reads: main's rows, and the branch and tag as they were.
    assert_each_id_once(sorted(i for i in p.ids().to_pylist() if i < 100_000), range(1, n + 1))
    for sid in (snaps[0], snaps[1], snaps[2]):
        assert table.scan(snapshot_id=sid).count() == rows_at[sid]
    assert p.ledger() == p.end_offsets()
