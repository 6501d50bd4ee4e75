"""The overlapped loader (issue 14): while one batch commits, the next is read and decoded. These
tests hold a commit in flight for as long as they like, with a real lock on the PostgreSQL
catalog's row of the table (floe's conditional update waits for it), and then kill the process or
take its partitions away. Every id must be in the table exactly once in the end, read by pyiceberg.
"""

from __future__ import annotations

import time
import uuid

import psycopg2
import pytest

from conftest import required_env
from loader_harness import (
    CatalogSpec,
    Pipeline,
    assert_each_id_once,
    assert_snapshot_ranges_tile,
)

PARTITIONS = 4
BACKLOG = 20_000
STREAMED = 20_000
RATE = 4_000


@pytest.fixture
def pg_pipeline(tmp_path, floe_bin, kafka_bootstrap, procs):
    pg = required_env("FLOE_TEST_POSTGRES")
    spec = CatalogSpec("postgres", f"floe_{uuid.uuid4().hex[:12]}", pg)
    p = Pipeline(tmp_path / "p", floe_bin, kafka_bootstrap, procs, catalog=spec, prefix="floe-overlap")
    p.write_config(interval="500ms")
    p.create_table()
    return p


class RowLock:
    """Holds PostgreSQL's row lock on the table's catalog row: every commit to the table waits."""

    def __init__(self, p: Pipeline) -> None:
        self.conn = psycopg2.connect(p.catalog_spec.pg_uri)
        self.conn.autocommit = False
        cur = self.conn.cursor()
        cur.execute(
            "SELECT metadata_location FROM iceberg_tables WHERE catalog_name = %s AND table_name = 'events' FOR UPDATE",
            (p.catalog_spec.name,),
        )
        assert cur.fetchone() is not None, "the table's catalog row was not found"

    def release(self) -> None:
        self.conn.rollback()
        self.conn.close()


def snapshots(p: Pipeline) -> int:
    return len(p.table().metadata.snapshots)


def test_sigkill_while_a_batch_waits_for_its_commit(pg_pipeline):
    p = pg_pipeline
    first = p.publish(BACKLOG, 1, PARTITIONS, spread="1d")
    streaming = p.publish_in_background(STREAMED, BACKLOG + 1, PARTITIONS, rate=RATE, spread="1d")
    loader = p.start_loader("held")
    loader.wait_log("batch committed", timeout=60)
    lock = RowLock(p)
    try:
        before = snapshots(p)
        time.sleep(3)  # the in-flight commit waits; the next batch accumulates behind it
        loader.assert_running("while its commit is held")
        assert snapshots(p) == before, "a commit landed while the catalog row was locked: the test holds nothing"
        loader.sigkill()
    finally:
        lock.release()
    total = len(first.ids) + len(streaming.join(timeout=60).ids)
    again = p.start_loader("again")
    p.wait_rows(total, timeout=120, alive=[again])
    again.sigterm_ok()
    assert_each_id_once(p.ids().to_pylist(), range(1, total + 1))
    assert_snapshot_ranges_tile(p.table(), p.topic, p.end_offsets())


def test_revocation_waits_for_the_commit_in_flight(pg_pipeline):
    p = pg_pipeline
    first = p.publish(BACKLOG, 1, PARTITIONS, spread="1d")
    streaming = p.publish_in_background(STREAMED, BACKLOG + 1, PARTITIONS, rate=RATE, spread="1d")
    a = p.start_loader("a")
    a.wait_log("batch committed", timeout=60)
    lock = RowLock(p)
    try:
        # A commit that won the row before the lock has logged its line within this settle time.
        time.sleep(1)
        committed_before = a.count("batch committed")
        b = p.start_loader("b")
        # The group rebalances; `a` must not give up its partitions before its commit is in.
        b.wait_log("joining the consumer group", timeout=30)
        time.sleep(6)  # the window observed: the rebalance is under way, nothing may be given up
        assert a.count("partitions revoked") == 0, "partitions were revoked while their commit was held"
        assert a.count("batch committed") == committed_before
    finally:
        lock.release()
    a.wait_log("partitions revoked", timeout=60)
    log = a.log()
    revoked_at = log.index("partitions revoked")
    assert log[:revoked_at].count("batch committed") > committed_before, (
        "the batch in flight was not committed before the partitions were given up"
    )
    total = len(first.ids) + len(streaming.join(timeout=60).ids)
    p.wait_rows(total, timeout=120, alive=[a, b])
    a.sigterm_ok()
    b.sigterm_ok()
    assert_each_id_once(p.ids().to_pylist(), range(1, total + 1))
    assert_snapshot_ranges_tile(p.table(), p.topic, p.end_offsets())


DLQ = "default.events_dlq"
CHECK = """
[[checks]]
column = "integer"
check = "range"
min = 0
max = 999
action = "dead_letter"
"""


def test_parallel_decoding_writes_what_one_thread_writes(tmp_path, floe_bin, kafka_bootstrap, procs):
    """With commit.workers = 4 each run of records the consumer hands over is decoded on four
    threads; the table must come out as one thread makes it: the same rows, the same dead letters
    (bad records and rows a dead_letter check sets aside), the same columns added by auto_evolve
    in the middle of a run, with the values of the records that brought them."""
    from loader_harness import create_topic, end_offsets, produce_json, wait_ledger

    one = Pipeline(tmp_path / "one", floe_bin, kafka_bootstrap, procs, prefix="floe-dec1")
    four = Pipeline(tmp_path / "four", floe_bin, kafka_bootstrap, procs, prefix="floe-dec4")
    four.topic = one.topic
    create_topic(kafka_bootstrap, one.topic, 2)
    records = []
    for i in range(12_000):
        r = {"id": i, "integer": i % 1000, "string": f"s{i}", "timestamp": f"2026-11-{1 + i % 3:02d}T10:00:00Z"}
        if i % 250 == 7:
            r["id"] = f"not a number {i}"  # a dead letter
        if i % 400 == 11:
            r["integer"] = 5000 + i  # fails the check: set aside as a dead letter
        if i in (3001, 3003):
            r["extra_a"] = i  # auto_evolve adds extra_a mid-run
        if i == 8001:  # the same partition as 3001 and 3003: the columns come in this order
            r["extra_b"] = f"b{i}"
        records.append(r)
    for part in (0, 1):
        produce_json(kafka_bootstrap, one.topic, [r for k, r in enumerate(records) if k % 2 == part], partition=part)
    ends = end_offsets(kafka_bootstrap, one.topic)
    assert sum(ends.values()) == len(records)

    results = {}
    for p, workers in ((one, 1), (four, 4)):
        p.write_config(interval="500ms", commit={"workers": workers}, dead_letter={"table": DLQ},
                       schema={"auto_evolve": True}, extra=CHECK)
        p.create_table()
        loader = p.start_loader(log="debug")
        wait_ledger(p, ends, timeout=120, alive=[loader])
        loader.sigterm_ok()
        table = p.table()
        columns = [f.name for f in table.schema().fields]
        rows = sorted(table.scan().to_arrow().to_pylist(), key=lambda r: r["id"])
        letters = sorted((r["source_partition"], r["source_offset"], r["error_kind"], r["error_message"])
                         for r in p.catalog().load_table(DLQ).scan().to_arrow().to_pylist())
        results[workers] = (columns, rows, letters, loader)

    columns, rows, letters, _ = results[1]
    good = [r for i, r in enumerate(records) if i % 250 != 7 and i % 400 != 11]
    assert [r["id"] for r in rows] == [r["id"] for r in good], "one thread: every good id once"
    assert columns[-2:] == ["extra_a", "extra_b"], columns
    by_id = {r["id"]: r for r in rows}
    assert by_id[3001]["extra_a"] == 3001 and by_id[3003]["extra_a"] == 3003 and by_id[8001]["extra_b"] == "b8001"
    assert len(letters) == len(records) - len(good)
    four_columns, four_rows, four_letters, four_loader = results[4]
    assert four_columns == columns
    assert four_rows == rows, "four decoding threads wrote other rows than one"
    assert four_letters == letters, "four decoding threads set aside other records than one"
    # The four-thread run did take the parallel path (runs of 2048 records from a backlog).
    assert "decoded in parallel" in four_loader.log(), four_loader.tail()
