"""`floe run` on an Iceberg REST catalog (issue 13): the server of scripts/rest-catalog.sh writes
the metadata itself, from the updates and requirements floe sends. The loader's guarantees must
hold all the same, and pyiceberg reads the table back through the same REST catalog. (The
zombie test runs on it too: test_loader.py::test_zombie_is_fenced[rest].)
"""

from __future__ import annotations

import os
import random
import socket
import time

from conftest import required_env
from loader_harness import (
    CatalogSpec,
    Pipeline,
    assert_each_id_once,
    assert_rows_equal,
    assert_snapshot_ranges_tile,
    unique,
)

SEED_RECORDS = 1_000
KILLS = 4


def rest_pipeline(tmp_path, floe_bin, kafka_bootstrap, procs, name: str) -> Pipeline:
    return Pipeline(tmp_path / name, floe_bin, kafka_bootstrap, procs,
                    catalog=CatalogSpec.rest(required_env("FLOE_TEST_REST")), prefix=f"floe-{name}")


def test_exactly_once_under_sigkill_on_rest(tmp_path, floe_bin, kafka_bootstrap, procs):
    seed = int(os.environ.get("FLOE_TEST_SEED") or random.SystemRandom().randrange(2**32))
    print(f"seed {seed} (rerun with FLOE_TEST_SEED={seed})")
    rng = random.Random(seed)
    p = rest_pipeline(tmp_path, floe_bin, kafka_bootstrap, procs, "restkill")
    # Short commits and static membership: every killed loader has committed and has more in flight.
    p.write_config(interval="500ms", kafka={"group.instance.id": f"{p.group}-member"})
    p.create_table()
    # The seed's 1,000 records, streamed while the loaders are killed.
    streaming = p.publish_in_background(SEED_RECORDS, 1, 4, rate=100, spread="2d")

    runs = []
    while len(runs) < KILLS or not streaming.done():
        assert len(runs) < 4 * KILLS, "production did not finish while the loaders were being killed"
        loader = p.start_loader(f"killed-{len(runs)}")
        delay = rng.uniform(2, 4)
        time.sleep(delay)  # the random moment of the kill, not a synchronisation
        loader.assert_running(f"before SIGKILL {len(runs)}")
        loader.sigkill()
        rows = p.committed_rows()
        runs.append((round(delay, 2), loader.count("batch committed"), rows))
        print(f"kill {len(runs)}: after {delay:.2f}s, {runs[-1][1]} commits, table has {rows} rows")
        assert rows <= SEED_RECORDS, f"{rows} rows after kill {len(runs)}: more than produced"
    assert sum(1 for _, c, _ in runs if c > 0) >= len(runs) // 2, f"too few killed loaders had committed: {runs}"

    produced = streaming.join(timeout=60)
    final = p.start_loader("final")
    p.wait_rows(SEED_RECORDS, timeout=120, alive=[final])
    final.sigterm_ok()

    table = p.table()  # pyiceberg, through the REST catalog
    assert_each_id_once(p.ids().to_pylist(), range(1, SEED_RECORDS + 1))
    assert_rows_equal(table, produced.records)
    ends = p.end_offsets()
    assert p.ledger(table) == ends, f"ledger {p.ledger(table)} differs from the topic's end offsets {ends}"
    snapshots = assert_snapshot_ranges_tile(table, p.topic, ends)
    print(f"{snapshots} floe snapshots after {len(runs)} kills: {runs}")


def test_unreachable_rest_catalog_is_a_clear_error(tmp_path, floe_bin, kafka_bootstrap, procs):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens here once the socket closes
    p = Pipeline(tmp_path / "norest", floe_bin, kafka_bootstrap, procs, catalog=CatalogSpec.rest(dead),
                 prefix="floe-norest")
    for args in (("table", "create", f"CREATE TABLE {unique('ns').replace('-', '_')}.t (id BIGINT)"), ("run",)):
        t0 = time.monotonic()
        res = p.floe(*args, timeout=60)
        took = time.monotonic() - t0
        out = res.stdout + res.stderr
        print(f"floe {args[0]}: exit {res.returncode} after {took:.1f}s: {res.stderr.strip()[-300:]}")
        assert res.returncode != 0, out
        assert took < 10, f"floe {args[0]} took {took:.1f}s to report an unreachable REST catalog"
        assert dead in out, f"the error should name the catalog {dead}:\n{out}"
        assert "connect" in out.lower(), f"the error should say that it could not connect:\n{out}"
    written = [f for f in p.data_dir.rglob("*") if f.is_file()]
    assert not written, f"nothing should be written when the catalog is unreachable: {written}"


# --- authentication (OAuth2 client credentials, bearer token, extra headers) -------------------

CLIENT_ID, CLIENT_SECRET, TOKEN = "floe-loader", "the-client-secret", "a-static-bearer-token"
HEADER, HEADER_VALUE = "X-Floe-Test", "from-floe"
AUTH_ENV = {"FLOE_REST_OAUTH_CLIENT": f"{CLIENT_ID}:{CLIENT_SECRET}", "FLOE_REST_TOKEN": TOKEN,
            "FLOE_REST_REQUIRE_HEADER": f"{HEADER}={HEADER_VALUE}"}


def auth_pipeline(tmp_path, floe_bin, kafka_bootstrap, procs, uri: str, name: str, headers=None, **options) -> Pipeline:
    return Pipeline(tmp_path / name, floe_bin, kafka_bootstrap, procs, prefix=f"floe-{name}",
                    catalog=CatalogSpec.rest(uri, headers={HEADER: HEADER_VALUE} if headers is None else headers,
                                             **options))


def test_oauth2_client_credentials_and_headers_end_to_end(tmp_path, floe_bin, kafka_bootstrap, procs, rest_server):
    server = rest_server("auth", env=AUTH_ENV)
    p = auth_pipeline(tmp_path, floe_bin, kafka_bootstrap, procs, server.uri, "oauth",
                      credential=f"{CLIENT_ID}:{CLIENT_SECRET}")
    p.create_table()
    p.publish(300, 1, 2)
    loader = p.start_loader()
    p.wait_rows(300, timeout=60, alive=[loader])  # pyiceberg, with the same credentials and header
    loader.sigterm_ok()
    assert_each_id_once(p.ids().to_pylist(), range(1, 301))
    log = server.log()
    assert f"token issued to client {CLIENT_ID}" in log, log[-2000:]
    # Every request floe made carried the header (the server refuses those without it), and the
    # server saw floe's commits with it.
    assert "refused" not in log, [line for line in log.splitlines() if "refused" in line][:5]
    assert f"POST /v1/namespaces/{p.table_name.split('.')[0]}/tables/events header {HEADER}={HEADER_VALUE}" in log

    # A static bearer token works as well.
    q = auth_pipeline(tmp_path, floe_bin, kafka_bootstrap, procs, server.uri, "token", token=TOKEN)
    r = q.floe("table", "list")
    assert r.returncode == 0 and p.table_name in r.stdout, (r.stdout, r.stderr)


def refused_fast(p: Pipeline, *args: str, within: float = 15) -> str:
    t0 = time.monotonic()
    r = p.floe(*args, timeout=60)
    took = time.monotonic() - t0
    assert r.returncode != 0, f"floe {' '.join(args)} should fail:\n{r.stdout}\n{r.stderr}"
    assert took < within, f"floe {' '.join(args)} took {took:.1f}s to fail (retrying?):\n{r.stderr}"
    print(f"floe {args[0]} refused in {took:.1f}s: {r.stderr.strip()[-400:]}")
    return r.stderr


def test_wrong_rest_credentials_are_clear_errors(tmp_path, floe_bin, kafka_bootstrap, procs, rest_server):
    server = rest_server("auth", env=AUTH_ENV)
    good = auth_pipeline(tmp_path, floe_bin, kafka_bootstrap, procs, server.uri, "good",
                         credential=f"{CLIENT_ID}:{CLIENT_SECRET}")
    good.create_table()

    wrong_secret = auth_pipeline(tmp_path, floe_bin, kafka_bootstrap, procs, server.uri, "badsecret",
                                 credential=f"{CLIENT_ID}:not-the-secret")
    wrong_secret.table_name = good.table_name
    wrong_secret.write_config()
    for args in (("table", "list"), ("run",)):
        err = refused_fast(wrong_secret, *args)
        assert server.uri in err and "OAuth2 token endpoint" in err and CLIENT_ID in err, err
        assert "catalog.credential" in err and "not-the-secret" not in err, err

    wrong_token = auth_pipeline(tmp_path, floe_bin, kafka_bootstrap, procs, server.uri, "badtoken",
                                token="not-a-token-it-issued")
    wrong_token.table_name = good.table_name
    wrong_token.write_config()
    for args in (("table", "list"), ("run",)):
        err = refused_fast(wrong_token, *args)
        assert server.uri in err and "401" in err and "catalog.token" in err, err
        assert "not-a-token-it-issued" not in err, err

    no_header = auth_pipeline(tmp_path, floe_bin, kafka_bootstrap, procs, server.uri, "noheader", headers={},
                              credential=f"{CLIENT_ID}:{CLIENT_SECRET}")
    err = refused_fast(no_header, "table", "list")
    assert server.uri in err and HEADER in err, err
    assert good.table() is not None  # the table is still there, untouched
