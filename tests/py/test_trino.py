"""Trino reads what floe writes (issue 8): a real Trino server (scripts/trino.sh) on the same
JDBC catalog and warehouse as floe, checked value by value; and Trino's maintenance SQL and schema
changes run while floe keeps ingesting, with every id counted through Trino afterwards.

One Trino serves the whole session (FLOE_TEST_TRINO=http://... uses a server already running).
Each test has its own floe catalog (a unique catalog name in the test PostgreSQL, or a SQLite file)
and its own Trino catalog on it, added with CREATE CATALOG (the server runs with dynamic catalog
management). Values are compared through Trino's HTTP protocol, typed (trino_client.py).
"""

from __future__ import annotations

import base64
import json
import math
import os
import random
import struct
import threading
import time
import uuid
from datetime import date, datetime, time as dtime, timezone
from decimal import Decimal

import pytest

from conftest import required_env
from loader_harness import (
    LEDGER_PREFIX,
    REPO,
    CatalogSpec,
    NotYet,
    Pipeline,
    Produced,
    Publisher,
    assert_each_id_once,
    create_topic,
    wait_until,
)
from loader_harness import produce_json as harness_produce_json
from trino_client import (
    Trino,
    TrinoError,
    TrinoServer,
    catalog_properties,
    create_catalog,
    rest_catalog_properties,
    sql_str,
    start_server,
    stop_server,
)


def say(request, line: str) -> None:
    """A line in the test run's output even when pytest captures output (-q)."""
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if reporter is None or capture is None:
        print(f"trino: {line}")
        return
    with capture.global_and_fixture_disabled():
        reporter.ensure_newline()
        reporter.write_line(f"trino: {line}")


@pytest.fixture(scope="session")
def trino_server(request, tmp_path_factory):
    uri = os.environ.get("FLOE_TEST_TRINO")
    if uri:
        client = Trino(uri)
        server = TrinoServer(client, str(client.query("SELECT version()").scalar()), "?", None, None)
        say(request, f"Trino {server.version} at {uri} (FLOE_TEST_TRINO)")
        yield server
        return
    d = tmp_path_factory.mktemp("trino")
    try:
        server = start_server(REPO, d)
    except Exception as e:  # noqa: BLE001 - reported as the fixture's failure
        pytest.fail(f"could not start Trino: {e}", pytrace=False)
    say(request, f"Trino {server.version} on {server.java}, {server.client.uri}, "
                 f"started in {server.started_in:.1f} s (scripts/trino.sh start)")
    yield server
    say(request, stop_server(REPO, d).splitlines()[-1])


class TrinoTable:
    """A floe pipeline and a Trino catalog on the same floe catalog; `{t}` in SQL is its table."""

    def __init__(self, trino: Trino, pipeline: Pipeline, catalog: str) -> None:
        self.trino = trino
        self.p = pipeline
        self.catalog = catalog
        ns, table = pipeline.table_name.split(".")
        self.name = f'{catalog}."{ns}"."{table}"'
        self.meta = lambda suffix: f'{catalog}."{ns}"."{table}${suffix}"'

    def q(self, sql: str, **kw):
        return self.trino.query(sql.replace("{t}", self.name), **kw)

    def count(self) -> int:
        return self.q("SELECT count(*) FROM {t}").scalar()

    def ids(self) -> list:
        return [r[0] for r in self.q("SELECT id FROM {t}").rows]

    def properties(self) -> dict[str, str]:
        return dict(self.trino.query(f'SELECT key, value FROM {self.meta("properties")}').rows)

    def columns(self) -> list[tuple[str, str]]:
        return [(r[0], r[1]) for r in self.q("DESCRIBE {t}").rows]

    def wait_count(self, n: int, timeout: float, alive=()) -> None:
        def check():
            got = self.count()
            assert got <= n, f"Trino counts {got} rows in {self.name}, more than the {n} expected: duplicates"
            if got < n:
                raise NotYet(f"Trino counts {got} rows")
            return True

        wait_until(f"Trino to count {n} rows in {self.name}", check, timeout, interval=1.0, alive=alive)


def s3_catalog_properties(props: dict[str, str], aws, warehouse: str) -> dict[str, str]:
    """The JDBC catalog's properties for tables on S3 (docs/trino.md): Trino's native S3 file system
    with the store's endpoint and path-style access."""
    props = {k: v for k, v in props.items() if not k.startswith(("fs.native-local", "local."))}
    props.update({
        "iceberg.jdbc-catalog.default-warehouse-dir": warehouse,
        "fs.native-s3.enabled": "true",
        "s3.endpoint": aws.endpoint,
        "s3.region": aws.region,
        "s3.path-style-access": "true",
        "s3.aws-access-key": aws.access_key_id,
        "s3.aws-secret-key": aws.secret_access_key,
    })
    return props


def glue_catalog_properties(aws) -> dict[str, str]:
    """The Iceberg connector on the AWS Glue Data Catalog, here moto's (docs/trino.md)."""
    return {
        "connector.name": "iceberg",
        "iceberg.catalog.type": "glue",
        "hive.metastore.glue.region": aws.region,
        "hive.metastore.glue.endpoint-url": aws.endpoint,
        "hive.metastore.glue.aws-access-key": aws.access_key_id,
        "hive.metastore.glue.aws-secret-key": aws.secret_access_key,
    }


@pytest.fixture
def trino_table(trino_server, tmp_path, floe_bin, kafka_bootstrap, procs, request):
    """Makes a pipeline on a fresh floe catalog (a unique catalog name in the test PostgreSQL, or
    floe's default SQLite file) and a Trino catalog on it; with `s3=True` the warehouse is a fresh
    bucket of the AWS emulator."""
    made = []

    def make(name: str, kind: str = "postgres", s3: bool = False) -> TrinoTable:
        if kind == "postgres":
            pg = required_env("FLOE_TEST_POSTGRES")
            spec = CatalogSpec("postgres", f"floe_{uuid.uuid4().hex[:12]}", pg)
        elif kind == "rest":
            spec = CatalogSpec.rest(required_env("FLOE_TEST_REST"))
        elif kind == "glue":
            spec, s3 = CatalogSpec.glue(), True
        else:
            spec = CatalogSpec("sqlite", "floe")
        aws = request.getfixturevalue("aws") if s3 else None
        warehouse = f"s3://{aws.new_bucket('floe-trino')}/warehouse" if aws else None
        p = Pipeline(tmp_path / name, floe_bin, kafka_bootstrap, procs, catalog=spec, prefix=f"floe-trino-{name}",
                     aws=aws, warehouse=warehouse)
        trino_catalog = f"t_{uuid.uuid4().hex[:10]}"
        if kind == "rest":
            props = rest_catalog_properties(spec.rest_uri)
        elif kind == "glue":
            props = glue_catalog_properties(aws)
        else:
            uri = spec.pg_uri if kind == "postgres" else f"sqlite:{p.data_dir / 'catalog.db'}"
            props = catalog_properties(REPO, uri, spec.name, p.warehouse)
        if aws:
            props = s3_catalog_properties(props, aws, warehouse)
        if kind == "glue":
            del props["iceberg.jdbc-catalog.default-warehouse-dir"]  # Glue's is hive.metastore.glue.default-warehouse-dir
            props["hive.metastore.glue.default-warehouse-dir"] = warehouse
        create_catalog(trino_server.client, trino_catalog, props)
        made.append(trino_catalog)
        return TrinoTable(trino_server.client, p, trino_catalog)

    yield make
    for c in made:
        try:
            trino_server.client.query(f"DROP CATALOG {c}")
        except Exception as e:  # noqa: BLE001 - cleanup only
            print(f"could not drop catalog {c}: {e}")


# --- comparing produced JSON with what Trino returns ----------------------------------------------


def instant(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    assert value.tzinfo is not None, f"timestamp without a zone: {text!r}"
    return value


def same_type_list(want: list, got) -> bool:
    return isinstance(got, list) and want == got and [type(x) for x in want] == [type(x) for x in got]


def seed_shape_differences(want: dict, got: dict) -> list[str]:
    """Every column of a publish-sample record (the seed shape) against a row Trino returned."""
    diffs = []

    def differ(name):
        diffs.append(f"{name}: produced {want.get(name)!r}, Trino returns {got.get(name)!r}")

    for name in ("id", "integer", "bool", "string"):
        w, g = want.get(name), got.get(name)
        if w != g or type(w) is not type(g):  # True == 1 in Python: the type must match too
            differ(name)
    for name in ("bools", "integers", "strings"):
        if not same_type_list(want[name], got.get(name)):
            differ(name)
    # A JSON number and a DOUBLE: both are the correctly rounded double of the same decimal text.
    if got.get("floating") != float(want["floating"]):
        differ("floating")
    if got.get("floatings") != [float(x) for x in want["floatings"]]:
        differ("floatings")
    if got.get("string_map") != want["string_map"]:
        differ("string_map")
    if got.get("nested") != want["nested"]:
        differ("nested")
    g = got.get("timestamp")
    if not isinstance(g, datetime) or g.tzinfo is None or g != instant(want["timestamp"]):
        differ("timestamp")
    if set(got) != set(want) | {"id"}:
        diffs.append(f"columns: Trino returns {sorted(got)}, produced {sorted(want)}")
    return diffs


# --- 1 ----------------------------------------------------------------------------------------


SEED_ROWS = 3000


@pytest.mark.parametrize("kind", ["postgres", "sqlite"])
def test_trino_reads_the_seed_shape(trino_table, kind):
    # PostgreSQL is the catalog to share with Trino; floe's default SQLite file works too, with
    # the sqlite-jdbc driver that scripts/trino.sh adds to Trino's Iceberg plugin.
    tt = trino_table("seed", kind)
    p = tt.p
    p.create_table()
    # The seed's own record (no id: it is the seed's shape exactly), then varied samples.
    res = p.floe("publish-sample", "--topic", p.topic, "--partitions", "2")
    assert res.returncode == 0, f"publish-sample failed:\n{res.stdout}\n{res.stderr}"
    seed = json.loads(res.stdout.strip().splitlines()[-1])
    samples = p.publish(SEED_ROWS - 1, 2, 2, spread="3d")

    loader = p.start_loader("seed")
    tt.wait_count(SEED_ROWS, timeout=120, alive=[loader])
    loader.sigterm_ok()

    rows = tt.q("SELECT * FROM {t}").dicts()
    assert len(rows) == SEED_ROWS
    by_id = {}
    for r in rows:
        assert r["id"] not in by_id, f"id {r['id']} returned twice"
        by_id[r["id"]] = r
    assert set(by_id) == {None, *samples.records}, "Trino returns other ids than produced"
    problems = [f"seed record: {d}" for d in seed_shape_differences({**seed, "id": None}, by_id[None])]
    for rid, rec in sorted(samples.records.items()):
        problems += [f"id {rid}: {d}" for d in seed_shape_differences(rec, by_id[rid])]
    assert not problems, f"{len(problems)} differences, first ones:\n  " + "\n  ".join(problems[:30])

    # Predicates Trino pushes into floe's files (partition pruning on day(timestamp), min/max
    # statistics) must agree with the values themselves.
    cut = sorted(instant(r["timestamp"]) for r in samples.records.values())[len(samples.records) // 3]
    want = {rid for rid, r in [(None, seed), *samples.records.items()] if instant(r["timestamp"]) >= cut}
    got = tt.q(f"SELECT id FROM {{t}} WHERE timestamp >= from_iso8601_timestamp_nanos({sql_str(cut.isoformat())})").rows
    assert {r[0] for r in got} == want and len(got) == len(want), "a timestamp predicate returns other rows than the values say"
    assert tt.q("SELECT count(*) FROM {t} WHERE integer BETWEEN 100 AND 199").scalar() == 100
    print(f"{kind} catalog: Trino returned all {SEED_ROWS} rows with every column as produced (seed record included)")


# --- 2 ----------------------------------------------------------------------------------------

# Every type floe supports, nested ones included. b is NOT NULL: a required column.
ALLTYPES_DDL = (
    "CREATE TABLE events (id BIGINT, b BOOLEAN NOT NULL, i INTEGER, l BIGINT, r REAL, d DOUBLE, "
    "dec DECIMAL(10,2), s VARCHAR, bin VARBINARY, dt DATE, t TIME(6), ts TIMESTAMP(6), "
    "tstz TIMESTAMP(6) WITH TIME ZONE, u UUID, arr ARRAY(ROW(x INTEGER, y ARRAY(VARCHAR))), "
    'm MAP(VARCHAR, ROW(a BIGINT)), nested ROW("inner" ROW(deep ROW(v DOUBLE)))) '
    "WITH (partitioning = ARRAY['day(tstz)', 'bucket(u, 4)', 'truncate(s, 2)'])"
)

# What Trino's DESCRIBE must say.
ALLTYPES_DESCRIBE = [
    ("id", "bigint"), ("b", "boolean"), ("i", "integer"), ("l", "bigint"), ("r", "real"), ("d", "double"),
    ("dec", "decimal(10,2)"), ("s", "varchar"), ("bin", "varbinary"), ("dt", "date"), ("t", "time(6)"),
    ("ts", "timestamp(6)"), ("tstz", "timestamp(6) with time zone"), ("u", "uuid"),
    ("arr", "array(row(x integer, y array(varchar)))"), ("m", "map(varchar, row(a bigint))"),
    ("nested", "row(inner row(deep row(v double)))"),
]


def f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


UTC = timezone.utc
U1 = uuid.UUID("f79c3e09-677c-4bbd-a479-3f349cb785e7")
U2 = uuid.UUID("00000000-0000-0000-0000-000000000000")
U3 = uuid.UUID("ffffffff-ffff-ffff-ffff-ffffffffffff")

# (the JSON record sent to Kafka, the row Trino must return). Columns missing from a record are
# NULL. The third record spells values in the other forms floe's decoder documents.
ALLTYPES_RECORDS: list[tuple[dict, dict]] = [
    (
        {"id": 1, "b": True, "i": 42, "l": 1234567890123, "r": 1.5, "d": 2.718281828459045, "dec": "12.34",
         "s": "hello", "bin": base64.b64encode(b"\x00\x01\xfe\xff").decode(), "dt": "2024-02-29",
         "t": "13:45:56.123456", "ts": "2024-02-29T13:45:56.123456", "tstz": "2024-02-29T13:45:56.123456Z",
         "u": str(U1), "arr": [{"x": 1, "y": ["a", "b"]}, {"x": 2, "y": []}],
         "m": {"k1": {"a": 1}, "k2": {"a": -2}}, "nested": {"inner": {"deep": {"v": 0.5}}}},
        {"id": 1, "b": True, "i": 42, "l": 1234567890123, "r": 1.5, "d": 2.718281828459045, "dec": Decimal("12.34"),
         "s": "hello", "bin": b"\x00\x01\xfe\xff", "dt": date(2024, 2, 29), "t": dtime(13, 45, 56, 123456),
         "ts": datetime(2024, 2, 29, 13, 45, 56, 123456), "tstz": datetime(2024, 2, 29, 13, 45, 56, 123456, UTC),
         "u": U1, "arr": [{"x": 1, "y": ["a", "b"]}, {"x": 2, "y": []}],
         "m": {"k1": {"a": 1}, "k2": {"a": -2}}, "nested": {"inner": {"deep": {"v": 0.5}}}},
    ),
    (
        # Lower extremes; one microsecond before the epoch.
        {"id": 2, "b": False, "i": -2147483648, "l": -9223372036854775808, "r": -3.4028234663852886e38,
         "d": -1.7976931348623157e308, "dec": "-99999999.99", "s": 'ünïcödé ✓ "q" \\ /\n\t\u0000',
         "bin": "", "dt": "1900-01-01", "t": "00:00:00", "ts": "1969-12-31T23:59:59.999999",
         "tstz": "1969-12-31T23:59:59.999999+00:00", "u": str(U2), "arr": [], "m": {},
         "nested": {"inner": {"deep": {"v": -0.0}}}},
        {"id": 2, "b": False, "i": -2147483648, "l": -9223372036854775808, "r": f32(-3.4028234663852886e38),
         "d": -1.7976931348623157e308, "dec": Decimal("-99999999.99"), "s": 'ünïcödé ✓ "q" \\ /\n\t\u0000',
         "bin": b"", "dt": date(1900, 1, 1), "t": dtime(0, 0), "ts": datetime(1969, 12, 31, 23, 59, 59, 999999),
         "tstz": datetime(1969, 12, 31, 23, 59, 59, 999999, UTC), "u": U2, "arr": [], "m": {},
         "nested": {"inner": {"deep": {"v": -0.0}}}},
    ),
    (
        # Upper extremes, and the other spellings: "true" as a string, a decimal as a JSON number,
        # URL-safe base64 without padding, a space instead of T, an offset, nanoseconds (floored),
        # a zone id, an upper-case UUID, NaN.
        {"id": 3, "b": "true", "i": 2147483647, "l": 9223372036854775807, "r": 3.4028234663852886e38, "d": "NaN",
         "dec": 99999999.99, "s": "", "bin": "-_8", "dt": "9999-12-31", "t": "23:59:59.999999999",
         "ts": "9999-12-31 23:59:59.999999", "tstz": "2024-03-31T03:30:00.5+02:00[Europe/Paris]",
         "u": str(U3).upper(), "arr": [{"x": None, "y": None}, {"y": ["", None]}],
         "m": {"null": None, "": {"a": 9223372036854775807}}, "nested": {"inner": {"deep": None}}},
        {"id": 3, "b": True, "i": 2147483647, "l": 9223372036854775807, "r": f32(3.4028234663852886e38),
         "d": math.nan, "dec": Decimal("99999999.99"), "s": "", "bin": b"\xfb\xff", "dt": date(9999, 12, 31),
         "t": dtime(23, 59, 59, 999999), "ts": datetime(9999, 12, 31, 23, 59, 59, 999999),
         "tstz": datetime(2024, 3, 31, 1, 30, 0, 500000, UTC), "u": U3,
         "arr": [{"x": None, "y": None}, {"x": None, "y": ["", None]}],
         "m": {"null": None, "": {"a": 9223372036854775807}}, "nested": {"inner": {"deep": None}}},
    ),
    (
        # Only the required column: every other one NULL.
        {"id": 4, "b": False},
        {"id": 4, "b": False},
    ),
    (
        # Explicit nulls, the infinities, a time zone offset that changes the UTC day.
        {"id": 5, "b": True, "i": None, "l": None, "r": "-Infinity", "d": "Infinity", "dec": "0.01", "s": None,
         "bin": None, "dt": None, "t": "12:00", "ts": None, "tstz": "2024-01-01T01:00:00+05:30", "u": None,
         "arr": None, "m": None, "nested": {"inner": None}},
        {"id": 5, "b": True, "r": -math.inf, "d": math.inf, "dec": Decimal("0.01"), "t": dtime(12, 0),
         "tstz": datetime(2023, 12, 31, 19, 30, tzinfo=UTC), "nested": {"inner": None}},
    ),
]


def same_value(want, got) -> bool:
    if isinstance(want, float):
        if not isinstance(got, float):
            return False
        if math.isnan(want):
            return math.isnan(got)
        # -0.0 == 0.0 in Python: compare the sign too.
        return want == got and math.copysign(1, want) == math.copysign(1, got)
    if isinstance(want, dict):
        return isinstance(got, dict) and want.keys() == got.keys() and all(same_value(want[k], got[k]) for k in want)
    if isinstance(want, list):
        return isinstance(got, list) and len(want) == len(got) and all(same_value(w, g) for w, g in zip(want, got))
    if isinstance(want, datetime):
        # Aware: the same instant, and Trino must say it is UTC-based; naive: the same wall clock.
        return isinstance(got, datetime) and (want.tzinfo is None) == (got.tzinfo is None) and want == got
    return type(want) is type(got) and want == got


def produce_json(bootstrap: str, topic: str, records: list[dict]) -> None:
    """Sends records (key = id) to a new one-partition topic; fails unless every one is
    acknowledged."""
    create_topic(bootstrap, topic, 1)
    harness_produce_json(bootstrap, topic, records)


def test_trino_reads_every_type(trino_table, kafka_bootstrap):
    tt = trino_table("types")
    p = tt.p
    res = p.floe("table", "create", ALLTYPES_DDL)
    assert res.returncode == 0, f"floe table create failed:\n{res.stdout}\n{res.stderr}"
    assert tt.columns() == ALLTYPES_DESCRIBE, f"Trino's DESCRIBE of the table floe created: {tt.columns()}"

    produce_json(kafka_bootstrap, p.topic, [rec for rec, _ in ALLTYPES_RECORDS])
    loader = p.start_loader("types")
    tt.wait_count(len(ALLTYPES_RECORDS), timeout=90, alive=[loader])
    loader.sigterm_ok()

    columns = [name for name, _ in ALLTYPES_DESCRIBE]
    rows = {r["id"]: r for r in tt.q("SELECT * FROM {t}").dicts()}
    assert sorted(rows) == [want["id"] for _, want in ALLTYPES_RECORDS]
    problems = []
    for _, want in ALLTYPES_RECORDS:
        got = rows[want["id"]]
        assert list(got) == columns
        for c in columns:
            if not same_value(want.get(c), got[c]):
                problems.append(f"id {want['id']} column {c}: want {want.get(c)!r}, Trino returns {got[c]!r}")
    assert not problems, f"{len(problems)} differences:\n  " + "\n  ".join(problems)

    # Filters on partition columns (day(tstz), bucket(u), truncate(s)) and others: Trino prunes with
    # floe's partition values and file statistics, so these must agree with the values.
    def ids(where: str) -> list[int]:
        return sorted(r[0] for r in tt.q(f"SELECT id FROM {{t}} WHERE {where}").rows)

    checks = {
        "tstz >= TIMESTAMP '2024-01-01 00:00:00 UTC'": [1, 3],
        "tstz < TIMESTAMP '2024-01-01 00:00:00 UTC'": [2, 5],
        f"u = UUID '{U1}'": [1],
        f"u = UUID '{U3}'": [3],
        "s LIKE 'he%'": [1],
        "s = ''": [3],
        "s IS NULL": [4, 5],
        "dt = DATE '2024-02-29'": [1],
        "ts < TIMESTAMP '1970-01-01 00:00:00'": [2],
        "l = 9223372036854775807": [3],
        "dec = DECIMAL '-99999999.99'": [2],
        "b": [1, 3, 5],
        "is_nan(d)": [3],
        "cardinality(arr) = 2": [1, 3],
        "element_at(m, 'k2').a = -2": [1],
        'nested."inner".deep.v = 0.5': [1],
    }
    wrong = {w: (want, got) for w, want in checks.items() if (got := ids(w)) != want}
    assert not wrong, "filters return other ids than the values say (where: (want, got)): " + repr(wrong)
    print(f"Trino read {len(ALLTYPES_RECORDS)} rows of {len(columns)} columns exactly; {len(checks)} filters agree")

    # pyiceberg, an independent reader, returns the same values. (pyiceberg 0.12 reads a NULL list or
    # map as an empty one; Trino above returns the NULLs, so only that difference is tolerated here.)
    py_rows = {r["id"]: r for r in p.table().scan().to_arrow().to_pylist()}
    assert sorted(py_rows) == [want["id"] for _, want in ALLTYPES_RECORDS]
    problems = []
    for _, want in ALLTYPES_RECORDS:
        got = {c: from_pyiceberg(v, c) for c, v in py_rows[want["id"]].items()}
        for c in columns:
            w, g = want.get(c), got[c]
            if w is None and c in ("arr", "m") and g in ([], {}):
                continue
            if not same_value(w, g):
                problems.append(f"id {want['id']} column {c}: want {w!r}, pyiceberg returns {g!r}")
    assert not problems, f"{len(problems)} differences:\n  " + "\n  ".join(problems)


def from_pyiceberg(v, column: str = ""):
    """pyiceberg's Python values in the form the expectations use: the map column `m` as a dict
    (pyiceberg gives a list of key/value tuples), the uuid column as uuid.UUID, timestamps with
    time zone in UTC."""
    if v is None:
        return None
    if column == "m":
        return {k: from_pyiceberg(x) for k, x in v}
    if column == "u" and isinstance(v, (bytes, bytearray)):
        return uuid.UUID(bytes=bytes(v))
    if isinstance(v, list):
        return [from_pyiceberg(x) for x in v]
    if isinstance(v, dict):
        return {k: from_pyiceberg(x) for k, x in v.items()}
    if isinstance(v, datetime) and v.tzinfo is not None:
        return v.astimezone(UTC)
    return v


# --- 3 ----------------------------------------------------------------------------------------


class Producing:
    """publish-sample in chunks, one after another, until stopped: production whose end the test
    chooses. Records are stamped `now` (no spread)."""

    def __init__(self, p: Pipeline, first_id: int, chunk: int, rate: float, partitions: int) -> None:
        self.p = p
        self.next_id = first_id
        self.chunk = chunk
        self.rate = rate
        self.partitions = partitions
        self.produced: list[Produced] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="producing")

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                done = Publisher(self.p, self.chunk, self.next_id, self.partitions, rate=self.rate).run()
                self.produced.append(done)
                self.next_id += self.chunk
        except BaseException as e:  # noqa: BLE001 - pytest.fail raises a BaseException; reported by stop()
            self.error = e

    def start(self) -> "Producing":
        self._thread.start()
        return self

    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 120) -> list[int]:
        self._stop.set()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"the producer did not finish its chunk within {timeout}s"
        if self.error is not None:
            raise self.error
        return [i for pr in self.produced for i in pr.ids]


class Steps:
    """What the test did, when: printed as it goes (pytest shows it when the test fails)."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.lines: list[str] = []

    def append(self, line: str) -> None:
        line = f"[{time.monotonic() - self.t0:6.1f}s] {line}"
        self.lines.append(line)
        print(line, flush=True)


def run_maintenance(tt: TrinoTable, sql: str, log: Steps, attempts: int = 4):
    """One of Trino's statements on the table floe is writing. A commit that loses the race with
    floe's commit (Iceberg's own retries exhausted) is retried as a user would, and counted."""
    for attempt in range(1, attempts + 1):
        t0 = time.monotonic()
        try:
            log.append(f"Trino: {sql.replace('{t}', tt.name)}")
            res = tt.q(sql)
        except TrinoError as e:
            conflict = any(s in e.message for s in ("Failed to commit", "CommitFailed", "conflict", "Conflict",
                                                    "Cannot commit", "cannot commit"))
            if conflict and attempt < attempts:
                log.append(f"{sql}: attempt {attempt} lost a commit race: {e.message[:200]}")
                continue
            raise
        log.append(f"{sql}: done in {time.monotonic() - t0:.1f}s (attempt {attempt})"
                   + (f", {res.update_count} rows" if res.update_count is not None else ""))
        return res
    raise AssertionError("unreachable")


CHUNK = 1_500
RATE = 300
PARTITIONS = 4
VALUE_SAMPLE = 500


class Ingesting:
    """A table that floe keeps loading while a producer keeps publishing: seeded records first
    (spread over `spread` before now), then chunks stamped now until `finish`."""

    def __init__(self, tt: TrinoTable, name: str, seeded: int, spread: str) -> None:
        self.tt = tt
        self.p = p = tt.p
        self.log = Steps()
        p.create_table()
        self.seeded = p.publish(seeded, 1, PARTITIONS, spread=spread)
        self.loader = p.start_loader(name)
        tt.wait_count(seeded, timeout=120, alive=[self.loader])
        self.producing = Producing(p, seeded + 1, CHUNK, RATE, PARTITIONS).start()
        self.log.append(f"{seeded} seeded records in the table; producing {RATE}/s from id {seeded + 1}")
        self.floe_commits_again("the start of production")

    def floe_commits_again(self, what: str, times: int = 2) -> None:
        """floe commits on top of what just happened, `times` more batches at least."""
        before = self.loader.count("batch committed")
        self.loader.wait_log("batch committed", timeout=60, times=before + times)
        if self.producing.error is not None:
            raise self.producing.error
        assert self.producing.running(), "production stopped early"
        self.log.append(f"floe committed {self.loader.count('batch committed') - before} batches after {what}")

    def trino(self, sql: str):
        return run_maintenance(self.tt, sql, self.log)

    def finish(self, removed: set[int]) -> None:
        """Stops producing, lets floe catch up and stops it; then every produced id but `removed`
        is in the table exactly once (Trino and pyiceberg agree), sampled rows have the produced
        values, and the ledger equals the topic's end offsets."""
        tt, p = self.tt, self.p
        later = self.producing.stop()
        total = len(self.seeded.ids) + len(later)
        expected = set(range(1, total + 1)) - removed
        self.log.append(f"production stopped at id {total}; waiting for floe to catch up")
        tt.wait_count(len(expected), timeout=120, alive=[self.loader])
        self.loader.sigterm_ok()

        ids = tt.ids()
        assert_each_id_once(ids, expected)

        records = {**self.seeded.records, **{k: v for pr in self.producing.produced for k, v in pr.records.items()}}
        sample = sorted(random.Random(len(ids)).sample(sorted(expected), min(VALUE_SAMPLE, len(expected))))
        got = {r["id"]: r for r in tt.q(f"SELECT * FROM {{t}} WHERE id IN ({', '.join(map(str, sample))})").dicts()}
        problems = [f"id {i}: {d}" for i in sample for d in seed_shape_differences(records[i], got[i])]
        assert not problems, f"{len(problems)} differences in sampled rows, first ones:\n  " + "\n  ".join(problems[:30])

        # The ledger survived Trino's commits and equals the topic's end offsets.
        props = tt.properties()
        key = LEDGER_PREFIX + p.group
        assert key in props, f"ledger property {key} missing after Trino's commits: {sorted(props)}"
        ends = p.end_offsets()
        assert sum(ends.values()) == total
        assert json.loads(props[key]) == {p.topic: {str(q): o for q, o in ends.items()}}, (
            f"ledger {props[key]} differs from the topic's end offsets {ends}")

        snapshots = tt.trino.query(f"SELECT operation, summary FROM {tt.meta('snapshots')} ORDER BY committed_at").rows
        floe_snapshots = sum(1 for _, s in snapshots if "floe.offsets" in s)
        self.log.append(f"{len(ids)} ids once each ({len(removed)} deleted by Trino), {len(sample)} sampled rows "
                        f"as produced, ledger {props[key]}; {len(snapshots)} snapshots ({floe_snapshots} floe's)")

        # pyiceberg, a third reader, agrees.
        assert_each_id_once(p.ids().to_pylist(), expected)


def test_trino_maintenance_while_floe_ingests(trino_table):
    tt = trino_table("maint")
    # Spread over the 3 days before now: several day(timestamp) partitions, and a DELETE cutoff
    # inside one of them (position deletes, not only whole files dropped).
    run = Ingesting(tt, "maint", seeded=20_000, spread="3d")
    run.trino("ALTER TABLE {t} EXECUTE optimize")
    run.floe_commits_again("optimize")
    run.trino("ALTER TABLE {t} EXECUTE expire_snapshots(retention_threshold => '0s')")
    run.floe_commits_again("expire_snapshots")

    # Records produced now are stamped now, after the cutoff: the DELETE removes exactly the
    # seeded records before it.
    stamps = {rid: instant(r["timestamp"]) for rid, r in run.seeded.records.items()}
    cutoff = sorted(stamps.values())[len(stamps) * 2 // 5]
    assert cutoff.minute or cutoff.second or cutoff.microsecond  # not a day boundary
    removed = {rid for rid, ts in stamps.items() if ts < cutoff}
    cutoff_sql = cutoff.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f UTC")
    res = run.trino(f"DELETE FROM {{t}} WHERE timestamp < TIMESTAMP '{cutoff_sql}'")
    assert res.update_count == len(removed), f"DELETE removed {res.update_count} rows, expected {len(removed)}"
    run.floe_commits_again("delete")
    # Compaction again, now over Trino's delete files and floe's newer files.
    run.trino("ALTER TABLE {t} EXECUTE optimize")
    run.floe_commits_again("the second optimize")
    run.finish(removed)


def test_trino_through_the_rest_catalog_while_floe_ingests(trino_table):
    # floe and Trino on the same Iceberg REST catalog (scripts/rest-catalog.sh): Trino reads floe's
    # table through it and commits an OPTIMIZE through it while floe keeps committing; every id
    # once, through Trino and through pyiceberg (also on the REST catalog).
    tt = trino_table("rest", "rest")
    run = Ingesting(tt, "rest", seeded=1_000, spread="1d")
    assert tt.count() >= 1_000
    run.trino("ALTER TABLE {t} EXECUTE optimize")
    run.floe_commits_again("optimize")
    run.finish(set())


def test_trino_through_glue_while_floe_ingests(trino_table):
    # floe and Trino on the same Glue Data Catalog (moto) with the table on S3 (moto): Trino reads
    # floe's table through Glue and commits an OPTIMIZE through it (UpdateTable with the VersionId,
    # as floe does) while floe keeps committing; every id once, through Trino and through pyiceberg
    # (its own Glue catalog).
    tt = trino_table("glue", "glue")
    # Commits every 5 s: Trino's OPTIMIZE needs a window to win its UpdateTable in (on this shared
    # machine with moto, a commit of Trino's takes seconds; against 1-second commits it lost every
    # race and retried until the query timed out).
    tt.p.write_config(interval="5s")
    run = Ingesting(tt, "glue", seeded=1_000, spread="1d")
    assert tt.count() >= 1_000
    run.trino("ALTER TABLE {t} EXECUTE optimize")
    run.floe_commits_again("optimize")
    run.finish(set())
    snapshots = tt.trino.query(f"SELECT operation FROM {tt.meta('snapshots')}").rows
    assert any(r[0] == "replace" for r in snapshots), f"no replace snapshot (Trino's OPTIMIZE): {snapshots}"


def test_trino_optimize_on_s3_while_floe_ingests(trino_table, aws):
    """The table on S3 (moto): Trino reads it through its native S3 file system and compacts it
    while floe ingests; every id once afterwards."""
    tt = trino_table("s3", s3=True)
    run = Ingesting(tt, "s3", seeded=5_000, spread="2d")
    files_before = tt.q(f"SELECT count(*) FROM {tt.meta('files')}").scalar()
    run.trino("ALTER TABLE {t} EXECUTE optimize")
    files_after = tt.q(f"SELECT count(*) FROM {tt.meta('files')}").scalar()
    run.floe_commits_again("optimize")
    run.finish(set())
    location = tt.p.table().metadata_location
    assert location.startswith(f"s3://{tt.p.warehouse_uri.removeprefix('s3://').split('/')[0]}/"), location
    snapshots = tt.trino.query(f"SELECT operation FROM {tt.meta('snapshots')}").rows
    assert any(r[0] == "replace" for r in snapshots), f"no replace snapshot (Trino's OPTIMIZE): {snapshots}"
    print(f"data files before OPTIMIZE {files_before}, right after {files_after}")


def test_trino_schema_change_while_floe_ingests(trino_table):
    tt = trino_table("schema")
    run = Ingesting(tt, "schema", seeded=5_000, spread="1d")
    run.trino("ALTER TABLE {t} ADD COLUMN extra VARCHAR")
    run.floe_commits_again("add column")
    cols = [c for c, _ in tt.columns()]
    assert cols[-1] == "extra", f"after floe's commits the table should still have column extra: {cols}"
    assert tt.q("SELECT count(*) FROM {t} WHERE extra IS NOT NULL").scalar() == 0

    run.trino("ALTER TABLE {t} DROP COLUMN extra")
    run.floe_commits_again("drop column")
    cols = [c for c, _ in tt.columns()]
    assert "extra" not in cols, f"after floe's commits column extra should stay dropped: {cols}"
    run.finish(set())
