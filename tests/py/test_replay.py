"""Dead-letter replay (issue 15, item 5): after the table is fixed (`floe table alter` renames the
column the producer now sends as text and adds it back as VARCHAR), `floe dead-letters replay` writes
the dead letters that now decode into the table exactly once — with a SIGKILL part-way through the
replay, while `floe run` ingests the same table — and a second replay adds nothing. The ones that
still fail stay in the dead-letter topic or table and are reported with their new reason;
`floe dead-letters list` shows what each is now.

Checked from outside floe: the table with pyiceberg (ids, values, snapshot summaries), the
dead-letter topic with confluent-kafka, the dead-letter table with pyiceberg.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import time
from collections import Counter

import pytest

from loader_harness import (
    EVENTS_DDL,
    NotYet,
    Pipeline,
    assert_each_id_once,
    assert_snapshot_ranges_tile,
    child_env,
    read_topic,
    unique,
    wait_until,
)
from test_dead_letters import wait_ledger

DDL = EVENTS_DDL.replace("(id BIGINT,", "(id BIGINT NOT NULL, code BIGINT,")
assert DDL != EVENTS_DDL
DLQ_TABLE = "default.events_dlq"
GOOD = 600  # publish-sample's records, ids 1..GOOD
FIXED = 240  # `code` is text: wrong-type now, decodes after the fix
REFAILS = 30  # `code` is text and `integer` is not a number: fails on `integer` after the fix
NOT_JSON = 10
BATCH = 4  # dead letters per replay commit: 60 commits, slow enough to kill part-way
STREAMED = 1500  # published while the replays run, read by a running `floe run`


def fixed_ids() -> range:
    return range(GOOD + 1, GOOD + FIXED + 1)


def refail_ids() -> range:
    return range(GOOD + FIXED + 1, GOOD + FIXED + REFAILS + 1)


def not_json_ids() -> range:
    start = GOOD + FIXED + REFAILS + 1
    return range(start, start + NOT_JSON)


def bad_records() -> list[tuple[int, bytes]]:
    out = [(i, json.dumps({"id": i, "code": f"c-{i}", "string": f"s{i}"}).encode()) for i in fixed_ids()]
    out += [(i, json.dumps({"id": i, "code": f"c-{i}", "integer": "nope"}).encode()) for i in refail_ids()]
    out += [(i, f"not json {i}".encode()) for i in not_json_ids()]
    random.Random(15).shuffle(out)  # spread the kinds over both partitions and the offsets
    return out


def produce(bootstrap: str, topic: str, records: list[tuple[int, bytes]]) -> None:
    from confluent_kafka import Producer

    failed = []
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for rid, value in records:
        producer.produce(topic, key=str(rid).encode(), value=value,
                         on_delivery=lambda err, _msg: err and failed.append(err))
    assert producer.flush(30) == 0 and not failed, f"not every record was delivered: {failed}"


@pytest.fixture
def pipeline_factory(tmp_path, floe_bin, kafka_bootstrap, procs):
    def make(name: str) -> Pipeline:
        return Pipeline(tmp_path / name, floe_bin, kafka_bootstrap, procs, prefix=f"floe-{name}")

    return make


def polled(what: str, fn):
    """fn() once the catalog answers (SQLite may be briefly locked by a committing loader)."""
    box = []

    def attempt():
        try:
            box.append(fn())
        except Exception as e:  # noqa: BLE001 - a poll
            if "locked" in str(e) or "busy" in str(e):
                raise NotYet(repr(e)) from e
            raise
        return True

    wait_until(what, attempt, timeout=30)
    return box[-1]


def replay_snapshots(p: Pipeline) -> list[dict]:
    """The summaries of the replay snapshots, oldest first (metadata files do not keep their order)."""
    out = []
    for s in polled("the table", p.table).metadata.snapshots:
        extra = s.summary.additional_properties if s.summary else {}
        if "floe.replay.from" in extra:
            out.append((s.sequence_number, extra))
    return [extra for _, extra in sorted(out, key=lambda x: x[0])]


def dead_letter_count(p: Pipeline, destination: str, dlq_topic: str) -> int:
    if destination == "topic":
        return len(read_topic(p.bootstrap, dlq_topic))
    return len(p.catalog().load_table(DLQ_TABLE).scan().to_arrow())


def replayed_count(out: str) -> int:
    m = re.search(r"replayed (\d+) dead letters from", out)
    assert m, f"no summary line in the replay's output:\n{out}"
    return int(m.group(1))


@pytest.mark.parametrize("destination", ["topic", "table"])
def test_replay_after_add_column_exactly_once_under_sigkill(pipeline_factory, destination):
    seed = int(os.environ.get("FLOE_TEST_SEED") or random.SystemRandom().randrange(2**32))
    print(f"seed {seed} (rerun with FLOE_TEST_SEED={seed})")
    rng = random.Random(seed)
    p = pipeline_factory(f"replay-{destination}")
    dlq_topic = unique("floe-replay-dlq")
    where = {"topic": dlq_topic} if destination == "topic" else {"table": DLQ_TABLE}
    p.write_config(dead_letter=where)
    p.create_table(DDL)
    p.publish(GOOD, 1, 2)
    produce(p.bootstrap, p.topic, bad_records())
    ends = p.end_offsets()
    loader = p.start_loader("first")
    p.wait_rows(GOOD, timeout=60, alive=[loader])
    wait_ledger(p, ends, timeout=60, alive=[loader])
    loader.sigterm_ok()
    dead = FIXED + REFAILS + NOT_JSON
    assert dead_letter_count(p, destination, dlq_topic) == dead

    # Before the fix nothing decodes: a replay adds nothing and reports every one.
    before = p.floe("dead-letters", "replay")
    assert before.returncode == 0, before.stdout + before.stderr
    assert replayed_count(before.stdout) == 0, before.stdout
    assert before.stdout.count("still fails:") == dead, before.stdout[:2000]

    for sql in ("ALTER TABLE events RENAME COLUMN code TO code_number", "ALTER TABLE events ADD COLUMN code VARCHAR"):
        r = p.floe("table", "alter", sql)
        assert r.returncode == 0, f"{sql}: {r.stdout}{r.stderr}"

    # `list` sees the fix without changing anything.
    listed = p.floe("dead-letters", "list", "--json")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    doc = json.loads(listed.stdout)
    states = Counter(l["state"] for l in doc["letters"])
    assert states == {"decodes": FIXED, "fails": REFAILS + NOT_JSON}, states
    assert doc["counts"]["decodes"] == FIXED and doc["counts"]["replayed"] == 0, doc["counts"]

    # A loader ingests the same table while the replays run (and one is killed).
    loader = p.start_loader("during")
    streaming = p.publish_in_background(STREAMED, 10_001, 2, rate=300)
    kill_after = rng.randint(3, 25)
    log = p.dir / "replay-killed.log"
    cmd = [p.floe_bin, "--config", str(p.config), "dead-letters", "replay", "--batch-size", str(BATCH)]
    with open(log, "w") as f:
        killed = p.procs.add(subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                              env=child_env()))

    def commits_seen():
        n = log.read_text(errors="replace").count("dead letters replayed")
        if n < kill_after:
            assert killed.poll() is None, f"the replay ended after {n} commits:\n{log.read_text()[-3000:]}"
            raise NotYet(f"{n} replay commits")
        return True

    wait_until(f"{kill_after} replay commits", commits_seen, timeout=120, interval=0.01, alive=[loader])
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    partial = sum(int(s["floe.replay.rows"]) for s in replay_snapshots(p))
    print(f"killed after {kill_after} commits seen: {partial} dead letters in the table")
    assert 0 < partial < FIXED, f"the kill should land part-way: {partial} of {FIXED} replayed"

    again = p.floe("dead-letters", "replay", "--batch-size", str(BATCH * 5))
    assert again.returncode == 0, again.stdout + again.stderr
    rest = replayed_count(again.stdout)
    assert rest == FIXED - partial, f"the second replay wrote {rest}, {FIXED - partial} were left:\n{again.stdout[:1500]}"
    twice = p.floe("dead-letters", "replay")
    assert twice.returncode == 0, twice.stdout + twice.stderr
    assert replayed_count(twice.stdout) == 0, f"a third replay must add nothing:\n{twice.stdout[:1500]}"

    # The ones that still fail are reported with their new reason.
    still = [l for l in twice.stdout.splitlines() if l.startswith("still fails:")]
    assert len(still) == REFAILS + NOT_JSON, twice.stdout[:2000]
    assert sum('column "integer"' in l for l in still) == REFAILS, still[:5]
    assert sum("(was not-json)" in l for l in still) == NOT_JSON, still[:5]

    streamed = streaming.join(timeout=60)
    p.wait_rows(GOOD + FIXED + STREAMED, timeout=90, alive=[loader])
    wait_ledger(p, p.end_offsets(), timeout=60, alive=[loader])
    loader.sigterm_ok()

    table = p.table()
    assert_each_id_once(p.ids().to_pylist(), [*range(1, GOOD + 1), *fixed_ids(), *streamed.ids])
    rows = {r["id"]: r for r in table.scan(selected_fields=("id", "code", "string", "code_number")).to_arrow().to_pylist()}
    wrong = [(i, rows[i]) for i in fixed_ids() if (rows[i]["code"], rows[i]["string"], rows[i]["code_number"]) != (f"c-{i}", f"s{i}", None)]
    assert not wrong, f"replayed rows with wrong values: {wrong[:5]}"
    # The pipeline's own history still covers each source offset once; the replays are separate
    # snapshots that say where they came from.
    assert_snapshot_ranges_tile(table, p.topic, p.end_offsets())
    snaps = replay_snapshots(p)
    assert sum(int(s["floe.replay.rows"]) for s in snaps) == FIXED
    source = f"topic {dlq_topic}" if destination == "topic" else f"table {DLQ_TABLE}"
    assert {s["floe.replay.from"] for s in snaps} == {source}
    assert {s["floe.replay.pipeline"] for s in snaps} == {p.group}
    ledger = json.loads(table.properties[f"floe.replay.{p.group}"])
    assert json.loads(snaps[-1]["floe.replay.ledger"]) == ledger
    assert set(ledger) == {p.topic}
    # Nothing was removed from the dead-letter destination.
    assert dead_letter_count(p, destination, dlq_topic) == dead

    # `list` now: the fixed ones replayed, the others failing with the new reason; filters work.
    doc = json.loads(p.floe("dead-letters", "list", "--json").stdout)
    states = Counter(l["state"] for l in doc["letters"])
    assert states == {"replayed": FIXED, "fails": REFAILS + NOT_JSON}, states
    by_id = {int(l["value_preview"].split()[2]) if l["kind"] == "not-json" else json.loads(l["value_preview"])["id"]: l
             for l in doc["letters"] if l["state"] == "fails"}
    assert sorted(by_id) == [*refail_ids(), *not_json_ids()]
    for i in refail_ids():
        l = by_id[i]
        assert (l["kind"], l["column"], l["now_kind"], l["now_column"]) == ("wrong-type", "code", "wrong-type", "integer"), l
        assert 'column "integer"' in l["now_reason"] and f"offset {l['offset']}" in l["now_reason"], l
    text = p.floe("dead-letters", "list", "--kind", "not-json")
    assert text.returncode == 0, text.stderr
    rows_shown = [l for l in text.stdout.splitlines() if l.startswith(p.topic + "/")]
    assert len(rows_shown) == NOT_JSON and all("not-json" in l and "fails" in l for l in rows_shown), text.stdout
    future = p.floe("dead-letters", "list", "--json", "--since", "2099-01-01T00:00:00Z")
    assert json.loads(future.stdout)["letters"] == []
    recent = json.loads(p.floe("dead-letters", "list", "--json", "--since", "1h").stdout)
    assert len(recent["letters"]) == dead


def test_replay_refuses_what_it_cannot_do(pipeline_factory):
    p = pipeline_factory("replay-usage")
    p.write_config()
    p.create_table(DDL)
    r = p.floe("dead-letters", "replay")
    assert r.returncode == 2 and "[dead_letter]" in r.stderr, r.stderr
    p.write_config(dead_letter={"topic": unique("floe-replay-none")})
    r = p.floe("dead-letters", "list", "--kind", "wrong")
    assert r.returncode == 2 and "missing-required" in r.stderr, r.stderr
    r = p.floe("dead-letters", "list", "--since", "yesterday")
    assert r.returncode == 2 and "yesterday" in r.stderr, r.stderr
    r = p.floe("dead-letters", "list", "--from", "table")
    assert r.returncode == 2 and "dead_letter" in r.stderr, r.stderr
    r = p.floe("dead-letters", "replay", "--batch-size", "0")
    assert r.returncode == 2, r.stderr
