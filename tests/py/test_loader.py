"""`floe run` end to end (issue 3): real floe processes against the test broker, killed, frozen and
stopped, and the table read back by pyiceberg, an independent reader. Each test has its own topic,
consumer group (= pipeline) and data directory.

What is proved: every produced id is in the table exactly once with the values produced; the
table's ledger equals the topic's end offsets; the offset ranges recorded in the snapshots tile each
partition without overlap (no offset committed twice, none skipped).
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import time
import uuid
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pytest

from conftest import required_env
from loader_harness import (
    CatalogSpec,
    RestServer,
    NotYet,
    Pipeline,
    assert_each_id_once,
    assert_rows_equal,
    assert_snapshot_ranges_tile,
    assignment,
    ts_micros,
    wait_fetched,
    wait_idle,
    wait_until,
)


@pytest.fixture
def pipeline_factory(request, tmp_path, floe_bin, kafka_bootstrap, procs):
    made = []

    def make(name: str = "p", catalog: CatalogSpec | None = None) -> Pipeline:
        aws = warehouse = None
        if catalog is not None and catalog.kind == "glue":
            # Glue (moto) with the table on S3 (moto): the AWS setup floe is for.
            aws = request.getfixturevalue("aws")
            warehouse = f"s3://{aws.new_bucket()}/warehouse"
        elif catalog is not None and catalog.kind == "rest" and catalog.rest_uri != os.environ.get("FLOE_TEST_REST"):
            # The REST server on S3 (catalog_spec "rest-s3"): floe writes the data files there too.
            aws = request.getfixturevalue("aws")
        p = Pipeline(tmp_path / name, floe_bin, kafka_bootstrap, procs, catalog=catalog, prefix=f"floe-{name}",
                     aws=aws, warehouse=warehouse)
        made.append(p)
        return p

    return make


def catalog_spec(request, kind: str) -> CatalogSpec | None:
    if kind == "rest":
        return CatalogSpec.rest(required_env("FLOE_TEST_REST"))
    if kind == "rest-s3":
        # A REST catalog server of the test's own that keeps the tables on S3 (moto).
        aws = request.getfixturevalue("aws")
        bucket = aws.new_bucket()
        server = request.getfixturevalue("rest_server")("rest-s3", f"s3://{bucket}/warehouse",
                                                        RestServer.s3_env(aws, bucket))
        return CatalogSpec.rest(server.uri)
    if kind == "glue":
        return CatalogSpec.glue()
    return None


def assert_ledger_matches_topic(p: Pipeline, expected_total: int) -> dict[int, int]:
    ends = p.end_offsets()
    assert sum(ends.values()) == expected_total, f"the topic holds {sum(ends.values())} records, expected {expected_total}: {ends}"
    ledger = p.ledger()
    assert ledger is not None, f"no ledger property floe.ledger.{p.group}: {p.table().properties}"
    assert ledger == ends, f"ledger {ledger} differs from the topic's end offsets {ends}"
    return ends


# --- 1 ----------------------------------------------------------------------------------------


TOTAL = 200_000
BACKLOG = 50_000  # produced before the first loader starts
RATE = 4_000  # records/s for the rest, produced while loaders are killed (~37 s)
PARTITIONS = 4
KILLS = 8
SAMPLE = 1_000


def test_exactly_once_under_sigkill(pipeline_factory):
    seed = int(os.environ.get("FLOE_TEST_SEED") or random.SystemRandom().randrange(2**32))
    print(f"test_exactly_once_under_sigkill: seed {seed} (rerun with FLOE_TEST_SEED={seed})")
    rng = random.Random(seed)
    sample = set(rng.sample(range(1, TOTAL + 1), SAMPLE))

    p = pipeline_factory("sigkill")
    # Static membership: a restarted loader takes its predecessor's place in the group at once
    # instead of waiting out the dead member's session, so the kills land on a loader at work.
    p.write_config(interval="1s", kafka={"group.instance.id": f"{p.group}-member"})
    p.create_table()
    keep = sample.__contains__

    t0 = time.monotonic()
    produced = [p.publish(BACKLOG, 1, PARTITIONS, spread="2d", keep=keep)]
    # The loader is faster than the producer: the rest streams in at a fixed rate so that every
    # run, not just the first two, has records to read and commit when it is killed.
    streaming = p.publish_in_background(TOTAL - BACKLOG, BACKLOG + 1, PARTITIONS, rate=RATE, spread="2d", keep=keep)

    runs = []
    while len(runs) < KILLS or not streaming.done():
        assert len(runs) < 4 * KILLS, "production did not finish while the loaders were being killed"
        loader = p.start_loader(f"killed-{len(runs)}")
        delay = rng.uniform(1, 6)
        time.sleep(delay)  # the random moment of the kill, not a synchronisation
        loader.assert_running(f"before SIGKILL {len(runs)}")
        loader.sigkill()
        rows = p.committed_rows()
        commits = loader.count("batch committed")
        print(f"kill {len(runs)}: after {delay:.2f}s, {commits} commits in that run, table has {rows} rows")
        runs.append((round(delay, 2), commits, rows))
        assert rows <= TOTAL, f"{rows} rows after kill {len(runs)}: more than produced"
    working = sum(1 for _, commits, _ in runs if commits > 0)
    assert working >= len(runs) // 2, f"only {working} of {len(runs)} killed loaders had committed anything: the kills prove little ({runs})"

    produced.append(streaming.join(timeout=60))
    ids = [i for pr in produced for i in pr.ids]
    assert len(ids) == TOTAL and len(set(ids)) == TOTAL
    expected_rows = {k: v for pr in produced for k, v in pr.records.items()}
    assert set(expected_rows) == sample

    final = p.start_loader("final")
    final.wait_log("partition assigned", timeout=60)
    p.wait_rows(TOTAL, timeout=300, alive=[final])
    took = final.sigterm_ok(timeout=60)
    print(f"all {TOTAL} rows after {time.monotonic() - t0:.0f}s and {len(runs)} kills; final loader stopped in {took:.1f}s")

    assert_each_id_once(p.ids().to_pylist(), range(1, TOTAL + 1))
    assert_rows_equal(p.table(), expected_rows)
    ends = assert_ledger_matches_topic(p, TOTAL)
    assert len(ends) == PARTITIONS
    snapshots = assert_snapshot_ranges_tile(p.table(), p.topic, ends)
    print(f"{snapshots} floe snapshots, {final.count('batch fenced')} fenced batches in the final run")


# --- 2 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("catalog_kind", ["sqlite", "rest", "rest-s3", "glue"])
def test_zombie_is_fenced(request, pipeline_factory, catalog_kind):
    # On the REST catalog the fence is carried by the commit's requirements (docs/exactly-once.md),
    # also with the tables on S3 (rest-s3: the server writes metadata to moto's S3, floe the data);
    # on Glue by UpdateTable's VersionId (moto made to honour it: scripts/moto/floe_moto.py).
    p = pipeline_factory("zombie", catalog_spec(request, catalog_kind))
    # A commit every 3 s: a loader frozen ~1 s after a commit holds ~2 s of records.
    p.write_config(interval="3s", kafka={"max.poll.interval.ms": 60000})
    p.create_table()
    first = p.publish(1000, 1, 4)
    # Continuous production for ~40 s, through the whole scenario.
    producer = p.publish_in_background(20_000, 1001, 4, rate=500)

    a = p.start_loader("A")
    a.wait_log("batch committed", timeout=60)
    b = p.start_loader("B")

    def split():
        held_a, held_b = assignment(a.log(), p.topic), assignment(b.log(), p.topic)
        if not (held_a and held_b and not held_a & held_b and held_a | held_b == {0, 1, 2, 3}):
            raise NotYet(f"A holds {sorted(held_a)}, B holds {sorted(held_b)}")
        return held_a

    wait_until("A and B to share the 4 partitions", split, timeout=60, alive=[a, b])
    # A commits on its share of the partitions, then freezes holding what it read since.
    commits = a.count("batch committed")
    a.wait_log("batch committed", timeout=30, times=commits + 1)
    held_a = split()
    time.sleep(1.0)  # the moment of the freeze: between two of A's commits
    a.stop()
    frozen_at = time.monotonic()
    before = p.ledger()
    print(f"A frozen holding partitions {sorted(held_a)}; ledger {before}")

    def b_took_over():
        now = p.ledger() or {}
        behind = [q for q in held_a if now.get(q, 0) <= (before or {}).get(q, 0)]
        if behind:
            raise NotYet(f"ledger {now}; A's partitions {behind} not advanced by B yet")
        return True

    wait_until("B to commit A's partitions", b_took_over, timeout=90, interval=0.5, alive=[b])
    frozen_for = time.monotonic() - frozen_at
    assert frozen_for > 6, f"B committed A's partitions {frozen_for:.1f}s after A froze, before A's session could expire"
    resumed_at = len(a.log())
    a.cont()
    print(f"A resumed after {frozen_for:.1f}s")

    # A finds out: its buffered batch is fenced (or its partitions were revoked first), it rejoins
    # and commits again from the ledger.
    def a_recovered():
        after = a.log()[resumed_at:]
        if "batch committed" not in after:
            raise NotYet(f"A has not committed since it resumed ({after.count('batch fenced')} fenced)")
        return True

    wait_until("A to commit again after resuming", a_recovered, timeout=90, interval=0.5, alive=[a, b])

    rest = producer.join(timeout=120)
    total = len(first.ids) + len(rest.ids)
    p.wait_rows(total, timeout=120, alive=[a, b])
    a.sigterm_ok()
    b.sigterm_ok()

    assert_each_id_once(p.ids().to_pylist(), range(1, total + 1))
    ends = assert_ledger_matches_topic(p, total)
    assert_snapshot_ranges_tile(p.table(), p.topic, ends)
    if catalog_kind in ("rest-s3", "glue"):
        location = p.table().metadata_location
        assert location.startswith("s3://"), f"the table's metadata should be on S3 (moto): {location}"
    fenced = a.log()[resumed_at:].count("batch fenced")
    print(f"A after resuming: {fenced} 'batch fenced', B: {b.count('batch fenced')}; {total} ids once each")
    assert fenced >= 1, (
        "A was frozen holding records of partitions that B then committed; after resuming its batch "
        "should have been fenced\n" + a.tail(30)
    )


# --- 3 ----------------------------------------------------------------------------------------


FOREIGN_IDS = list(range(900_000_001, 900_000_006))


def foreign_rows(table) -> pa.Table:
    ts = datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc)
    rows = [
        {
            "id": i, "bool": i % 2 == 0, "floating": i / 7, "integer": -i, "string": f"foreign {i}",
            "bools": [True], "floatings": [1.5], "integers": [i], "strings": ["pyiceberg"],
            "string_map": [("engine", "pyiceberg")], "nested": {"key": "foreign", "value": i},
            "timestamp": ts + timedelta(days=i - FOREIGN_IDS[0]),
        }
        for i in FOREIGN_IDS
    ]
    return pa.Table.from_pylist(rows, schema=table.schema().as_arrow())


def test_foreign_commits_keep_the_ledger(pipeline_factory):
    n, m = 3000, 2000
    p = pipeline_factory("foreign")
    p.create_table()
    p.publish(n, 1, 2, spread="1d")
    loader = p.start_loader("first")
    p.wait_rows(n, timeout=120, alive=[loader])
    loader.sigterm_ok()
    ledger = assert_ledger_matches_topic(p, n)
    raw = p.table().properties[f"floe.ledger.{p.group}"]

    # A foreign append (pyiceberg), then expiry of every snapshot but the newest.
    table = p.table()
    table.append(foreign_rows(table))
    table = p.table()
    assert table.properties.get(f"floe.ledger.{p.group}") == raw, f"the foreign append lost the ledger: {table.properties}"
    old = [s.snapshot_id for s in table.metadata.snapshots if s.snapshot_id != table.metadata.current_snapshot_id]
    assert old, "expected floe's snapshots before the foreign one"
    table.maintenance.expire_snapshots().by_ids(old).commit()
    table = p.table()
    assert [s.snapshot_id for s in table.metadata.snapshots] == [table.metadata.current_snapshot_id]
    assert table.properties.get(f"floe.ledger.{p.group}") == raw, f"snapshot expiry lost the ledger: {table.properties}"
    assert table.scan().count() == n + len(FOREIGN_IDS)
    foreign_snapshot = table.metadata.current_snapshot_id

    p.publish(m, n + 1, 2, spread="1d")
    again = p.start_loader("again")
    p.wait_rows(n + m + len(FOREIGN_IDS), timeout=120, alive=[again])
    again.sigterm_ok()

    resumed = [line for line in again.log().splitlines() if "partition assigned" in line]
    assert len(resumed) == 2 and all("from_ledger=true" in line for line in resumed), (
        "the restarted loader should resume every partition from the table's ledger\n" + "\n".join(resumed)
    )
    for q, offset in ledger.items():
        assert any(f"/{q} start=Offset({offset})" in line for line in resumed), f"partition {q} should resume at {offset}: {resumed}"

    table = p.table()
    assert_each_id_once(p.ids().to_pylist(), [*range(1, n + m + 1), *FOREIGN_IDS])
    got = {r["id"]: r for r in table.scan().to_arrow().to_pylist() if r["id"] in FOREIGN_IDS}
    want = {r["id"]: r for r in foreign_rows(table).to_pylist()}
    for i in FOREIGN_IDS:
        g, w = got[i], want[i]
        assert ts_micros(g.pop("timestamp")) == ts_micros(w.pop("timestamp")), f"foreign row {i} timestamp changed"
        assert g == w, f"foreign row {i} changed: {g} != {w}"
    ends = assert_ledger_matches_topic(p, n + m)
    floe_after = [s for s in table.metadata.snapshots if s.summary and "floe.offsets" in s.summary.additional_properties]
    assert floe_after and floe_after[0].parent_snapshot_id == foreign_snapshot, "floe's commit should build on the foreign snapshot"
    ranges = ",".join(s.summary.additional_properties["floe.offsets"] for s in floe_after)
    for q, offset in ledger.items():
        assert f"{p.topic}/{q}:{offset}-" in ranges, f"floe's new snapshots should start partition {q} at {offset}: {ranges}"
    assert ends == p.ledger()


# --- 4 ----------------------------------------------------------------------------------------


def test_graceful_stop_commits_buffered(pipeline_factory):
    n = 20_000
    p = pipeline_factory("graceful")
    # Nothing commits on its own within the test; librdkafka's fetch debug log shows when the
    # client has read each partition to its end.
    p.write_config(interval="60s", kafka={"debug": "fetch"})
    p.create_table()
    p.publish(n, 1, 4)
    ends = p.end_offsets()
    assert sum(ends.values()) == n

    loader = p.start_loader("graceful", log="info,librdkafka=debug")
    wait_fetched(loader, p.topic, ends, timeout=60)
    # Fetched by the client; decoded and buffered by the loader once it has nothing left to do.
    wait_idle(loader, timeout=60)
    assert loader.count("batch committed") == 0 and p.committed_rows() == 0, "nothing should commit before the 60s interval"

    rc, took = loader.sigterm(timeout=30)
    rows = p.committed_rows()
    print(f"stopped {took:.2f}s after SIGTERM; {rows} rows right after exit")
    assert rc == 0, f"exit code {rc} after SIGTERM\n{loader.tail()}"
    assert took < 10, f"a graceful stop took {took:.1f}s"
    assert rows == n, f"right after the graceful stop the table holds {rows} rows, expected {n}\n{loader.tail()}"
    assert loader.count("batch committed") == 1
    assert_each_id_once(p.ids().to_pylist(), range(1, n + 1))
    assert_ledger_matches_topic(p, n)


# --- 5 ----------------------------------------------------------------------------------------


def test_freshness(pipeline_factory):
    interval = 1.0
    p = pipeline_factory("fresh")
    p.write_config(interval="1s")
    p.create_table()
    p.publish(1, 2, 1)  # creates the topic (id 2: id 1 alone would be the seed's record)
    loader = p.start_loader("fresh")
    p.wait_rows(1, timeout=60, alive=[loader])

    latencies = []
    for k in range(5):
        rid = 100 + k
        produced = p.publish(1, rid, 1)
        born = ts_micros(produced.records[rid]["timestamp"]) / 1e6  # stamped just before it was sent

        def visible():
            t = time.time()
            if p.committed_rows() < k + 2:
                raise NotYet("not visible yet")
            return t

        seen = wait_until(f"record {rid} to be visible", visible, timeout=30, interval=0.05, alive=[loader])
        latencies.append(seen - born)
    print("freshness (s): " + ", ".join(f"{x:.2f}" for x in latencies))
    loader.sigterm_ok()
    assert_each_id_once(p.ids().to_pylist(), [2, *range(100, 105)])
    slow = [round(x, 2) for x in latencies if x > interval + 2]
    assert not slow, f"records became visible after {latencies} s; over commit interval + 2 s: {slow}"


# --- 6 ----------------------------------------------------------------------------------------


def test_postgres_catalog(pipeline_factory):
    pg = required_env("FLOE_TEST_POSTGRES")
    assert pg.startswith("postgresql://"), f"FLOE_TEST_POSTGRES should start with postgresql://, got {pg}"
    p = pipeline_factory("pg", CatalogSpec("postgres", f"floe_{uuid.uuid4().hex[:12]}", pg))
    p.create_table()
    first = p.publish(1000, 1, 2, spread="1d")
    rest = p.publish_in_background(3000, 1001, 2, rate=1000, spread="1d")
    loader = p.start_loader("pg-killed")
    loader.wait_log("batch committed", timeout=60)
    loader.sigkill()
    killed_at = p.committed_rows()
    again = p.start_loader("pg-again")
    total = len(first.ids) + len(rest.join(timeout=60).ids)
    p.wait_rows(total, timeout=120, alive=[again])
    again.sigterm_ok()
    print(f"postgres catalog {p.catalog_spec.name}: {killed_at} rows at the kill, {total} in the end")

    assert_each_id_once(p.ids().to_pylist(), range(1, total + 1))
    assert_rows_equal(p.table(), {**first.records, **rest.result.records})
    ends = assert_ledger_matches_topic(p, total)
    assert_snapshot_ranges_tile(p.table(), p.topic, ends)


# --- 7 ----------------------------------------------------------------------------------------


def run_to_exit(p: Pipeline, timeout: float) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    try:
        res = p.floe("run", timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"floe run did not exit within {timeout}s", pytrace=False)
    return res, time.monotonic() - t0


def test_missing_table_is_a_clear_error(pipeline_factory):
    p = pipeline_factory("notable")
    res, took = run_to_exit(p, timeout=30)
    out = res.stdout + res.stderr
    print(f"exit {res.returncode} after {took:.1f}s: {res.stderr.strip()}")
    assert res.returncode != 0, out
    assert took < 15, f"took {took:.1f}s to report a missing table"
    assert "default.events" in out and "floe table create" in out, f"the error should name the table and the fix:\n{out}"


def test_unreachable_broker_is_a_clear_error(pipeline_factory):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"  # nothing listens here once the socket closes
    p = pipeline_factory("nobroker")
    p.create_table()
    p.write_config(bootstrap=dead)
    res, took = run_to_exit(p, timeout=60)
    out = res.stdout + res.stderr
    print(f"exit {res.returncode} after {took:.1f}s: {res.stderr.strip()[-300:]}")
    assert res.returncode != 0, out
    assert took < 45, f"took {took:.1f}s to report an unreachable broker"
    assert dead in out, f"the error should name the broker address {dead}:\n{out}"
