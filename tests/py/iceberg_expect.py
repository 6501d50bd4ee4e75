"""Field-by-field checks of Iceberg table metadata, as read by pyiceberg.

An expected schema is written in a small notation, independent of field ids:

    [col("b", "boolean", required=True, doc="a flag"),
     col("arr", list_of(struct(col("x", "int")))),
     col("m", map_of("string", "long"))]

Primitive types are pyiceberg's spelling (`str(type)`): boolean, int, long, float, double,
decimal(P, S), string, binary, date, time, timestamp, timestamptz, uuid.
Field ids are checked separately (`assert_field_ids`): unique across the whole nested schema, top-level
ids increasing in column order, and `last-column-id` covering them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyiceberg.partitioning import PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.types import IcebergType, ListType, MapType, NestedField, StructType


@dataclass(frozen=True)
class Col:
    name: str
    type: object  # str (primitive) | ListOf | MapOf | StructOf
    required: bool = False
    doc: str | None = None


@dataclass(frozen=True)
class ListOf:
    element: object
    element_required: bool = False


@dataclass(frozen=True)
class MapOf:
    key: object
    value: object
    value_required: bool = False


@dataclass(frozen=True)
class StructOf:
    fields: tuple = field(default_factory=tuple)


def col(name: str, type_: object, required: bool = False, doc: str | None = None) -> Col:
    return Col(name, type_, required, doc)


def list_of(element: object, element_required: bool = False) -> ListOf:
    return ListOf(element, element_required)


def map_of(key: object, value: object, value_required: bool = False) -> MapOf:
    return MapOf(key, value, value_required)


def struct(*fields: Col) -> StructOf:
    return StructOf(tuple(fields))


def _describe(expected: object) -> str:
    if isinstance(expected, str):
        return expected
    if isinstance(expected, ListOf):
        return f"list<{_describe(expected.element)}>"
    if isinstance(expected, MapOf):
        return f"map<{_describe(expected.key)}, {_describe(expected.value)}>"
    if isinstance(expected, StructOf):
        return "struct<" + ", ".join(f"{f.name}: {_describe(f.type)}" for f in expected.fields) + ">"
    raise TypeError(f"not an expected type: {expected!r}")


def _check_type(path: str, actual: IcebergType, expected: object, errors: list[str]) -> None:
    if isinstance(expected, str):
        if not actual.is_primitive or str(actual) != expected:
            errors.append(f"{path}: expected type {expected}, got {actual}")
    elif isinstance(expected, ListOf):
        if not isinstance(actual, ListType):
            errors.append(f"{path}: expected {_describe(expected)}, got {actual}")
            return
        if actual.element_required != expected.element_required:
            errors.append(
                f"{path}.element: expected element_required={expected.element_required}, "
                f"got {actual.element_required}"
            )
        _check_type(f"{path}.element", actual.element_type, expected.element, errors)
    elif isinstance(expected, MapOf):
        if not isinstance(actual, MapType):
            errors.append(f"{path}: expected {_describe(expected)}, got {actual}")
            return
        if actual.value_required != expected.value_required:
            errors.append(
                f"{path}.value: expected value_required={expected.value_required}, got {actual.value_required}"
            )
        _check_type(f"{path}.key", actual.key_type, expected.key, errors)
        _check_type(f"{path}.value", actual.value_type, expected.value, errors)
    elif isinstance(expected, StructOf):
        if not isinstance(actual, StructType):
            errors.append(f"{path}: expected {_describe(expected)}, got {actual}")
            return
        _check_fields(path, actual.fields, expected.fields, errors)
    else:
        raise TypeError(f"not an expected type: {expected!r}")


def _check_fields(path: str, actual: tuple[NestedField, ...], expected: tuple | list, errors: list[str]) -> None:
    prefix = f"{path}." if path else ""
    actual_names = [f.name for f in actual]
    expected_names = [c.name for c in expected]
    if actual_names != expected_names:
        errors.append(f"{path or 'schema'}: expected fields {expected_names}, got {actual_names}")
    by_name = {f.name: f for f in actual}
    for exp in expected:
        act = by_name.get(exp.name)
        if act is None:
            continue  # already reported above
        where = prefix + exp.name
        if act.required != exp.required:
            errors.append(f"{where}: expected required={exp.required}, got {act.required}")
        if act.doc != exp.doc:
            errors.append(f"{where}: expected doc {exp.doc!r}, got {act.doc!r}")
        _check_type(where, act.field_type, exp.type, errors)


def assert_schema(schema: Schema, expected: list[Col]) -> None:
    """Names and order, types (nested element/key/value types too), required flags, docs."""
    errors: list[str] = []
    _check_fields("", schema.fields, expected, errors)
    assert not errors, "schema differs from expected:\n  " + "\n  ".join(errors) + f"\nactual schema:\n{schema}"


def all_field_ids(schema: Schema) -> list[tuple[str, int]]:
    """Every id in the schema with a path naming it: fields, list elements, map keys and values."""
    out: list[tuple[str, int]] = []

    def walk_type(path: str, t: IcebergType) -> None:
        if isinstance(t, StructType):
            for f in t.fields:
                out.append((f"{path}{f.name}", f.field_id))
                walk_type(f"{path}{f.name}.", f.field_type)
        elif isinstance(t, ListType):
            out.append((f"{path}element", t.element_id))
            walk_type(f"{path}element.", t.element_type)
        elif isinstance(t, MapType):
            out.append((f"{path}key", t.key_id))
            out.append((f"{path}value", t.value_id))
            walk_type(f"{path}key.", t.key_type)
            walk_type(f"{path}value.", t.value_type)

    walk_type("", schema.as_struct())
    return out


def assert_field_ids(schema: Schema, last_column_id: int) -> None:
    ids = all_field_ids(schema)
    seen: dict[int, str] = {}
    errors = []
    for path, fid in ids:
        if fid is None or fid <= 0:
            errors.append(f"{path}: field id {fid} is not a positive integer")
        elif fid in seen:
            errors.append(f"{path}: field id {fid} already used by {seen[fid]}")
        else:
            seen[fid] = path
    top = [f.field_id for f in schema.fields]
    if top != sorted(top) or len(set(top)) != len(top):
        errors.append(f"top-level field ids are not increasing in column order: {top}")
    max_id = max((fid for _, fid in ids if fid is not None), default=0)
    if last_column_id != max_id:
        errors.append(f"last-column-id is {last_column_id}, but the highest field id in the schema is {max_id}")
    assert not errors, "field ids are wrong:\n  " + "\n  ".join(errors) + f"\nall ids: {ids}"


def assert_partition_spec(spec: PartitionSpec, schema: Schema, expected: list[tuple[str, str, str]]) -> None:
    """expected: (partition field name, transform as pyiceberg prints it, source column path)."""
    errors = []
    actual = list(spec.fields)
    if len(actual) != len(expected):
        errors.append(f"expected {len(expected)} partition fields, got {len(actual)}: {spec}")
    for i, (pf, (name, transform, source)) in enumerate(zip(actual, expected)):
        want_source = schema.find_field(source).field_id
        if pf.name != name:
            errors.append(f"partition field {i}: expected name {name!r}, got {pf.name!r}")
        if str(pf.transform) != transform:
            errors.append(f"partition field {i} ({pf.name}): expected transform {transform}, got {pf.transform}")
        if pf.source_id != want_source:
            errors.append(
                f"partition field {i} ({pf.name}): expected source id {want_source} (column {source}), "
                f"got {pf.source_id}"
            )
    # Partition field ids start at 1000 and count up, as Java, pyiceberg and iceberg-rust assign them.
    pids = [pf.field_id for pf in actual]
    if pids != list(range(1000, 1000 + len(pids))):
        errors.append(f"partition field ids should be 1000, 1001, ...: got {pids}")
    assert not errors, "partition spec differs from expected:\n  " + "\n  ".join(errors)
