"""Tables on S3 (issue 13, item 1), against moto in server mode (scripts/moto.sh), which checks
request signatures like AWS: floe's data, manifests, metadata and dead-letter table on
s3://<bucket>/..., with credentials from the standard AWS chain (environment variables here), read
back by pyiceberg and DuckDB from S3; locations floe cannot write refused before anything is
written.
"""

from __future__ import annotations

import sqlite3
import subprocess
import time
from datetime import datetime, timezone

import pytest

from conftest import duckdb_connect
from loader_harness import EVENTS_DDL, Pipeline, assert_each_id_once, assert_rows_equal, unique
from test_dead_letters import DLQ_TABLE, STRICT_DDL, assert_dlq_table, assert_table_holds_good_ids, read_source, wait_ledger


@pytest.fixture
def s3_pipeline(tmp_path, floe_bin, kafka_bootstrap, procs, aws):
    def make(name: str = "s3", bucket: str | None = None, prefix: str = "warehouse") -> Pipeline:
        bucket = bucket or aws.new_bucket()
        p = Pipeline(tmp_path / name, floe_bin, kafka_bootstrap, procs, prefix=f"floe-{name}", aws=aws,
                     warehouse=f"s3://{bucket}/{prefix}")
        p.bucket = bucket
        p.write_config()
        return p

    return make


def catalog_rows(p: Pipeline) -> list[tuple]:
    db = p.data_dir / "catalog.db"
    if not db.exists():
        return []
    with sqlite3.connect(db) as con:
        try:
            return con.execute("SELECT table_namespace, table_name, metadata_location FROM iceberg_tables").fetchall()
        except sqlite3.OperationalError:
            return []


def test_pipeline_on_s3_under_sigkill(s3_pipeline, aws):
    p = s3_pipeline()
    p.write_config(interval="1s", kafka={"group.instance.id": f"{p.group}-member"},
                   dead_letter={"table": DLQ_TABLE})
    p.create_table(STRICT_DDL)
    since = datetime.now(timezone.utc)
    first = p.publish(1000, 1, 3, bad_every=100, spread="2d", keep=lambda i: i % 5 == 0)
    # The rest streams in while loaders are killed, so the kills land on loaders at work.
    streaming = p.publish_in_background(2000, 1001, 3, rate=300, bad_every=100, spread="2d", keep=lambda i: i % 5 == 0)
    kills = 0
    while kills < 3 or not streaming.done():
        assert kills < 12, "production did not finish while the loaders were being killed"
        loader = p.start_loader(f"killed-{kills}")
        time.sleep(2.0 + kills % 3)  # the moment of the kill, varied; not a wait for anything
        loader.assert_running(f"before SIGKILL {kills}")
        loader.sigkill()
        print(f"kill {kills}: {loader.count('batch committed')} commits in that run, table has {p.committed_rows()} rows")
        kills += 1
    rest = streaming.join(timeout=60)
    produced = first
    produced.ids += rest.ids
    produced.records.update(rest.records)
    produced.bad += rest.bad
    src = read_source(p, produced.ids, produced.bad)
    final = p.start_loader("final")
    p.wait_rows(len(src.good_ids()), timeout=120, alive=[final])
    wait_ledger(p, src.ends, timeout=60, alive=[final])
    final.sigterm_ok()

    assert_table_holds_good_ids(p, src)
    assert_rows_equal(p.table(), produced.records)
    assert_dlq_table(p, src, since)

    # Everything is on S3: the catalog points there, the bucket holds metadata, manifests, data of
    # both tables, and nothing went to a local directory.
    table = p.table()
    assert table.metadata_location.startswith(f"s3://{p.bucket}/warehouse/default/events/metadata/"), table.metadata_location
    keys = aws.keys(p.bucket)
    for t in ("events", "events_dlq"):
        ours = [k for k in keys if k.startswith(f"warehouse/default/{t}/")]
        assert any(k.endswith(".metadata.json") for k in ours), f"no metadata file of {t} in the bucket: {ours[:10]}"
        assert any(k.endswith(".avro") for k in ours), f"no manifest of {t} in the bucket"
        assert any(k.startswith(f"warehouse/default/{t}/data/") and k.endswith(".parquet") for k in ours), f"no data file of {t}"
    assert not [k for k in keys if ".floe-write-check" in k], "the write probe must be deleted"
    local = [str(x) for x in p.dir.rglob("*") if x.is_file() and x.suffix in (".parquet", ".avro", ".json")]
    assert not local, f"table files written locally: {local}"

    # DuckDB reads the same table from S3 (httpfs, path-style, signed with the same key).
    con = duckdb_connect()
    host = aws.endpoint.removeprefix("http://")
    con.execute(f"CREATE SECRET s3 (TYPE S3, KEY_ID '{aws.access_key_id}', SECRET '{aws.secret_access_key}', "
                f"REGION '{aws.region}', ENDPOINT '{host}', URL_STYLE 'path', USE_SSL false)")
    ids = [r[0] for r in con.execute(f"SELECT id FROM iceberg_scan('{table.metadata_location}')").fetchall()]
    assert_each_id_once(ids, src.good_ids())


def test_remove_orphans_lists_the_bucket_prefix(s3_pipeline, aws):
    p = s3_pipeline("orphans")
    p.create_table(EVENTS_DDL)
    p.publish(200, 1, 2)
    loader = p.start_loader()
    p.wait_rows(200, timeout=60, alive=[loader])
    loader.sigterm_ok()
    s3 = aws.client("s3")
    prefix = "warehouse/default/events/"
    stray = f"{prefix}data/crashed-writer.parquet"
    s3.put_object(Bucket=p.bucket, Key=stray, Body=b"not referenced")
    # A file outside the table's data/ and metadata/ is not the table's to judge.
    s3.put_object(Bucket=p.bucket, Key=f"{prefix}notes.txt", Body=b"x")
    listed = [k for k in aws.keys(p.bucket, prefix) if k.startswith((f"{prefix}data/", f"{prefix}metadata/"))]
    r = p.floe("maintain", "--table", "default.events", "--dry-run", "remove-orphans", "--older-than", "1h")
    assert r.returncode == 0, r.stderr
    # moto stamps objects with the current time: the stray file is the one unreferenced file, and
    # too young to delete; every other listed file is referenced.
    assert f"{len(listed)} files listed" in r.stdout, (r.stdout, len(listed))
    assert "would delete 0 unreferenced files; 1 unreferenced files are younger" in r.stdout, r.stdout
    r = p.floe("maintain", "--table", "default.events", "remove-orphans", "--older-than", "1h")
    assert r.returncode == 0, r.stderr
    assert stray in aws.keys(p.bucket, prefix), "a young orphan must stay"
    assert sorted(p.ids().to_pylist()) == list(range(1, 201))


def refused(p: Pipeline, *args: str, env: dict | None = None, within: float = 15) -> subprocess.CompletedProcess:
    cmd = [p.floe_bin, "--config", str(p.config), *args]
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                       env=env or p.env(), cwd=p.dir)
    took = time.monotonic() - t0
    assert r.returncode != 0, f"{' '.join(args)} should fail:\n{r.stdout}\n{r.stderr}"
    assert took < within, f"took {took:.1f}s to fail (limit {within}s):\n{r.stderr}"
    print(f"{args[0]} refused in {took:.1f}s: {r.stderr.strip()[:400]}")
    return r


def assert_nothing_written(p: Pipeline, aws, bucket: str | None = None) -> None:
    assert catalog_rows(p) == [], f"the catalog has rows: {catalog_rows(p)}"
    if bucket:
        assert aws.keys(bucket) == [], f"objects written to {bucket}: {aws.keys(bucket)[:10]}"
    # The old bug: an s3:// location written into a local directory named "s3:".
    stray = [str(x) for x in p.dir.rglob("*") if x.name.startswith(("s3:", "hdfs:")) or x.suffix == ".json"]
    assert not stray, f"written locally: {stray}"


def test_missing_bucket_is_refused_before_anything_is_written(s3_pipeline, aws):
    missing = f"floe-missing-{unique('b')}"
    p = s3_pipeline("nobucket", bucket=missing)
    r = refused(p, "table", "create", EVENTS_DDL)
    assert f'bucket "{missing}" does not exist' in r.stderr, r.stderr
    assert aws.endpoint in r.stderr, "the message names the endpoint"
    assert_nothing_written(p, aws)
    assert missing not in [b["Name"] for b in aws.client("s3").list_buckets()["Buckets"]]


def test_wrong_credentials_are_refused_before_anything_is_written(s3_pipeline, aws):
    p = s3_pipeline("badcreds")
    for env in (aws.env(AWS_SECRET_ACCESS_KEY="not-the-secret"), aws.env(AWS_ACCESS_KEY_ID="AKIANOBODY0000000000")):
        r = refused(p, "table", "create", EVENTS_DDL, env=env)
        assert "credentials were rejected" in r.stderr, r.stderr
        assert "not-the-secret" not in r.stderr, "the secret must not be shown"
        assert_nothing_written(p, aws, p.bucket)
    # `floe run` on a table it may no longer write: refused at start, before reading Kafka.
    p.create_table(EVENTS_DDL)
    p.publish(10, 1, 1)
    before = sorted(aws.keys(p.bucket))
    r = refused(p, "run", env=aws.env(AWS_SECRET_ACCESS_KEY="not-the-secret"))
    assert "credentials were rejected" in r.stderr and "default.events" in r.stderr, r.stderr
    assert sorted(aws.keys(p.bucket)) == before, "floe run wrote to the bucket"
    assert p.committed_rows() == 0


def test_unsupported_or_malformed_location_is_refused(s3_pipeline, aws, tmp_path):
    p = s3_pipeline("scheme")
    for warehouse, says in (("hdfs://namenode/w", 'no storage for the scheme "hdfs"'),
                            ("s3:/bucket/w", "s3://<bucket>")):
        p.warehouse_uri = warehouse
        p.write_config()
        r = refused(p, "table", "create", EVENTS_DDL)
        assert "catalog.warehouse" in r.stderr and says in r.stderr, r.stderr
        assert_nothing_written(p, aws)
    # A LOCATION in the DDL is checked the same way.
    p.warehouse_uri = f"s3://{p.bucket}/w"
    p.write_config()
    r = refused(p, "table", "create", EVENTS_DDL.replace("WITH (", "WITH (location = 'gopher://x/y', "))
    assert 'no storage for the scheme "gopher"' in r.stderr, r.stderr
    assert_nothing_written(p, aws, p.bucket)


def test_s3_without_working_storage_is_refused(s3_pipeline, aws):
    """An endpoint nothing listens on: a clear error within seconds, not a hang or a local file."""
    p = s3_pipeline("noendpoint")
    p.write_config()
    text = p.config.read_text().replace(aws.endpoint, "http://127.0.0.1:9")
    p.config.write_text(text)
    r = refused(p, "table", "create", EVENTS_DDL, within=40)
    assert "http://127.0.0.1:9" in r.stderr, r.stderr
    assert_nothing_written(p, aws, p.bucket)

