"""The checks test_loader.py relies on must fail when the table is wrong, or the loader tests would
prove nothing. No floe, no services: the checks run on made-up inputs here."""

from __future__ import annotations

import copy
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest

from loader_harness import (
    assert_each_id_once,
    assert_snapshot_ranges_tile,
    assignment,
    row_differences,
)

PRODUCED = {
    "id": 7, "bool": False, "floating": 34.66, "integer": 7, "string": "value 7",
    "bools": [True, False], "floatings": [4.66, 0.1], "integers": [33466, -2], "strings": ["ünï", '"q"'],
    "string_map": {"k0": "v76", "k1": "v2"}, "nested": {"key": "key 466", "value": 7},
    "timestamp": "2026-11-25T00:07:56.788979+00:00",
}
READ = {
    "id": 7, "bool": False, "floating": 34.66, "integer": 7, "string": "value 7",
    "bools": [True, False], "floatings": [4.66, 0.1], "integers": [33466, -2], "strings": ["ünï", '"q"'],
    "string_map": [("k0", "v76"), ("k1", "v2")], "nested": {"key": "key 466", "value": 7},
    "timestamp": datetime(2026, 11, 25, 0, 7, 56, 788979, tzinfo=timezone.utc),
}


def test_equal_rows_have_no_differences():
    assert row_differences(PRODUCED, READ) == []


@pytest.mark.parametrize(
    "field, value",
    [
        ("id", 8), ("bool", True), ("bool", 0), ("floating", 34.660000001), ("integer", None), ("string", "value"),
        ("bools", [True]), ("bools", [1, 0]), ("floatings", []), ("integers", None), ("strings", ["a", '"q"']),
        ("string_map", [("k0", "v76")]), ("string_map", [("k0", "v76"), ("k1", "v2"), ("k1", "v2")]),
        ("string_map", None), ("nested", {"key": "key 466", "value": 8}), ("nested", None),
        ("timestamp", datetime(2026, 11, 25, 0, 7, 56, 788978, tzinfo=timezone.utc)), ("timestamp", None),
    ],
)
def test_each_field_difference_is_found(field, value):
    read = copy.deepcopy(READ)
    read[field] = value
    diffs = row_differences(PRODUCED, read)
    assert len(diffs) == 1 and diffs[0].startswith(f"{field}:"), diffs


def test_ids_once():
    assert_each_id_once([3, 1, 2], range(1, 4))
    for ids, words in [
        ([1, 2, 2, 3], "more than once"),
        ([1, 3], "missing"),
        ([1, 2, 3, 4], "unexpected"),
        ([1, 2, 3, None], "unexpected"),
    ]:
        with pytest.raises(AssertionError, match=words):
            assert_each_id_once(ids, range(1, 4))


def fake_table(*offsets: str):
    snaps = [
        SimpleNamespace(snapshot_id=i, summary=SimpleNamespace(additional_properties={"floe.offsets": o}))
        for i, o in enumerate(offsets)
    ]
    return SimpleNamespace(metadata=SimpleNamespace(snapshots=snaps))


def test_snapshot_ranges_must_tile_the_topic():
    ends = {0: 10, 1: 5}
    assert assert_snapshot_ranges_tile(fake_table("t/0:0-4,t/1:0-5", "t/0:4-10"), "t", ends) == 2
    for offsets, words in [
        (("t/0:0-4,t/1:0-5", "t/0:3-10"), "overlapping"),
        (("t/0:0-4,t/1:0-5", "t/0:5-10"), "in no snapshot"),
        (("t/0:0-4,t/1:0-5",), "cover up to 4"),
        (("t/0:0-10,t/1:0-5,t/2:0-1",), "does not have"),
        (("t/0:0-10,u/1:0-5",), "unexpected topic"),
    ]:
        with pytest.raises(AssertionError, match=words):
            assert_snapshot_ranges_tile(fake_table(*offsets), "t", ends)


def test_assignment_is_replayed_from_the_log():
    log = "\n".join([
        "INFO floe::loader: partition assigned partition=t/0 start=Beginning from_ledger=false",
        "INFO floe::loader: partition assigned partition=t/1 start=Beginning from_ledger=false",
        "INFO floe::loader: partition assigned partition=other/2 start=Beginning from_ledger=false",
        'INFO floe::loader: partitions revoked partitions=["t/0", "t/1"]',
        "INFO floe::loader: partition assigned partition=t/1 start=Offset(12) from_ledger=true",
    ])
    assert assignment(log, "t") == {1}
