"""`floe run`'s HTTP listener against the real broker and catalog: /metrics parsed by the Prometheus
text parser and compared with what pyiceberg and Kafka say, /ready and /health, the status page
rendered by headless Chromium, the heartbeat alert, and the data checks.

Each loader listens on 127.0.0.1:0 and the test reads the bound address from its log."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from loader_harness import (
    EVENTS_TABLE,
    NotYet,
    Pipeline,
    assert_each_id_once,
    create_topic,
    produce_json,
    read_topic,
    unique,
    wait_until,
)

LISTEN_ANY = '[http]\nlisten = "127.0.0.1:0"\n'
BOUND = re.compile(r"http listener started.* addr=(\S+)")
TABLE_LABEL = EVENTS_TABLE


def address(proc) -> str:
    """The listener's address, from the loader's INFO line."""

    def check():
        m = BOUND.search(proc.log())
        if not m:
            raise NotYet("no 'http listener started' line yet")
        return m.group(1)

    return wait_until(f"{proc.name}'s http listener", check, timeout=60, alive=[proc])


def get(addr: str, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{addr}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metrics(addr: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of /metrics as {(name, labels): value}, read by prometheus_client's parser."""
    status, text = get(addr, "/metrics")
    assert status == 200, f"/metrics answered {status}: {text}"
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def sample(ms: dict, name: str, **labels) -> float | None:
    return ms.get((name, frozenset(labels.items())))


def samples(ms: dict, name: str) -> dict[frozenset, float]:
    return {labels: v for (n, labels), v in ms.items() if n == name}


def backlog_pipeline(tmp_path: Path, floe_bin: str, kafka_bootstrap: str, procs, extra: str = "") -> Pipeline:
    """A pipeline that commits only when 1 MiB is buffered (half of max_buffered_bytes; the
    interval is an hour): after the records stop, the rest stays buffered, so the table lags the
    topic by a fixed backlog."""
    p = Pipeline(tmp_path / "p", floe_bin, kafka_bootstrap, procs)
    p.write_config(interval="1h", commit={"max_buffered_bytes": "2MiB"},
                   source={"partition_discovery": "1s"}, extra=LISTEN_ANY + extra)
    p.create_table()
    return p


def floe_snapshots(table) -> int:
    return sum(1 for s in table.metadata.snapshots
               if s.summary and "floe.offsets" in s.summary.additional_properties)


def settled_backlog(p: Pipeline, addr: str, loader, total: int) -> dict:
    """Waits until the loader's figures agree with the table (pyiceberg) and the topic (Kafka):
    rows written = rows in the table, lag of each partition = end offset - ledger, some of it
    committed and some still buffered. Returns what was seen."""

    def check():
        table = p.table()
        rows = table.scan().count()
        ledger = p.ledger(table) or {}
        ends = p.end_offsets()
        if sum(ends.values()) < total:
            raise NotYet(f"the topic holds {sum(ends.values())} of {total} records")
        ms = metrics(addr)
        written = sample(ms, "floe_rows_written_total", table=TABLE_LABEL)
        lags = {int(dict(l)["partition"]): v for l, v in samples(ms, "floe_lag_records").items()
                if dict(l)["topic"] == p.topic}
        want_lags = {pt: end - ledger.get(pt, 0) for pt, end in ends.items()}
        seen = {"rows": rows, "written": written, "lags": lags, "want_lags": want_lags, "ledger": ledger}
        if rows == 0 or written != rows or lags != want_lags or sum(want_lags.values()) == 0:
            raise NotYet(json.dumps(seen))
        return {**seen, "metrics": ms, "ends": ends, "snapshots": floe_snapshots(table)}

    return wait_until("the loader's metrics to match the table and the topic", check, timeout=90, interval=1,
                      alive=[loader])


def test_metrics_match_the_table_and_ready_flips_on_assignment(tmp_path, floe_bin, kafka_bootstrap, procs):
    p = backlog_pipeline(tmp_path, floe_bin, kafka_bootstrap, procs)
    # The topic does not exist yet: the loader runs, but holds no partition.
    loader = p.start_loader()
    addr = address(loader)
    status, body = get(addr, "/ready")
    assert status == 503 and "no partition" in body, f"/ready before the topic exists: {status} {body}"
    status, body = get(addr, "/health")
    assert status == 200, f"/health of a running loader: {status} {body}"

    create_topic(kafka_bootstrap, p.topic, 2)
    total = 9_000
    p.publish(total, first_id=1, partitions=2)
    wait_until("/ready to say 200", lambda: get(addr, "/ready")[0] == 200, timeout=60, alive=[loader])

    seen = settled_backlog(p, addr, loader, total)
    ms = seen["metrics"]
    print(f"rows {seen['rows']}, lags {seen['lags']}, ledger {seen['ledger']}, ends {seen['ends']}")
    read = sum(samples(ms, "floe_records_read_total").values())
    assert read == total, f"floe_records_read_total sums to {read}, {total} records were produced"
    assert sum(samples(ms, "floe_bytes_read_total").values()) > total * 100
    commits = sample(ms, "floe_commits_total", table=TABLE_LABEL)
    assert commits == seen["snapshots"] >= 1, f"{commits} commits counted, {seen['snapshots']} floe snapshots in the table"
    for h in ("floe_commit_duration_seconds", "floe_freshness_seconds"):
        count = sample(ms, f"{h}_count", table=TABLE_LABEL)
        assert count == commits, f"{h} holds {count} observations for {commits} commits"
        assert sample(ms, f"{h}_bucket", table=TABLE_LABEL, le="+Inf") == commits
    assert sample(ms, "floe_bytes_written_total", table=TABLE_LABEL) > 0
    buffered = sample(ms, "floe_buffered_bytes", table=TABLE_LABEL)
    assert buffered and buffered > 0, f"rows are buffered, yet floe_buffered_bytes is {buffered}"
    assert sample(ms, "floe_assigned_partitions", table=TABLE_LABEL) == 2

    # On SIGTERM the backlog is committed: every record is in the table once.
    loader.sigterm_ok()
    assert_each_id_once(p.ids().to_pylist(), range(1, total + 1))


def test_a_busy_port_is_a_clear_error(tmp_path, floe_bin, kafka_bootstrap, procs):
    p = backlog_pipeline(tmp_path, floe_bin, kafka_bootstrap, procs)
    first = p.start_loader()
    addr = address(first)
    second_config = tmp_path / "second.toml"
    second_config.write_text(p.config.read_text().replace('listen = "127.0.0.1:0"', f'listen = "{addr}"'))
    second = p.start_loader(config=second_config)
    rc = second.popen.wait(timeout=60)
    log = second.log()
    assert rc == 2, f"a second loader on a busy port should exit 2, got {rc}\n{log}"
    for needle in (f"http.listen = \"{addr}\"", "in use", "[http]", "127.0.0.1:0"):
        assert needle in log, f"{needle!r} missing from the error:\n{log}"
    first.sigterm_ok()


class Dom(HTMLParser):
    """Elements by id (with their attributes and text) and a count of SVG bars, from Chromium's
    --dump-dom output."""

    def __init__(self) -> None:
        super().__init__()
        self.by_id: dict[str, dict] = {}
        self.stack: list[dict] = []
        self.cells: list[dict] = []
        self.bars = 0
        self.body: dict = {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        node = {"tag": tag, "attrs": a, "text": ""}
        if tag == "body":
            self.body = a
        if tag == "rect" and "bar" in (a.get("class") or ""):
            self.bars += 1
        if "id" in a:
            self.by_id[a["id"]] = node
        if tag == "td":
            self.cells.append(node)
        if tag not in ("meta", "link", "br", "hr", "input", "img"):  # void elements have no end tag
            self.stack.append(node)

    def handle_endtag(self, tag):
        if any(n["tag"] == tag for n in self.stack):
            while self.stack.pop()["tag"] != tag:
                pass

    def handle_data(self, data):
        for node in self.stack:
            node["text"] += data


def chromium() -> str:
    path = shutil.which("chromium")
    if not path:
        pytest.fail("chromium is not installed: scripts/setup.sh installs Debian's chromium package", pytrace=False)
    return path


def browse(url: str, tmp_path: Path, *args: str) -> str:
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=4000",
           "--window-size=1200,1000", *args, url]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, f"chromium failed ({r.returncode}):\n{r.stderr[-3000:]}"
    return r.stdout


def test_status_page_in_headless_chromium_shows_the_live_figures(tmp_path, floe_bin, kafka_bootstrap, procs):
    p = backlog_pipeline(tmp_path, floe_bin, kafka_bootstrap, procs)
    create_topic(kafka_bootstrap, p.topic, 2)
    total = 9_000
    p.publish(total, first_id=1, partitions=2)
    loader = p.start_loader()
    addr = address(loader)
    seen = settled_backlog(p, addr, loader, total)

    dom = Dom()
    dom.feed(browse(f"http://{addr}/", tmp_path, "--dump-dom"))
    assert dom.body.get("data-loaded") == "1", "the page's script did not render status.json"
    lag_kafka = sum(seen["want_lags"].values())
    lag_page = dom.by_id["lag"]
    assert int(lag_page["attrs"]["data-value"]) == lag_kafka, (
        f"the page shows lag {lag_page['text']!r} (data-value {lag_page['attrs']['data-value']}), "
        f"Kafka end offsets minus the table's ledger say {lag_kafka}")
    assert lag_page["text"].replace(",", "") == str(lag_kafka)
    rows_page = dom.by_id["rows-committed"]
    assert int(rows_page["attrs"]["data-value"]) == seen["rows"], (
        f"the page shows {rows_page['text']!r} rows committed, pyiceberg counts {seen['rows']}")
    # One row per partition, with the ledger and the lag Kafka implies.
    cells = [(c["attrs"].get("data-field"), c["text"]) for c in dom.cells]
    partition_rows = [dict(cells[i:i + 5]) for i in range(0, len(cells), 1)
                      if cells[i][0] == "topic" and i + 5 <= len(cells)]
    shown = {int(r["partition"]): (int(r["committed"]), int(r["end"]), int(r["lag"])) for r in partition_rows}
    want = {pt: (seen["ledger"][pt], end, end - seen["ledger"][pt]) for pt, end in seen["ends"].items()}
    assert shown == want, f"partitions on the page {shown}, from pyiceberg and Kafka {want}"
    snapshot_ids = {str(s.snapshot_id) for s in p.table().metadata.snapshots}
    shown_ids = [text for field, text in cells if field == "snapshot"]
    assert shown_ids and set(shown_ids) <= snapshot_ids, f"recent commits show snapshots {shown_ids}, the table has {snapshot_ids}"
    assert dom.bars >= 1, "the chart drew no bar of rows/s"
    assert "ok" in dom.by_id["ready"]["text"], dom.by_id["ready"]

    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    shot = artifacts / "status-page.png"
    browse(f"http://{addr}/", tmp_path, f"--screenshot={shot}")
    assert shot.stat().st_size > 10_000, f"the screenshot {shot} is suspiciously small"
    print(f"status page screenshot: {shot}")
    loader.sigterm_ok()


def test_heartbeat_alert_fires_when_the_producer_stops(tmp_path, floe_bin, kafka_bootstrap, procs):
    p = Pipeline(tmp_path / "p", floe_bin, kafka_bootstrap, procs)
    p.write_config(extra=LISTEN_ANY + '[alerts]\nmax_idle = "3s"\n')
    p.create_table()
    p.publish(20, first_id=1, partitions=1)
    loader = p.start_loader()
    addr = address(loader)
    p.wait_rows(20, timeout=60, alive=[loader])
    # The producer has stopped: within max_idle (plus the 1 s timer) the alert is raised, once.
    loader.wait_log("no record has arrived for", timeout=30)
    line = next(l for l in loader.log().splitlines() if "no record has arrived for" in l)
    assert "ERROR" in line and "alerts.max_idle" in line, line
    ms = metrics(addr)
    assert sample(ms, "floe_idle", table=TABLE_LABEL) == 1
    assert sample(ms, "floe_idle_alerts_total", table=TABLE_LABEL) == 1
    status = json.loads(get(addr, "/status.json")[1])
    assert status["idle_alert_since_ms"], status
    # Data returns: cleared with an INFO line, and raised again once the producer stops again.
    p.publish(5, first_id=21, partitions=1)
    loader.wait_log("heartbeat alert cleared", timeout=30)
    assert sample(metrics(addr), "floe_idle", table=TABLE_LABEL) == 0
    p.wait_rows(25, timeout=60, alive=[loader])
    loader.wait_log("no record has arrived for", timeout=30, times=2)
    assert sample(metrics(addr), "floe_idle_alerts_total", table=TABLE_LABEL) == 2
    loader.sigterm_ok()


CHECKS = """
[[checks]]
column = "integer"
check = "range"
min = 0
max = 100
action = "warn"

[[checks]]
column = "string"
check = "regex"
pattern = "^ok-"
action = "dead_letter"

[[checks]]
column = "id"
check = "not_null"
action = "dead_letter"

[[checks]]
column = "string"
check = "accepted"
values = ["ok-a", "ok-b"]

[[checks]]
column = "floating"
check = "max_null_rate"
max_rate = 0.4
window = "10m"
"""


def crafted(i: int, **fields) -> dict:
    rec = {"id": i, "integer": 5, "string": "ok-a", "floating": 1.5,
           "timestamp": "2026-01-02T03:04:05Z"}
    rec.update(fields)
    return rec


def test_each_check_kind_takes_its_action(tmp_path, floe_bin, kafka_bootstrap, procs):
    p = Pipeline(tmp_path / "p", floe_bin, kafka_bootstrap, procs)
    dlq = unique("floe-dlq")
    p.write_config(dead_letter={"topic": dlq}, extra=LISTEN_ANY + CHECKS)
    p.create_table()
    create_topic(kafka_bootstrap, p.topic, 1)
    records = [crafted(i) for i in range(1, 11)]
    records += [crafted(11, integer=500, floating=None), crafted(12, integer=-1, floating=None)]  # range: warn
    records += [crafted(13, string="bad-1", floating=None)]  # regex: dead letter (and not accepted)
    records += [crafted(14, string="ok-c", floating=None)]  # accepted: warn
    records += [crafted(15, id=None, floating=None)]  # not_null: dead letter
    records += [crafted(i, floating=None) for i in range(16, 21)]  # 10 of 20 floatings null
    produce_json(kafka_bootstrap, p.topic, records, partition=0)
    loader = p.start_loader()
    addr = address(loader)
    p.wait_rows(18, timeout=60, alive=[loader])

    ids = p.ids().to_pylist()
    assert_each_id_once(ids, [i for i in range(1, 21) if i not in (13, 15)])
    # The rows that only warned are in the table with their values.
    arrow = p.table().scan(selected_fields=("id", "integer", "string")).to_arrow().to_pylist()
    by_id = {r["id"]: r for r in arrow}
    assert by_id[11]["integer"] == 500 and by_id[12]["integer"] == -1 and by_id[14]["string"] == "ok-c"

    # The dead letters: the two rows, kind check-failed, the reason naming check, column and value.
    letters = wait_until("2 dead letters", lambda: (lambda r: r if len(r) >= 2 else None)(read_topic(kafka_bootstrap, dlq)),
                         timeout=30)
    assert len(letters) == 2, [l.value for l in letters]
    by_offset = {int(l.header_str("loader.processing.exception.offset")): l for l in letters}
    assert set(by_offset) == {12, 14}, f"dead letters at source offsets {sorted(by_offset)}, expected 12 and 14"
    for offset, needles in ((12, ['"bad-1"', "string:regex", "^ok-"]), (14, ["null", "id:not_null"])):
        l = by_offset[offset]
        assert l.header_str("loader.processing.exception.class") == "check-failed"
        assert l.header_str("loader.processing.exception.topic") == p.topic
        assert l.header_str("loader.processing.exception.partition") == "0"
        reason = l.header_str("loader.processing.exception.message")
        for n in needles:
            assert n in reason, f"{n!r} missing from the dead letter's reason {reason!r}"
        assert json.loads(l.value) == records[offset], "the dead letter must carry the original record"

    ms = metrics(addr)
    failures = {dict(k)["kind"]: v for k, v in samples(ms, "floe_check_failures_total").items()}
    assert {k: failures.get(k) for k in ("integer:range", "string:regex", "id:not_null", "string:accepted")} == {
        "integer:range": 2, "string:regex": 1, "id:not_null": 1, "string:accepted": 2}, failures
    assert failures.get("floating:max_null_rate", 0) >= 1, failures
    assert sample(ms, "floe_dead_letters_total", table=TABLE_LABEL, kind="check-failed") == 2

    # floe status reads the same counts from the table's history.
    st = p.floe("status", "--json")
    assert st.returncode == 0, st.stdout + st.stderr
    pipe = next(x for t in json.loads(st.stdout)["tables"] for x in t["pipelines"] if x["name"] == p.group)
    assert {k: pipe["check_failures"].get(k) for k in ("integer:range", "string:regex", "id:not_null")} == {
        "integer:range": 2, "string:regex": 1, "id:not_null": 1}, pipe["check_failures"]
    assert pipe["dead_letters"].get("check-failed") == 2, pipe["dead_letters"]
    human = p.floe("status")
    assert "failed checks" in human.stdout and "integer:range 2 rows" in human.stdout, human.stdout
    loader.sigterm_ok()


def test_a_stop_check_commits_nothing_of_the_batch_and_exits_naming_it(tmp_path, floe_bin, kafka_bootstrap, procs):
    p = Pipeline(tmp_path / "p", floe_bin, kafka_bootstrap, procs)
    p.write_config(extra='[[checks]]\ncolumn = "integer"\ncheck = "range"\nmax = 100\naction = "stop"\n')
    p.create_table()
    create_topic(kafka_bootstrap, p.topic, 1)
    produce_json(kafka_bootstrap, p.topic, [crafted(i) for i in range(1, 6)], partition=0)
    loader = p.start_loader()
    p.wait_rows(5, timeout=60, alive=[loader])
    produce_json(kafka_bootstrap, p.topic, [crafted(6), crafted(7, integer=250), crafted(8)], partition=0)
    rc = loader.popen.wait(timeout=60)
    log = loader.log()
    assert rc == 1, f"floe should exit 1 on a failed stop check, got {rc}\n{log}"
    for needle in ('"integer:range"', "250 is outside the range", f"topic {p.topic}, partition 0, offset 6",
                   "without committing"):
        assert needle in log, f"{needle!r} missing from the error:\n{log[-3000:]}"
    # Nothing of the failing batch is in the table (id 6 may have committed in a batch of its
    # own); the ledger stands right after what is.
    ids = sorted(p.ids().to_pylist())
    assert ids in (list(range(1, 6)), list(range(1, 7))), f"table ids {ids}"
    assert p.ledger() == {0: len(ids)}


@pytest.mark.parametrize("check, needles", [
    ('column = "nope"\ncheck = "not_null"', ['no top-level column "nope"', "its columns: id, bool"]),
    ('column = "string"\ncheck = "regex"\npattern = "([a-z"', ["checks[0] (string:regex)", "does not compile"]),
    ('column = "string"\ncheck = "range"\nmin = 1', ['column "string" is string', "a range applies to"]),
    ('column = "id"\ncheck = "regex"\npattern = "x"', ['column "id" is long', "a regex applies to string"]),
])
def test_checks_are_validated_before_anything_is_read(tmp_path, floe_bin, kafka_bootstrap, procs, check, needles):
    p = Pipeline(tmp_path / "p", floe_bin, kafka_bootstrap, procs)
    p.create_table()
    p.write_config(extra="[[checks]]\n" + check + "\n")
    r = p.floe("run", timeout=60)
    assert r.returncode == 2, f"expected exit 2 (configuration), got {r.returncode}\n{r.stderr}"
    for n in needles:
        assert n in r.stderr, f"{n!r} missing from:\n{r.stderr}"
