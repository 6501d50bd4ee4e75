"""`floe table create` with Trino DDL, read back by an independent reader (pyiceberg's SqlCatalog),
on a SQLite catalog and on a PostgreSQL catalog."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

from iceberg_expect import (
    assert_field_ids,
    assert_partition_spec,
    assert_schema,
    col,
    list_of,
    map_of,
    struct,
)

# The seed table, verbatim.
SEED_DDL = """CREATE TABLE test_table (
   bool BOOLEAN, floating DOUBLE, integer BIGINT, string VARCHAR,
   bools ARRAY(BOOLEAN), floatings ARRAY(DOUBLE), integers ARRAY(BIGINT), strings ARRAY(VARCHAR),
   string_map MAP(VARCHAR, VARCHAR), nested ROW(key VARCHAR, value BIGINT),
   timestamp TIMESTAMP(6) WITH TIME ZONE)
WITH (format = 'PARQUET', partitioning = ARRAY['day(timestamp)']);"""

SEED_SCHEMA = [
    col("bool", "boolean"),
    col("floating", "double"),
    col("integer", "long"),
    col("string", "string"),
    col("bools", list_of("boolean")),
    col("floatings", list_of("double")),
    col("integers", list_of("long")),
    col("strings", list_of("string")),
    col("string_map", map_of("string", "string")),
    col("nested", struct(col("key", "string"), col("value", "long"))),
    col("timestamp", "timestamptz"),
]

# Every type and every partition transform. Trino spells the transforms bucket(column, count) and
# truncate(column, width). INNER is a reserved word in Trino, hence the quoted "inner".
ALLTYPES_DDL = (
    "CREATE TABLE IF NOT EXISTS alltypes ("
    "b BOOLEAN NOT NULL COMMENT 'a flag', i INTEGER, l BIGINT, r REAL, d DOUBLE, dec DECIMAL(10,2), "
    "s VARCHAR, bin VARBINARY, dt DATE, t TIME(6), ts TIMESTAMP(6), tstz TIMESTAMP(6) WITH TIME ZONE, "
    "u UUID, arr ARRAY(ROW(x INTEGER, y ARRAY(VARCHAR))), m MAP(VARCHAR, ROW(a BIGINT)), "
    'nested ROW("inner" ROW(deep ROW(v DOUBLE)))) '
    "WITH (partitioning = ARRAY['year(ts)', 'month(dt)', 'hour(tstz)', 'bucket(i, 16)', 'truncate(s, 4)', 'b'])"
)

ALLTYPES_SCHEMA = [
    col("b", "boolean", required=True, doc="a flag"),
    col("i", "int"),
    col("l", "long"),
    col("r", "float"),
    col("d", "double"),
    col("dec", "decimal(10, 2)"),
    col("s", "string"),
    col("bin", "binary"),
    col("dt", "date"),
    col("t", "time"),
    col("ts", "timestamp"),
    col("tstz", "timestamptz"),
    col("u", "uuid"),
    col("arr", list_of(struct(col("x", "int"), col("y", list_of("string"))))),
    col("m", map_of("string", struct(col("a", "long")))),
    col("nested", struct(col("inner", struct(col("deep", struct(col("v", "double"))))))),
]

# (partition field name, transform, source column): names as Iceberg's Java library (and so Trino)
# derives them.
ALLTYPES_PARTITIONING = [
    ("ts_year", "year", "ts"),
    ("dt_month", "month", "dt"),
    ("tstz_hour", "hour", "tstz"),
    ("i_bucket", "bucket[16]", "i"),
    ("s_trunc", "truncate[4]", "s"),
    ("b", "identity", "b"),
]


def file_uri_path(uri: str) -> Path:
    parsed = urlparse(uri)
    assert parsed.scheme == "file", f"expected a file:// metadata location, got {uri}"
    return Path(url2pathname(parsed.path))


def check_table_basics(catalog, table) -> None:
    loc = table.metadata_location
    assert loc.startswith("file:///"), f"metadata location should be a file:/// URI, got {loc}"
    path = file_uri_path(loc)
    assert path.is_file(), f"metadata file {path} does not exist"
    assert path.name.endswith(".metadata.json"), f"unexpected metadata file name {path.name}"
    assert path.is_relative_to(catalog.warehouse), f"metadata {path} is not under the warehouse {catalog.warehouse}"
    md = table.metadata
    assert md.format_version == 2, f"format-version should be 2, got {md.format_version}"
    assert md.current_snapshot_id is None, "a new table should have no snapshot"
    # An independent reader can plan and read it (empty).
    assert table.scan().to_arrow().num_rows == 0


def check_partition_counters(table) -> None:
    md = table.metadata
    spec = table.spec()
    assert md.default_spec_id == spec.spec_id == 0, f"expected default spec 0, got {md.default_spec_id}"
    want = max((f.field_id for f in spec.fields), default=999)
    assert md.last_partition_id == want, f"last-partition-id is {md.last_partition_id}, expected {want}"


def test_create_seed_table(catalog):
    out = catalog.floe.run("table", "create", SEED_DDL)
    assert "test_table" in out.output, f"the summary should name the table\n{out.describe()}"

    cat = catalog.pyiceberg()
    assert ("default",) in cat.list_namespaces(), f"namespace default missing: {cat.list_namespaces()}"
    assert cat.list_tables("default") == [("default", "test_table")]
    table = cat.load_table("default.test_table")

    check_table_basics(catalog, table)
    schema = table.schema()
    assert_schema(schema, SEED_SCHEMA)
    assert_field_ids(schema, table.metadata.last_column_id)
    assert schema.identifier_field_ids == [], f"no identifier fields expected, got {schema.identifier_field_ids}"

    assert_partition_spec(table.spec(), schema, [("timestamp_day", "day", "timestamp")])
    check_partition_counters(table)

    props = table.properties
    assert props.get("write.format.default") == "parquet", f"write.format.default: {props}"
    assert props.get("write.parquet.compression-codec") == "zstd", f"write.parquet.compression-codec: {props}"

    # floe's own view agrees.
    listed = catalog.floe.run("table", "list").stdout.split()
    assert listed == ["default.test_table"], f"floe table list printed {listed}"
    described = catalog.floe.run("table", "describe", "default.test_table").stdout
    for f in schema.fields:
        assert re.search(rf"\b{re.escape(f.name)}\b", described), f"describe lacks column {f.name}:\n{described}"
        assert re.search(rf"\b{f.field_id}\b", described), f"describe lacks field id {f.field_id}:\n{described}"


def test_create_all_types_and_transforms(catalog):
    catalog.floe.run("table", "create", ALLTYPES_DDL)

    cat = catalog.pyiceberg()
    table = cat.load_table("default.alltypes")
    check_table_basics(catalog, table)
    schema = table.schema()
    assert_schema(schema, ALLTYPES_SCHEMA)
    assert_field_ids(schema, table.metadata.last_column_id)
    assert_partition_spec(table.spec(), schema, ALLTYPES_PARTITIONING)
    check_partition_counters(table)
    first_location = table.metadata_location

    # IF NOT EXISTS on an existing table: success, and the table is left exactly as it was.
    catalog.floe.run("table", "create", ALLTYPES_DDL)
    again = cat.load_table("default.alltypes")
    assert again.metadata_location == first_location, "CREATE TABLE IF NOT EXISTS changed an existing table"

    # Without IF NOT EXISTS: a clear error, and still nothing changed.
    plain = ALLTYPES_DDL.replace("CREATE TABLE IF NOT EXISTS", "CREATE TABLE", 1)
    assert plain != ALLTYPES_DDL
    res = catalog.floe.run("table", "create", plain, check=False)
    assert res.returncode != 0, f"creating an existing table should fail\n{res.describe()}"
    assert "already exists" in res.output, f"the error should say 'already exists'\n{res.describe()}"
    assert cat.load_table("default.alltypes").metadata_location == first_location

    assert catalog.floe.run("table", "list").stdout.split() == ["default.alltypes"]
