"""floe on the AWS Glue Data Catalog (issue 13, item 3), against moto in server mode
(scripts/moto.sh; its Glue honours UpdateTable's VersionId as AWS does, scripts/moto/floe_moto.py),
with the tables on moto's S3. Everything floe commits is read back by pyiceberg through its *own*
Glue catalog pointed at moto, and the Glue table itself is read with boto3: the parameters Iceberg
engines look for and the Glue column types. (The zombie test runs on Glue too:
test_loader.py::test_zombie_is_fenced[glue].)
"""

from __future__ import annotations

import json
import os
import random
import time
from datetime import datetime, timezone
from decimal import Decimal

from pyiceberg.types import TimestamptzType, TimestampType

from test_dead_letters import STRICT_DDL, read_source
from loader_harness import (
    CatalogSpec,
    Pipeline,
    assert_each_id_once,
    assert_rows_equal,
    assert_snapshot_ranges_tile,
    create_topic,
    glue_catalog,
    produce_json,
    wait_until,
)

SEED_RECORDS = 1_000


def glue_pipeline(tmp_path, floe_bin, kafka_bootstrap, procs, aws, name: str) -> Pipeline:
    bucket = aws.new_bucket()
    p = Pipeline(tmp_path / name, floe_bin, kafka_bootstrap, procs, catalog=CatalogSpec.glue(),
                 prefix=f"floe-{name}", aws=aws, warehouse=f"s3://{bucket}/warehouse")
    p.bucket = bucket
    return p


def glue_table(aws, table_name: str) -> dict:
    """The Glue table as boto3 reads it from moto."""
    db, name = table_name.split(".")
    return aws.client("glue").get_table(DatabaseName=db, Name=name)["Table"]


def glue_columns(t: dict) -> dict[str, str]:
    return {c["Name"]: c["Type"] for c in t["StorageDescriptor"]["Columns"]}


def kill_loaders_while_producing(p: Pipeline, streaming, rng: random.Random) -> list[tuple[float, int]]:
    """Starts loaders and SIGKILLs each at a random moment after its first commit (a loaded machine
    starts one in 2-8 s), for as long as the records stream in. Returns (delay, commits) per run."""
    runs = []
    while not streaming.done():
        assert len(runs) < 20, "production did not finish while the loaders were being killed"
        loader = p.start_loader(f"killed-{len(runs)}")
        wait_until(f"{loader.name} to commit (or the production to end)",
                   lambda: loader.count("batch committed") > 0 or streaming.done(), timeout=60, alive=[loader])
        delay = rng.uniform(0.3, 2)
        time.sleep(delay)  # the random moment of the kill, not a synchronisation
        loader.assert_running(f"before SIGKILL {len(runs)}")
        loader.sigkill()
        runs.append((round(delay, 2), loader.count("batch committed")))
        print(f"kill {len(runs)}: {delay:.2f}s after its first commit, {runs[-1][1]} commits, "
              f"table has {p.committed_rows()} rows")
    working = sum(1 for _, c in runs if c > 0)
    assert working >= 2, f"only {working} killed loaders had committed: the kills prove little ({runs})"
    return runs


def test_exactly_once_under_sigkill_on_glue(tmp_path, floe_bin, kafka_bootstrap, procs, aws):
    seed = int(os.environ.get("FLOE_TEST_SEED") or random.SystemRandom().randrange(2**32))
    print(f"seed {seed} (rerun with FLOE_TEST_SEED={seed})")
    rng = random.Random(seed)
    p = glue_pipeline(tmp_path, floe_bin, kafka_bootstrap, procs, aws, "gluekill")
    p.write_config(interval="500ms", kafka={"group.instance.id": f"{p.group}-member"})
    p.create_table()
    streaming = p.publish_in_background(SEED_RECORDS, 1, 4, rate=60, spread="2d")

    runs = kill_loaders_while_producing(p, streaming, rng)
    produced = streaming.join(timeout=60)
    final = p.start_loader("final")
    p.wait_rows(SEED_RECORDS, timeout=120, alive=[final])
    final.sigterm_ok()

    table = p.table()  # pyiceberg's GlueCatalog on moto, files from moto's S3
    ids = table.scan(selected_fields=("id",)).to_arrow().column("id").to_pylist()
    assert_each_id_once(ids, range(1, SEED_RECORDS + 1))
    assert_rows_equal(table, produced.records)
    ends = p.end_offsets()
    assert p.ledger(table) == ends, f"ledger {p.ledger(table)} differs from the topic's end offsets {ends}"
    snapshots = assert_snapshot_ranges_tile(table, p.topic, ends)
    print(f"{snapshots} floe snapshots after {len(runs)} kills: {runs}")

    # The Glue table as Iceberg Java's GlueCatalog writes it, so other engines find the table.
    t = glue_table(aws, p.table_name)
    params = t["Parameters"]
    assert params["table_type"] == "ICEBERG", params
    assert params["metadata_location"] == table.metadata_location, (params, table.metadata_location)
    assert table.metadata_location.startswith(f"s3://{p.bucket}/warehouse/"), table.metadata_location
    previous = params.get("previous_metadata_location")
    assert previous and previous != params["metadata_location"], params
    assert previous in {e.metadata_file for e in table.metadata.metadata_log}, (previous, table.metadata.metadata_log[-3:])
    assert t["TableType"] == "EXTERNAL_TABLE", t["TableType"]
    assert t["StorageDescriptor"]["Location"] == table.location(), t["StorageDescriptor"]
    assert int(t["VersionId"]) > snapshots, f"Glue version {t['VersionId']} after {snapshots} commits"
    assert glue_columns(t) == {
        "id": "bigint", "bool": "boolean", "floating": "double", "integer": "bigint", "string": "string",
        "bools": "array<boolean>", "floatings": "array<double>", "integers": "array<bigint>",
        "strings": "array<string>", "string_map": "map<string,string>", "nested": "struct<key:string,value:bigint>",
        "timestamp": "timestamp",
    }, glue_columns(t)
    ts = next(c for c in t["StorageDescriptor"]["Columns"] if c["Name"] == "timestamp")
    field = table.schema().find_field("timestamp")
    assert ts["Parameters"] == {"iceberg.field.id": str(field.field_id), "iceberg.field.optional": "true",
                                "iceberg.field.current": "true"}, ts


TYPES_DDL = ("CREATE TABLE {name} (id BIGINT, ts TIMESTAMP(6) WITH TIME ZONE, local_ts TIMESTAMP(6), day DATE, "
             "amount DECIMAL(10,2), tags ARRAY(TIMESTAMP(6) WITH TIME ZONE)) WITH (partitioning = ARRAY['day(ts)'])")


def test_timestamptz_round_trip_on_glue(tmp_path, floe_bin, kafka_bootstrap, procs, aws):
    p = glue_pipeline(tmp_path, floe_bin, kafka_bootstrap, procs, aws, "gluetz")
    p.write_config(interval="500ms")
    r = p.floe("table", "create", TYPES_DDL.format(name=p.table_name))
    assert r.returncode == 0, r.stderr
    # The crate's own Glue catalog cannot write a timestamptz column; floe's names it `timestamp`,
    # as Iceberg Java does, and the Iceberg schema keeps the zone.
    t = glue_table(aws, p.table_name)
    assert glue_columns(t) == {"id": "bigint", "ts": "timestamp", "local_ts": "timestamp", "day": "date",
                               "amount": "decimal(10,2)", "tags": "array<timestamp>"}, glue_columns(t)
    create_topic(kafka_bootstrap, p.topic, 1)
    records = [
        {"id": 1, "ts": "2024-03-01T12:00:00.123456+02:00", "local_ts": "2024-03-01T12:00:00", "day": "2024-03-01",
         "amount": "12.34", "tags": ["2024-03-01T23:30:00-01:00"]},
        {"id": 2, "ts": "1999-12-31T23:59:59Z", "local_ts": "1999-12-31T23:59:59.5", "day": "1999-12-31",
         "amount": "-0.01", "tags": []},
    ]
    produce_json(kafka_bootstrap, p.topic, records)
    loader = p.start_loader()
    p.wait_rows(2, timeout=60, alive=[loader])
    loader.sigterm_ok()

    table = glue_catalog(aws).load_table(p.table_name)
    assert isinstance(table.schema().find_field("ts").field_type, TimestamptzType)
    assert isinstance(table.schema().find_field("local_ts").field_type, TimestampType)
    rows = {r["id"]: r for r in table.scan().to_arrow().to_pylist()}
    utc = timezone.utc
    assert rows[1]["ts"] == datetime(2024, 3, 1, 10, 0, 0, 123456, tzinfo=utc), rows[1]
    assert rows[1]["local_ts"] == datetime(2024, 3, 1, 12, 0, 0), rows[1]
    assert rows[1]["amount"] == Decimal("12.34") and str(rows[1]["day"]) == "2024-03-01", rows[1]
    assert rows[1]["tags"] == [datetime(2024, 3, 2, 0, 30, tzinfo=utc)], rows[1]
    assert rows[2]["ts"] == datetime(1999, 12, 31, 23, 59, 59, tzinfo=utc), rows[2]
    assert rows[2]["local_ts"] == datetime(1999, 12, 31, 23, 59, 59, 500000), rows[2]
    assert rows[2]["amount"] == Decimal("-0.01") and rows[2]["tags"] == [], rows[2]


def test_floe_commands_on_glue(tmp_path, floe_bin, kafka_bootstrap, procs, aws):
    """table create/list/describe/alter, run with a dead-letter table, status, dead-letters list
    and maintenance, all on one Glue catalog."""
    p = glue_pipeline(tmp_path, floe_bin, kafka_bootstrap, procs, aws, "gluecmd")
    db = p.table_name.split(".")[0]
    dlq = f"{db}.events_dlq"
    p.write_config(interval="500ms", dead_letter={"table": dlq})
    p.create_table(STRICT_DDL)  # every bad record of the sample is then a dead letter
    r = p.floe("table", "list")
    assert r.returncode == 0, r.stderr
    assert p.table_name in r.stdout, r.stdout
    r = p.floe("table", "create", p_ddl := f"CREATE TABLE {p.table_name} (id BIGINT)")
    assert r.returncode != 0 and "already exists" in r.stderr, (p_ddl, r.stdout, r.stderr)

    # Two rounds, so that the table has several snapshots for compaction and expiry.
    loader = p.start_loader()
    produced = p.publish(150, 1, 2, bad_every=50)
    src = read_source(p, produced.ids, produced.bad)
    p.wait_rows(len(src.good_ids()), timeout=60, alive=[loader])
    more = p.publish(150, 151, 2, bad_every=50)
    produced.ids += more.ids
    produced.bad += more.bad
    src = read_source(p, produced.ids, produced.bad)
    good_ids = src.good_ids()
    good = len(good_ids)
    p.wait_rows(good, timeout=60, alive=[loader])

    def dlq_rows():
        try:
            return glue_catalog(aws).load_table(dlq).scan().count() >= len(produced.bad)
        except Exception as e:  # noqa: BLE001 - a poll: the table may not exist yet
            return f"{type(e).__name__}: {e}"

    wait_until("the dead letters in the Glue dead-letter table", dlq_rows, timeout=60, alive=[loader])
    loader.sigterm_ok()
    assert_each_id_once(p.ids().to_pylist(), good_ids)

    r = p.floe("table", "alter", f"ALTER TABLE {p.table_name} ADD COLUMN note VARCHAR")
    assert r.returncode == 0, r.stderr
    assert glue_columns(glue_table(aws, p.table_name))["note"] == "string"
    assert "note" in p.table().schema().column_names
    r = p.floe("table", "describe", p.table_name)
    assert r.returncode == 0 and "note" in r.stdout, (r.stdout, r.stderr)

    r = p.floe("status", "--table", p.table_name, "--json")
    assert r.returncode == 0, r.stderr
    status = json.loads(r.stdout)
    assert p.group in json.dumps(status) and str(good) in json.dumps(status), status

    r = p.floe("dead-letters", "list", "--json")
    assert r.returncode == 0, r.stderr
    letters = json.loads(r.stdout)["letters"]
    assert sorted((l["partition"], l["offset"]) for l in letters) == sorted(src.bad), (letters[:3], sorted(src.bad))

    before = p.table()
    assert len(before.snapshots()) >= 2, before.snapshots()
    r = p.floe("maintain", "--table", p.table_name, "compact")
    assert r.returncode == 0, r.stderr
    compacted = p.table()
    assert compacted.current_snapshot().summary.operation.value == "replace", (compacted.current_snapshot(), r.stdout)
    r = p.floe("maintain", "--table", p.table_name, "expire-snapshots", "--older-than", "0s", "--retain-last", "1")
    assert r.returncode == 0, r.stderr
    table = p.table()
    assert [s.snapshot_id for s in table.snapshots()] == [compacted.current_snapshot().snapshot_id], r.stdout
    assert_each_id_once(p.ids().to_pylist(), good_ids)
    assert glue_table(aws, p.table_name)["Parameters"]["metadata_location"] == table.metadata_location


def test_wrong_aws_credentials_on_glue_are_a_clear_error(tmp_path, floe_bin, kafka_bootstrap, procs, aws):
    p = glue_pipeline(tmp_path, floe_bin, kafka_bootstrap, procs, aws, "gluecreds")
    env = aws.env(AWS_SECRET_ACCESS_KEY="not-the-secret")
    import subprocess

    t0 = time.monotonic()
    r = subprocess.run([floe_bin, "--config", str(p.config), "table", "list"], capture_output=True, text=True,
                       timeout=60, env=env, stdin=subprocess.DEVNULL)
    took = time.monotonic() - t0
    assert r.returncode != 0, r.stdout
    assert took < 15, f"took {took:.1f}s to fail"
    assert "AWS Glue (region us-east-1, endpoint " + aws.endpoint in r.stderr, r.stderr
    assert "credentials were not accepted" in r.stderr, r.stderr
    print(r.stderr.strip())


# --- the whole AWS setup -----------------------------------------------------------------------


def test_seed_pipeline_end_to_end_on_aws(tmp_path, floe_bin, kafka_bootstrap, procs, aws):
    """The setup floe replaces a production Flink job in (issue 13, "shown by"): the table on S3,
    its schema in Glue, the Kafka credentials in Secrets Manager (all moto), Kafka over SASL_SSL
    (SCRAM-SHA-512); the seed's 1,000 records while loaders are SIGKILLed; every id once, read by
    pyiceberg from S3 through its own Glue catalog."""
    from test_secure_kafka import ref, sasl

    secure = {"ca": f"{os.environ['FLOE_TEST_KAFKA_TLS']}/ca.pem"}
    bootstrap = os.environ["FLOE_TEST_KAFKA_SASL_SSL"]
    seed = int(os.environ.get("FLOE_TEST_SEED") or random.SystemRandom().randrange(2**32))
    print(f"seed {seed} (rerun with FLOE_TEST_SEED={seed})")
    rng = random.Random(seed)
    secret_id = f"floe/kafka/aws-{rng.randrange(10**9)}"
    aws.client("secretsmanager").create_secret(
        Name=secret_id, SecretString=json.dumps({"apiKey": "bob", "apiSecret": "bob-secret"}))
    p = glue_pipeline(tmp_path, floe_bin, kafka_bootstrap, procs, aws, "aws")
    kafka = sasl(secure, "SCRAM-SHA-512", ref(secret_id, "apiKey"), ref(secret_id, "apiSecret"))
    kafka["group.instance.id"] = f"{p.group}-member"
    p.write_config(interval="500ms", bootstrap=bootstrap, kafka=kafka)
    assert "bob-secret" not in p.config.read_text()
    p.create_table()
    t0 = time.monotonic()
    streaming = p.publish_in_background(SEED_RECORDS, 1, 4, rate=60, spread="2d")
    runs = kill_loaders_while_producing(p, streaming, rng)
    produced = streaming.join(timeout=60)
    final = p.start_loader("final")
    p.wait_rows(SEED_RECORDS, timeout=60, alive=[final])
    final.sigterm_ok()
    print(f"{SEED_RECORDS} records through {len(runs)} SIGKILLs in {time.monotonic() - t0:.0f}s: {runs}")

    table = glue_catalog(aws).load_table(p.table_name)
    assert table.metadata_location.startswith(f"s3://{p.bucket}/"), table.metadata_location
    ids = table.scan(selected_fields=("id",)).to_arrow().column("id").to_pylist()
    assert_each_id_once(ids, range(1, SEED_RECORDS + 1))
    assert_rows_equal(table, produced.records)
    ends = p.end_offsets()
    assert p.ledger(table) == ends, f"ledger {p.ledger(table)} differs from the topic's end offsets {ends}"
    assert_snapshot_ranges_tile(table, p.topic, ends)
    for f in [p.dir / f"killed-{i}.log" for i in range(len(runs))] + [final.log_path]:
        assert "bob-secret" not in f.read_text(), f"the Kafka secret is in {f}"
