"""Several pipelines in one `floe run` (issue 16 item 3): `[[pipeline]]` blocks, each its own
topics, table, consumer group, ledger and fence, sharing one process, one HTTP listener and one
shutdown. Checked from outside: pyiceberg counts every id in each table, the REST catalog of one
pipeline is taken down and brought back while both load, the process is SIGKILLed while both load.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from loader_harness import (
    REPO,
    CatalogSpec,
    FloeProcess,
    NotYet,
    Pipeline,
    assert_each_id_once,
    assert_rows_equal,
    child_env,
    create_topic,
    toml_str,
    unique,
    wait_until,
)

# Records sent to the healthy pipeline while the other one's catalog is out.
EXTRA = 1_500
ADDR = re.compile(r"http listener started: metrics at http://([0-9.]+:[0-9]+)/metrics")


def block(p: Pipeline, *, topics: str | None = None, extra: str = "") -> str:
    """A [[pipeline]] block for `p`: its group is the block's name, so the harness's ledger and
    group names hold."""
    lines = ["[[pipeline]]", f"name = {toml_str(p.group)}",
             topics or f"topics = [{toml_str(p.topic)}]", f"table = {toml_str(p.table_name)}"]
    if p.catalog_spec.kind == "rest":
        lines += ["[pipeline.catalog]", 'type = "rest"', f"uri = {toml_str(p.catalog_spec.rest_uri)}"]
    elif p.catalog_spec.kind == "postgres":
        lines += ["[pipeline.catalog]", f"uri = {toml_str(p.catalog_spec.pg_uri)}",
                  f"name = {toml_str(p.catalog_spec.name)}", f"warehouse = {toml_str(str(p.warehouse))}"]
    return "\n".join(lines) + "\n" + extra


def write_multi(path: Path, data_dir: Path, bootstrap: str, blocks: list[str], top: str = "") -> Path:
    text = "\n".join([
        f"data_dir = {toml_str(str(data_dir))}",
        top,
        "[catalog]",
        'name = "floe"',
        "[kafka]",
        f'"bootstrap.servers" = {toml_str(bootstrap)}',
        '"session.timeout.ms" = 6000',
        '"heartbeat.interval.ms" = 1000',
        "[commit]",
        'interval = "500ms"',
        "[maintenance]",
        "enabled = false",
        "",
        *blocks,
    ])
    path.write_text(text + "\n")
    return path


def sibling(first: Pipeline, root: Path, procs, prefix: str, catalog: CatalogSpec | None = None) -> Pipeline:
    """A second pipeline; on the SQLite catalog it shares `first`'s data dir (one process, one
    catalog file) and writes another table."""
    p = Pipeline(root, first.floe_bin, first.bootstrap, procs, catalog=catalog, prefix=prefix)
    if p.catalog_spec.kind == "sqlite":
        p.data_dir, p.warehouse = first.data_dir, first.warehouse
        p.table_name = "default.events_b"
        p.write_config()
    return p


def start(p: Pipeline, config: Path, name: str) -> FloeProcess:
    return p.start_loader(name, config=config)


def floe(floe_bin: str, config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([floe_bin, "--config", str(config), *args], capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL, env=child_env())


def get(addr: str, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{addr}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def address(loader: FloeProcess) -> str:
    def found():
        m = ADDR.search(loader.log())
        return m.group(1) if m else None
    return wait_until("the HTTP listener's address in the log", found, timeout=60, alive=[loader])


def snapshots(p: Pipeline) -> int:
    """The table's snapshot count; -1 while SQLite is locked by a committing loader (a poll)."""
    try:
        return len(p.table().metadata.snapshots)
    except Exception as e:  # noqa: BLE001 - a poll; the next one retries
        if "locked" in str(e) or "busy" in str(e):
            return -1
        raise


class RestServer:
    """A REST catalog of this test's own (scripts/rest-catalog.sh), which the test can freeze
    (SIGSTOP: it accepts connections and answers nothing) and thaw (SIGCONT)."""

    def __init__(self, root: Path) -> None:
        self.dir = root
        self.pid: int | None = None

    def _script(self, *args: str) -> str:
        r = subprocess.run([str(REPO / "scripts" / "rest-catalog.sh"), *args], capture_output=True, text=True,
                           timeout=120, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, f"rest-catalog.sh {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
        return r.stdout.strip()

    def start(self) -> None:
        self.uri = self._script("start", str(self.dir))
        self.pid = int((self.dir / "server.pid").read_text())

    def freeze(self) -> None:
        assert self.pid is not None
        os.kill(self.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        if self.pid is not None:
            os.kill(self.pid, signal.SIGCONT)

    def stop(self) -> None:
        self.thaw()
        self._script("stop", str(self.dir))


def test_one_catalog_down_the_other_table_keeps_committing(tmp_path, floe_bin, kafka_bootstrap, procs):
    rest = RestServer(tmp_path / "rest")
    rest.start()
    try:
        a = Pipeline(tmp_path / "a", floe_bin, kafka_bootstrap, procs, prefix="floe-multi-a")
        b = sibling(a, tmp_path / "b", procs, "floe-multi-b", catalog=CatalogSpec.rest(rest.uri))
        config = write_multi(tmp_path / "multi.toml", a.data_dir, kafka_bootstrap, [block(a), block(b)],
                             top='[http]\nlisten = "127.0.0.1:0"\n')
        for p, name in ((a, a.group), (b, b.group)):
            ddl = "CREATE TABLE events (id BIGINT, integer BIGINT, string VARCHAR, timestamp TIMESTAMP(6) WITH TIME ZONE)"
            ddl = ddl.replace("CREATE TABLE events ", f"CREATE TABLE {p.table_name} ", 1)
            r = floe(floe_bin, config, "--pipeline", name, "table", "create", ddl)
            assert r.returncode == 0, f"table create for {name}: {r.stdout}\n{r.stderr}"
        total = 3_000
        streams = [p.publish_in_background(total, 1, 2, rate=150) for p in (a, b)]
        loader = start(a, config, "multi")
        addr = address(loader)
        for p in (a, b):
            wait_until(f"rows in {p.table_name}", lambda p=p: p.committed_rows() > 0, timeout=60, alive=[loader])
        status = json.loads(get(addr, "/status.json")[1])
        assert [s["pipeline"] for s in status["pipelines"]] == [a.group, b.group], status
        assert [s["table"] for s in status["pipelines"]] == [a.table_name, b.table_name], status

        # B's catalog stops answering: B's commit hangs in its request; A goes on committing
        # (records keep coming for A during the outage, whatever the first stream's pace).
        rest.freeze()
        more = a.publish_in_background(EXTRA, total + 1, 2, rate=100)
        try:
            before = snapshots(a)
            outage = time.monotonic()
            wait_until("5 new snapshots in A's table while B's catalog does not answer",
                       lambda: snapshots(a) >= before + 5, timeout=60, alive=[loader])
            assert get(addr, f"/ready?pipeline={a.group}")[0] == 200, get(addr, f"/ready?pipeline={a.group}")
            assert get(addr, "/health")[0] == 200, get(addr, "/health")
            frozen = json.loads(get(addr, "/status.json")[1])
            assert [s["failed"] for s in frozen["pipelines"]] == [None, None], frozen
            time.sleep(max(0.0, 8 - (time.monotonic() - outage)))  # an outage of 8 s at least
            later = json.loads(get(addr, "/status.json")[1])
            # B is stuck in its request (its commits stand still) while A's go on.
            assert later["pipelines"][1]["commits"] == frozen["pipelines"][1]["commits"], (frozen, later)
            assert later["pipelines"][0]["commits"] > frozen["pipelines"][0]["commits"], (frozen, later)
            print(f"A committed {snapshots(a) - before} snapshots in {time.monotonic() - outage:.1f}s of B's outage")
        finally:
            rest.thaw()

        produced = [s.join(timeout=120) for s in streams]
        more.join(timeout=120)
        wanted = {a: total + EXTRA, b: total}
        for p in (a, b):
            p.wait_rows(wanted[p], timeout=120, alive=[loader])
        wait_until("/ready once B commits again", lambda: get(addr, "/ready")[0] == 200, timeout=60, alive=[loader])
        loader.sigterm_ok()
        for p, prod in zip((a, b), produced):
            assert_each_id_once(p.ids().to_pylist(), range(1, wanted[p] + 1))
            assert p.ledger() == p.end_offsets(), f"{p.group}: ledger {p.ledger()} vs ends {p.end_offsets()}"
            sample = dict(list(prod.records.items())[:50])
            got = {r["id"]: r for r in p.table().scan().to_arrow().to_pylist() if r["id"] in sample}
            for rid, rec in sample.items():
                assert got[rid]["integer"] == rec["integer"] and got[rid]["string"] == rec["string"], (rid, got[rid], rec)
    finally:
        rest.stop()


class PgServer:
    """A PostgreSQL server of this test's own (scripts/postgres.sh), stopped and started again on
    the same port: the catalog of one pipeline goes down and comes back."""

    def __init__(self) -> None:
        # Not under pytest's tmp_path: the server runs as user postgres, which must enter the dir.
        self.root = Path(tempfile.mkdtemp(prefix="floe-pg-", dir="/tmp"))
        self.root.chmod(0o755)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.uri = ""

    def _script(self, *args: str) -> str:
        r = subprocess.run([str(REPO / "scripts" / "postgres.sh"), *args], capture_output=True, text=True,
                           timeout=120, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, f"postgres.sh {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
        return r.stdout.strip()

    def start(self) -> None:
        self.uri = self._script("start", str(self.root / "pg"), str(self.port))

    def stop(self) -> None:
        self._script("stop", str(self.root / "pg"))

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def test_a_catalog_down_and_back_the_other_table_keeps_committing(tmp_path, floe_bin, kafka_bootstrap, procs):
    pg = PgServer()
    pg.start()
    try:
        a = Pipeline(tmp_path / "a", floe_bin, kafka_bootstrap, procs, prefix="floe-mpg-a")
        b = sibling(a, tmp_path / "b", procs, "floe-mpg-b", catalog=CatalogSpec("postgres", "floe", pg_uri=pg.uri))
        config = write_multi(tmp_path / "multi.toml", a.data_dir, kafka_bootstrap, [block(a), block(b)],
                             top='[http]\nlisten = "127.0.0.1:0"\n')
        a.create_table()
        b.create_table()
        total = 3_000
        streams = [p.publish_in_background(total, 1, 2, rate=150) for p in (a, b)]
        loader = start(a, config, "multi")
        addr = address(loader)
        for p in (a, b):
            wait_until(f"rows in {p.table_name} ({p.catalog_spec.kind})", lambda p=p: p.committed_rows() > 0,
                       timeout=60, alive=[loader])

        # B's catalog (PostgreSQL) goes down: B's commits fail and are retried; A goes on (records
        # keep coming for A during the outage, whatever the first stream's pace).
        pg.stop()
        more = a.publish_in_background(EXTRA, total + 1, 2, rate=100)
        outage = time.monotonic()
        before = snapshots(a)
        wait_until("5 new snapshots in A's table while B's catalog is down",
                   lambda: snapshots(a) >= before + 5, timeout=60, alive=[loader])
        b_retries = re.compile(rf"WARN pipeline{{name={re.escape(b.group)}}}: floe::\w+: transient failure; retrying")
        wait_until("B's loader to retry", lambda: b_retries.search(loader.log()), timeout=60, alive=[loader])
        assert get(addr, f"/ready?pipeline={a.group}")[0] == 200, get(addr, f"/ready?pipeline={a.group}")
        assert get(addr, "/health")[0] == 200, get(addr, "/health")
        time.sleep(max(0.0, 8 - (time.monotonic() - outage)))  # an outage of 8 s at least
        print(f"A committed {snapshots(a) - before} snapshots in {time.monotonic() - outage:.1f}s of B's outage")
        pg.start()
        b._catalog = None  # pyiceberg's pooled connections died with the server: connect again

        produced = [s.join(timeout=120) for s in streams]
        more.join(timeout=120)
        wanted = {a: total + EXTRA, b: total}
        for p in (a, b):
            p.wait_rows(wanted[p], timeout=120, alive=[loader])
        wait_until("/ready once B commits again", lambda: get(addr, "/ready")[0] == 200, timeout=60, alive=[loader])
        loader.sigterm_ok()
        assert not re.search(rf"WARN pipeline{{name={re.escape(a.group)}}}: floe::\w+: transient failure", loader.log())
        for p, prod in zip((a, b), produced):
            assert_each_id_once(p.ids().to_pylist(), range(1, wanted[p] + 1))
            assert p.ledger() == p.end_offsets(), f"{p.group}: ledger {p.ledger()} vs ends {p.end_offsets()}"
            assert_rows_equal(p.table(), dict(list(prod.records.items())[:50]))
    finally:
        pg.remove()


def test_sigkill_while_both_load_then_restart(tmp_path, floe_bin, kafka_bootstrap, procs):
    seed = int(os.environ.get("FLOE_TEST_SEED") or random.SystemRandom().randrange(2**32))
    print(f"seed {seed} (rerun with FLOE_TEST_SEED={seed})")
    rng = random.Random(seed)
    a = Pipeline(tmp_path / "a", floe_bin, kafka_bootstrap, procs, prefix="floe-mkill-a")
    b = sibling(a, tmp_path / "b", procs, "floe-mkill-b")
    config = write_multi(tmp_path / "multi.toml", a.data_dir, kafka_bootstrap, [block(a), block(b)])
    a.create_table()
    b.create_table()
    total = 1_200
    streams = [p.publish_in_background(total, 1, 3, rate=150) for p in (a, b)]
    kills = []
    for i in range(3):
        loader = start(a, config, f"killed-{i}")
        delay = rng.uniform(2.5, 4.5)
        time.sleep(delay)  # the random moment of the kill, not a synchronisation
        loader.assert_running(f"before SIGKILL {i}")
        loader.sigkill()
        kills.append((round(delay, 2), loader.count("batch committed"), a.committed_rows(), b.committed_rows()))
    print(f"kills (after s, commits, rows A, rows B): {kills}")
    assert any(k[1] > 0 for k in kills), f"no killed process had committed: {kills}"
    produced = [s.join(timeout=120) for s in streams]
    final = start(a, config, "final")
    for p in (a, b):
        p.wait_rows(total, timeout=120, alive=[final])
    final.sigterm_ok()
    for p, prod in zip((a, b), produced):
        assert_each_id_once(p.ids().to_pylist(), range(1, total + 1))
        assert_rows_equal(p.table(), dict(list(prod.records.items())[:100]))
        assert p.ledger() == p.end_offsets(), f"{p.group}: ledger {p.ledger()} vs ends {p.end_offsets()}"


def test_topic_pattern_reads_matching_topics_also_created_later(tmp_path, floe_bin, kafka_bootstrap, procs):
    p = Pipeline(tmp_path / "rx", floe_bin, kafka_bootstrap, procs, prefix="floe-rx")
    other = sibling(p, tmp_path / "other", procs, "floe-rxo")
    base = unique("floe-rx")
    first, later, unmatched = f"{base}.1", f"{base}.22", f"{base}.x"
    pattern = f"{base}[.][0-9]+"
    # `start = "latest"`: the first topic starts at its end when the pipeline first starts; a topic
    # created while it runs starts at its beginning (nothing in it may be skipped).
    config = write_multi(tmp_path / "multi.toml", p.data_dir, kafka_bootstrap, [
        block(p, topics=f"topic_pattern = {toml_str(pattern)}",
              extra='[pipeline.source]\nstart = "latest"\npartition_discovery = "1s"\n'),
        block(other),
    ])
    p.create_table()
    other.create_table()
    for topic, first_id in ((first, 1), (unmatched, 1001)):
        p.topic = topic
        p.publish(100, first_id=first_id, partitions=1)
    loader = start(p, config, "rx")
    loader.wait_log(f"partition assigned partition={first}/0", timeout=60)

    def ledger_topics():
        raw = p.table().properties.get("floe.ledger." + p.group)
        if raw is None:
            raise NotYet("no ledger yet")
        return json.loads(raw)

    wait_until("the ledger to pin the first topic's start", lambda: first in ledger_topics(), timeout=60, alive=[loader])
    assert ledger_topics()[first] == {"0": 100}, ledger_topics()
    p.topic = first
    p.publish(100, first_id=101, partitions=1)
    p.topic = later
    p.publish(100, first_id=201, partitions=2)
    other.publish(50, first_id=1, partitions=1)
    p.wait_rows(200, timeout=90, alive=[loader])
    other.wait_rows(50, timeout=60, alive=[loader])
    time.sleep(2)  # the unmatched topic's records would have arrived by now
    loader.sigterm_ok()
    assert_each_id_once(p.ids().to_pylist(), range(101, 301))
    ledger = ledger_topics()
    assert set(ledger) == {first, later}, f"the ledger reads {sorted(ledger)}: {unmatched} must not match {pattern}"
    assert "new topic matching source.topic_pattern" in loader.log(), loader.tail()
    assert_each_id_once(other.ids().to_pylist(), range(1, 51))


def test_a_failed_pipeline_does_not_stop_the_others_unless_configured(tmp_path, floe_bin, kafka_bootstrap, procs):
    a = Pipeline(tmp_path / "a", floe_bin, kafka_bootstrap, procs, prefix="floe-mfail-a")
    b = sibling(a, tmp_path / "b", procs, "floe-mfail-b")
    a.create_table()
    b.create_table()
    # A has no dead-letter destination: its first bad record stops it, permanently.
    a.publish(40, first_id=1, partitions=1, bad_every=20)
    config = write_multi(tmp_path / "multi.toml", a.data_dir, kafka_bootstrap, [block(a), block(b)],
                         top='[http]\nlisten = "127.0.0.1:0"\n')
    loader = start(a, config, "continue")
    addr = address(loader)
    loader.wait_log(f'pipeline "{a.group}" stopped on an error; the other pipelines go on', timeout=60)
    assert a.committed_rows() == 19, "everything before the bad record is committed"
    b.publish(30, first_id=1, partitions=1)
    b.wait_rows(30, timeout=60, alive=[loader])
    status, body = get(addr, "/ready")
    assert status == 503 and a.group in body and "stopped on an error" in body, (status, body)
    status, body = get(addr, f"/ready?pipeline={b.group}")
    assert status == 200, (status, body)
    one = json.loads(get(addr, f"/status.json?pipeline={a.group}")[1])
    assert one["failed"] and "offset 19" in one["failed"], one
    st = floe(floe_bin, config, "--pipeline", a.group, "status", "--json")
    assert st.returncode == 1, f"floe status of a failed pipeline exits 1: {st.returncode}\n{st.stdout}\n{st.stderr}"
    report = json.loads(st.stdout)
    mine = [q for t in report["tables"] for q in t["pipelines"] if q["name"] == a.group]
    assert mine and mine[0]["failed"] and "offset 19" in mine[0]["failed"]["error"], mine
    rc, _ = loader.sigterm()
    assert rc == 1, f"a process with a failed pipeline exits non-zero, got {rc}\n{loader.tail()}"
    assert "1 of 2 pipelines stopped on an error" in loader.log(), loader.tail()

    # on_pipeline_failure = "stop": the same failure stops B too (after committing what it had).
    config = write_multi(tmp_path / "stop.toml", a.data_dir, kafka_bootstrap, [block(a), block(b)],
                         top='on_pipeline_failure = "stop"\n')
    loader = start(a, config, "stop")
    wait_until("the process to stop", lambda: not loader.running(), timeout=60)
    assert loader.popen.returncode == 1, loader.tail()
    assert 'stopping every pipeline (on_pipeline_failure = "stop")' in loader.log(), loader.tail()
    assert_each_id_once(b.ids().to_pylist(), range(1, 31))


def test_pipeline_selection_and_validation_errors(tmp_path, floe_bin, kafka_bootstrap, procs):
    a = Pipeline(tmp_path / "a", floe_bin, kafka_bootstrap, procs, prefix="floe-msel-a")
    b = sibling(a, tmp_path / "b", procs, "floe-msel-b")
    config = write_multi(tmp_path / "multi.toml", a.data_dir, kafka_bootstrap, [block(a), block(b)])
    for args in (("status",), ("dead-letters", "list"), ("table", "describe"),
                 ("skip", "--topic", "t", "--partition", "0", "--offset", "1")):
        r = floe(floe_bin, config, *args)
        assert r.returncode == 2, f"{args}: {r.returncode}\n{r.stderr}"
        assert f'2 pipelines ("{a.group}", "{b.group}"); choose one with --pipeline NAME' in r.stderr, r.stderr
    r = floe(floe_bin, config, "--pipeline", "nope", "status")
    assert r.returncode == 2 and '--pipeline "nope"' in r.stderr and a.group in r.stderr, r.stderr
    # Catalog-only commands need no --pipeline; --pipeline picks the block's table.
    a.create_table()
    assert floe(floe_bin, config, "table", "list").stdout.split() == ["default.events"]
    r = floe(floe_bin, config, "--pipeline", a.group, "table", "describe")
    assert r.returncode == 0 and "default.events" in r.stdout, r.stderr
    r = floe(floe_bin, config, "--pipeline", b.group, "table", "describe")
    assert r.returncode == 1 and "events_b" in r.stderr, r.stderr
    # Every check at start names the block.
    for blocks, want in (
        ([block(a), block(a)], f'two [[pipeline]] blocks are named "{a.group}"'),
        ([block(a), block(b).replace(b.table_name, a.table_name)],
         f'[[pipeline]] "{a.group}" and "{b.group}" both write table {a.table_name}'),
        ([block(a, extra='[pipeline.kafka]\n"group.id" = "g"\n'),
          block(b, topics=f"topics = [{toml_str(a.topic)}]", extra='[pipeline.kafka]\n"group.id" = "g"\n')],
         f'both read topic "{a.topic}" in consumer group "g"'),
        ([block(a, extra="colour = 1\n")], f'[[pipeline]] "{a.group}": unknown key `colour`'),
        ([block(a, extra='[pipeline.decode]\nunest = "/data"\n')], "unknown field `unest`"),
    ):
        bad = write_multi(tmp_path / "bad.toml", a.data_dir, kafka_bootstrap, blocks)
        r = floe(floe_bin, bad, "run")
        assert r.returncode == 2, f"{want}: exit {r.returncode}\n{r.stderr}"
        assert want in r.stderr, f"expected {want!r} in:\n{r.stderr}"
