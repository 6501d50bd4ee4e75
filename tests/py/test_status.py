"""`floe status` (issue 15, item 1) against the real broker and catalog: the lag it reports is checked
against the topic's end offsets from Kafka's own GetOffsetShell minus the ledger read by pyiceberg;
the table figures against pyiceberg's metadata tables; the exit status against --max-lag.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pyarrow as pa
import pytest

from loader_harness import EVENTS_DDL, EVENTS_TABLE, Pipeline, child_env, wait_until


@pytest.fixture
def pipeline_factory(tmp_path, floe_bin, kafka_bootstrap, procs):
    def make(name: str) -> Pipeline:
        return Pipeline(tmp_path / name, floe_bin, kafka_bootstrap, procs, prefix=f"floe-{name}")

    return make


def floe_status(floe_bin: str, config: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [floe_bin, "--config", str(config), "status", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, env=child_env())


def status_json(floe_bin: str, config: Path, *args: str, expect_rc: int = 0) -> dict:
    p = floe_status(floe_bin, config, "--json", *args)
    assert p.returncode == expect_rc, f"floe status --json {' '.join(args)} exited {p.returncode}, expected {expect_rc}\n{p.stdout}\n{p.stderr}"
    return json.loads(p.stdout)


def table_entry(report: dict, name: str) -> dict:
    found = [t for t in report["tables"] if t["table"] == name]
    assert len(found) == 1, f"table {name} should appear once in {[t['table'] for t in report['tables']]}"
    return found[0]


def pipeline_entry(table: dict, name: str) -> dict:
    found = [p for p in table["pipelines"] if p["name"] == name]
    assert len(found) == 1, f"pipeline {name} should appear once in {[p['name'] for p in table['pipelines']]}"
    return found[0]


def lags_of(pipeline: dict, topic: str) -> dict[int, int]:
    assert all(x["topic"] == topic for x in pipeline["partitions"]), pipeline["partitions"]
    return {x["partition"]: x["lag"] for x in pipeline["partitions"]}


def expected_lags(p: Pipeline, table=None) -> dict[int, int]:
    """End offsets (GetOffsetShell) minus the ledger (pyiceberg), per partition."""
    ends = p.end_offsets()
    ledger = p.ledger(table) or {}
    assert set(ledger) <= set(ends), f"ledger {ledger} names partitions the topic lacks: {ends}"
    return {q: end - ledger.get(q, 0) for q, end in ends.items()}


def assert_health_matches_pyiceberg(health: dict, table, target_file_size: int = 128 << 20) -> None:
    files = table.inspect.data_files().to_pylist()
    sizes = [f["file_size_in_bytes"] for f in files]
    assert health["data_files"] == len(files), f"status says {health['data_files']} data files, pyiceberg lists {len(files)}"
    assert health["data_bytes"] == sum(sizes)
    assert health["records"] == sum(f["record_count"] for f in files)
    assert health["small_file_threshold_bytes"] == target_file_size // 4
    assert health["small_data_files"] == sum(1 for s in sizes if s < target_file_size // 4)
    assert health["delete_files"] == len(table.inspect.delete_files().to_pylist())
    manifests = table.inspect.manifests().to_pylist()
    assert health["manifests"] == len(manifests), f"status says {health['manifests']} manifests, pyiceberg {len(manifests)}"
    assert health["snapshots"] == len(table.metadata.snapshots)
    path = urlparse(table.metadata_location).path
    assert health["metadata_file_bytes"] == os.path.getsize(path)


# --- a pipeline with a known backlog -----------------------------------------------------------


def test_status_reports_the_true_lag(pipeline_factory, floe_bin):
    p = pipeline_factory("lag")
    p.write_config(interval="1s")
    p.create_table()
    p.publish(1000, 1, 4)
    loader = p.start_loader("first")
    p.wait_rows(1000, timeout=120, alive=[loader])
    loader.sigterm_ok()
    assert p.ledger() == p.end_offsets(), "the loader should have committed everything before the backlog is made"
    p.publish(500, 1001, 4)

    want = expected_lags(p)
    assert sum(want.values()) == 500 and len(want) == 4, want
    report = status_json(floe_bin, p.config)
    assert [t["table"] for t in report["tables"]] == [EVENTS_TABLE], "only the configured table"
    t = table_entry(report, EVENTS_TABLE)
    assert t["errors"] == []
    pl = pipeline_entry(t, p.group)
    assert pl["configured"] is True and pl["kafka_error"] is None and pl["ledger_error"] is None
    assert lags_of(pl, p.topic) == want, f"status lags {lags_of(pl, p.topic)} != end offsets minus ledger {want}"
    assert pl["lag"] == 500
    assert pl["max_partition_lag"] == max(want.values())
    ends = p.end_offsets()
    ledger = p.ledger()
    for x in pl["partitions"]:
        assert x["end"] == ends[x["partition"]] and x["ledger"] == ledger[x["partition"]], x
        if x["lag"] > 0:
            assert x["lag_seconds"] is not None and x["lag_seconds"] > 0, f"a lagging partition has an oldest unread record with an age: {x}"
        else:
            assert x["lag_seconds"] == 0, x
    assert pl["lag_seconds"] > 0 and pl["behind"] is False

    # The last commit and the rates, against the snapshot history read by pyiceberg.
    table = p.table()
    ours = [s for s in table.metadata.snapshots
            if s.summary and s.summary.additional_properties.get("floe.pipeline") == p.group]
    assert ours, "the loader's snapshots carry floe.pipeline"
    newest = max(ours, key=lambda s: s.timestamp_ms)
    assert pl["last_commit"]["snapshot_id"] == newest.snapshot_id
    assert pl["last_commit"]["rows"] == int(newest.summary.additional_properties["added-records"])
    assert pl["last_commit"]["age_seconds"] >= 0
    assert pl["recent"]["commits"] == len(ours) and pl["recent"]["rows"] == 1000, pl["recent"]
    assert pl["recent"]["rows_per_minute"] == pytest.approx(100.0)
    assert pl["dead_letters"] == {}
    assert_health_matches_pyiceberg(t["health"], table)
    m = t["health"]["maintenance"]
    assert m["compaction"]["state"] == "not_in_history" and m["expire_snapshots"]["state"] == "unknown", m

    # --max-lag sets the exit status.
    behind = floe_status(floe_bin, p.config, "--max-lag", "10")
    assert behind.returncode == 3, f"--max-lag 10 with a backlog of 500 should exit 3\n{behind.stdout}\n{behind.stderr}"
    assert "behind" in behind.stderr and p.group in behind.stderr, behind.stderr
    assert "BEHIND" in behind.stdout
    report = status_json(floe_bin, p.config, "--max-lag", "10", expect_rc=3)
    assert pipeline_entry(table_entry(report, EVENTS_TABLE), p.group)["behind"] is True
    fine = floe_status(floe_bin, p.config, "--max-lag", "100000")
    assert fine.returncode == 0, f"--max-lag 100000 should exit 0\n{fine.stdout}\n{fine.stderr}"

    # The human form names the table, the pipeline and each partition with its lag.
    print(fine.stdout)
    lines = fine.stdout.splitlines()
    assert f"table {EVENTS_TABLE}" in lines, fine.stdout
    assert any(line.strip().startswith(f"pipeline {p.group}") for line in lines), fine.stdout
    for q, lag in want.items():
        row = [line for line in lines if line.strip().startswith(f"{p.topic}/{q} ")]
        assert len(row) == 1, f"one line for partition {q}:\n{fine.stdout}"
        cells = row[0].split()
        assert cells[1:4] == [str(ledger[q]), str(ends[q]), str(lag)], f"partition {q}: ledger, end, lag in {row[0]!r}"
    assert "data files" in fine.stdout and "snapshot expiry" in fine.stdout

    # Caught up: 0 everywhere, and even --max-lag 0 passes.
    again = p.start_loader("again")
    p.wait_rows(1500, timeout=120, alive=[again])
    report = status_json(floe_bin, p.config, "--max-lag", "0")
    pl = pipeline_entry(table_entry(report, EVENTS_TABLE), p.group)
    assert lags_of(pl, p.topic) == {q: 0 for q in want}, pl["partitions"]
    assert all(x["lag_seconds"] == 0 for x in pl["partitions"]) and pl["lag"] == 0 and pl["lag_seconds"] == 0
    assert expected_lags(p) == {q: 0 for q in want}
    assert pl["recent"]["rows"] == 1500
    again.sigterm_ok()
    assert_health_matches_pyiceberg(table_entry(report, EVENTS_TABLE)["health"], p.table())


# --- every table of a catalog ------------------------------------------------------------------


def second_pipeline(a: Pipeline, factory, table: str) -> Pipeline:
    """Another topic and pipeline writing `default.<table>` in a's catalog."""
    b = factory(f"{table}-pipe")
    b.data_dir, b.warehouse = a.data_dir, a.warehouse
    b.write_config(interval="1s")
    text = b.config.read_text()
    assert f'name = "{EVENTS_TABLE}"' in text
    b.config.write_text(text.replace(f'name = "{EVENTS_TABLE}"', f'name = "default.{table}"'))
    b.create_table(EVENTS_DDL.replace("CREATE TABLE events", f"CREATE TABLE {table}"))
    return b


def catalog_only_config(p: Pipeline, path: Path, bootstrap: str | None = None) -> Path:
    """p's config without its [table] section (and optionally another broker)."""
    out, skip = [], False
    for line in p.config.read_text().splitlines():
        if line.startswith("["):
            skip = line.strip() == "[table]"
        if not skip:
            out.append(line)
    text = "\n".join(out) + "\n"
    if bootstrap:
        text = text.replace(f'"bootstrap.servers" = "{p.bootstrap}"', f'"bootstrap.servers" = "{bootstrap}"')
        assert bootstrap in text
    path.write_text(text)
    return path


def test_status_of_every_table_of_a_catalog(pipeline_factory, floe_bin, tmp_path):
    a = pipeline_factory("events")
    a.create_table()
    b = second_pipeline(a, pipeline_factory, "other")
    a.publish(300, 1, 2)
    b.publish(200, 1, 3)
    la, lb = a.start_loader("a"), b.start_loader("b")
    a.wait_rows(300, timeout=120, alive=[la])
    def other():
        return a.catalog().load_table("default.other")

    def other_rows():
        try:
            return other().scan().count() == 200
        except Exception as e:  # noqa: BLE001 - a poll; SQLite is briefly locked by a commit
            if "locked" in str(e) or "busy" in str(e):
                return False
            raise

    wait_until("200 rows in default.other", other_rows, timeout=120, alive=[lb])
    la.sigterm_ok()
    lb.sigterm_ok()
    b.publish(50, 201, 3)

    config = catalog_only_config(a, tmp_path / "catalog-only.toml")
    report = status_json(floe_bin, config)
    assert [t["table"] for t in report["tables"]] == ["default.events", "default.other"]
    ta, tb = table_entry(report, "default.events"), table_entry(report, "default.other")
    assert [p["name"] for p in ta["pipelines"]] == [a.group]
    assert [p["name"] for p in tb["pipelines"]] == [b.group]
    pa_, pb = ta["pipelines"][0], tb["pipelines"][0]
    assert pa_["configured"] is False and pb["configured"] is False
    assert lags_of(pa_, a.topic) == expected_lags(a) == {0: 0, 1: 0}
    want_b = expected_lags(b, other())
    assert lags_of(pb, b.topic) == want_b and sum(want_b.values()) == 50, (pb["partitions"], want_b)
    assert pb["lag_seconds"] > 0 and pa_["lag_seconds"] == 0
    assert_health_matches_pyiceberg(ta["health"], a.table())
    assert_health_matches_pyiceberg(tb["health"], other())

    behind = status_json(floe_bin, config, "--max-lag", "10", expect_rc=3)
    assert [p["behind"] for t in behind["tables"] for p in t["pipelines"]] == [False, True]
    human = floe_status(floe_bin, config)
    print(human.stdout)
    assert human.returncode == 0, human.stderr
    for name in ("table default.events", "table default.other", f"pipeline {a.group}", f"pipeline {b.group}"):
        assert name in human.stdout, f"{name!r} missing from:\n{human.stdout}"

    only = status_json(floe_bin, config, "--table", "default.other")
    assert [t["table"] for t in only["tables"]] == ["default.other"]

    # Kafka unreachable: said per pipeline, the table part still there, exit status 1.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    down = catalog_only_config(a, tmp_path / "kafka-down.toml", bootstrap=closed)
    report = status_json(floe_bin, down, expect_rc=1)
    for t in report["tables"]:
        assert t["health"]["data_files"] >= 1, t
        for p in t["pipelines"]:
            assert "cannot reach Kafka" in (p["kafka_error"] or ""), p
            assert p["lag"] is None
            assert p["last_commit"] is not None
    human = floe_status(floe_bin, down)
    print(human.stdout, human.stderr)
    assert human.returncode == 1 and "cannot reach Kafka" in human.stdout and "data files" in human.stdout, human.stdout + human.stderr


# --- dead letters from the snapshot summaries ----------------------------------------------------


def test_status_counts_dead_letters_by_kind(pipeline_factory, floe_bin):
    """Commits carrying `floe.dead-letters` (written here by pyiceberg, an independent writer, as
    the loader writes them) add up per kind and per pipeline; their ledger's lag is measured too."""
    p = pipeline_factory("dl")
    p.create_table("CREATE TABLE events (id BIGINT)")
    p.publish(10, 1, 1)
    table = p.table()
    for i, (dead, offset) in enumerate([("not-json=2", 4), ("not-json=1,wrong-type=3", 7)]):
        with table.transaction() as tx:
            tx.set_properties({f"floe.ledger.{p.group}": json.dumps({p.topic: {"0": offset}})})
            tx.append(pa.table({"id": pa.array([i], pa.int64())}),
                      snapshot_properties={"floe.pipeline": p.group, "floe.dead-letters": dead})
        table = p.table()
    report = status_json(floe_bin, p.config)
    pl = pipeline_entry(table_entry(report, EVENTS_TABLE), p.group)
    assert pl["dead_letters"] == {"not-json": 3, "wrong-type": 3}, pl
    assert lags_of(pl, p.topic) == {0: 3} == expected_lags(p)
    assert pl["recent"]["commits"] == 2 and pl["recent"]["rows"] == 2
    human = floe_status(floe_bin, p.config)
    assert "not-json 3, wrong-type 3" in human.stdout, human.stdout
