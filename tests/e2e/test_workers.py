"""`listen.workers`: several processes behind one port (proxy/workers.py).

Sessions are handed to the workers in turn; a cancel accepted by one worker reaches the
session on another; the budget is one budget; connection limits are shared out; the
whole stops cleanly on SIGTERM.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import yaml

from proxy.pgcluster import PgCluster
from tests.e2e.conftest import Env
from tests.support.ledgers import add_analyst, dpproxy_cli, fresh_ledger_config
from tests.support.ops import cancel_blocked_query, wait_for
from tests.support.proxy_process import ProxyProcess, free_port

WORKER_SHIFT = 24  # a session's pid carries its worker's index above these bits


@pytest.fixture(scope="module")
def two_workers(
    pg_cluster: PgCluster, env: Env, unique_name: Callable[[str], str]
) -> Iterator[tuple[ProxyProcess, Path]]:
    cfg = fresh_ledger_config(pg_cluster, env.config, "workers", unique_name,
                              listen={"workers": 2},
                              limits={"max_connections_per_analyst": 4})  # fmt: skip
    for name, budget in (("wk", "1000"), ("wkb", "2")):
        add_analyst(cfg, name, budget)
    proxy = ProxyProcess(cfg).start()
    yield proxy, cfg
    proxy.stop()


def test_sessions_alternate_between_workers(two_workers: tuple[ProxyProcess, Path]) -> None:
    proxy, _ = two_workers
    conns = [psycopg.connect(proxy.dsn("wk", "pw"), autocommit=True) for _ in range(4)]
    try:
        workers = [c.info.backend_pid >> WORKER_SHIFT for c in conns]
        assert sorted(workers) == [0, 0, 1, 1]
        for c in conns:
            (count,) = c.execute("SELECT COUNT(*) FROM orders").fetchone()  # type: ignore[misc]
            assert count > 0
    finally:
        for c in conns:
            c.close()


def test_budget_is_one_budget_across_workers(two_workers: tuple[ProxyProcess, Path]) -> None:
    proxy, _ = two_workers
    conns = [psycopg.connect(proxy.dsn("wkb", "pw"), autocommit=True) for _ in range(2)]
    try:
        assert {c.info.backend_pid >> WORKER_SHIFT for c in conns} == {0, 1}
        outcomes = []
        for i, c in enumerate((conns[0], conns[1], conns[0])):
            c.execute("SET dp.epsilon = 1")
            try:
                c.execute(f"SELECT COUNT(*) FROM orders WHERE o_custkey > {i}").fetchall()
                outcomes.append("answered")
            except psycopg.Error as e:
                outcomes.append(str(e.sqlstate))
        assert outcomes == ["answered", "answered", "53Z01"]
    finally:
        for c in conns:
            c.close()


def test_cancel_reaches_the_session_on_any_worker(two_workers: tuple[ProxyProcess, Path], env: Env) -> None:
    proxy, _ = two_workers
    # Each cancel request is a connection of its own, handed to the next worker in turn:
    # of two consecutive cancels, one lands on the other worker and is forwarded.
    with psycopg.connect(proxy.dsn("wk", "pw"), autocommit=True) as conn:
        for attempt in range(2):
            with psycopg.connect(env.tpch_dsn) as lock:
                lock.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
                cancel_blocked_query(conn, env.tpch_dsn,
                                     f"SELECT COUNT(*) FROM orders WHERE o_totalprice > {30 + attempt}")
                lock.rollback()


def test_connection_limits_are_shared_out(two_workers: tuple[ProxyProcess, Path]) -> None:
    proxy, _ = two_workers
    # max_connections_per_analyst 4 over 2 workers: 2 each, 4 in all.
    conns = [psycopg.connect(proxy.dsn("wk", "pw"), autocommit=True) for _ in range(4)]
    try:
        with pytest.raises(psycopg.OperationalError, match="too many connections"):
            psycopg.connect(proxy.dsn("wk", "pw"), autocommit=True)
    finally:
        for c in conns:
            c.close()


def test_a_worker_failing_at_start_up_stops_the_whole(
    pg_cluster: PgCluster, env: Env, unique_name: Callable[[str], str]
) -> None:
    # An unreachable data database: each worker fails at start; restarting it would only
    # fail again, so the parent stops and exits non-zero, naming what happened.
    closed = free_port()
    cfg = fresh_ledger_config(pg_cluster, env.config, "workers_fail", unique_name,
                              listen={"workers": 2})  # fmt: skip
    settings = yaml.safe_load(cfg.read_text())
    settings["backend"]["dsn"] = f"postgresql://nobody@127.0.0.1:{closed}/tpch"
    cfg.write_text(yaml.safe_dump(settings))
    out = dpproxy_cli("serve", "--config", str(cfg), "--port", str(free_port()))
    assert out.returncode == 1
    assert "exited at start-up" in out.stdout, out.stdout + out.stderr


def test_sighup_and_sigterm_reach_every_worker(
    pg_cluster: PgCluster, env: Env, unique_name: Callable[[str], str]
) -> None:
    cfg = fresh_ledger_config(pg_cluster, env.config, "workers_stop", unique_name,
                              listen={"workers": 2})  # fmt: skip
    proxy = ProxyProcess(cfg).start()
    assert proxy.proc is not None
    # The parent's socket accepts at once; wait until both workers serve.
    wait_for(lambda: proxy.log.read_text().count("listening on") == 2 or None,
             what="two workers listening")  # fmt: skip
    proxy.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: proxy.log.read_text().count("reload: applied") == 2 or None,
             what="both workers to reload")  # fmt: skip
    proxy.proc.terminate()
    assert proxy.proc.wait(20) == 0
    log = proxy.log.read_text()
    assert log.count("stopped") == 2, log


@pytest.mark.slow
def test_a_worker_that_dies_later_is_replaced(
    pg_cluster: PgCluster, env: Env, unique_name: Callable[[str], str]
) -> None:
    cfg = fresh_ledger_config(pg_cluster, env.config, "workers_respawn", unique_name,
                              listen={"workers": 2})  # fmt: skip
    add_analyst(cfg, "wr", "100")
    proxy = ProxyProcess(cfg).start()
    try:
        assert proxy.proc is not None
        wait_for(lambda: proxy.log.read_text().count("listening on") == 2 or None,
                 what="two workers listening")  # fmt: skip
        time.sleep(10.5)  # past the start-up window, inside which a death stops the whole
        parent = proxy.proc.pid
        kids = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        assert len(kids) == 2
        os.kill(int(kids[0]), signal.SIGKILL)
        wait_for(lambda: proxy.log.read_text().count("listening on") == 3 or None,
                 what="a new worker listening")  # fmt: skip
        assert "starting a new one" in proxy.log.read_text()
        conns = [psycopg.connect(proxy.dsn("wr", "pw"), autocommit=True) for _ in range(2)]
        try:
            assert {c.info.backend_pid >> WORKER_SHIFT for c in conns} == {0, 1}
            for c in conns:
                assert c.execute("SELECT COUNT(*) FROM orders").fetchone() is not None
        finally:
            for c in conns:
                c.close()
    finally:
        proxy.stop()
