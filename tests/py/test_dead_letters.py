"""Dead letters end to end (issue 5, DESIGN.md §3): records that can never be written are set aside
in a Kafka topic and/or an Iceberg table exactly once, or stop the pipeline cleanly when there is
nowhere to put them; `floe skip` moves past one record and says so in the table's history; the
ratio valve stops a stream whose schema is wrong.

Everything is checked from outside floe: the source and dead-letter topics are read back with
confluent-kafka (coordinates, key, value, headers, timestamps), the tables with pyiceberg.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone

import pytest

from loader_harness import (
    EVENTS_DDL,
    KafkaRecord,
    Pipeline,
    assert_each_id_once,
    assert_rows_equal,
    assert_snapshot_ranges_tile,
    parse_offset_ranges,
    read_topic,
    ts_micros,
    unique,
    wait_ledger,
)

# `id` NOT NULL: a record without it is a dead letter (missing-required), so all five of
# publish-sample's bad kinds fail.
STRICT_DDL = EVENTS_DDL.replace("(id BIGINT,", "(id BIGINT NOT NULL,")
assert STRICT_DDL != EVENTS_DDL
# A schema the sample records do not fit: every record fails on `integer`.
WRONG_DDL = STRICT_DDL.replace("integer BIGINT,", "integer BOOLEAN,")
assert WRONG_DDL != STRICT_DDL

DLQ_TABLE = "default.events_dlq"
DLQ_COLUMNS = [
    "source_topic", "source_partition", "source_offset", "source_timestamp", "key", "value", "value_text",
    "headers", "error_kind", "error_message", "column_path", "pipeline", "dead_lettered_at",
]
H = "loader.processing.exception."
SAMPLE_BAD = "floe.sample.bad"
SAMPLE_ID = "floe.sample.id"
# publish-sample's bad kinds, in the order it uses them.
KINDS = ["not-json", "wrong-type", "missing-required", "out-of-range", "invalid-utf8"]
# The column a sample record of each kind is at fault in ("" = the record as a whole). Records
# produced by a test itself name it in a header instead.
COLUMN_OF_KIND = {"not-json": "", "invalid-utf8": "string", "wrong-type": "integer", "out-of-range": "integer",
                  "missing-required": "id", "not-an-object": ""}
TEST_COLUMN = "floe.test.column"
# What the reason in a stop message says, per kind.
REASON_OF_KIND = {"not-json": "not JSON", "invalid-utf8": "UTF-8", "wrong-type": 'column "integer"',
                  "out-of-range": 'column "integer"', "missing-required": 'column "id"'}


@pytest.fixture
def pipeline_factory(tmp_path, floe_bin, kafka_bootstrap, procs):
    def make(name: str) -> Pipeline:
        return Pipeline(tmp_path / name, floe_bin, kafka_bootstrap, procs, prefix=f"floe-{name}")

    return make


# --- what was produced, read back from the source topic --------------------------------------


@dataclass
class Source:
    """The source topic as Kafka holds it, indexed by coordinates and by sample id."""

    records: list[KafkaRecord]
    by_coord: dict[tuple[int, int], KafkaRecord]
    by_id: dict[int, KafkaRecord]
    bad: dict[tuple[int, int], KafkaRecord]  # the records publish-sample marked malformed
    ends: dict[int, int]

    def coord_of(self, rid: int) -> tuple[int, int]:
        r = self.by_id[rid]
        return r.partition, r.offset

    def good_ids(self) -> list[int]:
        return sorted(i for i, r in self.by_id.items() if (r.partition, r.offset) not in self.bad)


def read_source(p: Pipeline, produced_ids: list[int], produced_bad: list[int]) -> Source:
    records = read_topic(p.bootstrap, p.topic)
    by_coord = {(r.partition, r.offset): r for r in records}
    by_id = {int(r.header_str(SAMPLE_ID)): r for r in records}
    assert len(by_id) == len(records) == len(produced_ids), (
        f"the source topic holds {len(records)} records ({len(by_id)} distinct ids), publish-sample sent {len(produced_ids)}")
    assert sorted(by_id) == sorted(produced_ids)
    bad = {c: r for c, r in by_coord.items() if r.header(SAMPLE_BAD) is not None}
    bad_ids = sorted(int(r.header_str(SAMPLE_ID)) for r in bad.values())
    assert bad_ids == sorted(produced_bad), f"records marked {SAMPLE_BAD}: {bad_ids[:10]}..., expected {sorted(produced_bad)[:10]}..."
    for r in bad.values():
        assert r.header_str(SAMPLE_BAD) in COLUMN_OF_KIND, f"unknown bad kind {r.header_str(SAMPLE_BAD)!r}"
    ends: dict[int, int] = {}
    for r in records:
        ends[r.partition] = max(ends.get(r.partition, 0), r.offset + 1)
    return Source(records, by_coord, by_id, bad, ends)


def expected_column(s: KafkaRecord) -> str:
    explicit = s.header_str(TEST_COLUMN)
    return explicit if explicit is not None else COLUMN_OF_KIND[s.header_str(SAMPLE_BAD)]


def kinds_count(src: Source) -> Counter:
    return Counter(r.header_str(SAMPLE_BAD) for r in src.bad.values())


# --- checks of the dead-letter destinations ---------------------------------------------------


def dlq_topic_problems(p: Pipeline, dlq_topic: str, src: Source) -> tuple[list[str], int]:
    """Compares the dead-letter topic with the source's bad records: each exactly once, with the
    original key, value, headers and timestamp, and headers naming where it was and why."""
    dlq = read_topic(p.bootstrap, dlq_topic)
    problems: list[str] = []
    seen: Counter = Counter()
    for r in dlq:
        where = f"{dlq_topic}/{r.partition}:{r.offset}"
        try:
            t, part, off = (r.header_str(H + n) for n in ("topic", "partition", "offset"))
        except AssertionError as e:
            problems.append(f"{where}: {e}")
            continue
        if t is None or part is None or off is None:
            problems.append(f"{where}: no coordinate headers: {r.headers}")
            continue
        coord = (int(part), int(off))
        seen[(t, *coord)] += 1
        if t != p.topic or coord not in src.bad:
            good = src.by_coord.get(coord)
            what = f"good record id {good.header_str(SAMPLE_ID)}" if t == p.topic and good else "no bad record"
            problems.append(f"{where}: dead letter for {t}/{part}:{off}, which is {what}")
            continue
        s = src.bad[coord]
        kind = s.header_str(SAMPLE_BAD)
        label = f"{where} (source {t}/{part}:{off}, {kind})"
        if r.key != s.key:
            problems.append(f"{label}: key {r.key!r}, the source had {s.key!r}")
        if r.value != s.value:
            problems.append(f"{label}: value {r.value!r:.80}, the source had {s.value!r:.80}")
        if r.timestamp != s.timestamp:
            problems.append(f"{label}: timestamp {r.timestamp}, the source had {s.timestamp}")
        original = [(k, v) for k, v in r.headers if not k.startswith(H)]
        if original != s.headers:
            problems.append(f"{label}: original headers {original}, the source had {s.headers}")
        try:
            got = {n: r.header_str(H + n) for n in ("class", "message", "stacktrace", "column", "pipeline")}
        except (AssertionError, UnicodeDecodeError) as e:
            problems.append(f"{label}: {e}")
            continue
        if got["class"] != kind:
            problems.append(f"{label}: class {got['class']!r}, expected {kind!r}")
        if not got["message"] or f"partition {part}, offset {off}" not in got["message"]:
            problems.append(f"{label}: message {got['message']!r} does not name partition {part}, offset {off}")
        if not got["stacktrace"] or kind not in got["stacktrace"]:
            problems.append(f"{label}: stacktrace {got['stacktrace']!r} does not name the kind")
        if got["column"] != expected_column(s):
            problems.append(f"{label}: column {got['column']!r}, expected {expected_column(s)!r}")
        if got["pipeline"] != p.group:
            problems.append(f"{label}: pipeline {got['pipeline']!r}, expected {p.group!r}")
    dups = sorted((c, n) for c, n in seen.items() if n > 1)
    if dups:
        problems.insert(0, f"{len(dups)} records dead-lettered more than once (coordinates, times): {dups[:10]}")
    missing = sorted(c for c in src.bad if (p.topic, *c) not in seen)
    if missing:
        problems.insert(0, f"{len(missing)} bad records not in the dead-letter topic, first ones: {missing[:10]}")
    return problems, len(dlq)


def assert_dlq_topic(p: Pipeline, dlq_topic: str, src: Source) -> None:
    problems, n = dlq_topic_problems(p, dlq_topic, src)
    assert not problems, (f"dead-letter topic {dlq_topic}: {n} records for {len(src.bad)} bad ones; "
                          f"{len(problems)} problems, first ones:\n  " + "\n  ".join(problems[:30]))


def dlq_rows(p: Pipeline) -> list[dict] | None:
    from pyiceberg.exceptions import NoSuchTableError

    try:
        table = p.catalog().load_table(DLQ_TABLE)
    except NoSuchTableError:
        return None
    return table.scan().to_arrow().to_pylist()


def assert_dlq_table(p: Pipeline, src: Source, since: datetime) -> None:
    """The dead-letter table holds each bad record once, with its bytes, coordinates and reason."""
    table = p.catalog().load_table(DLQ_TABLE)
    names = [f.name for f in table.schema().fields]
    assert names == DLQ_COLUMNS, f"dead-letter table columns {names}, expected {DLQ_COLUMNS}"
    rows = table.scan().to_arrow().to_pylist()
    now = datetime.now(timezone.utc)
    problems: list[str] = []
    seen: Counter = Counter()
    for row in rows:
        coord = (row["source_partition"], row["source_offset"])
        seen[(row["source_topic"], *coord)] += 1
        label = f"row for {row['source_topic']}/{coord[0]}:{coord[1]}"
        if row["source_topic"] != p.topic or coord not in src.bad:
            problems.append(f"{label}: not a bad record of {p.topic}")
            continue
        s = src.bad[coord]
        kind = s.header_str(SAMPLE_BAD)
        label += f" ({kind})"
        if row["key"] != s.key:
            problems.append(f"{label}: key {row['key']!r}, the source had {s.key!r}")
        if row["value"] != s.value:
            problems.append(f"{label}: value {row['value']!r:.80}, the source had {s.value!r:.80}")
        try:
            text = s.value.decode("utf-8") if s.value is not None else None
        except UnicodeDecodeError:
            text = None
        if row["value_text"] != text:
            problems.append(f"{label}: value_text {row['value_text']!r:.80}, expected {text!r:.80}")
        if sorted(row["headers"] or []) != sorted(s.headers):
            problems.append(f"{label}: headers {row['headers']}, the source had {s.headers}")
        if row["error_kind"] != kind:
            problems.append(f"{label}: error_kind {row['error_kind']!r}, expected {kind!r}")
        if row["column_path"] != expected_column(s):
            problems.append(f"{label}: column_path {row['column_path']!r}, expected {expected_column(s)!r}")
        if not row["error_message"] or f"offset {coord[1]}" not in row["error_message"]:
            problems.append(f"{label}: error_message {row['error_message']!r} does not name the offset")
        if row["pipeline"] != p.group:
            problems.append(f"{label}: pipeline {row['pipeline']!r}, expected {p.group!r}")
        ts = row["source_timestamp"]
        if ts is None or ts_micros(ts) // 1000 != s.timestamp[1]:
            problems.append(f"{label}: source_timestamp {ts}, the source record's timestamp is {s.timestamp[1]} ms")
        at = row["dead_lettered_at"]
        if at is None or not since <= at <= now:
            problems.append(f"{label}: dead_lettered_at {at} is not between {since} and {now}")
    dups = sorted((c, n) for c, n in seen.items() if n > 1)
    if dups:
        problems.insert(0, f"{len(dups)} records in the table more than once (coordinates, times): {dups[:10]}")
    missing = sorted(c for c in src.bad if (p.topic, *c) not in seen)
    if missing:
        problems.insert(0, f"{len(missing)} bad records not in the table, first ones: {missing[:10]}")
    assert not problems, (f"dead-letter table {DLQ_TABLE}: {len(rows)} rows for {len(src.bad)} bad records; "
                          f"{len(problems)} problems, first ones:\n  " + "\n  ".join(problems[:30]))


def assert_table_holds_good_ids(p: Pipeline, src: Source) -> None:
    assert_each_id_once(p.ids().to_pylist(), src.good_ids())
    assert p.ledger() == src.ends, f"ledger {p.ledger()} differs from the topic's end offsets {src.ends}"
    assert_snapshot_ranges_tile(p.table(), p.topic, src.ends)


def run_to_exit(p: Pipeline, timeout: float) -> subprocess.CompletedProcess:
    try:
        return p.floe("run", timeout=timeout)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"floe run did not exit within {timeout}s\n{e.stdout}\n{e.stderr}", pytrace=False)


# --- 1 ----------------------------------------------------------------------------------------


def test_every_kind_to_topic_and_table(pipeline_factory):
    p = pipeline_factory("dl")
    dlq_topic = unique("floe-dl-dlq")
    # A valve that a 2% failure rate must not trip.
    p.write_config(dead_letter={"topic": dlq_topic, "table": DLQ_TABLE, "max_ratio": 0.2, "window": 200})
    p.create_table(STRICT_DDL)
    since = datetime.now(timezone.utc)
    produced = p.publish(5000, 1, 4, bad_every=50, spread="1d", keep=lambda i: i % 7 == 0)
    src = read_source(p, produced.ids, produced.bad)
    assert kinds_count(src) == {k: 20 for k in KINDS}, kinds_count(src)

    loader = p.start_loader("dl")
    p.wait_rows(len(src.good_ids()), timeout=90, alive=[loader])
    # The last record (id 5000) is a dead letter: the ledger must move past it all the same.
    wait_ledger(p, src.ends, timeout=30, alive=[loader])
    loader.sigterm_ok()

    assert_table_holds_good_ids(p, src)
    assert_rows_equal(p.table(), produced.records)
    assert_dlq_topic(p, dlq_topic, src)
    assert_dlq_table(p, src, since)


def produce(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes | None, list]]) -> None:
    """Sends (key, value, headers) records, in order, to a new one-partition topic (confluent-kafka:
    values publish-sample cannot make, null keys and values, null and binary headers)."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    failed = []
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for key, value, headers in records:
        producer.produce(topic, key=key, value=value, headers=headers,
                         on_delivery=lambda err, _msg: err and failed.append(err))
    assert producer.flush(30) == 0 and not failed, f"not every record was delivered: {failed}"


def crafted(rid: int, value: bytes | None, kind: str | None = None, column: str | None = None,
            key: bool = True, extra: tuple = ()) -> tuple[bytes | None, bytes | None, list]:
    """A record made by the test: key = id (or none), the sample headers publish-sample would set
    (`floe.sample.bad` naming the expected kind), and the expected column when it is not the
    kind's usual one."""
    headers = [(SAMPLE_ID, str(rid).encode()), *extra]
    if kind:
        headers.append((SAMPLE_BAD, kind.encode()))
    if column is not None:
        headers.append((TEST_COLUMN, column.encode()))
    return (str(rid).encode() if key else None, value, headers)


def load_crafted(p: Pipeline, records: list, dlq_topic: str | None) -> Source:
    """Produces the records, loads them with dead letters going to the table (and the topic, if
    given), and checks both destinations and the ledger."""
    p.write_config(dead_letter={"table": DLQ_TABLE, **({"topic": dlq_topic} if dlq_topic else {})})
    p.create_table(STRICT_DDL)
    since = datetime.now(timezone.utc)
    produce(p.bootstrap, p.topic, records)
    bad = [int(h[0][1]) for _, _, h in records if any(k == SAMPLE_BAD for k, _ in h)]
    src = read_source(p, list(range(1, len(records) + 1)), bad)
    loader = p.start_loader("crafted")
    p.wait_rows(len(src.good_ids()), timeout=60, alive=[loader])
    wait_ledger(p, src.ends, timeout=30, alive=[loader])
    loader.sigterm_ok()
    assert_table_holds_good_ids(p, src)
    if dlq_topic:
        assert_dlq_topic(p, dlq_topic, src)
    assert_dlq_table(p, src, since)
    return src


def test_not_an_object_null_key_value_and_headers(pipeline_factory):
    p = pipeline_factory("dlshape")
    load_crafted(p, [
        crafted(1, b'{"id": 1}'),
        crafted(2, b"[1, 2]", "not-an-object", key=False),
        crafted(3, b'"text"', "not-an-object", extra=(("x-null", None), ("x-bin", b"\x00\xff\x80"))),
        crafted(4, None, "not-an-object"),  # a tombstone
        crafted(5, b'{"id": 5, "string": "ok"}'),
        crafted(6, b'{"id": null}', "missing-required", column="id"),
        crafted(7, b'{"id": 7, "integer": 1e300}', "out-of-range", column="integer"),
        crafted(8, b'{"id": 8}'),
    ], unique("floe-dlshape-dlq"))


@pytest.mark.parametrize("case", ["list", "struct"])
def test_failure_deep_in_a_record_leaves_its_neighbours_intact(pipeline_factory, case):
    """A record that fails after part of it was decoded (a list's second element, a struct's second
    field) must leave nothing behind in the rows around it."""
    if case == "list":
        bad = crafted(2, b'{"id": 2, "integers": [1, "x"], "string": "two"}', "wrong-type", column="integers[1]")
    else:
        bad = crafted(2, b'{"id": 2, "nested": {"key": "k2", "value": "x"}}', "wrong-type", column="nested.value")
    good = {
        1: {"id": 1, "integers": [10], "nested": {"key": "k1", "value": 1}, "string": "one"},
        3: {"id": 3, "integers": [30, 31], "nested": {"key": "k3", "value": 3}, "string": "three"},
        4: {"id": 4, "integers": [], "nested": {"key": "k4", "value": 4}, "string": "four"},
    }
    p = pipeline_factory(f"dldeep-{case}")
    load_crafted(p, [crafted(1, json.dumps(good[1]).encode()), bad,
                     crafted(3, json.dumps(good[3]).encode()), crafted(4, json.dumps(good[4]).encode())], None)
    fields = ("id", "integers", "nested", "string")
    rows = {r["id"]: r for r in p.table().scan(selected_fields=fields).to_arrow().to_pylist()}
    wrong = {i: rows[i] for i in good if rows[i] != good[i]}
    assert not wrong, f"rows next to the failed record changed: got {wrong}, produced {[good[i] for i in wrong]}"


# --- 2 ----------------------------------------------------------------------------------------


BACKLOG = 3000
STREAMED = 12_000
RATE = 500  # records/s while the loaders are killed (~24 s)
KILLS = 8


def dlq_ahead_of_ledger(p: Pipeline, dlq_topic: str) -> list[str]:
    """Dead letters written but not yet covered by the main table's ledger: a kill that left these
    behind landed between writing dead letters and the commit (the window DESIGN.md §3 is about)."""
    ledger = p.ledger() or {}
    ahead = []
    for r in read_topic(p.bootstrap, dlq_topic):
        part, off = int(r.header_str(H + "partition")), int(r.header_str(H + "offset"))
        if off >= ledger.get(part, 0):
            ahead.append(f"topic {part}:{off}")
    from pyiceberg.exceptions import NoSuchTableError

    try:
        dlq_ledger = p.ledger(p.catalog().load_table(DLQ_TABLE)) or {}
    except NoSuchTableError:
        dlq_ledger = {}
    for part, at in dlq_ledger.items():
        if at > ledger.get(part, 0):
            ahead.append(f"table ledger {part}:{at} > {ledger.get(part, 0)}")
    return ahead


def kill_after_dead_letters(loader, timeout: float) -> bool:
    """SIGKILLs the loader as soon as its log says it wrote dead letters (before it can commit the
    batch), or after `timeout`. Returns whether the log line was seen."""
    with open(loader.log_path, "rb") as f:
        f.seek(0, os.SEEK_END)
        buf = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            chunk = f.read()
            if chunk:
                buf = (buf + chunk)[-4096:]
                if b"dead letters written" in buf:
                    loader.sigkill()
                    return True
            else:
                loader.assert_running("while waiting for it to write dead letters")
                time.sleep(0.001)
    loader.sigkill()
    return False


def test_exactly_once_under_sigkill(pipeline_factory):
    seed = int(os.environ.get("FLOE_TEST_SEED") or random.SystemRandom().randrange(2**32))
    print(f"test_exactly_once_under_sigkill: seed {seed} (rerun with FLOE_TEST_SEED={seed})")
    rng = random.Random(seed)

    p = pipeline_factory("dlkill")
    dlq_topic = unique("floe-dlkill-dlq")
    # Static membership: a restarted loader takes its predecessor's place at once (see test_loader).
    p.write_config(kafka={"group.instance.id": f"{p.group}-member"},
                   dead_letter={"topic": dlq_topic, "table": DLQ_TABLE})
    p.create_table(STRICT_DDL)
    since = datetime.now(timezone.utc)
    keep = lambda i: i % 13 == 0  # noqa: E731 - the records compared field by field
    first = p.publish(BACKLOG, 1, 4, bad_every=50, keep=keep)
    streaming = p.publish_in_background(STREAMED, BACKLOG + 1, 4, rate=RATE, bad_every=50, keep=keep)

    runs = []
    while len(runs) < KILLS or not streaming.done():
        assert len(runs) < 4 * KILLS, "production did not finish while the loaders were being killed"
        loader = p.start_loader(f"killed-{len(runs)}")
        delay = rng.uniform(1.5, 3.5)
        time.sleep(delay)  # the random moment of the kill (or of starting to watch for one)
        loader.assert_running(f"before SIGKILL {len(runs)}")
        # Every other kill lands right after dead letters were written, before the batch commits.
        targeted = len(runs) % 2 == 1
        if targeted:
            hit = kill_after_dead_letters(loader, timeout=5)
        else:
            loader.sigkill()
            hit = False
        ahead = dlq_ahead_of_ledger(p, dlq_topic)
        commits = loader.count("batch committed")
        print(f"kill {len(runs)}: after {delay:.2f}s{' + right after writing dead letters' if hit else ''}, "
              f"{commits} commits, {loader.count('dead letters written')} dead-letter writes; "
              f"written but uncommitted: {len(ahead)} {ahead[:4]}")
        runs.append((commits, bool(ahead)))
    working = sum(1 for commits, _ in runs if commits > 0)
    assert working >= len(runs) // 2, f"only {working} of {len(runs)} killed loaders committed anything: {runs}"
    in_window = sum(1 for _, ahead in runs if ahead)
    print(f"{len(runs)} kills, {working} after commits, {in_window} with dead letters written but not committed")

    rest = streaming.join(timeout=60)
    src = read_source(p, first.ids + rest.ids, first.bad + rest.bad)
    assert len(src.bad) == (BACKLOG + STREAMED) // 50
    final = p.start_loader("final")
    p.wait_rows(len(src.good_ids()), timeout=120, alive=[final])
    wait_ledger(p, src.ends, timeout=60, alive=[final])
    final.sigterm_ok()

    assert_table_holds_good_ids(p, src)
    assert_rows_equal(p.table(), {**first.records, **rest.records})
    assert_dlq_topic(p, dlq_topic, src)
    assert_dlq_table(p, src, since)
    assert in_window >= 1, (
        "no kill landed between writing dead letters and the commit, so the exactly-once path for a "
        f"re-read batch was not exercised: {runs}")


# --- 3 ----------------------------------------------------------------------------------------


STOPPED = re.compile(r"partition (\d+), offset (\d+)")


def assert_stopped_at_first_bad(p: Pipeline, res: subprocess.CompletedProcess, src: Source) -> tuple[int, int]:
    """`floe run` exited non-zero at the first bad record of some partition, saying where, why and
    what to do; the table holds exactly the records of each partition before where it stopped."""
    out = res.stdout + res.stderr
    assert res.returncode != 0, f"floe run should fail on a bad record without a destination:\n{out}"
    first_bad = {}
    for part, off in sorted(src.bad):
        first_bad.setdefault(part, off)
    named = {(int(a), int(b)) for a, b in STOPPED.findall(res.stderr)}
    stops = named & set(first_bad.items())
    assert len(stops) == 1, f"the error should name the first bad record of one partition {first_bad}; it names {named}:\n{res.stderr}"
    part, off = stops.pop()
    kind = src.bad[(part, off)].header_str(SAMPLE_BAD)
    for needle in (p.topic, REASON_OF_KIND[kind], "[dead_letter]", "floe skip"):
        assert needle in res.stderr, f"the error should contain {needle!r} (stopped at {part}:{off}, {kind}):\n{res.stderr}"

    ledger = p.ledger() or {}
    # No entry: nothing of the partition committed yet, it starts at its beginning (offset 0 here).
    assert ledger.get(part, 0) == off, f"stopped at {part}:{off}: the ledger should be there, it is {ledger}"
    expected = []
    for q, end in src.ends.items():
        at = ledger.get(q, 0)
        assert at <= first_bad.get(q, end), f"partition {q}: ledger {at} is past its first bad record {first_bad.get(q)}"
        expected += [int(src.by_coord[(q, o)].header_str(SAMPLE_ID)) for o in range(at)]
    assert_each_id_once(p.ids().to_pylist(), expected)
    print(f"stopped at {part}:{off} ({kind}); ledger {ledger}; {len(expected)} rows")
    return part, off


def test_no_destination_stops_then_resumes_with_one(pipeline_factory):
    p = pipeline_factory("dlstop")
    p.write_config()
    p.create_table(STRICT_DDL)
    produced = p.publish(2000, 1, 2, bad_every=400)
    src = read_source(p, produced.ids, produced.bad)

    res = run_to_exit(p, timeout=60)
    part, off = assert_stopped_at_first_bad(p, res, src)

    # Started again unchanged, it stops again at a first bad record (the same one, or that of the
    # other partition if it gets there first), and the first one has not moved.
    again = run_to_exit(p, timeout=60)
    assert_stopped_at_first_bad(p, again, src)
    assert p.ledger().get(part) == off

    dlq_topic = unique("floe-dlstop-dlq")
    p.write_config(dead_letter={"topic": dlq_topic})
    loader = p.start_loader("with-destination")
    p.wait_rows(len(src.good_ids()), timeout=90, alive=[loader])
    wait_ledger(p, src.ends, timeout=30, alive=[loader])
    loader.sigterm_ok()
    assert re.search(rf"partition assigned partition={re.escape(p.topic)}/{part} start=Offset\({off}\) .*from_ledger=true",
                     loader.log()), f"the restarted loader should resume {part} at {off}\n{loader.tail()}"

    assert_table_holds_good_ids(p, src)
    assert_dlq_topic(p, dlq_topic, src)


def offsets_tile_with_skips(table, topic: str, ends: dict[int, int]) -> list[str]:
    """Like assert_snapshot_ranges_tile, counting a `floe.skipped` snapshot as covering its record."""
    covered: dict[int, list[tuple[int, int]]] = {}
    for s in table.metadata.snapshots:
        extra = s.summary.additional_properties if s.summary else {}
        ranges = [(p, a, b) for t, p, a, b in parse_offset_ranges(extra.get("floe.offsets", "")) if t == topic]
        if "floe.skipped" in extra:
            m = re.fullmatch(r"(.+)/(\d+):(\d+)", extra["floe.skipped"])
            assert m and m.group(1) == topic, f"floe.skipped = {extra['floe.skipped']!r}"
            q, o = int(m.group(2)), int(m.group(3))
            if not any(rq == q and a <= o < b for rq, a, b in ranges):
                ranges.append((q, o, o + 1))
        for q, a, b in ranges:
            covered.setdefault(q, []).append((a, b))
    problems = []
    for q, end in ends.items():
        at = 0
        for a, b in sorted(covered.get(q, [])):
            if a != at:
                problems.append(f"partition {q}: range {a}-{b} after {at}")
            at = max(at, b)
        if at != end:
            problems.append(f"partition {q}: covered up to {at}, the topic ends at {end}")
    return problems


def test_skip_one_record(pipeline_factory):
    p = pipeline_factory("dlskip")
    p.write_config()
    p.create_table(STRICT_DDL)
    first = p.publish(100, 1, 1, bad_every=100)  # id 100 (offset 99) is not JSON
    rest = p.publish(100, 101, 1)
    src = read_source(p, first.ids + rest.ids, first.bad)
    assert list(src.bad) == [(0, 99)]

    res = run_to_exit(p, timeout=60)
    assert_stopped_at_first_bad(p, res, src)

    wrong = p.floe("skip", "--topic", p.topic, "--partition", "0", "--offset", "98")
    assert wrong.returncode != 0, f"skipping a record the pipeline is not stopped at must be refused:\n{wrong.stdout}{wrong.stderr}"
    assert p.ledger() == {0: 99}
    skip = p.floe("skip", "--topic", p.topic, "--partition", "0", "--offset", "99", "--reason", "test: id 100 is broken")
    assert skip.returncode == 0, f"floe skip failed ({skip.returncode}):\n{skip.stdout}{skip.stderr}"
    table = p.table()
    assert p.ledger(table) == {0: 100}
    summary = table.metadata.snapshot_by_id(table.metadata.current_snapshot_id).summary.additional_properties
    assert summary.get("floe.skipped") == f"{p.topic}/0:99", f"snapshot summary {summary}"
    assert summary.get("floe.skip-reason") == "test: id 100 is broken", f"snapshot summary {summary}"

    loader = p.start_loader("after-skip")
    p.wait_rows(199, timeout=60, alive=[loader])
    wait_ledger(p, {0: 200}, timeout=30, alive=[loader])
    loader.sigterm_ok()
    assert_each_id_once(p.ids().to_pylist(), [*range(1, 100), *range(101, 201)])
    problems = offsets_tile_with_skips(p.table(), p.topic, src.ends)
    assert not problems, "snapshots (with the skip) should cover each offset once:\n  " + "\n  ".join(problems)


def test_skip_refuses_a_wrong_offset_on_an_uncommitted_partition(pipeline_factory):
    """The bad record is the partition's first. Stopping records where the pipeline stopped (the
    ledger stands at the bad record's offset), so a mistyped offset is refused, or `floe skip` would
    silently drop every record before it."""
    p = pipeline_factory("dlskip0")
    p.write_config()
    p.create_table(STRICT_DDL)
    first = p.publish(1, 1, 1, bad_every=1)  # id 1 (offset 0) is not JSON
    rest = p.publish(20, 2, 1)
    src = read_source(p, first.ids + rest.ids, first.bad)
    assert list(src.bad) == [(0, 0)]

    res = run_to_exit(p, timeout=60)
    assert_stopped_at_first_bad(p, res, src)
    assert (p.ledger() or {}).get(0) == 0, "the ledger records where the pipeline stopped: offset 0"

    wrong = p.floe("skip", "--topic", p.topic, "--partition", "0", "--offset", "5")
    ledger = p.ledger()
    assert wrong.returncode != 0 and ledger == {0: 0}, (
        "floe skip --offset 5 on a pipeline stopped at offset 0 must be refused (it would drop offsets "
        f"0-5, five good records with them); exit {wrong.returncode}, ledger now {ledger}:\n{wrong.stdout}{wrong.stderr}")

    skip = p.floe("skip", "--topic", p.topic, "--partition", "0", "--offset", "0")
    assert skip.returncode == 0, f"floe skip failed ({skip.returncode}):\n{skip.stdout}{skip.stderr}"
    loader = p.start_loader("after-skip")
    p.wait_rows(20, timeout=60, alive=[loader])
    wait_ledger(p, {0: 21}, timeout=30, alive=[loader])
    loader.sigterm_ok()
    assert_each_id_once(p.ids().to_pylist(), range(2, 22))


# --- 4 ----------------------------------------------------------------------------------------


def test_ratio_valve_stops_a_wrong_schema(pipeline_factory):
    p = pipeline_factory("valve")
    dlq_topic = unique("floe-valve-dlq")
    window = 100
    p.write_config(dead_letter={"topic": dlq_topic, "table": DLQ_TABLE, "max_ratio": 0.2, "window": window})
    p.create_table(WRONG_DDL)
    produced = p.publish(3000, 1, 2)

    t0 = time.monotonic()
    res = run_to_exit(p, timeout=60)
    took = time.monotonic() - t0
    out = res.stdout + res.stderr
    print(f"exit {res.returncode} after {took:.1f}s: {res.stderr.strip()[-600:]}")
    assert res.returncode != 0, f"floe run should stop when every record fails:\n{out}"
    assert "dead_letter.max_ratio" in res.stderr, f"the error should name dead_letter.max_ratio:\n{out}"

    dlq = read_topic(p.bootstrap, dlq_topic)
    rows = dlq_rows(p) or []
    ledger = p.ledger() or {}
    print(f"dead-letter topic: {len(dlq)} records, table: {len(rows)} rows, ledger {ledger}")
    assert len(dlq) <= window and len(rows) <= window, (
        f"the valve should stop before the stream drains into the dead-letter destinations: "
        f"{len(dlq)} records in the topic, {len(rows)} rows in the table, window {window}")
    assert sum(ledger.values()) <= window, f"the ledger moved past {sum(ledger.values())} records: {ledger}"
    assert p.committed_rows() == 0
    # What was dead-lettered is exactly what the ledger moved past, no more.
    src = read_source(p, produced.ids, [])
    committed = {(q, o) for q, at in ledger.items() for o in range(at)}
    in_topic = [(int(r.header_str(H + "partition")), int(r.header_str(H + "offset"))) for r in dlq]
    in_table = [(r["source_partition"], r["source_offset"]) for r in rows]
    for name, got in (("topic", in_topic), ("table", in_table)):
        assert sorted(got) == sorted(committed), (
            f"dead-letter {name} holds {len(got)} records, the ledger moved past {len(committed)} ({ledger})")
    assert set(committed) <= set(src.by_coord)
