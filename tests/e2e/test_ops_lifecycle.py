"""Lifecycle (issue #8): graceful shutdown on SIGTERM and config reload on SIGHUP."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

import psycopg
import pytest
import yaml

from proxy.auth.scram import make_verifier
from proxy.pgcluster import PgCluster
from tests.e2e.conftest import Env
from tests.support.ops import audit_rows, http_get, metrics, ops_config, wait_for
from tests.support.proxy_process import ProxyProcess


def test_sigterm_drains_running_queries_and_ends_idle_sessions_with_57p01(
    pg_cluster: PgCluster, env: Env, unique_name: Callable[[str], str]
) -> None:
    cfg, port = ops_config(pg_cluster, env.config, "shutdown", unique_name)
    p = ProxyProcess(cfg).start()
    assert p.proc is not None
    idle = psycopg.connect(p.dsn("alice", "alice-pw"), autocommit=True)
    busy = psycopg.connect(p.dsn("carol", "carol-pw"), autocommit=True)
    outcome: dict[str, object] = {}
    # A lock on orders holds the busy session's query in the data database for as long
    # as the test wants: a query that is still running when SIGTERM arrives.
    locker = psycopg.connect(env.tpch_dsn)
    locker.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")

    def run_busy() -> None:
        outcome["rows"] = busy.execute("SELECT COUNT(*) FROM orders WHERE o_totalprice > 4242").fetchall()
        try:
            busy.execute("SELECT COUNT(*) FROM orders WHERE o_totalprice > 4343").fetchall()
        except psycopg.Error as e:
            outcome["next"] = str(e)

    t = threading.Thread(target=run_busy)
    t.start()
    try:
        with psycopg.connect(env.tpch_dsn, autocommit=True) as watch:
            wait_for(lambda: watch.execute(
                "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query LIKE '%orders%'").fetchone(), what="the busy query to block")  # fmt: skip
        p.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: http_get(port, "/health")[0] == 503, what="/health to answer 503")
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(p.dsn("alice", "alice-pw"), connect_timeout=2)
        with pytest.raises(psycopg.OperationalError, match="administrator command"):
            idle.execute("SELECT 1").fetchall()
        assert p.proc.poll() is None, "the proxy must wait for the running query"
        assert t.is_alive()
    finally:
        locker.commit()
        locker.close()
    t.join(30)
    assert outcome["rows"] and isinstance(outcome["rows"], list) and len(outcome["rows"]) == 1
    assert "administrator command" in str(outcome.get("next"))
    assert p.proc.wait(30) == 0
    p.proc = None
    # The audit was flushed before exit: the answered query and the refused one are there.
    rows = audit_rows(cfg, "analyst = 'carol'")
    assert [(r["decision"], r["sqlstate"]) for r in rows][-2:] == [("answered", "00000"),
                                                                   ("failed", "57P01")]  # fmt: skip
    idle.close()
    busy.close()


def test_sighup_reloads_analysts_and_defaults_and_names_what_needs_a_restart(
    pg_cluster: PgCluster, env: Env, unique_name: Callable[[str], str]
) -> None:
    cfg, port = ops_config(pg_cluster, env.config, "reload", unique_name)
    p = ProxyProcess(cfg).start()
    assert p.proc is not None
    try:
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(p.dsn("frank", "frank-pw"))
        data = yaml.safe_load(cfg.read_text())
        data["analysts"].append({"name": "frank", "password": make_verifier("frank-pw"),
                                 "budget_epsilon": "4", "max_epsilon_per_query": "1"})  # fmt: skip
        data["privacy"]["default_epsilon"] = "0.3"
        data["listen"]["port"] = 1
        data["backend"]["statement_timeout_ms"] = 1234
        cfg.write_text(yaml.safe_dump(data, sort_keys=False))
        p.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: metrics(port).get('dpproxy_config_reloads_total{result="ok"}'), what="reload")
        with psycopg.connect(p.dsn("frank", "frank-pw"), autocommit=True) as conn:
            assert conn.execute("SHOW dp.epsilon").fetchone() == ("0.3",)
        log = p.log.read_text()
        assert "not reloadable" in log
        assert "backend.statement_timeout_ms" in log and "listen.port" in log
        assert "1234" not in log  # names only, never values
        # An invalid file changes nothing; the proxy keeps serving.
        data["analysts"][-1]["password"] = "clear-text"
        cfg.write_text(yaml.safe_dump(data, sort_keys=False))
        p.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: metrics(port).get('dpproxy_config_reloads_total{result="error"}'), what="reload")
        with psycopg.connect(p.dsn("frank", "frank-pw"), autocommit=True) as conn:
            conn.execute("SELECT COUNT(*) FROM orders").fetchall()
        assert "invalid" in p.log.read_text()
    finally:
        p.stop()
