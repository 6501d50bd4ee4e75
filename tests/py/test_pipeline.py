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
