"""Many floe processes in one consumer group (issue 16, item 4): processes join and die while a
producer publishes at a steady rate, partitions move between them by cooperative rebalancing, and
the table (read back by pyiceberg) holds every id exactly once.

The processes share one table on the PostgreSQL catalog, as a real deployment would; the catalog's
conditional swap is their only coordination (DESIGN.md §4, §7).
"""

from __future__ import annotations

import re
import time
import uuid

import pytest

from conftest import required_env
from loader_harness import (
    CatalogSpec,
    FloeProcess,
    NotYet,
    Pipeline,
    assert_each_id_once,
    assert_snapshot_ranges_tile,
    assignment,
    wait_until,
)
from test_loader import assert_ledger_matches_topic

PARTITIONS = 6
BACKLOG = 1_500  # published before the first loader starts (creates the topic)
RATE = 500  # records/s, published during the whole scenario
STREAMED = 16_000  # ~32 s at RATE: joins, the kill and the take-over all happen under load

ASSIGNED = re.compile(r"partition assigned partition=(\S+)/(\d+)")
REVOKED = re.compile(r"partitions revoked partitions=\[([^\]]*)\]")
COMMITTED = re.compile(r"batch committed rows=(\d+)")


def events(log: str, topic: str) -> list[tuple[str, frozenset[int] | int]]:
    """A loader's rebalance and commit events in log order: ("assigned", {p}), ("revoked", {ps})
    and ("committed", rows)."""
    out: list[tuple[str, frozenset[int] | int]] = []
    for line in log.splitlines():
        if m := ASSIGNED.search(line):
            if m.group(1) == topic:
                out.append(("assigned", frozenset({int(m.group(2))})))
        elif m := REVOKED.search(line):
            ps = frozenset(int(p) for t, p in re.findall(r'"([^"]+)/(\d+)"', m.group(1)) if t == topic)
            if ps:
                out.append(("revoked", ps))
        elif m := COMMITTED.search(line):
            out.append(("committed", int(m.group(1))))
    return out


def moved_only(proc: FloeProcess, since: int, topic: str, held_before: set[int], moved_to: set[int]) -> set[int]:
    """Checks, from `proc`'s log after byte `since`, that the rebalance took from it only partitions
    that went to the new member (`moved_to`), that it was never given back the ones it kept (an
    eager rebalance revokes everything and assigns the kept ones again), and that it committed rows
    after the revocation while holding only the kept ones. Returns the partitions it kept."""
    evs = events(proc.log()[since:], topic)
    revoked = set().union(*(ps for kind, ps in evs if kind == "revoked"))
    reassigned = set().union(*(ps for kind, ps in evs if kind == "assigned"))
    kept = held_before - revoked
    assert revoked, f"{proc.name} held {sorted(held_before)} and revoked nothing when a member joined\n{proc.tail(30)}"
    assert revoked <= moved_to, (
        f"{proc.name} had {sorted(revoked)} revoked, but only {sorted(moved_to)} went to the new member: "
        f"a rebalance revoked partitions that did not move\n{proc.tail(30)}")
    assert kept, f"{proc.name} had all of {sorted(held_before)} revoked: the rebalance was not incremental\n{proc.tail(30)}"
    assert not reassigned, (
        f"{proc.name} was assigned {sorted(reassigned)} again after the revocation (it kept {sorted(kept)}): "
        f"an eager rebalance, not a cooperative one\n{proc.tail(30)}")
    last_revoke = max(i for i, (kind, _) in enumerate(evs) if kind == "revoked")
    after = [rows for kind, rows in evs[last_revoke + 1:] if kind == "committed"]
    assert any(rows > 0 for rows in after), (
        f"{proc.name} committed no rows after its revocation, holding {sorted(kept)} (commits after it: {after})\n"
        f"{proc.tail(30)}")
    return kept


def test_three_processes_join_and_sigkill_under_load(tmp_path, floe_bin, kafka_bootstrap, procs):
    pg = required_env("FLOE_TEST_POSTGRES")
    p = Pipeline(tmp_path / "group", floe_bin, kafka_bootstrap, procs,
                 catalog=CatalogSpec("postgres", f"floe_{uuid.uuid4().hex[:12]}", pg), prefix="floe-group")
    p.write_config(interval="1s", kafka={"partition.assignment.strategy": "cooperative-sticky"})
    p.create_table()
    t0 = time.monotonic()
    first = p.publish(BACKLOG, 1, PARTITIONS)
    streaming = p.publish_in_background(STREAMED, BACKLOG + 1, PARTITIONS, rate=RATE)
    everything = set(range(PARTITIONS))

    a, b = p.start_loader("A"), p.start_loader("B")

    def shared(*loaders: FloeProcess, sizes: tuple[int, ...]) -> list[set[int]]:
        held = [assignment(x.log(), p.topic) for x in loaders]
        disjoint = sum(map(len, held)) == len(set().union(*held))
        if not (disjoint and set().union(*held) == everything and tuple(map(len, held)) == sizes):
            raise NotYet(", ".join(f"{x.name} holds {sorted(h)}" for x, h in zip(loaders, held)))
        return held

    held_a, held_b = wait_until("A and B to share the partitions 3 and 3",
                                lambda: shared(a, b, sizes=(3, 3)), timeout=60, alive=[a, b])
    for x in (a, b):
        x.wait_log("batch committed", timeout=30)
    print(f"{time.monotonic() - t0:.1f}s: A holds {sorted(held_a)}, B holds {sorted(held_b)}")

    # C joins under load: cooperative-sticky moves one partition from each of A and B to C.
    since_a, since_b = len(a.log()), len(b.log())
    c = p.start_loader("C")
    _, _, joined_c = wait_until("A, B and C to hold 2 partitions each",
                              lambda: shared(a, b, c, sizes=(2, 2, 2)), timeout=60, alive=[a, b, c])
    print(f"{time.monotonic() - t0:.1f}s: C joined and holds {sorted(joined_c)}")
    # Each of A and B commits at least once more on what it kept, then the checks read the logs.
    commits_a, commits_b = a.count("batch committed"), b.count("batch committed")
    a.wait_log("batch committed", timeout=30, times=commits_a + 1)
    b.wait_log("batch committed", timeout=30, times=commits_b + 1)
    kept_a = moved_only(a, since_a, p.topic, held_a, joined_c)
    kept_b = moved_only(b, since_b, p.topic, held_b, joined_c)
    c.wait_log("batch committed", timeout=30)

    # B dies mid-interval, holding uncommitted records of its two partitions.
    commits_b = b.count("batch committed")
    b.wait_log("batch committed", timeout=30, times=commits_b + 1)
    time.sleep(0.5)  # the moment of the kill: half-way to B's next commit
    b.sigkill()
    killed_at = time.monotonic()
    assert not streaming.done(), "the producer finished before B was killed: the kill was not under load"
    since_a, since_c = len(a.log()), len(c.log())
    orphaned = kept_b
    print(f"{killed_at - t0:.1f}s: B SIGKILLed holding {sorted(orphaned)}; {p.committed_rows()} rows committed")

    # B's session times out (6 s); A and C take its partitions without giving up their own.
    held_a, held_c = wait_until("A and C to take over B's partitions",
                                lambda: shared(a, c, sizes=(3, 3)), timeout=60, alive=[a, c])
    print(f"{time.monotonic() - t0:.1f}s: A holds {sorted(held_a)}, C holds {sorted(held_c)} "
          f"({time.monotonic() - killed_at:.1f}s after the kill)")
    assert not streaming.done(), "the producer finished before B's partitions were taken over: not under load"
    for x, since, before in ((a, since_a, kept_a), (c, since_c, joined_c)):
        evs = events(x.log()[since:], p.topic)
        revoked = set().union(*(ps for kind, ps in evs if kind == "revoked"))
        gained = set().union(*(ps for kind, ps in evs if kind == "assigned"))
        assert not revoked, f"{x.name} had {sorted(revoked)} revoked when B died; only B's partitions move\n{x.tail(30)}"
        assert gained <= orphaned, f"{x.name} was assigned {sorted(gained)}; only B's {sorted(orphaned)} moved\n{x.tail(30)}"
        assert before <= assignment(x.log(), p.topic), f"{x.name} lost some of {sorted(before)}\n{x.tail(30)}"

    rest = streaming.join(timeout=90)
    total = len(first.ids) + len(rest.ids)
    p.wait_rows(total, timeout=90, alive=[a, c])
    a.sigterm_ok()
    c.sigterm_ok()
    print(f"{time.monotonic() - t0:.1f}s: all {total} rows; "
          f"fenced batches: A {a.count('batch fenced')}, B {b.count('batch fenced')}, C {c.count('batch fenced')}")

    assert_each_id_once(p.ids().to_pylist(), range(1, total + 1))
    ends = assert_ledger_matches_topic(p, total)
    assert len(ends) == PARTITIONS
    assert_snapshot_ranges_tile(p.table(), p.topic, ends)
