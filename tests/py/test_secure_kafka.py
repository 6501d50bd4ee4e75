"""Secured Kafka and secrets (issue 13, items 4 and 5), against the test broker's SASL_SSL and SSL
listeners (scripts/kafka.sh: certificates made at start) and moto's Secrets Manager.

What is proved: records land through SASL_SSL with PLAIN and with SCRAM-SHA-512, and through mutual
TLS; a wrong password and an unknown CA stop `floe run` within seconds with a message naming the
broker and the mechanism; Kafka credentials come from a JSON secret in Secrets Manager
(`${aws-secretsmanager:<id>#<field>}`), are never printed, and a missing secret or field is a clear
error naming the secret and the field.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from conftest import required_env
from loader_harness import EVENTS_DDL, Pipeline, assert_each_id_once, unique


@pytest.fixture(scope="session")
def secure():
    tls = required_env("FLOE_TEST_KAFKA_TLS")
    return {
        "sasl_ssl": required_env("FLOE_TEST_KAFKA_SASL_SSL"),
        "ssl": required_env("FLOE_TEST_KAFKA_SSL"),
        "ca": f"{tls}/ca.pem",
        "other_ca": f"{tls}/other-ca.pem",
        "cert": f"{tls}/client.pem",
        "key": f"{tls}/client.key",
    }


def sasl(secure, mechanism: str, user: str, password: str, ca: str | None = None) -> dict[str, object]:
    return {"security.protocol": "SASL_SSL", "sasl.mechanism": mechanism, "sasl.username": user,
            "sasl.password": password, "ssl.ca.location": ca or secure["ca"]}


@pytest.fixture
def pipeline(tmp_path, floe_bin, kafka_bootstrap, procs):
    def make(name: str, aws=None) -> Pipeline:
        return Pipeline(tmp_path / name, floe_bin, kafka_bootstrap, procs, prefix=f"floe-{name}", aws=aws)

    return make


def load_through(p: Pipeline, bootstrap: str, kafka: dict[str, object], n: int = 300) -> None:
    p.write_config(bootstrap=bootstrap, kafka=kafka)
    p.create_table(EVENTS_DDL)
    p.publish(n, 1, 2)  # publish-sample uses the same secured client settings
    loader = p.start_loader()
    p.wait_rows(n, timeout=90, alive=[loader])
    loader.sigterm_ok()
    assert_each_id_once(p.ids().to_pylist(), range(1, n + 1))


@pytest.mark.parametrize("mechanism,user,password", [("PLAIN", "alice", "alice-secret"),
                                                      ("SCRAM-SHA-512", "bob", "bob-secret")])
def test_sasl_ssl(pipeline, secure, mechanism, user, password):
    load_through(pipeline(mechanism.lower()), secure["sasl_ssl"], sasl(secure, mechanism, user, password))


def test_mutual_tls(pipeline, secure):
    load_through(pipeline("mtls"), secure["ssl"], {
        "security.protocol": "SSL", "ssl.ca.location": secure["ca"],
        "ssl.certificate.location": secure["cert"], "ssl.key.location": secure["key"]})


def run_refused(p: Pipeline, within: float = 15) -> str:
    t0 = time.monotonic()
    r = p.floe("run", timeout=60)
    took = time.monotonic() - t0
    assert r.returncode != 0, f"floe run should fail:\n{r.stdout}\n{r.stderr}"
    assert took < within, f"floe run took {took:.1f}s to fail:\n{r.stderr}"
    print(f"refused in {took:.1f}s: {r.stderr.strip()[-500:]}")
    return r.stderr


def test_wrong_password_names_broker_and_mechanism(pipeline, secure):
    p = pipeline("wrongpw")
    p.write_config(bootstrap=secure["sasl_ssl"], kafka=sasl(secure, "SCRAM-SHA-512", "bob", "not-bobs-password"))
    p.create_table(EVENTS_DDL)
    err = run_refused(p)
    assert secure["sasl_ssl"] in err and "SCRAM-SHA-512" in err and "SASL login" in err, err
    assert '"bob"' in err and "sasl.password" in err, err
    assert "not-bobs-password" not in err


def test_unknown_ca_names_broker_and_protocol(pipeline, secure):
    p = pipeline("otherca")
    p.write_config(bootstrap=secure["sasl_ssl"], kafka=sasl(secure, "PLAIN", "alice", "alice-secret", ca=secure["other_ca"]))
    p.create_table(EVENTS_DDL)
    err = run_refused(p)
    assert secure["sasl_ssl"] in err and "TLS" in err and "SASL_SSL" in err, err
    assert "certificate verify failed" in err and "ssl.ca.location" in err, err
    # Mutual TLS without a client certificate: the broker refuses the handshake.
    p.write_config(bootstrap=secure["ssl"], kafka={"security.protocol": "SSL", "ssl.ca.location": secure["ca"]})
    err = run_refused(p)
    assert secure["ssl"] in err and "ssl.certificate.location" in err, err


# --- secrets --------------------------------------------------------------------------------


def ref(secret_id: str, field: str) -> str:
    return "${aws-secretsmanager:" + secret_id + "#" + field + "}"


def test_kafka_credentials_from_secrets_manager(pipeline, secure, aws):
    sm = aws.client("secretsmanager")
    secret_id = unique("floe/kafka")
    sm.create_secret(Name=secret_id, SecretString=json.dumps({"apiKey": "bob", "apiSecret": "bob-secret"}))
    p = pipeline("secret", aws=aws)
    kafka = sasl(secure, "SCRAM-SHA-512", ref(secret_id, "apiKey"), ref(secret_id, "apiSecret"))
    load_through(p, secure["sasl_ssl"], kafka)
    # Never printed: the debug log of a run shows the configuration with the values redacted.
    loader = p.start_loader("debug", log="debug")
    loader.wait_log("configuration loaded", timeout=30)
    loader.wait_log("partition assigned", timeout=60)
    loader.sigterm_ok()
    log = loader.log()
    assert "bob-secret" not in log, "the secret value was logged"
    assert '"sasl.username": "***"' in log, [line for line in log.splitlines() if "configuration loaded" in line]


def test_missing_secret_or_field_is_a_clear_error(pipeline, secure, aws):
    sm = aws.client("secretsmanager")
    secret_id = unique("floe/kafka")
    sm.create_secret(Name=secret_id, SecretString=json.dumps({"apiKey": "bob", "apiSecret": "bob-secret"}))
    p = pipeline("nosecret", aws=aws)
    missing = unique("floe/absent")
    for kafka, says in (
        (sasl(secure, "PLAIN", ref(missing, "apiKey"), "x"), [f'secret "{missing}" does not exist', aws.endpoint]),
        (sasl(secure, "PLAIN", ref(secret_id, "apiKey"), ref(secret_id, "apiSecrte")),
         [f'secret "{secret_id}" has no field "apiSecrte"', "apiKey, apiSecret"]),
    ):
        p.write_config(bootstrap=secure["sasl_ssl"], kafka=kafka)
        t0 = time.monotonic()
        r = p.floe("run", timeout=60)
        assert r.returncode == 2, f"a configuration error (exit 2) expected:\n{r.stderr}"
        assert time.monotonic() - t0 < 15
        for s in says:
            assert s in r.stderr, r.stderr
        assert "bob-secret" not in r.stderr and '"bob"' not in r.stderr, r.stderr
