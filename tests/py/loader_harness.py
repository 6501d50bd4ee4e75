"""Helpers for the loader's end-to-end tests (test_loader.py): a pipeline (config file, topic,
consumer group, catalog), the floe processes that produce and load it, and an independent reader
(pyiceberg) that checks what reached the table.

Every wait here is a polling loop with a deadline that fails with what it last saw. Every process
started goes into a `Processes` registry whose owner (a fixture) SIGKILLs whatever is still running
when the test ends, stopped (SIGSTOP) processes included.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Iterable

import pytest
from pyiceberg.catalog.sql import SqlCatalog

# The seed table plus an id column.
EVENTS_DDL = (
    "CREATE TABLE events (id BIGINT, bool BOOLEAN, floating DOUBLE, integer BIGINT, string VARCHAR, "
    "bools ARRAY(BOOLEAN), floatings ARRAY(DOUBLE), integers ARRAY(BIGINT), strings ARRAY(VARCHAR), "
    "string_map MAP(VARCHAR, VARCHAR), nested ROW(key VARCHAR, value BIGINT), "
    "timestamp TIMESTAMP(6) WITH TIME ZONE) WITH (partitioning = ARRAY['day(timestamp)'])"
)
EVENTS_TABLE = "default.events"
LEDGER_PREFIX = "floe.ledger."
SUMMARY_OFFSETS = "floe.offsets"

ANSI = re.compile(r"\x1b\[[0-9;]*m")
REPO = Path(os.environ.get("FLOE_REPO") or Path(__file__).resolve().parents[2])
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    return toml_str(str(v))


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["NO_COLOR"] = "1"  # plain log lines, easy to match
    env.pop("FLOE_CONFIG", None)
    env.pop("FLOE_LOG", None)
    return env


class NotYet(Exception):
    """Raised by a polled check to say "not yet", with what it saw (shown if the wait times out)."""


def wait_until(what: str, check: Callable[[], object], timeout: float, interval: float = 0.25,
               alive: Iterable["FloeProcess"] = ()) -> object:
    """Polls `check` until it returns something truthy; fails after `timeout` seconds with what it
    last returned (or the message of the last `NotYet` it raised). A process in `alive` that exits
    meanwhile fails the wait at once (with its log)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        for p in alive:
            p.assert_running(f"while waiting for {what}")
        try:
            last = check()
        except NotYet as e:
            last = str(e)
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            tails = "".join("\n" + p.tail(15) for p in alive)
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}; last seen: {last!r}{tails}", pytrace=False)
        time.sleep(interval)


# --- processes --------------------------------------------------------------------------------


class Processes:
    """Every child process a test starts; `kill_all` is the fixture's safety net."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: list[subprocess.Popen] = []

    def add(self, p: subprocess.Popen) -> subprocess.Popen:
        with self._lock:
            self._procs.append(p)
        return p

    def kill_all(self) -> list[str]:
        leftovers = []
        with self._lock:
            procs = list(self._procs)
        for p in procs:
            if p.poll() is None:
                leftovers.append(" ".join(map(str, p.args[:4])) + " ...")
                try:
                    os.kill(p.pid, signal.SIGCONT)
                    p.kill()
                except ProcessLookupError:
                    pass
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    leftovers.append(f"pid {p.pid} did not die within 30s of SIGKILL")
        return leftovers


class FloeProcess:
    """A running `floe run`, its stderr/stdout going to files."""

    def __init__(self, name: str, popen: subprocess.Popen, log_path: Path) -> None:
        self.name = name
        self.popen = popen
        self.log_path = log_path
        self.started = time.monotonic()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        try:
            return ANSI.sub("", self.log_path.read_text(errors="replace"))
        except FileNotFoundError:
            return ""

    def tail(self, n: int = 40) -> str:
        lines = self.log().splitlines()
        return f"--- last {min(n, len(lines))} log lines of {self.name} ({self.log_path}) ---\n" + "\n".join(lines[-n:])

    def count(self, needle: str) -> int:
        return self.log().count(needle)

    def running(self) -> bool:
        return self.popen.poll() is None

    def assert_running(self, context: str = "") -> None:
        rc = self.popen.poll()
        if rc is not None:
            pytest.fail(f"{self.name} exited on its own with code {rc} {context}\n{self.tail()}", pytrace=False)

    def wait_log(self, needle: str, timeout: float, times: int = 1) -> None:
        wait_until(f"{times}x {needle!r} in the log of {self.name}", lambda: self.count(needle) >= times,
                   timeout, alive=[self])

    def sigkill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        self.popen.kill()
        try:
            self.popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.name} (pid {self.pid}) did not die within 30s of SIGKILL", pytrace=False)

    def stop(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def cont(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def sigterm(self, timeout: float = 30) -> tuple[int, float]:
        """SIGTERM, then wait for the exit. Returns (exit code, seconds it took)."""
        t0 = time.monotonic()
        self.popen.send_signal(signal.SIGTERM)
        try:
            rc = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.name} did not exit within {timeout}s of SIGTERM\n{self.tail()}", pytrace=False)
        return rc, time.monotonic() - t0

    def sigterm_ok(self, timeout: float = 30) -> float:
        rc, took = self.sigterm(timeout)
        assert rc == 0, f"{self.name} should exit 0 after SIGTERM, got {rc}\n{self.tail()}"
        return took


# --- what a running loader is doing, seen from outside ------------------------------------------

ASSIGNED = re.compile(r"partition assigned partition=(\S+)/(\d+)")
REVOKED = re.compile(r"partitions revoked partitions=\[([^\]]*)\]")


def assignment(log: str, topic: str) -> set[int]:
    """The partitions a loader holds now, replayed from its "partition assigned" and
    "partitions revoked" log lines."""
    held: set[int] = set()
    for line in log.splitlines():
        if m := ASSIGNED.search(line):
            if m.group(1) == topic:
                held.add(int(m.group(2)))
        elif m := REVOKED.search(line):
            for tp in re.findall(r'"([^"]+)/(\d+)"', m.group(1)):
                if tp[0] == topic:
                    held.discard(int(tp[1]))
    return held


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def wait_idle(proc: "FloeProcess", timeout: float, window: float = 0.5, quiet_windows: int = 3,
              max_ticks: int = 2) -> None:
    """Waits until the process has used at most `max_ticks` of CPU in each of `quiet_windows`
    consecutive windows: it has nothing left to work on."""
    state = {"quiet": 0, "last": cpu_ticks(proc.pid), "deltas": []}

    def check():
        now = cpu_ticks(proc.pid)
        delta = now - state["last"]
        state["last"] = now
        state["deltas"] = (state["deltas"] + [delta])[-8:]
        state["quiet"] = state["quiet"] + 1 if delta <= max_ticks else 0
        if state["quiet"] < quiet_windows:
            raise NotYet(f"CPU ticks per {window}s window: {state['deltas']}")
        return True

    wait_until(f"{proc.name} to go idle", check, timeout, interval=window, alive=[proc])


def wait_fetched(proc: "FloeProcess", topic: str, ends: dict[int, int], timeout: float) -> None:
    """Waits until the loader's Kafka client has read every partition to its end offset. Needs the
    librdkafka property `debug = "fetch"` and `--log info,librdkafka=debug`: librdkafka then logs
    "<topic> [<p>]: Fetch failed at offset <end> ...: _PARTITION_EOF" when it reaches the end."""

    def check():
        log = proc.log()
        at_end = {p for p, e in ends.items()
                  if re.search(rf"{re.escape(topic)} \[{p}\]: Fetch failed at offset {e} .*_PARTITION_EOF", log)}
        if at_end != set(ends):
            raise NotYet(f"partitions read to the end: {sorted(at_end)} of {sorted(ends)}")
        return True

    wait_until(f"{proc.name} to fetch every record of {topic}", check, timeout, alive=[proc])


# --- Kafka ------------------------------------------------------------------------------------


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """The topic's end offsets (next offset per partition), from Kafka's own GetOffsetShell."""
    cmd = [str(REPO / "scripts" / "kafka.sh"), "run", "org.apache.kafka.tools.GetOffsetShell",
           "--bootstrap-server", bootstrap, "--topic", topic, "--time", "-1"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, f"GetOffsetShell failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    out: dict[int, int] = {}
    for line in p.stdout.splitlines():
        m = re.fullmatch(rf"{re.escape(topic)}:(\d+):(\d+)", line.strip())
        if m:
            out[int(m.group(1))] = int(m.group(2))
    assert out, f"GetOffsetShell printed no offsets for {topic}:\n{p.stdout}\n{p.stderr}"
    return out


def create_topic(bootstrap: str, topic: str, partitions: int, timeout: float = 60) -> None:
    """Creates a topic with Kafka's admin API, retrying while a deletion of the same name is still
    running; fails with the broker's last answer."""
    from confluent_kafka.admin import AdminClient, NewTopic

    def attempt():
        admin = AdminClient({"bootstrap.servers": bootstrap})
        f = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])[topic]
        try:
            f.result(timeout=30)
        except Exception as e:  # noqa: BLE001 - the broker's answer, shown if it never succeeds
            raise NotYet(str(e))
        return True

    wait_until(f"topic {topic} created", attempt, timeout=timeout, interval=1)


def produce_json(bootstrap: str, topic: str, records: list[dict], partition: int | None = None) -> None:
    """Sends records as JSON (key = their id) with an idempotent confluent-kafka producer, to one
    partition or spread by key; fails unless every one is acknowledged."""
    from confluent_kafka import Producer

    errors = []
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    kw = {} if partition is None else {"partition": partition}
    for rec in records:
        producer.produce(topic, key=str(rec["id"]).encode(), value=json.dumps(rec).encode(),
                         on_delivery=lambda err, msg: errors.append(err) if err else None, **kw)
    left = producer.flush(60)
    assert left == 0 and not errors, f"{left} records not acknowledged, errors: {errors}"


@dataclass
class KafkaRecord:
    """One record as a Kafka client reads it: coordinates, raw key/value, headers in order."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]
    timestamp: tuple[int, int]  # (confluent_kafka TIMESTAMP_* type, milliseconds)

    def header(self, name: str) -> bytes | None:
        """The value of the one header called `name`; fails if there are several, None if absent."""
        values = [v for k, v in self.headers if k == name]
        assert len(values) <= 1, f"{self.topic}/{self.partition}:{self.offset} has header {name!r} {len(values)} times"
        return values[0] if values else None

    def header_str(self, name: str) -> str | None:
        v = self.header(name)
        return None if v is None else v.decode("utf-8")


def read_topic(bootstrap: str, topic: str, timeout: float = 60) -> list[KafkaRecord]:
    """Every record of the topic up to its end offsets when called (confluent-kafka, independent of
    floe), ordered by partition and offset. A topic that does not exist holds nothing."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": unique("floe-test-reader"),
        "enable.auto.commit": False,
        "enable.partition.eof": False,
        "allow.auto.create.topics": False,
    })
    try:
        md = consumer.list_topics(topic, timeout=15).topics.get(topic)
        if md is None or md.error is not None or not md.partitions:
            return []
        ends: dict[int, int] = {}
        assign = []
        for p in sorted(md.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=15)
            if high > low:
                ends[p] = high
                assign.append(TopicPartition(topic, p, low))
        if not assign:
            return []
        consumer.assign(assign)
        out: list[KafkaRecord] = []
        at = {tp.partition: tp.offset for tp in assign}
        deadline = time.monotonic() + timeout
        while any(at[p] < e for p, e in ends.items()):
            if time.monotonic() > deadline:
                pytest.fail(f"timed out reading {topic}: at {at}, end offsets {ends}", pytrace=False)
            m = consumer.poll(0.5)
            if m is None:
                continue
            if m.error():
                raise KafkaException(m.error())
            p, o = m.partition(), m.offset()
            at[p] = o + 1
            if o >= ends[p]:
                continue
            out.append(KafkaRecord(topic, p, o, m.key(), m.value(), list(m.headers() or []), m.timestamp()))
        return sorted(out, key=lambda r: (r.partition, r.offset))
    finally:
        consumer.close()


@dataclass
class Produced:
    """What one publish-sample run sent: every id in order, the full records for kept ids, and the
    ids of the malformed records (`--bad-every`), which are not JSON records to keep."""

    ids: list[int] = field(default_factory=list)
    records: dict[int, dict] = field(default_factory=dict)
    bad: list[int] = field(default_factory=list)


class Publisher:
    """`floe publish-sample --print`, read line by line (in a thread when started in background)."""

    def __init__(self, pipeline: "Pipeline", count: int, first_id: int, partitions: int,
                 rate: float | None = None, spread: str | None = None,
                 keep: Callable[[int], bool] = lambda _id: True, bad_every: int | None = None,
                 shape: str = "seed") -> None:
        self.pipeline = pipeline
        self.shape = shape
        self.count = count
        self.first_id = first_id
        self.args = ["publish-sample", "--topic", pipeline.topic, "--count", str(count),
                     "--first-id", str(first_id), "--partitions", str(partitions), "--print"]
        if rate is not None:
            self.args += ["--rate", str(rate)]
        if spread is not None:
            self.args += ["--spread", spread]
        if bad_every is not None:
            self.args += ["--bad-every", str(bad_every)]
        if shape != "seed":
            self.args += ["--shape", shape]
        self.bad_every = bad_every
        self.keep = keep
        self.result = Produced()
        self.error: str | None = None
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        p = self.pipeline
        cmd = [p.floe_bin, "--config", str(p.config), *self.args]
        err_path = p.dir / f"publish-{self.first_id}.err"
        try:
            with open(err_path, "w") as err:
                proc = p.procs.add(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True,
                                                    stdin=subprocess.DEVNULL, env=p.env()))
                assert proc.stdout is not None
                for line in proc.stdout:
                    i = len(self.result.ids)
                    if self.bad_every and (i + 1) % self.bad_every == 0:
                        # Record i is malformed (printed lossily, maybe not JSON): only its id counts.
                        self.result.ids.append(self.first_id + i)
                        self.result.bad.append(self.first_id + i)
                        continue
                    rec = json.loads(line)
                    # A CloudEvents envelope's own id is a string; the sample's id is in its data.
                    rid = rec["data"]["id"] if self.shape == "cloudevents" else rec["id"]
                    self.result.ids.append(rid)
                    if self.keep(rid):
                        self.result.records[rid] = rec
                rc = proc.wait(timeout=120)
            if rc != 0:
                self.error = f"publish-sample exited {rc}: {err_path.read_text()}"
            elif len(self.result.ids) != self.count:
                self.error = f"publish-sample printed {len(self.result.ids)} records, expected {self.count}"
        except Exception as e:  # reported by join()
            self.error = f"publish-sample failed: {e!r}"

    def run(self) -> Produced:
        self._run()
        self._check()
        return self.result

    def start(self) -> "Publisher":
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"publish-{self.first_id}")
        self._thread.start()
        return self

    def done(self) -> bool:
        return self._thread is not None and not self._thread.is_alive()

    def join(self, timeout: float) -> Produced:
        assert self._thread is not None
        wait_until(f"publish-sample of ids {self.first_id}.. to finish", self.done, timeout)
        self._check()
        return self.result

    def _check(self) -> None:
        if self.error:
            pytest.fail(self.error, pytrace=False)
        want = list(range(self.first_id, self.first_id + self.count))
        assert self.result.ids == want, "publish-sample did not print the ids it was asked for"


# --- the pipeline -----------------------------------------------------------------------------


@dataclass
class CatalogSpec:
    kind: str  # "sqlite" | "postgres" | "rest" | "glue"
    name: str
    pg_uri: str | None = None  # postgresql://... for kind "postgres"
    rest_uri: str | None = None  # http://... for kind "rest" (FLOE_TEST_REST)
    # REST: more [catalog] keys (credential, token, oauth2_server_uri, scope) and catalog.headers.
    rest_options: dict[str, str] = field(default_factory=dict)
    rest_headers: dict[str, str] = field(default_factory=dict)

    @staticmethod
    def rest(uri: str, headers: dict[str, str] | None = None, **options: str) -> "CatalogSpec":
        return CatalogSpec("rest", "floe", rest_uri=uri, rest_options=options, rest_headers=headers or {})

    @staticmethod
    def glue() -> "CatalogSpec":
        """AWS Glue on the test's moto (FLOE_TEST_AWS): the Pipeline needs `aws` and an s3:// warehouse."""
        return CatalogSpec("glue", "floe")


class Pipeline:
    """One topic, one consumer group (= pipeline), one table, in a fresh data dir."""

    def __init__(self, root: Path, floe_bin: str, bootstrap: str, procs: Processes,
                 catalog: CatalogSpec | None = None, prefix: str = "floe", aws=None,
                 warehouse: str | None = None) -> None:
        self.dir = root
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = root / "data"
        self.data_dir.mkdir(exist_ok=True)
        self.warehouse = self.data_dir / "warehouse"
        self.floe_bin = floe_bin
        self.bootstrap = bootstrap
        self.procs = procs
        self.topic = unique(f"{prefix}-t")
        self.group = unique(f"{prefix}-g")
        self.catalog_spec = catalog or CatalogSpec("sqlite", "floe")
        # One REST catalog (one moto for Glue) serves the whole test run: each pipeline's table gets
        # its own namespace (Glue database).
        self.table_name = (f"{self.group.replace('-', '_')}.events" if self.catalog_spec.kind in ("rest", "glue")
                           else EVENTS_TABLE)
        if self.catalog_spec.kind == "glue":
            assert aws is not None and warehouse and warehouse.startswith("s3://"), "a Glue pipeline needs aws and an s3:// warehouse"
        # Object storage: `aws` (conftest.AwsEnv) and a warehouse URI such as s3://bucket/w.
        self.aws = aws
        self.warehouse_uri = warehouse
        self.extra_toml = ""
        self.config = root / "floe.toml"
        self._catalog = None
        self._loaders = 0
        self.write_config()

    # config and table

    def write_config(self, interval: str = "1s", kafka: dict[str, object] | None = None,
                     bootstrap: str | None = None, commit: dict[str, object] | None = None,
                     dead_letter: dict[str, object] | None = None, source: dict[str, object] | None = None,
                     schema: dict[str, object] | None = None, extra: str = "") -> None:
        """Writes the pipeline's config file; `extra` is TOML appended as it is (`[decode]`, `[http]`, `[[checks]]`...)."""
        c = self.catalog_spec
        lines = [f"data_dir = {toml_str(str(self.data_dir))}", "", "[catalog]", f"name = {toml_str(c.name)}"]
        if c.kind == "postgres":
            assert c.pg_uri
            lines += [f"uri = {toml_str(c.pg_uri)}"]
            if not self.warehouse_uri:
                lines += [f"warehouse = {toml_str(str(self.warehouse))}"]
        elif c.kind == "rest":
            assert c.rest_uri
            lines += ['type = "rest"', f"uri = {toml_str(c.rest_uri)}"]
            lines += [f"{k} = {toml_str(v)}" for k, v in c.rest_options.items()]
            if c.rest_headers:
                lines += ["headers = { " + ", ".join(f"{toml_str(k)} = {toml_str(v)}" for k, v in c.rest_headers.items()) + " }"]
        elif c.kind == "glue":
            # The Glue client takes aws.endpoint (moto) from [aws] below.
            lines += ['type = "glue"']
        if self.warehouse_uri:
            lines += [f"warehouse = {toml_str(self.warehouse_uri)}"]
        props: dict[str, object] = {
            "bootstrap.servers": bootstrap or self.bootstrap,
            "group.id": self.group,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 1000,
        }
        props.update(kafka or {})
        lines += ["", "[kafka]"] + [f"{toml_str(k)} = {toml_value(v)}" for k, v in props.items()]
        src: dict[str, object] = {"start": "earliest"}
        src.update(source or {})
        lines += ["", "[source]", f"topics = [{toml_str(self.topic)}]"]
        lines += [f"{k} = {toml_value(v)}" for k, v in src.items()]
        lines += ["", "[table]", f"name = {toml_str(self.table_name)}"]
        lines += ["", "[commit]", f"interval = {toml_str(interval)}"]
        lines += [f"{k} = {toml_value(v)}" for k, v in (commit or {}).items()]
        if dead_letter:
            lines += ["", "[dead_letter]"] + [f"{k} = {toml_value(v)}" for k, v in dead_letter.items()]
        if schema:
            lines += ["", "[schema]"] + [f"{k} = {toml_value(v)}" for k, v in schema.items()]
        if self.aws is not None:
            lines += ["", self.aws.storage_toml()]
        if self.extra_toml:
            lines += ["", self.extra_toml]
        if extra:
            lines += ["", extra.strip()]
        self.config.write_text("\n".join(lines) + "\n")

    def env(self) -> dict[str, str]:
        """The environment of floe processes (with AWS credentials when the pipeline has storage)."""
        env = child_env()
        if self.aws is not None:
            env = {**env, **self.aws.env()}
        return env

    def floe(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = [self.floe_bin, "--config", str(self.config), *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, env=self.env())

    def create_table(self, ddl: str = EVENTS_DDL) -> None:
        if self.table_name != EVENTS_TABLE:
            ddl = ddl.replace("CREATE TABLE events ", f"CREATE TABLE {self.table_name} ", 1)
        p = self.floe("table", "create", ddl)
        assert p.returncode == 0, f"floe table create failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"

    # producing

    def publish(self, count: int, first_id: int, partitions: int, **kw) -> Produced:
        return Publisher(self, count, first_id, partitions, **kw).run()

    def publish_in_background(self, count: int, first_id: int, partitions: int, **kw) -> Publisher:
        return Publisher(self, count, first_id, partitions, **kw).start()

    def end_offsets(self) -> dict[int, int]:
        return end_offsets(self.bootstrap, self.topic)

    # loading

    def start_loader(self, name: str | None = None, log: str = "info",
                     config: Path | None = None) -> FloeProcess:
        self._loaders += 1
        name = name or f"loader-{self._loaders}"
        log_path = self.dir / f"{name}.log"
        cmd = [self.floe_bin, "--config", str(config or self.config), "--log", log, "run"]
        with open(log_path, "w") as f:
            popen = self.procs.add(subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT,
                                                    stdin=subprocess.DEVNULL, env=self.env()))
        return FloeProcess(name, popen, log_path)

    # reading back (pyiceberg, independent of floe)

    def catalog(self):
        if self._catalog is None:
            c = self.catalog_spec
            if c.kind == "rest":
                from pyiceberg.catalog.rest import RestCatalog

                props = dict(self.aws.pyiceberg_props()) if self.aws is not None else {}
                props.update({f"header.{k}": v for k, v in c.rest_headers.items()})
                for key in ("credential", "token"):
                    if key in c.rest_options:
                        props[key] = c.rest_options[key]
                self._catalog = RestCatalog(c.name, uri=c.rest_uri, **props)
                return self._catalog
            if c.kind == "glue":
                self._catalog = glue_catalog(self.aws, c.name)
                return self._catalog
            if c.kind == "sqlite":
                uri = f"sqlite:///{self.data_dir / 'catalog.db'}"
            else:
                assert c.pg_uri
                uri = "postgresql+psycopg2://" + c.pg_uri[len("postgresql://"):]
            props = self.aws.pyiceberg_props() if self.aws is not None else {}
            self._catalog = SqlCatalog(c.name, uri=uri, warehouse=self.warehouse_uri or self.warehouse.as_uri(), **props)
        return self._catalog

    def table(self):
        return self.catalog().load_table(self.table_name)

    def committed_rows(self) -> int:
        """Rows in the current snapshot, counted from the manifests by pyiceberg. A catalog that is
        briefly busy (SQLite locked by a committing loader) counts as -1 for this poll."""
        try:
            return self.table().scan().count()
        except Exception as e:  # noqa: BLE001 - a poll; the next one retries
            if "locked" in str(e) or "busy" in str(e):
                return -1
            raise

    def wait_rows(self, n: int, timeout: float, alive: Iterable[FloeProcess] = (), interval: float = 1.0) -> int:
        """Waits until the table holds at least n rows; fails at once if it ever holds more."""

        def check():
            got = self.committed_rows()
            assert got <= n, f"the table holds {got} rows, more than the {n} produced: duplicates"
            if got < n:
                raise NotYet(f"{got} rows")
            return True

        wait_until(f"{n} rows in {self.table_name}", check, timeout, interval=interval, alive=alive)
        return n

    def ledger(self, table=None) -> dict[int, int] | None:
        """This pipeline's ledger for its topic, {partition: next offset}, or None if absent."""
        t = table if table is not None else self.table()
        raw = t.properties.get(LEDGER_PREFIX + self.group)
        if raw is None:
            return None
        parsed = json.loads(raw)
        assert set(parsed) <= {self.topic}, f"ledger has unexpected topics: {raw}"
        return {int(p): int(o) for p, o in parsed.get(self.topic, {}).items()}

    def ids(self):
        """Every id in the table (an Arrow array)."""
        return self.table().scan(selected_fields=("id",)).to_arrow().column("id")


def glue_catalog(aws, name: str = "floe"):
    """pyiceberg's own Glue catalog on the test's moto (Glue and S3 with the key moto accepts)."""
    from pyiceberg.catalog.glue import GlueCatalog

    return GlueCatalog(name, **{"glue.endpoint": aws.endpoint, "glue.region": aws.region,
                                "glue.access-key-id": aws.access_key_id,
                                "glue.secret-access-key": aws.secret_access_key, **aws.pyiceberg_props()})


class RestServer:
    """A REST catalog server of its own for one test (scripts/rest-catalog.sh in `dir`), for setups
    the shared one (FLOE_TEST_REST) does not have: a warehouse on S3, authentication. `env` holds
    the script's FLOE_REST_* options."""

    def __init__(self, dir: Path, warehouse: str | None = None, env: dict[str, str] | None = None) -> None:
        self.dir = dir
        cmd = [str(REPO / "scripts" / "rest-catalog.sh"), "start", str(dir)] + ([warehouse] if warehouse else [])
        t0 = time.monotonic()
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL,
                           env={**os.environ, **(env or {})})
        assert p.returncode == 0, f"rest-catalog.sh start failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
        self.uri = p.stdout.strip().splitlines()[-1]
        print(f"REST catalog server up in {time.monotonic() - t0:.1f}s at {self.uri}")

    def log(self) -> str:
        return (self.dir / "server.log").read_text(errors="replace")

    def stop(self) -> None:
        subprocess.run([str(REPO / "scripts" / "rest-catalog.sh"), "stop", str(self.dir)], capture_output=True,
                       timeout=60, stdin=subprocess.DEVNULL)

    @staticmethod
    def s3_env(aws, bucket: str) -> dict[str, str]:
        """The server's S3FileIO settings for the test's moto."""
        props = {"io-impl": "org.apache.iceberg.aws.s3.S3FileIO", "s3.endpoint": aws.endpoint,
                 "s3.path-style-access": "true", "s3.access-key-id": aws.access_key_id,
                 "s3.secret-access-key": aws.secret_access_key, "client.region": aws.region}
        return {"FLOE_REST_CATALOG_PROPERTIES": "\n".join(f"{k}={v}" for k, v in props.items())}


# --- checks -----------------------------------------------------------------------------------


def assert_each_id_once(actual_ids: Iterable[int | None], expected: Iterable[int]) -> None:
    """Exactly the expected ids, each once; reports duplicates, missing and unexpected ids precisely."""
    counts = Counter(actual_ids)
    want = set(expected)
    dups = sorted((i, c) for i, c in counts.items() if c > 1)
    missing = sorted(want - counts.keys())
    extra = sorted(set(counts) - want, key=lambda x: (x is None, x))
    problems = []
    if dups:
        problems.append(f"{len(dups)} ids more than once (id, times), first ones: {dups[:20]}")
    if missing:
        problems.append(f"{len(missing)} ids missing, first ones: {missing[:20]}{ranges_of(missing)}")
    if extra:
        problems.append(f"{len(extra)} unexpected ids, first ones: {extra[:20]}")
    assert not problems, (f"table has {sum(counts.values())} rows for {len(want)} expected ids:\n  "
                          + "\n  ".join(problems))


def ranges_of(ids: list[int]) -> str:
    if not ids:
        return ""
    spans, start, prev = [], ids[0], ids[0]
    for i in ids[1:]:
        if i != prev + 1:
            spans.append((start, prev))
            start = i
        prev = i
    spans.append((start, prev))
    return f" (as ranges: {spans[:10]}{' ...' if len(spans) > 10 else ''})"


def ts_micros(value) -> int:
    """UTC microseconds since the epoch of an aware datetime or an RFC 3339 string."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert value.tzinfo is not None, f"timestamp without a zone: {value!r}"
    return (value - EPOCH) // timedelta(microseconds=1)


def row_differences(expected: dict, actual: dict) -> list[str]:
    """Field-by-field comparison of a produced JSON record with a row read by pyiceberg."""
    diffs = []

    def differ(name, want, got):
        diffs.append(f"{name}: produced {want!r}, table has {got!r}")

    for name in ("id", "integer", "bool", "string", "bools", "integers", "strings"):
        # Python compares True == 1; the type must match too.
        want, got = expected[name], actual.get(name)
        if want != got or type(want) is not type(got):
            differ(name, want, got)
        elif isinstance(want, list) and [type(x) for x in want] != [type(x) for x in got]:
            differ(name, want, got)
    # JSON numbers and the stored doubles: both are the correctly rounded double of the same text.
    if actual.get("floating") is None or float(expected["floating"]) != actual["floating"]:
        differ("floating", expected["floating"], actual.get("floating"))
    if actual.get("floatings") is None or [float(x) for x in expected["floatings"]] != actual["floatings"]:
        differ("floatings", expected["floatings"], actual.get("floatings"))
    got_map = actual.get("string_map")
    if got_map is None or len(got_map) != len(expected["string_map"]) or dict(got_map) != expected["string_map"]:
        differ("string_map", expected["string_map"], got_map)
    if actual.get("nested") != expected["nested"]:
        differ("nested", expected["nested"], actual.get("nested"))
    got_ts = actual.get("timestamp")
    if got_ts is None or ts_micros(got_ts) != ts_micros(expected["timestamp"]):
        differ("timestamp", expected["timestamp"], got_ts)
    extra = set(actual) - set(expected)
    if extra:
        diffs.append(f"unexpected columns {sorted(extra)}")
    return diffs


def assert_rows_equal(table, expected: dict[int, dict]) -> None:
    """Every expected record (by id) is in the table with every field equal."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arrow = table.scan().to_arrow()
    picked = arrow.filter(pc.is_in(arrow.column("id"), value_set=pa.array(sorted(expected), pa.int64())))
    rows = {r["id"]: r for r in picked.to_pylist()}
    problems = []
    for rid in sorted(expected):
        if rid not in rows:
            problems.append(f"id {rid}: not in the table")
            continue
        for d in row_differences(expected[rid], rows[rid]):
            problems.append(f"id {rid}: {d}")
    assert not problems, f"{len(problems)} differences in {len(expected)} sampled rows, first ones:\n  " + "\n  ".join(problems[:30])


def parse_offset_ranges(summary_value: str) -> list[tuple[str, int, int, int]]:
    """`topic/0:100-150,...` -> [(topic, partition, first, end)]."""
    out = []
    for part in filter(None, summary_value.split(",")):
        m = re.fullmatch(r"(.+)/(\d+):(\d+)-(\d+)", part.strip())
        assert m, f"unparseable {SUMMARY_OFFSETS} entry {part!r} in {summary_value!r}"
        out.append((m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4))))
    return out


def assert_snapshot_ranges_tile(table, topic: str, ends: dict[int, int]) -> int:
    """The offset ranges recorded in the floe snapshots of the table's history (none expired) never
    overlap and together cover [0, end) of every partition: each offset was committed exactly once.
    Returns the number of floe snapshots."""
    per_partition: dict[int, list[tuple[int, int, int]]] = {}
    floe_snapshots = 0
    for s in table.metadata.snapshots:
        extra = s.summary.additional_properties if s.summary else {}
        value = extra.get(SUMMARY_OFFSETS)
        if value is None:
            continue
        floe_snapshots += 1
        for t, p, first, end in parse_offset_ranges(value):
            assert t == topic, f"snapshot {s.snapshot_id} covers unexpected topic {t}"
            assert first < end, f"snapshot {s.snapshot_id}: empty or inverted range {first}-{end} on {t}/{p}"
            per_partition.setdefault(p, []).append((first, end, s.snapshot_id))
    problems = []
    for p, end in sorted(ends.items()):
        at = 0
        for first, stop, sid in sorted(per_partition.get(p, [])):
            if first < at:
                problems.append(f"partition {p}: snapshot {sid} covers {first}-{stop}, overlapping what was committed up to {at}")
            elif first > at:
                problems.append(f"partition {p}: offsets {at}-{first} are in no snapshot (gap before snapshot {sid})")
            at = max(at, stop)
        if at != end:
            problems.append(f"partition {p}: snapshots cover up to {at}, the topic ends at {end}")
    unknown = set(per_partition) - set(ends)
    if unknown:
        problems.append(f"snapshots cover partitions {sorted(unknown)} that the topic does not have")
    assert not problems, "snapshot offset ranges are not an exact tiling:\n  " + "\n  ".join(problems)
    return floe_snapshots


def wait_ledger(p: Pipeline, ends: dict[int, int], timeout: float, alive=()) -> None:
    """Waits until the table's ledger for the pipeline is exactly `ends` (the topic's end offsets)."""
    def check():
        try:
            got = p.ledger()
        except Exception as e:  # noqa: BLE001 - a poll (SQLite briefly locked)
            raise NotYet(repr(e)) from e
        if got != ends:
            raise NotYet(f"ledger {got}, topic ends {ends}")
        return True

    wait_until(f"the ledger to reach the topic's ends {ends}", check, timeout, interval=0.5, alive=alive)
