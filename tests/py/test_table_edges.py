"""Edges of the table format (issue 12): partition values that look alike as paths, tables floe
cannot handle, older readers and catalogs, writes that fail part-way. Every result is read back by
pyiceberg and DuckDB, independently of floe.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict

import pyarrow.parquet as pq
import pytest
from pyiceberg.expressions import EqualTo, IsNull, NotNull

from conftest import duckdb_connect
from loader_harness import EVENTS_TABLE, Pipeline, create_topic
from loader_harness import produce_json as harness_produce_json


@pytest.fixture
def pipeline_factory(tmp_path, floe_bin, kafka_bootstrap, procs):
    def make(name: str = "p") -> Pipeline:
        return Pipeline(tmp_path / name, floe_bin, kafka_bootstrap, procs, prefix=f"floe-{name}")

    return make


def produce_json(bootstrap: str, topic: str, records: list[dict], partitions: int = 1) -> None:
    """Sends records (key = id) to a new topic; fails unless every one is acknowledged."""
    create_topic(bootstrap, topic, partitions)
    harness_produce_json(bootstrap, topic, records)


def load(p: Pipeline, records: list[dict], partitions: int = 1) -> None:
    """Produces the records, runs `floe run` until they are all in the table, stops it cleanly."""
    produce_json(p.bootstrap, p.topic, records, partitions)
    loader = p.start_loader()
    p.wait_rows(len(records), timeout=90, alive=[loader])
    loader.sigterm_ok()


def duckdb_ids(p: Pipeline, where: str) -> list[int]:
    path = p.table().metadata_location.removeprefix("file://")
    con = duckdb_connect()
    return sorted(r[0] for r in con.execute(f"SELECT id FROM iceberg_scan('{path}') WHERE {where}").fetchall())


# --- item 1: partition values ------------------------------------------------------------------

# Values whose partition paths coincide or look like path syntax. NULL twice: sent as JSON null
# and as a missing field.
REGIONS = [None, "null", "NULL", "a/b", "x=y", "a=b/c=d", "a%2Fb", "../..", ""]


def sql_literal(v: str) -> str:
    return "'" + v.replace("'", "''") + "'"


def test_partition_values_null_and_path_syntax(pipeline_factory):
    p = pipeline_factory("partvals")
    p.create_table("CREATE TABLE events (id BIGINT, region VARCHAR) WITH (partitioning = ARRAY['region'])")
    records, want = [], defaultdict(list)
    for i in range(1, 201):
        region = REGIONS[i % len(REGIONS)]
        rec = {"id": i} if region is None and i % 2 else {"id": i, "region": region}
        records.append(rec)
        want[region].append(i)
    load(p, records)

    table = p.table()
    problems = []
    for region, ids in want.items():
        if region is None:
            got = table.scan(row_filter=IsNull("region"), selected_fields=("id",)).to_arrow().column("id").to_pylist()
            got_duck = duckdb_ids(p, "region IS NULL")
        else:
            got = table.scan(row_filter=EqualTo("region", region), selected_fields=("id",)).to_arrow().column("id").to_pylist()
            got_duck = duckdb_ids(p, f"region = {sql_literal(region)}")
        if sorted(got) != ids:
            problems.append(f"pyiceberg region {region!r}: {len(got)} rows {sorted(got)[:10]}..., want {len(ids)}")
        if got_duck != ids:
            problems.append(f"DuckDB region {region!r}: {len(got_duck)} rows {got_duck[:10]}..., want {len(ids)}")
    not_null = sorted(table.scan(row_filter=NotNull("region"), selected_fields=("id",)).to_arrow().column("id").to_pylist())
    if not_null != sorted(i for r, ids in want.items() if r is not None for i in ids):
        problems.append(f"pyiceberg region IS NOT NULL: {len(not_null)} rows")
    assert not problems, "filters return the wrong rows:\n  " + "\n  ".join(problems)

    # Every data file holds exactly the value its manifest entry labels it with, and each value
    # has its own files.
    files = table.inspect.files().to_pylist()
    labels = []
    for f in files:
        label = f["partition"]["region"]
        values = set(pq.read_table(f["file_path"].removeprefix("file://"), columns=["region"]).column("region").to_pylist())
        assert values == {label}, f"{f['file_path']} is labelled region={label!r} but holds {values}"
        labels.append(label)
    assert sorted(labels, key=repr) == sorted(want, key=repr), f"one file per value expected, labels: {labels}"
    # No value made a file leave the table's data directory.
    data_dir = table.location().removeprefix("file://") + "/data/"
    for f in files:
        path = f["file_path"].removeprefix("file://")
        assert path.startswith(data_dir) and path[len(data_dir):].count("/") == 1 and ".." not in path.split("/"), path


# --- item 7: floe query only reads ----------------------------------------------------------------


def test_query_refuses_statements_that_change_anything(catalog, tmp_path):
    floe = catalog.floe
    floe.run("table", "create", "CREATE TABLE events (id BIGINT, region VARCHAR)")
    out = tmp_path / "copied.csv"
    for sql, kind in [
        ('DROP TABLE "default".events', "DROP TABLE"),
        ("INSERT INTO \"default\".events VALUES (1, 'x')", "INSERT INTO"),
        (f"COPY (SELECT 1 AS x) TO '{out}' STORED AS CSV", "COPY"),
        ("CREATE TABLE t AS SELECT 1 AS x", "CREATE TABLE"),
        (f"CREATE EXTERNAL TABLE e STORED AS CSV LOCATION '{tmp_path}'", "CREATE EXTERNAL TABLE"),
        ("SET datafusion.execution.batch_size = 1", "SET"),
        ('EXPLAIN ANALYZE INSERT INTO "default".events VALUES (2, \'y\')', "INSERT INTO"),
    ]:
        r = floe.run("query", sql, check=False)
        assert r.returncode == 2, f"{sql!r} should be refused\n{r.describe()}"
        assert f"floe query only reads: {kind} statements are refused" in r.stderr, r.describe()
    assert not out.exists(), "COPY wrote a file"
    # Nothing changed: the table is there, empty, and queries still run.
    assert floe.run("table", "list").stdout.split() == ["default.events"]
    r = floe.run("query", 'SELECT count(*) AS n FROM "default".events')
    assert re.search(r"\|\s*0\s*\|", r.stdout), r.describe()
    assert catalog.pyiceberg().load_table("default.events").scan().to_arrow().num_rows == 0
    for sql in ["SHOW TABLES", 'DESCRIBE "default".events', "EXPLAIN SELECT 1", "WITH t AS (SELECT 1 AS x) SELECT x FROM t"]:
        floe.run("query", sql)


# --- item 5: tables floe cannot handle fail early and alone -----------------------------------------


def nested_rows(levels: int) -> str:
    return "ROW(f " * levels + "BIGINT" + ")" * levels


def test_deep_row_is_refused_at_create(catalog):
    floe = catalog.floe
    r = floe.run("table", "create", f"CREATE TABLE deep (id BIGINT, d {nested_rows(41)})", check=False)
    assert r.returncode == 2, r.describe()
    assert "at most 40 nested ROWs" in r.stderr and "line 1" in r.stderr, r.describe()
    assert floe.run("table", "list").stdout.split() == [], "nothing was created"
    # 40 levels is a table floe can use: it describes, queries and pyiceberg reads it.
    floe.run("table", "create", f"CREATE TABLE deep (id BIGINT, d {nested_rows(40)})")
    floe.run("table", "describe", "default.deep")
    floe.run("query", 'SELECT count(*) FROM "default".deep')
    assert catalog.pyiceberg().load_table("default.deep").scan().to_arrow().num_rows == 0


def pyiceberg_deep_schema(levels: int):
    from pyiceberg.schema import Schema
    from pyiceberg.types import LongType, NestedField, StructType

    next_id = [2]

    def nest(n: int):
        if n == 0:
            return LongType()
        fid = next_id[0]
        next_id[0] += 1
        inner = nest(n - 1)
        return StructType(NestedField(fid, "f", inner, required=False))

    return Schema(NestedField(1, "d", nest(levels), required=False))


def test_an_unreadable_table_breaks_only_itself(catalog):
    floe = catalog.floe
    floe.run("table", "create", "CREATE TABLE events (id BIGINT, region VARCHAR)")
    # Another engine creates a table floe cannot parse (pyiceberg has no depth limit).
    catalog.pyiceberg().create_table("default.deep", schema=pyiceberg_deep_schema(45))
    assert floe.run("table", "list").stdout.split() == ["default.deep", "default.events"]
    r = floe.run("query", 'SELECT count(*) AS n FROM "default".events')
    assert r.returncode == 0 and "0" in r.stdout, r.describe()
    r = floe.run("query", "SHOW TABLES")
    assert "events" in r.stdout, r.describe()
    assert "deep" in r.stderr and "cannot be parsed" in r.stderr, f"the skipped table is named\n{r.describe()}"
    for args in (("query", 'SELECT * FROM "default".deep'), ("table", "describe", "default.deep")):
        r = floe.run(*args, check=False)
        assert r.returncode == 1, r.describe()
        assert "default.deep" in r.stderr and "cannot be parsed" in r.stderr and "recursion limit" in r.stderr, r.describe()


def upgrade_to_v3(p: Pipeline, location: str) -> None:
    import sqlite3

    path = location.removeprefix("file://")
    meta = json.loads(open(path).read())
    meta["format-version"] = 3
    meta["next-row-id"] = 0
    meta["last-updated-ms"] += 1
    meta.setdefault("metadata-log", []).append({"metadata-file": location, "timestamp-ms": meta["last-updated-ms"] - 1})
    new_path = path.replace("/00000-", "/00001-")
    assert new_path != path, path
    open(new_path, "w").write(json.dumps(meta))
    with sqlite3.connect(p.data_dir / "catalog.db") as con:
        n = con.execute("UPDATE iceberg_tables SET metadata_location = ?, previous_metadata_location = ? "
                        "WHERE metadata_location = ?", ("file://" + new_path, location, location)).rowcount
    assert n == 1


@pytest.mark.parametrize("version", ["1", "3"])
def test_run_refuses_format_v1_and_v3_before_writing(pipeline_factory, version):
    from pyiceberg.schema import Schema
    from pyiceberg.types import LongType, NestedField, StringType

    p = pipeline_factory(f"v{version}")
    schema = Schema(NestedField(1, "id", LongType(), required=False), NestedField(2, "region", StringType(), required=False))
    p.catalog().create_namespace_if_not_exists("default")
    if version == "1":
        table = p.catalog().create_table(EVENTS_TABLE, schema=schema, properties={"format-version": "1"})
    else:
        # pyiceberg 0.12 reads v3 but does not write it: its v2 metadata, upgraded as a v3 writer
        # would (format-version 3, next-row-id), becomes the table's next metadata file.
        table = p.catalog().create_table(EVENTS_TABLE, schema=schema)
        upgrade_to_v3(p, table.metadata_location)
        table = p.table()
    assert table.format_version == int(version)
    produce_json(p.bootstrap, p.topic, [{"id": i, "region": "r"} for i in range(1, 51)])
    loader = p.start_loader()
    try:
        rc = loader.popen.wait(timeout=60)
    except Exception:  # noqa: BLE001 - still running is the failure
        pytest.fail(f"floe run kept running on a format v{version} table\n{loader.tail()}", pytrace=False)
    log = loader.log()
    assert rc != 0, loader.tail()
    assert f"format v{version}" in log and "v2 tables only" in log, loader.tail()
    data = p.warehouse / "default" / "events" / "data"
    left = list(data.rglob("*")) if data.exists() else []
    assert left == [], f"files written before the refusal: {left}"
    assert p.table().current_snapshot() is None


# --- item 6: older readers and catalogs ----------------------------------------------------------


def test_empty_table_metadata_has_current_snapshot_id_minus_one(catalog):
    catalog.floe.run("table", "create", "CREATE TABLE events (id BIGINT, region VARCHAR)")
    table = catalog.pyiceberg().load_table("default.events")
    raw = json.loads(open(table.metadata_location.removeprefix("file://")).read())
    assert raw.get("current-snapshot-id") == -1, f"current-snapshot-id is {raw.get('current-snapshot-id', 'missing')!r}"
    assert table.current_snapshot() is None
    assert table.scan().to_arrow().num_rows == 0


V0_DDL = [
    # Iceberg Java's JdbcCatalog before 1.5 (schema version V0): no iceberg_type column.
    "CREATE TABLE iceberg_tables (catalog_name VARCHAR(255) NOT NULL, table_namespace VARCHAR(255) NOT NULL, "
    "table_name VARCHAR(255) NOT NULL, metadata_location VARCHAR(1000), previous_metadata_location VARCHAR(1000), "
    "PRIMARY KEY (catalog_name, table_namespace, table_name))",
    "CREATE TABLE iceberg_namespace_properties (catalog_name VARCHAR(255) NOT NULL, namespace VARCHAR(255) NOT NULL, "
    "property_key VARCHAR(255), property_value VARCHAR(1000), PRIMARY KEY (catalog_name, namespace, property_key))",
]


def sqlite_columns(db, table: str) -> list[str]:
    import sqlite3

    with sqlite3.connect(db) as con:
        return [r[1] for r in con.execute(f"PRAGMA table_info({table})")]


def test_v0_jdbc_catalog_is_read_and_migrated_only_when_asked(pipeline_factory):
    import sqlite3

    from pyiceberg.table import StaticTable

    p = pipeline_factory("v0")
    db = p.data_dir / "catalog.db"
    with sqlite3.connect(db) as con:
        for ddl in V0_DDL:
            con.execute(ddl)
    p.create_table("CREATE TABLE events (id BIGINT, region VARCHAR) WITH (partitioning = ARRAY['region'])")
    assert p.floe("table", "list").stdout.split() == [EVENTS_TABLE]
    d = p.floe("table", "describe", EVENTS_TABLE)
    assert d.returncode == 0 and "region" in d.stdout, d.stderr
    records = [{"id": i, "region": f"r{i % 3}"} for i in range(1, 301)]
    produce_json(p.bootstrap, p.topic, records)
    loader = p.start_loader()

    def rows():
        with sqlite3.connect(db) as con:
            (loc,) = con.execute("SELECT metadata_location FROM iceberg_tables").fetchone()
        return StaticTable.from_metadata(loc).scan().to_arrow()

    from loader_harness import wait_until
    wait_until("300 rows in the V0 catalog's table", lambda: rows().num_rows == 300, timeout=90, alive=[loader])
    loader.sigterm_ok()
    assert sorted(rows().column("id").to_pylist()) == list(range(1, 301))
    assert "iceberg_type" not in sqlite_columns(db, "iceberg_tables"), "floe changed the layout unasked"

    m = p.floe("catalog", "migrate")
    assert m.returncode == 0 and "upgraded" in m.stdout, m.stdout + m.stderr
    assert "iceberg_type" in sqlite_columns(db, "iceberg_tables")
    # Now the V1 readers open it too.
    assert sorted(p.table().scan().to_arrow().column("id").to_pylist()) == list(range(1, 301))
    again = p.floe("catalog", "migrate")
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stdout + again.stderr


# --- item 3: a commit retried past the staged-file age writes its files again ---------------------


def test_a_commit_retried_past_the_staged_age_writes_its_files_again(pipeline_factory, monkeypatch):
    """A commit that keeps failing for longer than write::MAX_STAGED_AGE (lowered to 2 s for this
    process with FLOE_TEST_MAX_STAGED_AGE) writes its data files again before it lands, so that
    it never points at files remove-orphans may have deleted; the files it gave up are deleted."""
    import sqlite3
    import time

    from loader_harness import assert_each_id_once, wait_until

    monkeypatch.setenv("FLOE_TEST_MAX_STAGED_AGE", "2s")
    p = pipeline_factory("restage")
    p.create_table("CREATE TABLE events (id BIGINT, region VARCHAR) WITH (partitioning = ARRAY['region'])")
    first = [{"id": i, "region": f"r{i % 3}"} for i in range(1, 101)]
    produce_json(p.bootstrap, p.topic, first)
    loader = p.start_loader(log="info,floe=debug")
    p.wait_rows(len(first), timeout=90, alive=[loader])
    data = p.warehouse / "default" / "events" / "data"
    before = {str(f) for f in data.rglob("*.parquet")}

    # The catalog is held (a write lock on its database: it can be read, but every swap fails,
    # "database is locked") while the next batch is written and committed.
    con = sqlite3.connect(p.data_dir / "catalog.db", isolation_level=None, timeout=30)
    con.execute("BEGIN IMMEDIATE")
    try:
        second = [{"id": i, "region": f"r{i % 3}"} for i in range(101, 201)]
        harness_produce_json(p.bootstrap, p.topic, second)

        def new_files() -> set[str]:
            return {str(f) for f in data.rglob("*.parquet")} - before

        # The batch's files are written, then its swap waits for the lock (5 s, SQLite's busy
        # timeout) and fails: these are the files first staged for the commit.
        wait_until("the second batch's files are written", new_files, timeout=60, alive=[loader])
        time.sleep(0.5)
        staged = new_files()
        loader.wait_log("transient failure; retrying with backoff", timeout=60)
        started = time.monotonic()
        # Held past the limit: the files staged for the commit are now too old to use.
        while time.monotonic() - started < 3:
            loader.assert_running("while the catalog is held")
            time.sleep(0.2)
    finally:
        con.execute("ROLLBACK")
        con.close()
    p.wait_rows(len(first) + len(second), timeout=90, alive=[loader])
    assert loader.count("wrote them again") >= 1, loader.tail()
    loader.sigterm_ok()

    table = p.table()
    assert_each_id_once(table.scan().to_arrow().column("id").to_pylist(), range(1, 201))
    referenced = {f["file_path"].removeprefix("file://") for f in table.inspect.files().to_pylist()}
    assert not staged & referenced, f"the commit used files staged too long ago: {sorted(staged & referenced)[:3]}"
    on_disk = {str(f) for f in data.rglob("*.parquet")}
    assert on_disk == referenced, f"unreferenced: {sorted(on_disk - referenced)[:5]}, missing: {sorted(referenced - on_disk)[:5]}"


def test_the_staged_age_limit_can_only_be_lowered(pipeline_factory, monkeypatch):
    p = pipeline_factory("restage-bad")
    p.create_table("CREATE TABLE events (id BIGINT)")
    for value, says in [("1h", "can only be lowered"), ("soon", "FLOE_TEST_MAX_STAGED_AGE")]:
        monkeypatch.setenv("FLOE_TEST_MAX_STAGED_AGE", value)
        out = p.floe("run", timeout=60)
        assert out.returncode == 2 and says in out.stderr, out.stdout + out.stderr


# --- item 9: a write that fails part-way leaves nothing behind ----------------------------------


def test_failed_writes_leave_no_unreferenced_files(pipeline_factory):
    p = pipeline_factory("leftover")
    p.create_table("CREATE TABLE events (id BIGINT, region VARCHAR) WITH (partitioning = ARRAY['region'])")
    data = p.warehouse / "default" / "events" / "data"
    data.mkdir(parents=True)
    blocker = data / "region=blocked"
    blocker.write_text("a file where the partition's directory must go")
    regions = ["a", "b", "c", "d", "e", "blocked"]
    records = [{"id": i, "region": regions[i % len(regions)]} for i in range(1, 601)]
    produce_json(p.bootstrap, p.topic, records)
    loader = p.start_loader(log="info,floe=debug")
    # The write fails on every attempt (partitions in varying order, so most attempts write some
    # files before reaching the blocked one); each attempt must clean up after itself.
    loader.wait_log("still failing", timeout=60, times=4)
    on_disk = [f for f in data.rglob("*.parquet")]
    assert on_disk == [], f"{len(on_disk)} data files of failed writes left: {on_disk[:5]}"
    blocker.unlink()
    p.wait_rows(len(records), timeout=90, alive=[loader])
    loader.sigterm_ok()
    referenced = {f["file_path"].removeprefix("file://") for f in p.table().inspect.files().to_pylist()}
    on_disk = {str(f) for f in data.rglob("*.parquet")}
    assert on_disk == referenced, f"unreferenced: {sorted(on_disk - referenced)[:5]}, missing: {sorted(referenced - on_disk)[:5]}"
