"""Helpers for the operations tests (issue #8): configs with metrics, HTTP, polling."""

from __future__ import annotations

import contextlib
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psycopg

from proxy.metrics import parse_exposition
from proxy.pgcluster import PgCluster
from tests.support.ledgers import fresh_ledger_config, ledger_dsn
from tests.support.proxy_process import ProxyProcess, free_port

T = TypeVar("T")


def ops_config(cluster: PgCluster, base: Path, name: str, unique: Any, **observability: Any) -> tuple[Path, int]:
    """A config with its own fresh ledger and /metrics on a free port (JSON logs)."""
    port = free_port()
    obs = {"metrics_port": port, "log_format": "json", "audit_flush_ms": 20,
           "log_statements": True, **observability}  # fmt: skip
    cfg = fresh_ledger_config(cluster, base, name, unique, observability=obs)
    return cfg, port


@contextlib.contextmanager
def ops_proxy(cluster: PgCluster, base: Path, name: str, unique: Any) -> Iterator[tuple[ProxyProcess, Path]]:
    """A running dpproxy on an `ops_config` (its own ledger, so its audit rows can be
    counted), and that config; stopped on exit."""
    cfg, _port = ops_config(cluster, base, name, unique)
    proxy = ProxyProcess(cfg).start()
    try:
        yield proxy, cfg
    finally:
        proxy.stop()


def http_get(port: int, path: str) -> tuple[int, str]:
    """GET http://127.0.0.1:port/path -> (status, body)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return int(r.status), r.read().decode()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read().decode()


def metrics(port: int) -> dict[str, float]:
    """The proxy's /metrics samples."""
    code, body = http_get(port, "/metrics")
    assert code == 200, body
    return parse_exposition(body)


def wait_for(fn: Callable[[], T | None], timeout: float = 10.0, what: str = "condition") -> T:
    """Poll `fn` until it returns a truthy value (a bounded wait for an asynchronous write)."""
    deadline = time.monotonic() + timeout
    while True:
        out = fn()
        if out:
            return out
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def audit_rows(config: Path, where: str = "true", params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    """Rows of dpproxy.audit in the config's ledger, oldest first."""
    with psycopg.connect(ledger_dsn(config)) as c:
        cur = c.execute(f"SELECT * FROM dpproxy.audit WHERE {where} ORDER BY id", params)  # type: ignore[arg-type]
        cols = [d.name for d in cur.description or []]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


def wait_lock_waiters(tpch_dsn: str, blocked: bool, timeout: float = 20.0) -> bool:
    """Whether some backend waits on a lock (or none does, `blocked` False) within the
    timeout: how tests see a DP query reach the database, and a cancel reach it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with psycopg.connect(tpch_dsn, autocommit=True) as c:
            row = c.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'").fetchone()
        if (row is not None and row[0] > 0) == blocked:
            return True
        time.sleep(0.1)
    return False


def cancel_blocked_query(conn: psycopg.Connection, tpch_dsn: str, sql: str) -> None:
    """Run `sql` through `conn` (it must block on a lock someone holds on its table),
    cancel it with `conn.cancel()`, and check that the query failed with 57014 and that
    the backend query itself stopped (not just the client's wait)."""
    errors: list[BaseException] = []

    def victim() -> None:
        try:
            conn.execute(sql)
        except BaseException as e:  # noqa: BLE001 - collected for the assertion
            errors.append(e)

    t = threading.Thread(target=victim)
    t.start()
    assert wait_lock_waiters(tpch_dsn, True), "the DP query never reached the backend"
    conn.cancel()
    t.join(30)
    assert len(errors) == 1 and isinstance(errors[0], psycopg.errors.QueryCanceled), errors
    assert wait_lock_waiters(tpch_dsn, False)
