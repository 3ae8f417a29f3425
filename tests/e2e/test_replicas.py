"""Two dpproxy replicas behind one address share one ledger (issue #8).

Budget shared (the analyst's budget is spent across both), answer cache shared (a query
answered by one replica is a free cache hit on the other), audit from both.
"""

from __future__ import annotations

from collections.abc import Callable

import psycopg

from proxy.pgcluster import PgCluster
from tests.e2e.conftest import Env
from tests.support.ledgers import add_analyst, fresh_ledger_config
from tests.support.ops import audit_rows, wait_for
from tests.support.proxy_process import ProxyProcess


def test_two_replicas_share_budget_cache_and_audit(
    pg_cluster: PgCluster, env: Env, unique_name: Callable[[str], str]
) -> None:
    cfg = fresh_ledger_config(pg_cluster, env.config, "replicas", unique_name,
                              observability={"audit_flush_ms": 20})  # fmt: skip
    add_analyst(cfg, "rep", "3")
    a, b = ProxyProcess(cfg).start(), ProxyProcess(cfg).start()
    try:
        notices: list[str] = []
        ca = psycopg.connect(a.dsn("rep", "pw"), autocommit=True)
        cb = psycopg.connect(b.dsn("rep", "pw"), autocommit=True)
        for c in (ca, cb):
            c.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
            c.execute("SET dp.epsilon = 1")
        outcomes = []
        first = None
        for i, c in enumerate((ca, cb, ca, cb, ca)):
            try:
                rows = c.execute(f"SELECT COUNT(*) FROM orders WHERE o_custkey > {i}").fetchall()
                outcomes.append("answered")
                first = first or rows
            except psycopg.Error as e:
                outcomes.append(e.sqlstate)
        # Budget 3 at epsilon 1 per query, spent across both replicas.
        assert outcomes == ["answered", "answered", "answered", "53Z01", "53Z01"]
        # The first query, asked again on the other replica: the same answer, for free.
        notices.clear()
        again = cb.execute("SELECT COUNT(*) FROM orders WHERE o_custkey > 0").fetchall()
        assert again == first
        assert any("cache hit" in n for n in notices)
        ca.close()
        cb.close()
        rows = wait_for(lambda: (r := audit_rows(cfg, "analyst = 'rep'")) and len(r) >= 8 and r,
                        what="eight audit rows")  # fmt: skip
        assert len(rows) == 8
        instances = {r["instance"] for r in rows}
        assert len(instances) == 2
        by_instance = {i: [r["decision"] for r in rows if r["instance"] == i] for i in instances}
        assert sorted(len(v) for v in by_instance.values()) == [4, 4]
    finally:
        a.stop()
        b.stop()
