"""The audit log (issue #8): every statement, normalized, append-only; `dpproxy audit`/`explain`."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import asyncpg
import psycopg
import pytest

from accounting.ledger import SCHEMA_SQL
from proxy.audit import AuditEntry, AuditWriter, ensure_audit_schema, read_audit, statement_hash
from proxy.pgcluster import PgCluster
from tests.e2e.conftest import Env
from tests.support.ledgers import dpproxy_cli, fresh_ledger_config, ledger_dsn
from tests.support.ops import audit_rows, ops_config, wait_for
from tests.support.proxy_process import ProxyProcess


def test_every_statement_is_audited_with_decision_sqlstate_and_cost(
    audited: tuple[ProxyProcess, Path],
) -> None:
    p, cfg = audited
    unparseable = "SELECT COUNT(*) FROM orders WHERE"
    with psycopg.connect(p.dsn("dave", "dave-pw"), autocommit=True) as conn:
        conn.execute("SET dp.epsilon = 0.25")
        conn.execute("SELECT COUNT(*) FROM orders WHERE o_totalprice > 777").fetchall()
        conn.execute("SELECT COUNT(*) FROM orders WHERE o_totalprice > 777").fetchall()
        conn.execute("SELECT COUNT(*) FROM customer WHERE c_acctbal > %s", (5,)).fetchall()
        for bad in ("SELECT * FROM orders", unparseable):
            with pytest.raises(psycopg.Error):
                conn.execute(bad)
    rows = wait_for(lambda: (r := audit_rows(cfg, "analyst = 'dave'")) and len(r) >= 6 and r,
                    what="six audit rows")  # fmt: skip
    assert len(rows) == 6
    by = [(r["route"], r["decision"], r["sqlstate"]) for r in rows]
    assert by == [
        ("session", "answered", "00000"),
        ("dp", "answered", "00000"),
        ("dp", "answered", "00000"),
        ("dp", "answered", "00000"),
        ("dp", "refused", "42501"),  # SELECT * is refused by the rewriter
        ("unrouted", "refused", "42601"),  # a syntax error never reaches a route
    ]
    # Normalized statements are regenerated from the tree; parameters stay placeholders.
    assert rows[1]["statement"] == "SELECT COUNT(*) FROM orders WHERE o_totalprice > 777"
    assert rows[3]["statement"] == "SELECT COUNT(*) FROM customer WHERE c_acctbal > $1"
    assert rows[3]["protocol"] == "extended"
    # Unparseable text is kept as a hash and a length only.
    assert rows[5]["statement"] is None
    assert rows[5]["statement_hash"] == statement_hash(unparseable)
    assert rows[5]["statement_length"] == len(unparseable)
    # Costs: the new answers cost what the charge log says; the repeat was a free cache hit.
    assert rows[1]["cache_hit"] is False and rows[2]["cache_hit"] is True
    assert rows[2]["epsilon"] == 0
    with psycopg.connect(ledger_dsn(cfg)) as c:
        charged = c.execute("SELECT sum(epsilon) FROM dpproxy.charges WHERE analyst = 'dave'").fetchone()
    assert charged is not None and sum(Decimal(r["epsilon"] or 0) for r in rows) == charged[0]
    assert rows[1]["epsilon"] == Decimal("0.25")


def test_audit_is_append_only(audited: tuple[ProxyProcess, Path]) -> None:
    p, cfg = audited
    with psycopg.connect(p.dsn("dave", "dave-pw"), autocommit=True) as conn:
        conn.execute("SHOW dp.epsilon").fetchall()
    wait_for(lambda: audit_rows(cfg), what="an audit row")
    with psycopg.connect(ledger_dsn(cfg), autocommit=True) as c:
        for sql in ("UPDATE dpproxy.audit SET decision = 'answered'", "DELETE FROM dpproxy.audit",
                    "TRUNCATE dpproxy.audit"):  # fmt: skip
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                c.execute(sql)


def test_audit_command_exports_csv_json_and_table(audited: tuple[ProxyProcess, Path]) -> None:
    p, cfg = audited
    with psycopg.connect(p.dsn("mallory", "mallory-pw"), autocommit=True) as conn:
        conn.execute("SELECT COUNT(*) FROM orders WHERE o_orderpriority = '1-URGENT'").fetchall()
        with pytest.raises(psycopg.Error):
            conn.execute("DELETE FROM orders")
    expected = wait_for(lambda: (r := audit_rows(cfg, "analyst = 'mallory'")) and len(r) >= 2 and r,
                        what="mallory's audit rows")  # fmt: skip
    out = dpproxy_cli("audit", "--analyst", "mallory", "--format", "csv", "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert [r["id"] for r in rows] == [str(r["id"]) for r in expected]
    assert rows[1]["decision"] == "refused" and rows[1]["sqlstate"] == "42501"
    out = dpproxy_cli("audit", "--analyst", "mallory", "--format", "json", "--since", "1h",
                      "--config", str(cfg))  # fmt: skip
    data = json.loads(out.stdout)
    assert [d["statement"] for d in data] == [r["statement"] for r in expected]
    out = dpproxy_cli("audit", "--analyst", "mallory", "--config", str(cfg))
    assert "(2 rows)" in out.stdout and "DELETE FROM orders" in out.stdout
    out = dpproxy_cli("audit", "--since", "2999-01-01", "--format", "json", "--config", str(cfg))
    assert json.loads(out.stdout) == []
    bad = dpproxy_cli("audit", "--since", "yesterday", "--config", str(cfg))
    assert bad.returncode == 2 and "--since" in bad.stderr


def test_explain_command_prints_the_plan_and_spends_nothing(audited: tuple[ProxyProcess, Path]) -> None:
    _p, cfg = audited

    def charges() -> int:
        with psycopg.connect(ledger_dsn(cfg)) as c:
            return int(c.execute("SELECT count(*) FROM dpproxy.charges").fetchone()[0])  # type: ignore[index]

    n = charges()
    out = dpproxy_cli("explain", "--analyst", "dave", "--config", str(cfg),
                      "SELECT o_orderpriority, COUNT(*) FROM orders GROUP BY o_orderpriority")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "Rewritten SQL: " in out.stdout and "epsilon 1" in out.stdout
    assert "remaining on dataset" in out.stdout
    assert charges() == n
    refused = dpproxy_cli("explain", "--analyst", "dave", "--config", str(cfg), "SELECT * FROM orders")
    assert refused.returncode == 2 and "42501" in refused.stderr
    over = dpproxy_cli("explain", "--analyst", "dave", "--epsilon", "500", "--config", str(cfg),
                       "SELECT COUNT(*) FROM orders")  # fmt: skip
    assert over.returncode == 2 and "per-query limit" in over.stderr
    nobody = dpproxy_cli("explain", "--analyst", "nobody", "--config", str(cfg), "SELECT COUNT(*) FROM orders")
    assert nobody.returncode == 2 and "no analyst" in nobody.stderr


def test_synchronous_audit_commits_before_the_answer(
    pg_cluster: PgCluster, env: Env, unique_name: Callable[[str], str]
) -> None:
    cfg, _port = ops_config(pg_cluster, env.config, "audit_sync", unique_name,
                            audit_sync=True, audit_flush_ms=5)  # fmt: skip
    p = ProxyProcess(cfg).start()
    try:
        with psycopg.connect(p.dsn("erin", "erin-pw"), autocommit=True) as conn:
            conn.execute("SET dp.epsilon = 0.1")
            for i in range(5):
                conn.execute(f"SELECT COUNT(*) FROM orders WHERE o_custkey > {i}").fetchall()
                # No waiting: the row committed before the answer was sent.
                assert len(audit_rows(cfg, "analyst = 'erin'")) == i + 2
    finally:
        p.stop()


def _entry(analyst: str, i: int) -> AuditEntry:
    """An audit entry of `analyst` for the statement `SELECT i`."""
    return AuditEntry(at=datetime.now(UTC), instance="t", analyst=analyst, dataset="d",
                      protocol="simple", route="catalog", statement=f"SELECT {i}",
                      statement_hash=statement_hash(f"SELECT {i}"), statement_length=8,
                      decision="answered", sqlstate="00000", epsilon=None, delta=None,
                      cache_hit=None, duration_ms=0.1)  # fmt: skip


def test_a_full_audit_queue_holds_the_statement_back_and_loses_nothing(
    pg_cluster: PgCluster, env: Env, unique_name: Callable[[str], str]
) -> None:
    cfg = fresh_ledger_config(pg_cluster, env.config, "auditq", unique_name)

    async def go() -> tuple[list[bool], int, list[str]]:
        pool = await asyncpg.create_pool(ledger_dsn(cfg), min_size=1, max_size=2)
        try:
            async with pool.acquire() as conn:
                await conn.execute(SCHEMA_SQL)  # the ledger's schema, which the audit joins
            await ensure_audit_schema(pool)
            writer = AuditWriter(pool, flush_ms=20, max_queue=2)
            # Nothing has yielded to the writer yet: the third entry finds the queue full.
            offered = [writer.offer(_entry("q", i)) for i in range(3)]
            await writer.write(_entry("q", 2))  # what Ops.end does then: wait for room
            left = await writer.close()
            rows = await read_audit(pool, analyst="q")
            return offered, left, [r["statement"] for r in rows]
        finally:
            await pool.close()

    offered, left, statements = asyncio.run(go())
    assert offered == [True, True, False]
    assert left == 0
    assert statements == ["SELECT 0", "SELECT 1", "SELECT 2"]


def test_a_backlog_of_full_batches_commits_without_waiting_a_window(
    pg_cluster: PgCluster, env: Env, unique_name: Callable[[str], str]
) -> None:
    # The window gathers company for a batch that is not full; a backlog of full
    # batches must commit back to back, or the window caps the statement rate (it held
    # a worker to ~5,900 audited statements a second at 100 ms and 500 a batch).
    cfg = fresh_ledger_config(pg_cluster, env.config, "auditb", unique_name)

    async def go() -> tuple[list[str], int]:
        pool = await asyncpg.create_pool(ledger_dsn(cfg), min_size=1, max_size=2)
        try:
            async with pool.acquire() as conn:
                await conn.execute(SCHEMA_SQL)
            await ensure_audit_schema(pool)
            # A ten-minute window: any batch that waited for it would never show up here.
            writer = AuditWriter(pool, flush_ms=600_000, max_batch=5)
            assert all(writer.offer(_entry("b", i)) for i in range(10))  # two full batches
            rows: list[str] = []
            for _ in range(200):  # up to ~20 s for two commits
                rows = [r["statement"] for r in await read_audit(pool, analyst="b")]
                if len(rows) == 10:
                    break
                await asyncio.sleep(0.1)
            left = await writer.close()
            return rows, left
        finally:
            await pool.close()

    rows, left = asyncio.run(go())
    assert sorted(rows) == sorted(f"SELECT {i}" for i in range(10))
    assert left == 0
