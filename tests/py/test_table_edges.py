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
from loader_harness import EVENTS_TABLE, Pipeline


@pytest.fixture
def pipeline_factory(tmp_path, floe_bin, kafka_bootstrap, procs):
    def make(name: str = "p") -> Pipeline:
        return Pipeline(tmp_path / name, floe_bin, kafka_bootstrap, procs, prefix=f"floe-{name}")

    return make


def produce_json(bootstrap: str, topic: str, records: list[dict], partitions: int = 1) -> None:
    """Sends records (key = id) with confluent-kafka to a new topic; fails unless every one is
    acknowledged."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)]).values():
        f.result(timeout=30)
    errors = []
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    for rec in records:
        producer.produce(topic, key=str(rec["id"]).encode(), value=json.dumps(rec).encode(),
                         on_delivery=lambda err, msg: errors.append(err) if err else None)
    left = producer.flush(30)
    assert left == 0 and not errors, f"{left} records not acknowledged, errors: {errors}"


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
