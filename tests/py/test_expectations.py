"""The expectations in test_table_create.py describe what an independent engine produces: pyiceberg
itself creates the same two tables here (no floe involved), and the checks must pass on them. The
checks must also fail when the table differs, or they would prove nothing about floe."""

from __future__ import annotations

import pyarrow as pa
import pytest
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.transforms import (
    BucketTransform,
    DayTransform,
    HourTransform,
    IdentityTransform,
    MonthTransform,
    TruncateTransform,
    YearTransform,
)
from pyiceberg.types import (
    BinaryType,
    BooleanType,
    DateType,
    DecimalType,
    DoubleType,
    FloatType,
    IntegerType,
    ListType,
    LongType,
    MapType,
    NestedField,
    StringType,
    StructType,
    TimestampType,
    TimestamptzType,
    TimeType,
    UUIDType,
)

from conftest import duckdb_connect
from iceberg_expect import assert_field_ids, assert_partition_spec, assert_schema, col, list_of, map_of, struct
from test_table_create import ALLTYPES_PARTITIONING, ALLTYPES_SCHEMA, SEED_SCHEMA

PARQUET_ZSTD = {"write.format.default": "parquet", "write.parquet.compression-codec": "zstd"}


def opt(fid: int, name: str, t, doc: str | None = None) -> NestedField:
    return NestedField(field_id=fid, name=name, field_type=t, required=False, doc=doc)


def seed_schema() -> Schema:
    # Placeholder ids: create_table assigns fresh ones, as any engine does.
    return Schema(
        opt(1, "bool", BooleanType()),
        opt(2, "floating", DoubleType()),
        opt(3, "integer", LongType()),
        opt(4, "string", StringType()),
        opt(5, "bools", ListType(element_id=12, element_type=BooleanType(), element_required=False)),
        opt(6, "floatings", ListType(element_id=13, element_type=DoubleType(), element_required=False)),
        opt(7, "integers", ListType(element_id=14, element_type=LongType(), element_required=False)),
        opt(8, "strings", ListType(element_id=15, element_type=StringType(), element_required=False)),
        opt(9, "string_map", MapType(key_id=16, key_type=StringType(), value_id=17, value_type=StringType(),
                                     value_required=False)),
        opt(10, "nested", StructType(opt(18, "key", StringType()), opt(19, "value", LongType()))),
        opt(11, "timestamp", TimestamptzType()),
    )


def alltypes_schema() -> Schema:
    return Schema(
        NestedField(field_id=1, name="b", field_type=BooleanType(), required=True, doc="a flag"),
        opt(2, "i", IntegerType()),
        opt(3, "l", LongType()),
        opt(4, "r", FloatType()),
        opt(5, "d", DoubleType()),
        opt(6, "dec", DecimalType(10, 2)),
        opt(7, "s", StringType()),
        opt(8, "bin", BinaryType()),
        opt(9, "dt", DateType()),
        opt(10, "t", TimeType()),
        opt(11, "ts", TimestampType()),
        opt(12, "tstz", TimestamptzType()),
        opt(13, "u", UUIDType()),
        opt(14, "arr", ListType(
            element_id=17,
            element_type=StructType(
                opt(18, "x", IntegerType()),
                opt(19, "y", ListType(element_id=20, element_type=StringType(), element_required=False)),
            ),
            element_required=False,
        )),
        opt(15, "m", MapType(key_id=21, key_type=StringType(), value_id=22,
                             value_type=StructType(opt(23, "a", LongType())), value_required=False)),
        opt(16, "nested", StructType(opt(24, "inner", StructType(opt(25, "deep", StructType(
            opt(26, "v", DoubleType()))))))),
    )


@pytest.fixture
def scratch_catalog(tmp_path) -> SqlCatalog:
    wh = tmp_path / "warehouse"
    wh.mkdir()
    cat = SqlCatalog("scratch", uri=f"sqlite:///{tmp_path / 'catalog.db'}", warehouse=wh.as_uri())
    cat.create_namespace("default")
    return cat


@pytest.fixture
def seed_table(scratch_catalog):
    spec = PartitionSpec(PartitionField(source_id=11, field_id=1000, transform=DayTransform(), name="timestamp_day"))
    return scratch_catalog.create_table(
        "default.test_table", schema=seed_schema(), partition_spec=spec, properties=PARQUET_ZSTD
    )


@pytest.fixture
def alltypes_table(scratch_catalog):
    transforms = [YearTransform(), MonthTransform(), HourTransform(), BucketTransform(16), TruncateTransform(4),
                  IdentityTransform()]
    sources = [11, 9, 12, 2, 7, 1]
    names = [name for name, _, _ in ALLTYPES_PARTITIONING]
    spec = PartitionSpec(*(
        PartitionField(source_id=s, field_id=1000 + i, transform=t, name=n)
        for i, (s, t, n) in enumerate(zip(sources, transforms, names))
    ))
    return scratch_catalog.create_table("default.alltypes", schema=alltypes_schema(), partition_spec=spec)


def test_seed_expectations_match_pyiceberg(seed_table):
    schema = seed_table.schema()
    assert_schema(schema, SEED_SCHEMA)
    assert_field_ids(schema, seed_table.metadata.last_column_id)
    assert_partition_spec(seed_table.spec(), schema, [("timestamp_day", "day", "timestamp")])
    assert seed_table.metadata.format_version == 2


def test_alltypes_expectations_match_pyiceberg(alltypes_table):
    schema = alltypes_table.schema()
    assert_schema(schema, ALLTYPES_SCHEMA)
    assert_field_ids(schema, alltypes_table.metadata.last_column_id)
    assert_partition_spec(alltypes_table.spec(), schema, ALLTYPES_PARTITIONING)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda e: e.__setitem__(2, col("integer", "int")), "integer: expected type int, got long"),
        (lambda e: e.__setitem__(0, col("bool", "boolean", required=True)), "bool: expected required=True"),
        (lambda e: e.__setitem__(0, col("bool", "boolean", doc="x")), "bool: expected doc 'x'"),
        (lambda e: e.__setitem__(4, col("bools", list_of("long"))), "bools.element: expected type long"),
        (lambda e: e.__setitem__(4, col("bools", list_of("boolean", element_required=True))),
         "bools.element: expected element_required=True"),
        (lambda e: e.__setitem__(8, col("string_map", map_of("string", "long"))), "string_map.value: expected type long"),
        (lambda e: e.__setitem__(8, col("string_map", map_of("long", "string"))), "string_map.key: expected type long"),
        (lambda e: e.__setitem__(9, col("nested", struct(col("value", "long"), col("key", "string")))),
         "nested: expected fields ['value', 'key']"),
        (lambda e: e.__setitem__(9, col("nested", "string")), "nested: expected type string"),
        (lambda e: e.pop(), "schema: expected fields"),
        (lambda e: e.reverse(), "schema: expected fields"),
    ],
)
def test_schema_check_can_fail(seed_table, change, message):
    expected = list(SEED_SCHEMA)
    change(expected)
    with pytest.raises(AssertionError, match=message.replace("[", r"\[").replace("]", r"\]")):
        assert_schema(seed_table.schema(), expected)


def test_partition_check_can_fail(alltypes_table):
    schema = alltypes_table.schema()
    spec = alltypes_table.spec()
    wrong = [
        ([("ts_year", "year", "tstz")] + ALLTYPES_PARTITIONING[1:], "expected source id"),
        ([("ts_years", "year", "ts")] + ALLTYPES_PARTITIONING[1:], "expected name 'ts_years'"),
        (ALLTYPES_PARTITIONING[:3] + [("i_bucket", "bucket[8]", "i")] + ALLTYPES_PARTITIONING[4:],
         "expected transform bucket\\[8\\]"),
        (ALLTYPES_PARTITIONING[:-1], "expected 5 partition fields, got 6"),
    ]
    for expected, message in wrong:
        with pytest.raises(AssertionError, match=message):
            assert_partition_spec(spec, schema, expected)


def test_field_id_check_can_fail(seed_table):
    schema = seed_table.schema()
    with pytest.raises(AssertionError, match="last-column-id is 18"):
        assert_field_ids(schema, 18)
    # Two fields sharing an id (built directly: no catalog would accept it).
    dup = Schema(opt(1, "a", LongType()), opt(2, "b", ListType(element_id=1, element_type=LongType())))
    with pytest.raises(AssertionError, match="field id 1 already used by a"):
        assert_field_ids(dup, 2)
    unordered = Schema(opt(2, "a", LongType()), opt(1, "b", LongType()))
    with pytest.raises(AssertionError, match="not increasing"):
        assert_field_ids(unordered, 2)


def test_duckdb_reads_a_pyiceberg_table_offline(scratch_catalog):
    """The third reader works here: DuckDB with its extensions loaded from the PyPI packages."""
    schema = Schema(opt(1, "id", LongType()), opt(2, "s", StringType()))
    table = scratch_catalog.create_table("default.duck", schema=schema)
    table.append(pa.table({"id": pa.array([1, 2, 3], pa.int64()), "s": ["a", "b", None]}))
    path = table.metadata_location.removeprefix("file://")
    con = duckdb_connect()
    rows = con.execute(f"SELECT count(*), sum(id), count(s) FROM iceberg_scan('{path}')").fetchall()
    assert rows == [(3, 6, 2)]
