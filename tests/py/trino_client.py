"""A small client for Trino's HTTP protocol (POST /v1/statement, then follow nextUri), and the
server that test_trino.py shares across its tests (started by scripts/trino.sh).

Values come back typed by each column's type signature, exactly: DECIMAL as Decimal, VARBINARY as
bytes, DATE/TIME/TIMESTAMP as datetime objects (TIMESTAMP WITH TIME ZONE aware), UUID as UUID,
ARRAY as list, MAP as dict, ROW as dict by field name, REAL as the float32 value it holds.

The client declares the PARAMETRIC_DATETIME capability: without it Trino rounds every time and
timestamp value to milliseconds for old clients, and microsecond differences would go unseen.
"""

from __future__ import annotations

import base64
import json
import struct
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import date, datetime, time as dtime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

USER = "floe"


class TrinoError(Exception):
    def __init__(self, sql: str, error: dict) -> None:
        self.error = error
        self.name = error.get("errorName", "?")
        self.message = error.get("message", "?")
        super().__init__(f"{self.name}: {self.message}\n  in: {sql}")


@dataclass
class Result:
    columns: list[dict]
    rows: list[list[Any]]
    update_type: str | None = None
    update_count: int | None = None

    @property
    def names(self) -> list[str]:
        return [c["name"] for c in self.columns]

    def dicts(self) -> list[dict[str, Any]]:
        names = self.names
        return [dict(zip(names, r)) for r in self.rows]

    def scalar(self) -> Any:
        assert len(self.rows) == 1 and len(self.rows[0]) == 1, f"expected one value, got {self.rows!r}"
        return self.rows[0][0]


class Trino:
    """One server (its base URI); `query` runs one statement and returns every row, decoded."""

    def __init__(self, uri: str) -> None:
        self.uri = uri.rstrip("/")

    def _headers(self, catalog: str | None, schema: str | None) -> dict[str, str]:
        h = {"X-Trino-User": USER, "X-Trino-Client-Capabilities": "PARAMETRIC_DATETIME",
             "X-Trino-Source": "floe-tests"}
        if catalog:
            h["X-Trino-Catalog"] = catalog
        if schema:
            h["X-Trino-Schema"] = schema
        return h

    def _fetch(self, req: urllib.request.Request, deadline: float) -> dict:
        # 429/502/503: the protocol says retry the same URI.
        while True:
            try:
                with urllib.request.urlopen(req, timeout=max(1.0, min(60.0, deadline - time.monotonic()))) as r:
                    return json.load(r)
            except urllib.error.HTTPError as e:
                if e.code in (429, 502, 503) and time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
                raise

    def query(self, sql: str, catalog: str | None = None, schema: str | None = None,
              timeout: float = 180) -> Result:
        deadline = time.monotonic() + timeout
        headers = self._headers(catalog, schema)
        req = urllib.request.Request(self.uri + "/v1/statement", data=sql.encode(), method="POST", headers=headers)
        doc = self._fetch(req, deadline)
        columns: list[dict] | None = None
        raw: list[list[Any]] = []
        while True:
            if "error" in doc:
                raise TrinoError(sql, doc["error"])
            if doc.get("columns") and columns is None:
                columns = doc["columns"]
            raw.extend(doc.get("data") or [])
            nxt = doc.get("nextUri")
            if not nxt:
                break
            if time.monotonic() > deadline:
                self._cancel(nxt)
                raise TimeoutError(f"Trino query still running after {timeout}s: {sql}")
            doc = self._fetch(urllib.request.Request(nxt, headers=headers), deadline)
        columns = columns or []
        sigs = [c["typeSignature"] for c in columns]
        rows = [[decode(sig, v) for sig, v in zip(sigs, r)] for r in raw]
        return Result(columns, rows, doc.get("updateType"), doc.get("updateCount"))

    def _cancel(self, next_uri: str) -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(next_uri, method="DELETE", headers={"X-Trino-User": USER}), timeout=5)
        except Exception:  # noqa: BLE001 - best effort
            pass

    def info(self) -> dict:
        with urllib.request.urlopen(self.uri + "/v1/info", timeout=10) as r:
            return json.load(r)


# --- values -------------------------------------------------------------------------------------


def _float32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


def _float(v: Any) -> float:
    # NaN and the infinities come as strings.
    return float(v)


def _time(text: str) -> dtime:
    return dtime.fromisoformat(text)


def _timestamp(text: str) -> datetime:
    # "2024-01-02 03:04:05.678901"
    return datetime.fromisoformat(text)


def _timestamp_tz(text: str) -> datetime:
    # "2024-01-02 03:04:05.678901 UTC", "... +05:30" or "... Europe/Paris"
    wall, zone = text.rsplit(" ", 1)
    local = datetime.fromisoformat(wall)
    if zone == "UTC":
        return local.replace(tzinfo=timezone.utc)
    if zone[0] in "+-":
        sign = 1 if zone[0] == "+" else -1
        hours, minutes = zone[1:].split(":")
        return local.replace(tzinfo=timezone(sign * timedelta(hours=int(hours), minutes=int(minutes))))
    return local.replace(tzinfo=ZoneInfo(zone))


def decode(sig: dict, v: Any) -> Any:
    """A value of Trino's JSON protocol, typed by its column's type signature."""
    if v is None:
        return None
    raw = sig["rawType"]
    args = sig.get("arguments") or []
    if raw in ("boolean", "tinyint", "smallint", "integer", "bigint", "varchar", "char", "json"):
        return v
    if raw == "double":
        return _float(v)
    if raw == "real":
        return _float32(_float(v))
    if raw == "decimal":
        return Decimal(v)
    if raw == "varbinary":
        return base64.b64decode(v)
    if raw == "date":
        return date.fromisoformat(v)
    if raw == "time":
        return _time(v)
    if raw == "timestamp":
        return _timestamp(v)
    if raw == "timestamp with time zone":
        return _timestamp_tz(v)
    if raw == "uuid":
        return uuid.UUID(v)
    if raw == "array":
        return [decode(args[0]["value"], x) for x in v]
    if raw == "map":
        ksig, vsig = args[0]["value"], args[1]["value"]
        # JSON object keys are strings; typed keys come back from their text.
        return {decode(ksig, k) if ksig["rawType"] in ("varchar", "char") else _key(ksig, k): decode(vsig, x)
                for k, x in v.items()}
    if raw == "row":
        out = {}
        for i, (a, x) in enumerate(zip(args, v)):
            field = a["value"]
            name = (field.get("fieldName") or {}).get("name") or f"field{i}"
            out[name] = decode(field["typeSignature"], x)
        return out
    raise AssertionError(f"trino_client.decode: no decoding for Trino type {raw!r} (value {v!r})")


def _key(sig: dict, text: str) -> Any:
    raw = sig["rawType"]
    if raw in ("tinyint", "smallint", "integer", "bigint"):
        return int(text)
    if raw == "boolean":
        return text == "true"
    return decode(sig, text)


def sql_str(s: str) -> str:
    """A SQL string literal."""
    return "'" + s.replace("'", "''") + "'"


def sql_ident(s: str) -> str:
    """A quoted SQL identifier."""
    return '"' + s.replace('"', '""') + '"'


# --- the server -----------------------------------------------------------------------------------


@dataclass
class TrinoServer:
    client: Trino
    version: str
    java: str
    started_in: float | None  # seconds; None for a server started by someone else
    dir: Path | None


def start_server(repo: Path, dir: Path, timeout: float = 420) -> TrinoServer:
    """scripts/trino.sh start DIR (fetches Trino first if the cache is empty)."""
    t0 = time.monotonic()
    p = subprocess.run([str(repo / "scripts" / "trino.sh"), "start", str(dir)], capture_output=True, text=True,
                       timeout=timeout, stdin=subprocess.DEVNULL)
    took = time.monotonic() - t0
    if p.returncode != 0:
        raise RuntimeError(f"scripts/trino.sh start {dir} failed (exit {p.returncode}):\n{p.stdout}\n{p.stderr}")
    uri = p.stdout.strip().splitlines()[-1]
    client = Trino(uri)
    java = "?"
    if (dir / "java_home").exists():
        home = Path((dir / "java_home").read_text().strip())
        java = str(home)
        release = home / "release"
        if release.exists():
            for line in release.read_text().splitlines():
                if line.startswith("JAVA_RUNTIME_VERSION="):
                    java = f"Java {line.split('=', 1)[1].strip(chr(34))} ({home})"
    return TrinoServer(client, str(client.query("SELECT version()").scalar()), java, took, dir)


def stop_server(repo: Path, dir: Path) -> str:
    p = subprocess.run([str(repo / "scripts" / "trino.sh"), "stop", str(dir)], capture_output=True, text=True,
                       timeout=120, stdin=subprocess.DEVNULL)
    return (p.stdout + p.stderr).strip()


def catalog_properties(repo: Path, pg_uri: str, floe_catalog: str, warehouse: Path) -> dict[str, str]:
    """The Iceberg catalog properties scripts/trino.sh writes for floe's PostgreSQL catalog."""
    p = subprocess.run([str(repo / "scripts" / "trino.sh"), "catalog-properties", pg_uri, floe_catalog, str(warehouse)],
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    if p.returncode != 0:
        raise RuntimeError(f"scripts/trino.sh catalog-properties failed:\n{p.stdout}\n{p.stderr}")
    props = {}
    for line in p.stdout.splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.partition("=")
            props[k] = v
    return props


def rest_catalog_properties(rest_uri: str) -> dict[str, str]:
    """Iceberg catalog properties for an Iceberg REST catalog whose warehouse is on local disk
    (docs/trino.md)."""
    return {
        "connector.name": "iceberg",
        "iceberg.catalog.type": "rest",
        "iceberg.rest-catalog.uri": rest_uri,
        "fs.native-local.enabled": "true",
        "local.location": "/",
    }


def create_catalog(trino: Trino, name: str, props: dict[str, str]) -> None:
    """CREATE CATALOG (the server runs with dynamic catalog management)."""
    connector = props["connector.name"]
    with_ = ", ".join(f"{sql_ident(k)} = {sql_str(v)}" for k, v in props.items() if k != "connector.name")
    trino.query(f"CREATE CATALOG {name} USING {connector} WITH ({with_})")
