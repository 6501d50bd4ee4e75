"""Schema changes while the loader runs (issue 7, DESIGN.md §5), and `floe table alter`.

1. One `floe run` ingests a steady stream while `floe table alter`, run from outside, adds a column,
   renames one, drops one and widens one. The loader must follow each change at its next commit
   without a restart, commit the rows it had already read under the schema it read them with, and
   read later records with the new schema. Checked from outside floe: pyiceberg reads every row
   back, the Parquet files are opened with pyarrow, DuckDB counts the table, and the records sent
   are known exactly (confluent-kafka delivery reports give each id's partition and offset).

   Which schema a row was read with is not guessed from timing. Two independent views must agree:
   - the loader's own account: its log says after which commit it switched schema, and each
     "batch committed" line names the snapshot; the snapshot's offset ranges name its records.
     From that schema and the record as produced, every column of every row is predicted exactly
     (a field the reading schema does not have is NULL; a renamed column is read from its name in
     that schema, kept under its field id);
   - the data alone: per Kafka partition the added column is NULL up to a boundary offset and set
     after it; no record sent after the loader announced a change lacks what that change reads;
     the ambiguous records (sent around an alter, read under the old schema) are few.

2. `floe table alter` refuses what Iceberg or the data would not allow, with a non-zero exit and a
   message naming the problem, leaving the table as it was; accepts IF NOT EXISTS as a no-op; and
   gives a nested ADD COLUMN a fresh field id above every existing one.

3. The partitioning changes (SET PROPERTIES partitioning) many times while the loader commits
   every 100 ms: the loader keeps going, and every data file is recorded under the spec its rows
   were partitioned by (checked by recomputing each file's partition from its rows).
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from urllib.parse import urlparse
from urllib.request import url2pathname

import pyarrow.parquet as pq
import pytest

from conftest import duckdb_connect, required_env
from iceberg_expect import all_field_ids, assert_field_ids, assert_partition_spec, assert_schema, col, list_of, struct
from loader_harness import (
    CatalogSpec,
    REPO,
    NotYet,
    Pipeline,
    assert_each_id_once,
    assert_snapshot_ranges_tile,
    parse_offset_ranges,
    ts_micros,
    wait_until,
)

# --- 1: add, rename, drop, widen while ingesting ---------------------------------------------

DDL = (
    "CREATE TABLE events (id BIGINT, name VARCHAR, score INTEGER, gone VARCHAR, "
    "timestamp TIMESTAMP(6) WITH TIME ZONE) WITH (partitioning = ARRAY['day(timestamp)'])"
)
PARTITIONS = 3
RATE = 250  # records/s, steady, for the whole test
INTERVAL = 1.0  # the loader's commit interval (s)
DWELL = 2.0  # how long each phase goes on after its first commit under the new schema (s)
CHANGED = "table schema changed"
COMMITTED = "batch committed"
BASE_TS = datetime(2024, 5, 1, 22, 0, tzinfo=timezone.utc)

IDLE_ALTER = "ALTER TABLE events ADD COLUMN late VARCHAR"
# (phase that starts once the loader has picked the statement up, statement)
ALTERS = [
    ("B", "ALTER TABLE events ADD COLUMN extra VARCHAR"),
    ("C", "ALTER TABLE events RENAME COLUMN name TO title"),
    ("D", "ALTER TABLE events DROP COLUMN gone"),
    ("E", "ALTER TABLE events ALTER COLUMN score SET DATA TYPE BIGINT"),
]


def make_record(rid: int, phase: str) -> dict:
    """What is sent in each phase. From A on every record carries `extra` (unknown to the table
    until the ADD COLUMN) and `gone` (still sent after the DROP); from C on `title` replaces
    `name`; from E on `score` no longer fits 32 bits (nor a double: beyond 2^53, odd); F adds
    `late`, a column added while the loader was idle."""
    ts = BASE_TS + timedelta(days=rid % 3, microseconds=rid * 1013)
    if phase < "E":
        score = (rid * 7919) % 200_001 - 100_000
    else:
        score = (1 if rid % 2 else -1) * (2**53 + 2 * rid + 1)
    rec: dict = {"id": rid, "score": score, "gone": f"gone-{rid}", "extra": f"extra-{rid}",
                 "timestamp": ts.strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")}
    if phase in "AB":
        rec["name"] = f"name-{rid}"
    else:
        rec["title"] = f"title-{rid}"
    if phase >= "F":
        rec["late"] = f"late-{rid}"
    return rec


@dataclass
class Sent:
    rid: int
    phase: str
    record: dict
    at: float  # time.monotonic() just before the phase was read and the record made
    partition: int = -1
    offset: int = -1


class PhasedProducer:
    """Sends records with ids 1, 2, ... at a steady rate (confluent-kafka, round robin over the
    partitions); the test switches `phase` between alters. Delivery reports give each record's
    partition and offset."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, rate: float, phase: str = "A",
                 first_id: int = 1, count: int | None = None) -> None:
        self.bootstrap, self.topic, self.partitions, self.rate = bootstrap, topic, partitions, rate
        self.phase = phase
        self.first_id, self.count = first_id, count
        self.sent: dict[int, Sent] = {}
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="phased-producer")

    def start(self) -> "PhasedProducer":
        self._thread.start()
        return self

    def _delivered(self, s: Sent):
        def cb(err, msg):
            if err is not None:
                self.errors.append(f"id {s.rid}: {err}")
            else:
                s.partition, s.offset = msg.partition(), msg.offset()
        return cb

    def _run(self) -> None:
        from confluent_kafka import Producer

        try:
            producer = Producer({"bootstrap.servers": self.bootstrap, "enable.idempotence": True, "linger.ms": 5})
            t0 = time.monotonic()
            rid = self.first_id - 1
            while not self._stop.is_set() and (self.count is None or rid - self.first_id + 1 < self.count):
                rid += 1
                delay = t0 + (rid - self.first_id) / self.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                at = time.monotonic()
                phase = self.phase
                s = Sent(rid, phase, make_record(rid, phase), at)
                self.sent[rid] = s
                producer.produce(self.topic, key=str(rid).encode(), value=json.dumps(s.record).encode(),
                                 partition=(rid - 1) % self.partitions, on_delivery=self._delivered(s))
                producer.poll(0)
            left = producer.flush(30)
            if left:
                self.errors.append(f"{left} records still undelivered 30s after the last one")
        except Exception as e:  # noqa: BLE001 - reported by stop()
            self.errors.append(f"producer failed: {e!r}")

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> dict[int, Sent]:
        """Stops (or, with a count, waits for the last record) and checks every record was delivered."""
        if self.count is None:
            self._stop.set()
        self._thread.join(60)
        assert not self._thread.is_alive(), "the producer did not finish within 60s"
        assert not self.errors, f"producing failed: {self.errors[:10]}"
        undelivered = [s.rid for s in self.sent.values() if s.offset < 0]
        assert not undelivered, f"{len(undelivered)} records without a delivery report: {undelivered[:10]}"
        return self.sent


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(30)


@dataclass
class LiveAlter:
    sql: str
    phase: str  # the phase that started once the loader followed
    schema_id: int  # the schema the statement made
    started: float  # monotonic times: `floe table alter` started, returned,
    done: float
    seen: float  # the loader's log said it follows, the producer switched phase
    switched: float


SCHEMA_ID = re.compile(r"\(schema (\d+), spec \d+\)")
CHANGED_LINE = re.compile(r"table schema changed.*\bfrom=(\d+)\b.*\bto=(\d+)\b")
COMMITTED_LINE = re.compile(r"batch committed.*\bsnapshot=Some\((\d+)\).*\bschema=(\d+)\b")


def alter_while_running(p: Pipeline, loader, producer: PhasedProducer | None, sql: str, phase: str,
                        settle: bool = True) -> LiveAlter:
    """Runs the statement from outside the loader, waits for the loader to say it follows, then
    switches the producer to `phase` and (with `settle`) lets that phase run past a commit."""
    started = time.monotonic()
    res = p.floe("table", "alter", sql)
    done = time.monotonic()
    assert res.returncode == 0, f"floe table alter {sql!r} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
    m = SCHEMA_ID.search(res.stdout)
    assert m, f"floe table alter should say which schema it made:\n{res.stdout}"
    schema_id = int(m.group(1))

    def followed():
        seen = [int(to) for _, to in CHANGED_LINE.findall(loader.log())]
        if schema_id not in seen:
            raise NotYet(f"schema changes logged so far: {seen}")
        return True

    wait_until(f"the loader to follow schema {schema_id} ({sql})", followed, timeout=30, interval=0.05, alive=[loader])
    seen = time.monotonic()
    if producer is not None:
        producer.phase = phase
    switched = time.monotonic()
    a = LiveAlter(sql, phase, schema_id, started, done, seen, switched)
    print(f"{sql}: schema {schema_id}; alter took {done - started:.2f}s, followed {seen - done:.2f}s later")
    if not settle:
        return a
    # Phase `phase` runs until the loader has committed records read under the new schema.
    commits = loader.count(COMMITTED)
    loader.wait_log(COMMITTED, timeout=30, times=commits + 1)
    time.sleep(DWELL)
    assert producer is None or producer.alive(), f"the producer stopped: {producer.errors}"
    return a


def topic_ends(sent: dict[int, Sent]) -> dict[int, int]:
    ends: dict[int, int] = {}
    for s in sent.values():
        ends[s.partition] = max(ends.get(s.partition, 0), s.offset + 1)
    return ends


def wait_loaded(p: Pipeline, loader, sent: dict[int, Sent]) -> None:
    """Waits until every record sent is in the table and the ledger stands at the topic's end."""
    p.wait_rows(len(sent), timeout=60, alive=[loader], interval=0.5)
    ends = topic_ends(sent)

    def ledger_at_end():
        ledger = p.ledger()
        if ledger != ends:
            raise NotYet(f"ledger {ledger}, topic ends {ends}")
        return True

    wait_until("the ledger to reach the topic's end", ledger_at_end, timeout=30, alive=[loader])


def decoder_schema_per_snapshot(log: str, initial_schema: int) -> tuple[dict[int, int], list[tuple[int, int]]]:
    """From the loader's log: {snapshot id: schema id the loader read its records with}, and the
    schema changes in order. Each commit line names the schema its batch was read with; the loader
    switches schema between batches, so that is never a schema it had not switched to yet (a
    batch read before a switch may commit after it: the reader goes on while a batch commits)."""
    current = initial_schema
    per_snapshot: dict[int, int] = {}
    changes = []
    for line in log.splitlines():
        if m := CHANGED_LINE.search(line):
            frm, to = int(m.group(1)), int(m.group(2))
            assert frm == current, f"the log says the schema changed from {frm}, but it was {current}: {line}"
            changes.append((frm, to))
            current = to
        elif m := COMMITTED_LINE.search(line):
            read_with = int(m.group(2))
            seen = [initial_schema] + [to for _, to in changes]
            assert read_with in seen[-2:], f"a batch read with schema {read_with}, the loader is at {current}: {line}"
            per_snapshot[int(m.group(1))] = read_with
    return per_snapshot, changes


def local_path(uri: str) -> str:
    parsed = urlparse(uri)
    assert parsed.scheme in ("file", ""), f"expected a local file, got {uri}"
    return url2pathname(parsed.path)


def data_files_by_snapshot(table) -> dict[int, list[str]]:
    """{snapshot id: the data files it added}, from the current snapshot's manifests."""
    out: dict[int, list[str]] = defaultdict(list)
    for manifest in table.current_snapshot().manifests(table.io):
        for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
            out[entry.snapshot_id].append(entry.data_file.file_path)
    return out


def parquet_field_ids(path: str) -> dict[int, tuple[str, str]]:
    """{field id: (column name, Arrow type)} of the top-level columns of a Parquet file."""
    schema = pq.read_schema(path)
    out = {}
    for f in schema:
        raw = (f.metadata or {}).get(b"PARQUET:field_id")
        assert raw is not None, f"{path}: column {f.name} has no field id"
        out[int(raw)] = (f.name, str(f.type))
    return out


def predicted(sent: Sent, reading, current) -> dict:
    """The row the table should hold for a record read with schema `reading`, seen through the
    table's current schema: each current column is the record's field named as the reading schema
    named that field id, NULL if the reading schema did not have it."""
    names = {f.field_id: f.name for f in reading.fields}
    row = {}
    for f in current.fields:
        name = names.get(f.field_id)
        row[f.name] = sent.record.get(name) if name is not None else None
    return row


@pytest.mark.parametrize("catalog_kind", ["sqlite", "postgres"])
def test_add_rename_drop_while_ingesting(tmp_path, floe_bin, kafka_bootstrap, procs, catalog_kind):
    if catalog_kind == "sqlite":
        spec = CatalogSpec("sqlite", "floe")
    else:
        pg = required_env("FLOE_TEST_POSTGRES")
        spec = CatalogSpec("postgres", f"floe_{uuid.uuid4().hex[:12]}", pg)
    p = Pipeline(tmp_path / "evolve", floe_bin, kafka_bootstrap, procs, catalog=spec, prefix="floe-evolve")
    p.write_config(interval=f"{INTERVAL:g}s")
    p.create_table(DDL)
    create_topic(kafka_bootstrap, p.topic, PARTITIONS)
    initial = p.table()
    initial_schema_id = initial.metadata.current_schema_id
    ids_before = {f.name: f.field_id for f in initial.schema().fields}

    t0 = time.monotonic()
    producer = PhasedProducer(kafka_bootstrap, p.topic, PARTITIONS, RATE).start()
    loader = p.start_loader("evolving")
    pid = loader.pid
    # Phase A: records carry `extra`, which the table does not have yet (ignored).
    loader.wait_log(COMMITTED, timeout=60, times=2)

    alters = []
    for phase, sql in ALTERS:
        alters.append(alter_while_running(p, loader, producer, sql, phase))
        assert loader.pid == pid and loader.running(), "the loader was restarted"

    sent = producer.stop()
    total = len(sent)
    by_phase = defaultdict(int)
    for s in sent.values():
        by_phase[s.phase] += 1
    print(f"sent {total} records in {time.monotonic() - t0:.0f}s: {dict(sorted(by_phase.items()))}")
    assert set(by_phase) == set("ABCDE"), f"every phase should have records: {dict(by_phase)}"

    wait_loaded(p, loader, sent)

    # Idle: nothing arrives, so nothing is committed; the loader still follows a change at its
    # next interval tick, and the first records after it are read with the new column.
    mark = len(loader.log())
    idle = alter_while_running(p, loader, None, IDLE_ALTER, "F", settle=False)
    after = loader.log()[mark:]
    assert COMMITTED not in after[:after.index(CHANGED)], f"the loader committed while idle:\n{after}"
    assert idle.seen - idle.done < INTERVAL + 2, f"an idle loader took {idle.seen - idle.done:.1f}s to follow"
    late = PhasedProducer(kafka_bootstrap, p.topic, PARTITIONS, RATE, phase="F", first_id=total + 1, count=30).start()
    sent.update(late.stop())
    total = len(sent)
    wait_loaded(p, loader, sent)
    ends = topic_ends(sent)
    assert loader.pid == pid and loader.running()
    loader.sigterm_ok()
    log = loader.log()
    assert log.count("loader started") == 1, "one loader run, never restarted:\n" + loader.tail(60)

    table = p.table()
    schema = table.schema()
    md = table.metadata

    # The current schema: `title` is `name`'s field id, `gone` is gone, `score` is a bigint under
    # its old id, `extra` has a new id above all the others.
    assert_schema(schema, [col("id", "long"), col("title", "string"), col("score", "long"),
                           col("timestamp", "timestamptz"), col("extra", "string"), col("late", "string")])
    ids_now = {f.name: f.field_id for f in schema.fields}
    assert ids_now["title"] == ids_before["name"], f"the rename changed the field id: {ids_before} -> {ids_now}"
    assert ids_now["score"] == ids_before["score"] and ids_now["id"] == ids_before["id"]
    assert ids_now["extra"] > max(ids_before.values()), f"extra should have a fresh id: {ids_before} -> {ids_now}"
    assert ids_before["gone"] not in ids_now.values()
    assert ids_now["late"] == ids_now["extra"] + 1
    assert md.last_column_id == ids_now["late"], f"last-column-id {md.last_column_id}, ids {ids_now}"
    alters.append(idle)
    assert [a.schema_id for a in alters] == sorted({a.schema_id for a in alters}), "each alter made a new schema"
    assert md.current_schema_id == idle.schema_id
    assert_partition_spec(table.spec(), schema, [("timestamp_day", "day", "timestamp")])

    # Every id once; every offset in exactly one snapshot.
    assert_each_id_once(p.ids().to_pylist(), range(1, total + 1))
    assert_snapshot_ranges_tile(table, p.topic, ends)

    # --- the loader's account: which schema each snapshot's records were read with ---
    per_snapshot, changes = decoder_schema_per_snapshot(log, initial_schema_id)
    assert [to for _, to in changes] == [a.schema_id for a in alters], (
        f"the loader should follow each alter once, in order: logged {changes}, alters made "
        f"{[a.schema_id for a in alters]}\n" + loader.tail(60))
    schemas = {s.schema_id: s for s in md.schemas}
    by_coord = {(s.partition, s.offset): s for s in sent.values()}
    floe_snapshots = [s for s in md.snapshots if s.summary and "floe.offsets" in s.summary.additional_properties]
    unlogged = [s.snapshot_id for s in floe_snapshots if s.snapshot_id not in per_snapshot]
    assert not unlogged, f"snapshots the loader's log does not mention: {unlogged}"
    files = data_files_by_snapshot(table)
    read_with: dict[int, int] = {}  # id -> schema id it was read with
    problems: list[str] = []
    for snap in floe_snapshots:
        reading = per_snapshot[snap.snapshot_id]
        in_ranges = set()
        for _t, part, first, end in parse_offset_ranges(snap.summary.additional_properties["floe.offsets"]):
            for off in range(first, end):
                in_ranges.add(by_coord[(part, off)].rid)
        for rid in in_ranges:
            read_with[rid] = reading
        # The files the snapshot added hold exactly the records of its offset ranges, written with
        # the columns of the schema they were read with (a dropped column no longer written, a
        # widened one written wide).
        in_files: set[int] = set()
        want_columns = {f.field_id: f.name for f in schemas[reading].fields}
        for path in files.get(snap.snapshot_id, []):
            local = local_path(path)
            got = parquet_field_ids(local)
            if {i: n for i, (n, _) in got.items()} != want_columns:
                problems.append(f"snapshot {snap.snapshot_id} (read with schema {reading}): file {local} has "
                                f"columns {got}, expected those of schema {reading}: {want_columns}")
            score_type = got.get(ids_before["score"], (None, None))[1]
            want_type = "int64" if str(schemas[reading].find_field(ids_before["score"]).field_type) == "long" else "int32"
            if score_type != want_type:
                problems.append(f"snapshot {snap.snapshot_id}: score is {score_type} in {local}, expected {want_type}")
            in_files.update(pq.read_table(local, columns=["id"]).column("id").to_pylist())
            if ids_before["gone"] in got:
                data = pq.read_table(local, columns=["id", "gone"]).to_pylist()
                wrong = [r for r in data if r["gone"] != sent[r["id"]].record["gone"]]
                if wrong:
                    problems.append(f"{local}: `gone` values differ from those sent: {wrong[:3]}")
        if in_files != in_ranges:
            problems.append(f"snapshot {snap.snapshot_id}: its files hold {len(in_files)} ids, its offset ranges "
                            f"{len(in_ranges)}; {len(in_files - in_ranges)} not in the ranges, "
                            f"{len(in_ranges - in_files)} missing")
    assert not problems, f"{len(problems)} problems with the data files:\n  " + "\n  ".join(problems[:20])
    assert set(read_with) == set(sent)

    # Every value of every row, as predicted from the record sent and the schema it was read with.
    rows = {r["id"]: r for r in table.scan().to_arrow().to_pylist()}
    diffs = []
    for rid in sorted(sent):
        want = predicted(sent[rid], schemas[read_with[rid]], schema)
        got = dict(rows[rid])
        want_ts, got_ts = want.pop("timestamp"), got.pop("timestamp")
        if want_ts is None or got_ts is None or ts_micros(want_ts) != ts_micros(got_ts):
            diffs.append(f"id {rid}: timestamp sent {want_ts}, table has {got_ts}")
        if got != want or any(type(got[k]) is not type(want[k]) for k in want):
            diffs.append(f"id {rid} (phase {sent[rid].phase}, read with schema {read_with[rid]}): "
                         f"predicted {want}, table has {got}")
    assert not diffs, f"{len(diffs)} rows differ from the prediction, first ones:\n  " + "\n  ".join(diffs[:20])

    # --- the data alone ---
    add, rename, _drop, widen, _idle = alters
    # `extra`: per partition, NULL up to a boundary offset, set from it on.
    boundaries = {}
    for part in sorted(ends):
        seq = sorted((s for s in sent.values() if s.partition == part), key=lambda s: s.offset)
        has = [rows[s.rid]["extra"] is not None for s in seq]
        first = has.index(True) if True in has else len(has)
        assert all(has[first:]), (f"partition {part}: `extra` set from offset {seq[first].offset}, then missing "
                                  f"again at offsets {[s.offset for s, h in zip(seq[first:], has[first:]) if not h][:10]}")
        boundaries[part] = (seq[first].offset, seq[first].rid) if first < len(seq) else None
        for s, h in zip(seq, has):
            assert not h or rows[s.rid]["extra"] == s.record["extra"]
    print(f"`extra` boundaries (offset, id) per partition: {boundaries}")
    late = [s.rid for s in sent.values() if s.at > add.seen and rows[s.rid]["extra"] is None]
    assert not late, f"{len(late)} records sent after the loader announced the ADD COLUMN lack `extra`: {late[:10]}"
    ambiguous = [s.rid for s in sent.values() if s.at <= add.seen and rows[s.rid]["extra"] is not None]
    early = [s.rid for s in sent.values() if s.at < add.started and rows[s.rid]["extra"] is not None]
    print(f"ADD COLUMN: {len(ambiguous)} records sent before the loader announced it got `extra` "
          f"({len(early)} sent before the alter started)")
    assert all(rows[i]["extra"] is None for i in sent if read_with[i] < add.schema_id)

    # `title`: the old column's data (`name`) for phases A and B, `title` from C on.
    for s in sent.values():
        r = rows[s.rid]
        if s.phase >= "C":
            assert r["title"] == s.record["title"], f"id {s.rid} (phase {s.phase}): title {r['title']!r}"
        elif r["title"] is not None:
            assert r["title"] == s.record["name"], f"id {s.rid} (phase {s.phase}): title {r['title']!r}, name was {s.record['name']!r}"
    lost = sorted(s.rid for s in sent.values() if s.phase < "C" and rows[s.rid]["title"] is None)
    # Only phase-B records sent around the rename and read after the loader followed it (they
    # carry `name`, the loader then looks for `title`): at most about one commit interval of them.
    window = rename.seen - rename.started + INTERVAL + 1.0
    print(f"RENAME: {len(lost)} phase-B records read after the rename (title NULL): {lost[:5]}...")
    assert all(sent[i].phase == "B" and read_with[i] >= rename.schema_id for i in lost), lost[:10]
    assert len(lost) <= RATE * window, f"{len(lost)} records lost their name around the rename, more than {window:.1f}s worth"

    # `score`: bigint now, every value exact, the large ones only in phase E.
    assert str(schema.find_field("score").field_type) == "long"
    big = [s for s in sent.values() if s.phase >= "E"]
    assert big and all(abs(s.record["score"]) > 2**53 for s in big)
    wrong = [(s.rid, s.record["score"], rows[s.rid]["score"]) for s in sent.values() if rows[s.rid]["score"] != s.record["score"]]
    assert not wrong, f"{len(wrong)} scores differ (id, sent, table): {wrong[:10]}"
    assert all(read_with[s.rid] >= widen.schema_id for s in big)

    # `late`: added while idle, so every record sent after it has it, none before.
    assert all((rows[i]["late"] is not None) == (sent[i].phase == "F") for i in sent)

    # A third reader, DuckDB, counts the same.
    con = duckdb_connect()
    path = local_path(table.metadata_location)
    n, distinct = con.execute(f"SELECT count(*), count(DISTINCT id) FROM iceberg_scan('{path}')").fetchone()
    assert (n, distinct) == (total, total), f"DuckDB counts {n} rows, {distinct} ids; expected {total}"
    counts = con.execute(f"SELECT count(extra), count(title), count(score) FROM iceberg_scan('{path}')").fetchone()
    want_counts = tuple(sum(1 for r in rows.values() if r[c] is not None) for c in ("extra", "title", "score"))
    assert counts == want_counts, f"DuckDB counts non-NULL (extra, title, score) {counts}, pyiceberg {want_counts}"
    print(f"{len(floe_snapshots)} floe snapshots; pick-up delays "
          + ", ".join(f"{a.seen - a.done:.2f}s" for a in alters))


# --- 2: what `floe table alter` refuses and accepts -------------------------------------------

ALTER_DDL = (
    "CREATE TABLE evolving (id BIGINT NOT NULL, name VARCHAR, score INTEGER, ratio REAL, amount DECIMAL(10, 2), "
    "tags ARRAY(VARCHAR), nested ROW(key VARCHAR, value BIGINT), timestamp TIMESTAMP(6) WITH TIME ZONE) "
    "WITH (partitioning = ARRAY['day(timestamp)'])"
)
T = "default.evolving"

REFUSED = [
    # (statement, words the message must contain)
    ("ALTER TABLE evolving ADD COLUMN name VARCHAR", ["name", "already exists"]),
    ("ALTER TABLE evolving ADD COLUMN nested.key VARCHAR", ["nested.key", "already exists"]),
    ("ALTER TABLE evolving DROP COLUMN timestamp", ["timestamp", "partition"]),
    ("ALTER TABLE evolving RENAME COLUMN name TO score", ["score", "already exists"]),
    ("ALTER TABLE evolving ALTER COLUMN id SET DATA TYPE INTEGER", ["id", "long", "int"]),
    ("ALTER TABLE evolving ALTER COLUMN id SET DATA TYPE VARCHAR", ["id", "long", "string"]),
    ("ALTER TABLE evolving ALTER COLUMN amount SET DATA TYPE DECIMAL(9, 2)", ["amount", "decimal"]),
    ("ALTER TABLE evolving ALTER COLUMN amount SET DATA TYPE DECIMAL(12, 3)", ["amount", "decimal"]),
    ("ALTER TABLE evolving ADD COLUMN x BIGINT NOT NULL", ["x", "NOT NULL"]),
    ("ALTER TABLE evolving DROP COLUMN nope", ["nope", "does not exist"]),
    ("ALTER TABLE evolving ADD COLUMN name.f BIGINT", ["name", "ROW"]),
]


def test_alter_errors(catalog):
    floe = catalog.floe
    floe.run("table", "create", ALTER_DDL)
    cat = catalog.pyiceberg()
    before = cat.load_table(T)
    location = before.metadata_location
    ids = {path: fid for path, fid in all_field_ids(before.schema())}
    last = before.metadata.last_column_id
    assert last == max(ids.values())

    for sql, words in REFUSED:
        res = floe.run("table", "alter", sql, check=False)
        assert res.returncode != 0, f"should be refused: {sql}\n{res.describe()}"
        for w in words:
            assert w.lower() in res.stderr.lower(), f"the refusal of {sql!r} should mention {w!r}\n{res.describe()}"
        assert "Traceback" not in res.output and "panicked" not in res.output, res.describe()
        now = cat.load_table(T)
        assert now.metadata_location == location, f"a refused statement changed the table: {sql}"

    # IF NOT EXISTS on an existing column: success, and nothing written.
    res = floe.run("table", "alter", "ALTER TABLE evolving ADD COLUMN IF NOT EXISTS name VARCHAR")
    assert "already exists" in res.stdout, res.describe()
    assert cat.load_table(T).metadata_location == location, "ADD COLUMN IF NOT EXISTS of an existing column wrote metadata"

    # A nested field: a fresh id above every existing one; nothing else renumbered.
    floe.run("table", "alter", "ALTER TABLE evolving ADD COLUMN nested.f BIGINT")
    t = cat.load_table(T)
    schema = t.schema()
    f = schema.find_field("nested.f")
    assert str(f.field_type) == "long" and not f.required
    assert f.field_id == last + 1, f"nested.f got id {f.field_id}; the highest id before was {last}"
    assert t.metadata.last_column_id == f.field_id, f"last-column-id {t.metadata.last_column_id}, nested.f is {f.field_id}"
    assert_field_ids(schema, t.metadata.last_column_id)
    assert {p: i for p, i in all_field_ids(schema) if p != "nested.f"} == ids, "existing field ids changed"
    assert [x.name for x in schema.find_field("nested").field_type.fields] == ["key", "value", "f"]

    # A top-level column after it counts from the nested one (last-column-id was moved).
    floe.run("table", "alter", "ALTER TABLE evolving ADD COLUMN later VARCHAR")
    t = cat.load_table(T)
    assert t.schema().find_field("later").field_id == f.field_id + 1
    assert t.metadata.last_column_id == f.field_id + 1

    # The widenings Iceberg allows, DROP NOT NULL, a new partitioning: ids kept.
    for sql in [
        "ALTER TABLE evolving ALTER COLUMN score SET DATA TYPE BIGINT",
        "ALTER TABLE evolving ALTER COLUMN ratio SET DATA TYPE DOUBLE",
        "ALTER TABLE evolving ALTER COLUMN amount SET DATA TYPE DECIMAL(14, 2)",
        "ALTER TABLE evolving ALTER COLUMN id DROP NOT NULL",
        "ALTER TABLE evolving SET PROPERTIES partitioning = ARRAY['bucket(id, 8)', 'day(timestamp)']",
    ]:
        floe.run("table", "alter", sql)
    t = cat.load_table(T)
    schema = t.schema()
    assert_schema(schema, [
        col("id", "long"), col("name", "string"), col("score", "long"), col("ratio", "double"),
        col("amount", "decimal(14, 2)"), col("tags", list_of("string")),
        col("nested", struct(col("key", "string"), col("value", "long"), col("f", "long"))),
        col("timestamp", "timestamptz"), col("later", "string"),
    ])
    assert {p: i for p, i in all_field_ids(schema) if p not in ("nested.f", "later")} == ids
    assert_field_ids(schema, t.metadata.last_column_id)
    spec = t.spec()
    assert spec.spec_id == 1 and t.metadata.default_spec_id == 1, f"a new default spec expected: {t.metadata.partition_specs}"
    got_spec = [(pf.name, str(pf.transform), pf.source_id, pf.field_id) for pf in spec.fields]
    # The unchanged day(timestamp) field keeps its partition field id (as Iceberg's Java library
    # does); the new one gets the next.
    assert got_spec == [("id_bucket", "bucket[8]", ids["id"], 1001), ("timestamp_day", "day", ids["timestamp"], 1000)], got_spec
    assert t.metadata.last_partition_id == 1001
    # pyiceberg can write and read the evolved table.
    import pyarrow as pa

    t.append(pa.Table.from_pylist([{"id": 1, "score": 2**40, "amount": None, "nested": {"key": "k", "value": 1, "f": 7},
                                    "timestamp": datetime(2024, 1, 1, tzinfo=timezone.utc)}],
                                   schema=schema.as_arrow()))
    got = cat.load_table(T).scan().to_arrow().to_pylist()
    assert len(got) == 1 and got[0]["nested"] == {"key": "k", "value": 1, "f": 7} and got[0]["score"] == 2**40


# --- 3: the partitioning changes while ingesting ----------------------------------------------

SPECS = [
    "ARRAY['day(timestamp)', 'bucket(id, 4)']",
    "ARRAY['bucket(id, 4)', 'day(timestamp)']",  # the same fields in the other order
    "ARRAY['hour(timestamp)']",
    "ARRAY['day(timestamp)']",
]
SPEC_RATE = 3000
SPEC_ALTERS = 60


def what_went_wrong(loader) -> str:
    """The loader's log without backtrace frames: the lines that say what happened."""
    src = str(REPO / "src")
    lines = [ln for ln in loader.log().splitlines()
             if ln.strip() and (not re.match(r"\s+(\d+: |at )", ln) or src in ln)]
    return "\n".join(lines[-30:])


def partition_problems(table) -> tuple[list[str], dict[int, int]]:
    """Every data file's partition tuple, as its manifest records it under the manifest's spec,
    must be the partition its rows fall in under that spec. Returns (problems, files per spec)."""
    schema = table.schema()
    problems: list[str] = []
    per_spec: dict[int, int] = defaultdict(int)
    for manifest in table.current_snapshot().manifests(table.io):
        spec = table.specs()[manifest.partition_spec_id]
        for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
            df = entry.data_file
            per_spec[spec.spec_id] += 1
            rows = pq.read_table(local_path(df.file_path)).to_pylist()
            for i, pf in enumerate(spec.fields):
                source = schema.find_field(pf.source_id)
                fn = pf.transform.transform(source.field_type)
                values = {fn(ts_micros(r[source.name]) if isinstance(r[source.name], datetime) else r[source.name])
                          for r in rows}
                if values != {df.partition[i]}:
                    problems.append(f"{df.file_path}: the manifest (spec {spec.spec_id}) says {pf.name}="
                                    f"{df.partition[i]!r}, its {len(rows)} rows have {sorted(values)[:5]}")
    return problems, dict(per_spec)


@pytest.mark.parametrize("catalog_kind", ["sqlite", "postgres"])
def test_partitioning_changes_while_ingesting(tmp_path, floe_bin, kafka_bootstrap, procs, catalog_kind):
    """SET PROPERTIES partitioning from outside while the loader commits every 100 ms: its data
    files follow the new spec, and each file is recorded under the spec it was written with."""
    if catalog_kind == "sqlite":
        spec = CatalogSpec("sqlite", "floe")
    else:
        spec = CatalogSpec("postgres", f"floe_{uuid.uuid4().hex[:12]}", required_env("FLOE_TEST_POSTGRES"))
    p = Pipeline(tmp_path / "respec", floe_bin, kafka_bootstrap, procs, catalog=spec, prefix="floe-respec")
    p.write_config(interval="100ms")
    p.create_table(DDL)
    create_topic(kafka_bootstrap, p.topic, PARTITIONS)
    producer = PhasedProducer(kafka_bootstrap, p.topic, PARTITIONS, SPEC_RATE).start()
    loader = p.start_loader("respec")
    pid = loader.pid
    loader.wait_log(COMMITTED, timeout=60, times=2)
    for i in range(SPEC_ALTERS):
        res = p.floe("table", "alter", f"ALTER TABLE events SET PROPERTIES partitioning = {SPECS[i % len(SPECS)]}")
        assert res.returncode == 0, f"alter {i} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
        if not loader.running():
            break
        time.sleep(0.07)
    sent = producer.stop()
    if not loader.running():
        # Say what the table holds too: files recorded under the wrong spec.
        problems, per_spec = partition_problems(p.table())
        pytest.fail(f"the loader exited ({loader.popen.returncode}) after {i + 1} of {SPEC_ALTERS} partitioning "
                    f"changes:\n{what_went_wrong(loader)}\nthe table: data files per spec {per_spec}, "
                    f"{len(problems)} recorded with partition values they do not hold:\n  "
                    + "\n  ".join(problems[:5]), pytrace=False)
    wait_loaded(p, loader, sent)
    assert loader.pid == pid
    loader.sigterm_ok()

    table = p.table()
    assert_each_id_once(p.ids().to_pylist(), sent)
    assert_snapshot_ranges_tile(table, p.topic, topic_ends(sent))
    problems, per_spec = partition_problems(table)
    print(f"{len(sent)} records, {SPEC_ALTERS} partitioning changes; data files per spec: {per_spec}")
    assert not problems, (f"{len(problems)} data files recorded with partition values they do not hold "
                          f"(files per spec {per_spec}), first ones:\n  " + "\n  ".join(problems[:10]))
    assert len(per_spec) >= 3, f"the loader should have written under several specs: {per_spec}"
    # Readers that prune by partition find every row.
    from pyiceberg.expressions import EqualTo

    sample = sorted(sent)[:: max(1, len(sent) // 12)]
    unseen = [rid for rid in sample if table.scan(row_filter=EqualTo("id", rid)).count() != 1]
    assert not unseen, f"filtered scans (partition pruning) miss ids {unseen}"
