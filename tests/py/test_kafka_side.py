"""No record lost on the Kafka side (issue 11, DESIGN.md §1-§3): a ledger outside the log, partitions
added while floe runs, transactional producers, dead letters across processes, epochs, and restarts.

Everything is checked from outside floe: the topics with confluent-kafka (and Kafka's own admin
API), the table with pyiceberg, every record counted by its id.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import time
from collections import Counter

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewPartitions

from loader_harness import (
    NotYet,
    Pipeline,
    assert_each_id_once,
    assignment,
    read_topic,
    unique,
    wait_until,
)
from loader_harness import create_topic as harness_create_topic
from loader_harness import produce_json as harness_produce_json
from test_dead_letters import (
    H,
    STRICT_DDL,
    assert_dlq_topic,
    kill_after_dead_letters,
    read_source,
    wait_ledger,
)

SMALL_DDL = "CREATE TABLE events (id BIGINT NOT NULL, string VARCHAR)"
GAPS = "floe.gaps"


@pytest.fixture
def pipeline_factory(tmp_path, floe_bin, kafka_bootstrap, procs):
    def make(name: str) -> Pipeline:
        return Pipeline(tmp_path / name, floe_bin, kafka_bootstrap, procs, prefix=f"floe-{name}")

    return make


def admin(p: Pipeline) -> AdminClient:
    return AdminClient({"bootstrap.servers": p.bootstrap})


def create_topic(p: Pipeline, partitions: int) -> None:
    harness_create_topic(p.bootstrap, p.topic, partitions)


def produce_json(p: Pipeline, rows: list[dict], partition: int | None = None) -> None:
    harness_produce_json(p.bootstrap, p.topic, rows, partition=partition)


def rows(first: int, last: int) -> list[dict]:
    return [{"id": i, "string": f"s{i}"} for i in range(first, last + 1)]


def delete_records_before(p: Pipeline, partition: int, offset: int) -> None:
    """Moves the partition's log start to `offset` (what retention does), with Kafka's admin API."""
    client = admin(p)
    fut = client.delete_records([TopicPartition(p.topic, partition, offset)])
    for f in fut.values():
        f.result(timeout=30)
    low, high = watermarks(p, partition)
    assert low == offset, f"log start of partition {partition} is {low}, expected {offset}"


def watermarks(p: Pipeline, partition: int) -> tuple[int, int]:
    c = Consumer({"bootstrap.servers": p.bootstrap, "group.id": unique("wm")})
    try:
        return c.get_watermark_offsets(TopicPartition(p.topic, partition), timeout=15)
    finally:
        c.close()


def run_until_exit(p: Pipeline, timeout: float = 90) -> subprocess.CompletedProcess:
    return p.floe("--log", "info", "run", timeout=timeout)


def gaps_in_history(table) -> list[str]:
    out = []
    for s in table.metadata.snapshots:
        extra = s.summary.additional_properties if s.summary else {}
        if GAPS in extra:
            out.append(extra[GAPS])
    return out


# --- 1: the ledger outside the log -------------------------------------------------------------


def loaded_then_stopped(p: Pipeline) -> Pipeline:
    """A one-partition pipeline that loaded ids 0-99 and stopped: its ledger stands at 100."""
    p.write_config(interval="500ms")
    p.create_table(SMALL_DDL)
    create_topic(p, 1)
    produce_json(p, rows(0, 99))
    a = p.start_loader("first")
    p.wait_rows(100, timeout=60, alive=[a])
    a.sigterm_ok()
    assert p.ledger() == {0: 100}
    return p


def test_retention_gap_stops_then_resumes_at_the_log_start_when_told(pipeline_factory):
    p = loaded_then_stopped(pipeline_factory("gap"))

    produce_json(p, rows(100, 199))
    delete_records_before(p, 0, 150)

    # Default: stop, say exactly what happened and the two ways forward; the ledger stays.
    res = run_until_exit(p)
    out = res.stdout + res.stderr
    assert res.returncode != 0, f"floe run should stop on a ledger below the log start:\n{out}"
    for needle in (p.topic, "partition 0", "offset 100", "150 to 200", "deleted", 'on_data_loss = "earliest"',
                   "produce them into the topic again"):
        assert needle in out, f"the error should say {needle!r}:\n{out[-3000:]}"
    assert p.ledger() == {0: 100}, "a pipeline stopped on data loss must leave its ledger where it was"
    assert p.committed_rows() == 100

    # Told to accept the loss: resume at the log start, ERROR in the log, the gap in the history.
    p.write_config(interval="500ms", source={"on_data_loss": "earliest"})
    b = p.start_loader("earliest")
    p.wait_rows(150, timeout=60, alive=[b])
    wait_until("ledger at the end", lambda: p.ledger() == {0: 200}, timeout=30, alive=[b])
    b.sigterm_ok()
    assert "ERROR" in b.log() and "data loss" in b.log(), b.tail()
    assert_each_id_once(p.ids().to_pylist(), list(range(0, 100)) + list(range(150, 200)))
    assert gaps_in_history(p.table()) == [f"{p.topic}/0:100->150"], gaps_in_history(p.table())


def test_recreated_topic_is_data_loss_not_a_silent_jump(pipeline_factory):
    p = loaded_then_stopped(pipeline_factory("recreate"))

    client = admin(p)
    client.delete_topics([p.topic])[p.topic].result(timeout=30)
    create_topic(p, 1)
    produce_json(p, rows(1000, 1019))

    res = run_until_exit(p)
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert "beyond the end of the log" in out and "recreated" in out, out[-3000:]
    assert p.ledger() == {0: 100}

    p.write_config(interval="500ms", source={"on_data_loss": "earliest"})
    b = p.start_loader("earliest")
    p.wait_rows(120, timeout=60, alive=[b])
    wait_until("ledger at the new end", lambda: p.ledger() == {0: 20}, timeout=30, alive=[b])
    b.sigterm_ok()
    assert_each_id_once(p.ids().to_pylist(), list(range(0, 100)) + list(range(1000, 1020)))
    assert gaps_in_history(p.table()) == [f"{p.topic}/0:100->0"]


# --- 2: new partitions -----------------------------------------------------------------------


def test_partitions_added_while_running_are_read_from_their_beginning(pipeline_factory):
    p = pipeline_factory("newparts")
    # Default partition discovery (30 s), start = latest: only records produced after the start
    # of the pipeline count, but none of a partition added later may be lost.
    p.write_config(interval="1s", source={"start": "latest"})
    p.create_table(SMALL_DDL)
    create_topic(p, 2)
    produce_json(p, rows(1, 10))  # before the pipeline's first start: not wanted
    a = p.start_loader()
    a.wait_log("partition assigned", timeout=60, times=2)
    # The pipeline's starting points are recorded in the ledger (then a restart starts there too).
    wait_until("the start positions in the ledger", lambda: p.ledger() == p.end_offsets(), timeout=30, alive=[a])
    produce_json(p, rows(11, 110))
    p.wait_rows(100, timeout=60, alive=[a])

    client = admin(p)
    client.create_partitions([NewPartitions(p.topic, 4)])[p.topic].result(timeout=30)
    t0 = time.monotonic()
    # Written to the new partitions before floe can have seen them.
    produce_json(p, [r for r in rows(111, 170)], partition=2)
    produce_json(p, [r for r in rows(171, 230)], partition=3)
    produce_json(p, rows(231, 310))  # spread over all four by key
    p.wait_rows(300, timeout=90, alive=[a])
    took = time.monotonic() - t0
    wait_until("ledger at the end offsets", lambda: p.ledger() == p.end_offsets(), timeout=30, alive=[a])
    a.sigterm_ok()
    assert_each_id_once(p.ids().to_pylist(), range(11, 311))
    print(f"records of the added partitions loaded {took:.1f}s after the partitions were added")
    assert "new partition" in a.log(), a.tail()


# --- 3: transactional producers ------------------------------------------------------------------


def test_transactions_only_committed_records_and_lag_zero(pipeline_factory):
    p = pipeline_factory("txn")
    p.write_config(interval="500ms")
    p.create_table(SMALL_DDL)
    create_topic(p, 2)
    prod = Producer({"bootstrap.servers": p.bootstrap, "transactional.id": unique("floe-test-txn")})
    prod.init_transactions(30)
    committed, aborted = [], []
    rid = 0
    for t in range(12):
        prod.begin_transaction()
        batch = list(range(rid, rid + 25))
        rid += 25
        for i in batch:
            prod.produce(p.topic, key=str(i).encode(), value=json.dumps({"id": i, "string": f"t{t}"}).encode())
        # Every third transaction is aborted, and so is the last one (an aborted tail).
        if t % 3 == 1 or t == 11:
            prod.abort_transaction(30)
            aborted += batch
        else:
            prod.commit_transaction(30)
            committed += batch
    a = p.start_loader()
    p.wait_rows(len(committed), timeout=60, alive=[a])
    ends = p.end_offsets()
    # The ledger stands at the consumer's position: past the markers and the aborted tail.
    wait_until(f"the ledger at the end offsets {ends}", lambda: p.ledger() == ends, timeout=30, alive=[a])

    def group_lag():
        c = Consumer({"bootstrap.servers": p.bootstrap, "group.id": p.group})
        try:
            got = c.committed([TopicPartition(p.topic, q) for q in ends], timeout=15)
        finally:
            c.close()
        lag = {tp.partition: ends[tp.partition] - tp.offset for tp in got}
        if any(v != 0 for v in lag.values()):
            raise NotYet(f"group lag {lag}")
        return True

    wait_until("the group's lag to read 0", group_lag, timeout=30, alive=[a])
    a.sigterm_ok()
    ids = p.ids().to_pylist()
    assert not set(ids) & set(aborted), "records of aborted transactions reached the table"
    assert_each_id_once(ids, committed)

    p.write_config(interval="500ms", kafka={"isolation.level": "read_uncommitted"})
    res = run_until_exit(p, timeout=30)
    assert res.returncode != 0 and "read_committed" in res.stderr and "aborted" in res.stderr, res.stderr


# --- 4: dead letters across processes ------------------------------------------------------------


def dlq_counts(p: Pipeline, dlq_topic: str) -> Counter:
    return Counter((r.header_str(H + "partition"), r.header_str(H + "offset")) for r in read_topic(p.bootstrap, dlq_topic))


@pytest.mark.parametrize("fault", ["sigkill", "sigstop"])
def test_dead_letters_once_across_two_loaders(pipeline_factory, fault):
    p = pipeline_factory(f"dl2-{fault}")
    dlq = unique("floe-dl2-dlq")
    p.write_config(interval="1s", dead_letter={"topic": dlq}, kafka={"max.poll.interval.ms": 60000})
    p.create_table(STRICT_DDL)
    first = p.publish(2000, 1, 4, bad_every=20)
    streaming = p.publish_in_background(16_000, 2001, 4, rate=400, bad_every=20)
    a, b = p.start_loader("A"), p.start_loader("B")

    def split():
        ha, hb = assignment(a.log(), p.topic), assignment(b.log(), p.topic)
        if not (ha and hb and not ha & hb and ha | hb == {0, 1, 2, 3}):
            raise NotYet(f"A holds {sorted(ha)}, B holds {sorted(hb)}")
        return ha

    wait_until("A and B to share the partitions", split, timeout=60, alive=[a, b])
    faults = 0
    for round_ in range(3 if fault == "sigkill" else 2):
        if fault == "sigkill":
            hit = kill_after_dead_letters(a, timeout=10)
            print(f"round {round_}: A killed {'right after writing dead letters' if hit else 'at the timeout'}")
            faults += hit
            a = p.start_loader(f"A{round_}")
            wait_until("the partitions shared again", split, timeout=60, alive=[a, b])
        else:
            held = split()
            # Frozen right after a commit, before its next flush: it goes on holding (and on
            # resuming, processes) what it read meanwhile. (A freeze inside a flush, between its
            # last fence check and the write of dead letters, is the window docs/exactly-once.md
            # names; no test can close it from outside.)
            a.wait_log("batch committed", timeout=30, times=a.count("batch committed") + 1)
            a.stop()
            before = p.ledger() or {}
            wait_until("B to take A's partitions",
                       lambda: held <= assignment(b.log(), p.topic) or None, timeout=60, alive=[b])
            wait_until("B to commit A's partitions",
                       lambda: all((p.ledger() or {}).get(q, 0) > before.get(q, 0) for q in held) or None,
                       timeout=60, interval=0.5, alive=[b])
            mark = len(a.log())
            a.cont()
            wait_until("A to find out it was fenced or revoked",
                       lambda: ("batch fenced" in a.log()[mark:]) or ("partitions revoked" in a.log()[mark:]),
                       timeout=60, alive=[a, b])
            faults += "batch fenced" in a.log()[mark:]
            wait_until("the partitions shared again", split, timeout=90, alive=[a, b])
    rest = streaming.join(timeout=120)
    src = read_source(p, first.ids + rest.ids, first.bad + rest.bad)
    p.wait_rows(len(src.good_ids()), timeout=120, alive=[a, b])
    wait_ledger(p, src.ends, timeout=60, alive=[a, b])
    a.sigterm_ok()
    b.sigterm_ok()
    assert_each_id_once(p.ids().to_pylist(), src.good_ids())
    twice = {k: v for k, v in dlq_counts(p, dlq).items() if v > 1}
    assert not twice, f"dead letters written more than once (source partition, offset): {sorted(twice.items())[:10]}"
    assert_dlq_topic(p, dlq, src)
    print(f"{fault}: {faults} faults hit the window; {len(src.bad)} dead letters once each")
    assert faults >= 1, "no fault landed where it tests anything"


# --- 5: epochs: auto_evolve's flush that ends fenced ---------------------------------------------


def test_auto_evolve_new_field_while_a_zombie_is_frozen(pipeline_factory):
    p = pipeline_factory("evolvezombie")
    p.write_config(interval="3s", kafka={"max.poll.interval.ms": 60000}, schema={"auto_evolve": True})
    p.create_table(SMALL_DDL)
    create_topic(p, 4)
    produce_json(p, rows(0, 1999))
    a, b = p.start_loader("A"), p.start_loader("B")

    def split():
        ha, hb = assignment(a.log(), p.topic), assignment(b.log(), p.topic)
        if not (ha and hb and not ha & hb and ha | hb == {0, 1, 2, 3}):
            raise NotYet(f"A holds {sorted(ha)}, B holds {sorted(hb)}")
        return ha

    held = wait_until("A and B to share the partitions", split, timeout=60, alive=[a, b])
    p.wait_rows(2000, timeout=60, alive=[a, b])
    # A field the table does not have yet first appears while A is frozen: B takes A's partitions,
    # adds the column and commits them; A, resumed, fetches such records for partitions it still
    # believes it holds, and its auto_evolve flush ends fenced.
    a.stop()
    before = p.ledger() or {}
    next_id = 3400
    produce_json(p, [{"id": i, "string": "x", "region": f"r{i % 7}"} for i in range(2000, next_id)])
    wait_until("B to take A's partitions", lambda: held <= assignment(b.log(), p.topic) or None,
               timeout=60, alive=[b])
    wait_until("B to commit A's partitions",
               lambda: all((p.ledger() or {}).get(q, 0) > before.get(q, 0) for q in held) or None,
               timeout=60, interval=0.5, alive=[b])
    a.cont()
    p.wait_rows(next_id, timeout=120, alive=[a, b])
    wait_until("ledger at the end", lambda: p.ledger() == p.end_offsets(), timeout=60, alive=[a, b])
    a.sigterm_ok()
    b.sigterm_ok()
    assert_each_id_once(p.ids().to_pylist(), range(0, next_id))
    cols = [f.name for f in p.table().schema().fields]
    assert "region" in cols, cols
    print(f"A after resuming: {a.count('batch fenced')} fenced, {a.count('partitions revoked')} revocations")


# --- 6: back within seconds after a crash -----------------------------------------------------


def test_restart_after_sigkill_commits_within_seconds(pipeline_factory):
    p = pipeline_factory("restart")
    # Default group settings (45 s session timeout): only the commit interval is set.
    p.write_config(interval="1s")
    cfg = p.config.read_text()
    cfg = re.sub(r'"session.timeout.ms" = \d+\n|"heartbeat.interval.ms" = \d+\n', "", cfg)
    p.config.write_text(cfg)
    assert "session.timeout.ms" not in cfg
    p.create_table(STRICT_DDL)
    streaming = p.publish_in_background(30_000, 1, 4, rate=1000)
    rng = random.Random(7)
    times = []
    loader = p.start_loader("run-0")
    for i in range(6):
        t0 = time.monotonic()
        loader.wait_log("batch committed", timeout=60)
        times.append(time.monotonic() - t0)
        time.sleep(rng.uniform(0.5, 2.0))  # the random moment of the kill, not a wait for anything
        loader.sigkill()
        loader = p.start_loader(f"run-{i + 1}")
    t0 = time.monotonic()
    loader.wait_log("batch committed", timeout=60)
    times.append(time.monotonic() - t0)
    rest = streaming.join(timeout=120)
    p.wait_rows(len(rest.ids), timeout=120, alive=[loader])
    loader.sigterm_ok()
    assert_each_id_once(p.ids().to_pylist(), rest.ids)
    print("start-to-first-commit seconds: " + ", ".join(f"{t:.1f}" for t in times))
    assert max(times[1:]) < 15, f"a restarted loader waited too long for its first commit: {times}"
