"""Fixtures shared by floe's Python tests.

scripts/test.sh exports what these need:
  FLOE_BIN            path to the floe binary under test
  FLOE_TEST_POSTGRES  postgresql://floe:floe@127.0.0.1:<port>/floe (a throwaway server)
  FLOE_TEST_KAFKA     127.0.0.1:<port> (a throwaway broker)
  FLOE_TEST_AWS       http://127.0.0.1:<port> (moto: S3, Glue, Secrets Manager), with the one key it
                      accepts in FLOE_TEST_AWS_ACCESS_KEY_ID / FLOE_TEST_AWS_SECRET_ACCESS_KEY
Nothing is skipped when one is missing: the test fails and says what to set.
"""

from __future__ import annotations

import glob
import os
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest
from pyiceberg.catalog.sql import SqlCatalog

FLOE_TIMEOUT_S = 120


def required_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(
            f"environment variable {name} is not set: run the tests with ./scripts/test.sh "
            f"(or export {name} yourself)",
            pytrace=False,
        )
    return value


@dataclass
class FloeResult:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def describe(self) -> str:
        return (
            f"command: {' '.join(self.args)}\nexit code: {self.returncode}\n"
            f"--- stdout ---\n{self.stdout}--- stderr ---\n{self.stderr}"
        )


@dataclass
class Floe:
    """Runs the floe binary with one config file."""

    bin: str
    config: Path

    def run(self, *args: str, check: bool = True) -> FloeResult:
        cmd = [self.bin, "--config", str(self.config), *args]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=FLOE_TIMEOUT_S, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            pytest.fail(f"floe did not finish within {FLOE_TIMEOUT_S}s: {' '.join(cmd)}\n{e.stdout}\n{e.stderr}")
        result = FloeResult(cmd, p.returncode, p.stdout, p.stderr)
        if check and p.returncode != 0:
            pytest.fail(f"floe failed\n{result.describe()}", pytrace=False)
        return result


@dataclass
class CatalogEnv:
    """One catalog that floe (through its config file) and pyiceberg (SqlCatalog) both open."""

    kind: str  # "sqlite" | "postgres"
    name: str  # catalog name, as stored in iceberg_tables.catalog_name
    data_dir: Path
    warehouse: Path
    sqlalchemy_uri: str
    floe: Floe

    def pyiceberg(self) -> SqlCatalog:
        return SqlCatalog(self.name, uri=self.sqlalchemy_uri, warehouse=self.warehouse.as_uri())


@pytest.fixture(scope="session")
def floe_bin() -> str:
    path = required_env("FLOE_BIN")
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.fail(f"FLOE_BIN={path} is not an executable file: build it (cargo build) first", pytrace=False)
    return path


def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


@pytest.fixture(params=["sqlite", "postgres"])
def catalog(request, tmp_path: Path, floe_bin: str) -> CatalogEnv:
    """A fresh, empty catalog: a SQLite file in a temp dir, or a uniquely named catalog on the test server."""
    data_dir = tmp_path / "floe-data"
    data_dir.mkdir()
    config = tmp_path / "floe.toml"
    if request.param == "sqlite":
        name = "floe"
        # Defaults under test: catalog uri sqlite:<data_dir>/catalog.db, warehouse <data_dir>/warehouse.
        warehouse = data_dir / "warehouse"
        config.write_text(f"data_dir = {_toml_str(str(data_dir))}\n\n[catalog]\nname = {_toml_str(name)}\n")
        sqlalchemy_uri = f"sqlite:///{data_dir / 'catalog.db'}"
    else:
        pg_uri = required_env("FLOE_TEST_POSTGRES")
        if not pg_uri.startswith("postgresql://"):
            pytest.fail(f"FLOE_TEST_POSTGRES should start with postgresql://, got {pg_uri}", pytrace=False)
        # The database outlives the test: a unique catalog name keeps runs apart.
        name = f"floe_{uuid.uuid4().hex[:12]}"
        warehouse = tmp_path / "warehouse"
        config.write_text(
            f"data_dir = {_toml_str(str(data_dir))}\n\n[catalog]\nname = {_toml_str(name)}\n"
            f"uri = {_toml_str(pg_uri)}\nwarehouse = {_toml_str(str(warehouse))}\n"
        )
        sqlalchemy_uri = "postgresql+psycopg2://" + pg_uri[len("postgresql://") :]
    return CatalogEnv(request.param, name, data_dir, warehouse, sqlalchemy_uri, Floe(floe_bin, config))


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """The test broker's bootstrap address (127.0.0.1:<port>)."""
    return required_env("FLOE_TEST_KAFKA")


@pytest.fixture
def procs():
    """Registry of the child processes a test starts. Whatever still runs when the test ends
    (including SIGSTOPped processes) is SIGKILLed, and the test is told about it."""
    from loader_harness import Processes

    registry = Processes()
    yield registry
    leftovers = registry.kill_all()
    if leftovers:
        print("killed processes left running by the test: " + "; ".join(leftovers))


@dataclass
class AwsEnv:
    """The test's AWS emulator (moto, scripts/moto.sh): its endpoint and the one key it accepts."""

    endpoint: str
    access_key_id: str
    secret_access_key: str
    region: str = "us-east-1"

    def client(self, service: str, **overrides):
        import boto3

        kw = dict(endpoint_url=self.endpoint, region_name=self.region, aws_access_key_id=self.access_key_id,
                  aws_secret_access_key=self.secret_access_key)
        kw.update(overrides)
        return boto3.client(service, **kw)

    def new_bucket(self, prefix: str = "floe-test") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client("s3").create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key in the bucket (under prefix), listed by boto3."""
        s3 = self.client("s3")
        out: list[str] = []
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            out += [o["Key"] for o in page.get("Contents", [])]
        return out

    def env(self, **overrides: str) -> dict[str, str]:
        """Environment for a floe process: credentials through the standard chain (variables)."""
        env = dict(os.environ)
        env.update({"AWS_ACCESS_KEY_ID": self.access_key_id, "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
                    "AWS_REGION": self.region, "AWS_EC2_METADATA_DISABLED": "true", "NO_COLOR": "1"})
        env.update(overrides)
        return env

    def pyiceberg_props(self) -> dict[str, str]:
        return {"s3.endpoint": self.endpoint, "s3.access-key-id": self.access_key_id,
                "s3.secret-access-key": self.secret_access_key, "s3.region": self.region}

    def storage_toml(self) -> str:
        """floe's `[aws]` (one endpoint for S3 and Secrets Manager) and `[storage.s3]` for the emulator;
        credentials come from the environment."""
        return (f"[aws]\nregion = \"{self.region}\"\nendpoint = \"{self.endpoint}\"\n\n"
                "[storage.s3]\npath_style_access = true\n")


@pytest.fixture(scope="session")
def aws() -> AwsEnv:
    return AwsEnv(required_env("FLOE_TEST_AWS"), required_env("FLOE_TEST_AWS_ACCESS_KEY_ID"),
                  required_env("FLOE_TEST_AWS_SECRET_ACCESS_KEY"))


def duckdb_connect() -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the iceberg and avro extensions loaded from their PyPI packages
    (no download at run time: autoinstall and autoload are off)."""
    import duckdb_extension_avro
    import duckdb_extension_httpfs
    import duckdb_extension_iceberg

    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    for module, name in ((duckdb_extension_avro, "avro"), (duckdb_extension_httpfs, "httpfs"),
                         (duckdb_extension_iceberg, "iceberg")):
        pattern = os.path.join(os.path.dirname(module.__file__), "extensions", "*", f"{name}.duckdb_extension")
        found = glob.glob(pattern)
        if not found:
            pytest.fail(f"no {name}.duckdb_extension in the {module.__name__} package ({pattern})", pytrace=False)
        con.execute(f"LOAD '{found[0]}'")
    return con


@pytest.fixture
def rest_server(tmp_path):
    """Starts REST catalog servers of the test's own (loader_harness.RestServer); all are stopped when
    the test ends."""
    from loader_harness import RestServer

    started = []

    def start(name: str = "rest", warehouse: str | None = None, env: dict[str, str] | None = None) -> RestServer:
        server = RestServer(tmp_path / f"{name}-server", warehouse, env)
        started.append(server)
        return server

    yield start
    for s in started:
        s.stop()
