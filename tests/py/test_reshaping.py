"""Reshaping in config and Kafka metadata columns (issue 16, items 1 and 2), end to end: the
producers floe replaces (camelCase field names, CloudEvents envelopes) are read with the matching
`[decode]` options, Kafka metadata lands in `[metadata]` columns, and a record that matches no
column is dead-lettered (`no-matching-fields`), never a row of NULLs.

Everything is checked from outside floe: the table with pyiceberg, field by field against what
publish-sample printed; the source topic with confluent-kafka (keys, offsets, timestamps, headers).
"""

from __future__ import annotations

import json
import re

import pytest

from loader_harness import (
    EVENTS_DDL,
    Pipeline,
    assert_each_id_once,
    assert_rows_equal,
    read_topic,
    row_differences,
    ts_micros,
    wait_until,
)

DLQ_TABLE = "default.events_dlq"
SAMPLE_ID = "floe.sample.id"


@pytest.fixture
def pipeline_factory(tmp_path, floe_bin, kafka_bootstrap, procs):
    def make(name: str) -> Pipeline:
        return Pipeline(tmp_path / name, floe_bin, kafka_bootstrap, procs, prefix=f"floe-{name}")

    return make


def produce_raw(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes, list]], partition: int = 0) -> None:
    """Sends (key, value, headers) records to one partition; fails unless all are acknowledged."""
    from confluent_kafka import Producer

    errors: list = []
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for key, value, headers in records:
        producer.produce(topic, key=key, value=value, headers=headers, partition=partition,
                         on_delivery=lambda err, msg: errors.append(err) if err else None)
    left = producer.flush(60)
    assert left == 0 and not errors, f"{left} records not acknowledged, errors: {errors}"


def camel_to_snake(record: dict) -> dict:
    """A camel-shaped sample record back in the seed's field names (map keys are data)."""
    def name(k: str) -> str:
        return re.sub(r"[A-Z]", lambda m: "_" + m.group(0).lower(), k)

    return {name(k): (v if k == "stringMap" or not isinstance(v, dict) else camel_to_snake(v)) for k, v in record.items()}


def dead_letters(p: Pipeline) -> list[dict]:
    return p.catalog().load_table(DLQ_TABLE).scan().to_arrow().to_pylist()


def test_camel_case_producer_and_a_record_matching_no_column(pipeline_factory):
    p = pipeline_factory("camel")
    p.create_table()
    p.write_config(dead_letter={"table": DLQ_TABLE}, extra='[decode]\nfield_case = "camelCase"\n')
    first = p.publish(60, first_id=1, partitions=1, shape="camel")
    sample = first.records[7]
    assert "stringMap" in sample and "string_map" not in sample, f"publish-sample --shape camel sent {sample}"
    # Fields none of which is a column: without the check this was a row of NULLs.
    stray = b'{"specVersion": "1.0", "eventType": "x", "payload": {"id": 999}}'
    produce_raw(p.bootstrap, p.topic, [(b"stray", stray, [("floe.test", b"stray")])])
    second = p.publish(40, first_id=61, partitions=1, shape="camel")
    loader = p.start_loader()
    p.wait_rows(100, timeout=90, alive=[loader])
    wait_until("the dead letter", lambda: len(dead_letters(p)) >= 1, timeout=60, alive=[loader])
    loader.sigterm_ok()

    assert_each_id_once(p.ids().to_pylist(), range(1, 101))
    expected = {rid: camel_to_snake(r) for rid, r in {**first.records, **second.records}.items()}
    assert expected[7]["string_map"] == first.records[7]["stringMap"]
    assert_rows_equal(p.table(), expected)
    # string_map really arrived (the bug was a silent NULL): some records have non-empty maps.
    maps = p.table().scan(selected_fields=("string_map",)).to_arrow().column("string_map").to_pylist()
    assert all(m is not None for m in maps) and any(len(m) > 0 for m in maps), maps[:5]

    letters = dead_letters(p)
    assert len(letters) == 1, letters
    dl = letters[0]
    assert dl["error_kind"] == "no-matching-fields", dl
    assert (dl["source_topic"], dl["source_partition"], dl["source_offset"]) == (p.topic, 0, 60), dl
    assert dl["value"] == stray and dl["key"] == b"stray", dl
    message = dl["error_message"]
    for needle in ('"specVersion", "eventType", "payload"', f"topic {p.topic}, partition 0, offset 60"):
        assert needle in message, f"{needle!r} not in the dead letter's reason: {message}"
    ends = p.end_offsets()
    assert p.ledger() == ends == {0: 101}, f"ledger {p.ledger()}, topic ends {ends}"


CLOUDEVENTS_DDL = EVENTS_DDL.replace(
    "timestamp TIMESTAMP(6) WITH TIME ZONE)",
    "timestamp TIMESTAMP(6) WITH TIME ZONE, event_id VARCHAR, event_type VARCHAR, event_source VARCHAR, "
    "event_time TIMESTAMP(6) WITH TIME ZONE)",
)
assert CLOUDEVENTS_DDL != EVENTS_DDL
ENVELOPE_COLUMNS = {"event_id": "id", "event_type": "type", "event_source": "source", "event_time": "time"}


def test_cloudevents_envelope_is_unnested_and_projected(pipeline_factory):
    p = pipeline_factory("ce")
    p.create_table(CLOUDEVENTS_DDL)
    projections = "\n".join(f'{col} = "/{attr}"' for col, attr in ENVELOPE_COLUMNS.items())
    p.write_config(dead_letter={"table": DLQ_TABLE},
                   extra=f'[decode]\nunnest = "/data"\n\n[decode.projections]\n{projections}\n')
    produced = p.publish(80, first_id=1, partitions=2, shape="cloudevents")
    envelope = produced.records[5]
    assert envelope["specversion"] == "1.0" and envelope["data"]["id"] == 5, envelope
    loader = p.start_loader()
    p.wait_rows(80, timeout=90, alive=[loader])
    loader.sigterm_ok()

    assert_each_id_once(p.ids().to_pylist(), range(1, 81))
    rows = {r["id"]: r for r in p.table().scan().to_arrow().to_pylist()}
    problems = []
    for rid, env in produced.records.items():
        row = dict(rows[rid])
        for col, attr in ENVELOPE_COLUMNS.items():
            got = row.pop(col)
            if col == "event_time":
                ok = got is not None and ts_micros(got) == ts_micros(env[attr].replace("Z", "+00:00"))
            else:
                ok = got == env[attr]
            if not ok:
                problems.append(f"id {rid}: {col}: produced {env[attr]!r}, table has {got!r}")
        problems += [f"id {rid}: {d}" for d in row_differences(env["data"], row)]
    assert not problems, f"{len(problems)} differences, first ones:\n  " + "\n  ".join(problems[:30])
    assert not p.catalog().table_exists(DLQ_TABLE) or dead_letters(p) == []


METADATA_DDL = EVENTS_DDL.replace(
    "timestamp TIMESTAMP(6) WITH TIME ZONE)",
    "timestamp TIMESTAMP(6) WITH TIME ZONE, kafka_key VARCHAR, kafka_topic VARCHAR, kafka_partition INTEGER, "
    "kafka_offset BIGINT, kafka_timestamp TIMESTAMP(6) WITH TIME ZONE, kafka_timestamp_type VARCHAR, "
    "sample_id VARCHAR, blob VARBINARY)",
)
METADATA_CONFIG = """
[metadata]
key = "kafka_key"
topic = "kafka_topic"
partition = "kafka_partition"
offset = "kafka_offset"
timestamp = "kafka_timestamp"
timestamp_type = "kafka_timestamp_type"

[metadata.headers]
"floe.sample.id" = "sample_id"
blob = "blob"
"""
METADATA_COLUMNS = ("kafka_key", "kafka_topic", "kafka_partition", "kafka_offset", "kafka_timestamp",
                    "kafka_timestamp_type", "sample_id", "blob")


def test_kafka_metadata_columns(pipeline_factory):
    from confluent_kafka import TIMESTAMP_CREATE_TIME

    p = pipeline_factory("meta")
    p.create_table(METADATA_DDL)
    p.write_config(extra=METADATA_CONFIG)
    produced = p.publish(90, first_id=1, partitions=3, spread="2h")
    # Records of our own: a binary header, no sample-id header, a JSON field named like a
    # metadata column (the metadata wins).
    blob = bytes([0xFF, 0x00, 0x80, 0x01])
    extra = [{"id": 1000 + i, "kafka_topic": "from the value"} for i in range(3)]
    produce_raw(p.bootstrap, p.topic, [(f"k{i}".encode(), json.dumps(r).encode(), [("blob", blob)])
                                       for i, r in enumerate(extra)], partition=1)
    loader = p.start_loader()
    p.wait_rows(93, timeout=90, alive=[loader])
    loader.sigterm_ok()

    source = {(r.partition, r.offset): r for r in read_topic(p.bootstrap, p.topic)}
    assert len(source) == 93
    rows = p.table().scan().to_arrow().to_pylist()
    assert len(rows) == 93
    problems = []
    for row in rows:
        coord = (row["kafka_partition"], row["kafka_offset"])
        src = source.pop(coord, None)
        if src is None:
            problems.append(f"row id {row['id']}: coordinates {coord} are not a record of the topic (or twice)")
            continue
        ts_type, ts_ms = src.timestamp
        want = {
            "kafka_key": src.key.decode(),
            "kafka_topic": p.topic,
            "kafka_timestamp": ts_ms * 1000,
            "kafka_timestamp_type": "CreateTime" if ts_type == TIMESTAMP_CREATE_TIME else "LogAppendTime",
            "sample_id": src.header_str(SAMPLE_ID),
            "blob": src.header("blob"),
        }
        got = {k: row[k] for k in want}
        got["kafka_timestamp"] = ts_micros(row["kafka_timestamp"])
        if got != want:
            problems.append(f"{coord}: produced {want}, table has {got}")
        if json_id(src.value) != row["id"]:
            problems.append(f"{coord}: the row's id {row['id']} is not the record's value's")
    assert not problems and not source, "\n  ".join(problems[:20] + [f"never stored: {sorted(source)[:10]}"])
    # publish-sample stamps each record with its `timestamp` field, in milliseconds.
    sampled = {r["id"]: r for r in rows if r["id"] in produced.records}
    for rid in (1, 45, 90):
        assert ts_micros(sampled[rid]["kafka_timestamp"]) == ts_micros(produced.records[rid]["timestamp"]) // 1000 * 1000
        assert sampled[rid]["kafka_key"] == str(rid) == sampled[rid]["sample_id"]
    # The seed columns are untouched by the metadata.
    assert_rows_equal_without(p, produced.records, METADATA_COLUMNS)


def json_id(value: bytes | None) -> int | None:
    return json.loads(value)["id"] if value else None


def assert_rows_equal_without(p: Pipeline, expected: dict[int, dict], columns: tuple[str, ...]) -> None:
    rows = {r["id"]: r for r in p.table().scan().to_arrow().to_pylist()}
    problems = []
    for rid, rec in expected.items():
        row = {k: v for k, v in rows[rid].items() if k not in columns}
        problems += [f"id {rid}: {d}" for d in row_differences(rec, row)]
    assert not problems, "\n  ".join(problems[:20])


def test_reshaping_is_checked_against_the_table_at_start(pipeline_factory):
    p = pipeline_factory("check")
    p.create_table()
    cases = [
        ('[decode.projections]\nevent_id = "/id"\n',
         ['decode.projections.event_id = "/id"', 'has no top-level column "event_id"', "string_map"]),
        ('[metadata]\nkey = "kafka_key"\n', ['metadata.key = "kafka_key"', 'has no top-level column "kafka_key"']),
        ('[metadata]\noffset = "string"\n',
         ['metadata.offset = "string"', "it can go only to a long (BIGINT) column"]),
        ('[decode]\nfield_case = "Camel"\n', ['decode.field_case = "Camel"', "camelCase"]),
        ('[decode]\ntimestamp_zone = "Mars/Olympus"\n', ['decode.timestamp_zone = "Mars/Olympus" is not a time zone']),
    ]
    for extra, needles in cases:
        p.write_config(extra=extra)
        r = p.floe("run", timeout=60)
        out = r.stdout + r.stderr
        assert r.returncode == 2, f"{extra!r}: expected exit 2, got {r.returncode}\n{out}"
        for needle in needles:
            assert needle in out, f"{extra!r}: {needle!r} not in the error:\n{out}"


def test_auto_evolve_takes_a_record_of_new_fields_only(pipeline_factory):
    """Under auto_evolve, a record whose every field is new is evolution (columns added, the row
    kept), not a no-matching-fields dead letter."""
    p = pipeline_factory("evolve")
    p.create_table("CREATE TABLE events (id BIGINT, name VARCHAR)")
    p.write_config(dead_letter={"table": DLQ_TABLE}, schema={"auto_evolve": True},
                   extra='[decode]\nfield_case = "camelCase"\n')
    records = [{"id": 1, "name": "a"}, {"brandNew": 5, "alsoNew": "x"}, {"id": 3, "name": "c"}]
    produce_raw(p.bootstrap, p.topic, [(None, json.dumps(r).encode(), []) for r in records])
    loader = p.start_loader()
    p.wait_rows(3, timeout=90, alive=[loader])
    loader.sigterm_ok()
    table = p.table()
    names = [f.name for f in table.schema().fields]
    assert names[:2] == ["id", "name"] and sorted(names[2:]) == ["also_new", "brand_new"], names
    rows = sorted(table.scan().to_arrow().to_pylist(), key=lambda r: (r["id"] is None, r["id"] or 0))
    assert rows == [
        {"id": 1, "name": "a", "brand_new": None, "also_new": None},
        {"id": 3, "name": "c", "brand_new": None, "also_new": None},
        {"id": None, "name": None, "brand_new": 5, "also_new": "x"},
    ], rows
    assert not p.catalog().table_exists(DLQ_TABLE) or dead_letters(p) == []
