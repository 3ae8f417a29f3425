"""The DP path runs the bounded SQL while the ledger commits the charge (issue #7).

Rows are noised and released only after the charge has committed; a refused charge
discards the run without waiting for it; and `SELECT 1` answered from memory is still
the mirror's answer. Locks on the data table or on the ledger's rows stand in for a
slow database and a slow ledger, so the order of events is observable, not timed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from proxy.pgcluster import PgCluster
from tests.e2e.conftest import ANALYSTS, Env
from tests.support.ledgers import fresh_ledger_config, ledger_dsn
from tests.support.proxy_process import ProxyProcess


@pytest.fixture(scope="module")
def overlap_proxy(
    pg_cluster: PgCluster, env: Env, unique_name: Callable[[str], str]
) -> Iterator[tuple[ProxyProcess, Path]]:
    """A proxy with its own ledger, so charges can be counted and its rows locked."""
    cfg = fresh_ledger_config(pg_cluster, env.config, "overlap", unique_name)
    p = ProxyProcess(cfg).start()
    yield p, cfg
    p.stop()


def _connect(proxy: ProxyProcess, user: str) -> psycopg.Connection:
    return psycopg.connect(proxy.dsn(user, ANALYSTS[user].password), autocommit=True)


def _charges(cfg: Path, analyst: str) -> int:
    with psycopg.connect(ledger_dsn(cfg)) as c:
        row = c.execute("SELECT count(*) FROM dpproxy.charges WHERE analyst = %s", (analyst,)).fetchone()
    assert row is not None
    return int(row[0])


def _waiters(dsn: str) -> int:
    """Backends of this database waiting on a lock."""
    with psycopg.connect(dsn, autocommit=True) as c:
        row = c.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                        "AND datname = current_database()").fetchone()  # fmt: skip
    assert row is not None
    return int(row[0])


def _until(cond: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


def _in_thread(conn: psycopg.Connection, sql: str) -> tuple[threading.Thread, list[object]]:
    out: list[object] = []

    def run() -> None:
        try:
            out.append(conn.execute(sql).fetchall())
        except BaseException as e:  # noqa: BLE001 - collected for the assertions
            out.append(e)

    t = threading.Thread(target=run)
    t.start()
    return t, out


def test_backend_runs_while_the_charge_commits(overlap_proxy: tuple[ProxyProcess, Path], env: Env) -> None:
    proxy, cfg = overlap_proxy
    with psycopg.connect(ledger_dsn(cfg)) as ledger_lock, psycopg.connect(env.tpch_dsn) as data_lock, \
            _connect(proxy, "carol") as conn:  # fmt: skip
        conn.execute("SELECT 1")  # logged in: the analyst's rows exist in the ledger
        ledger_lock.execute("SELECT * FROM dpproxy.datasets FOR UPDATE")  # the charge blocks
        data_lock.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")  # the bounded SQL blocks
        t, out = _in_thread(conn, "SELECT COUNT(*) FROM orders WHERE o_totalprice > 21")
        try:
            # Both are under way at once: the database work does not wait for the ledger.
            assert _until(lambda: _waiters(ledger_dsn(cfg)) > 0), "the charge never started"
            assert _until(lambda: _waiters(env.tpch_dsn) > 0), "the bounded SQL did not start"
            assert _charges(cfg, "carol") == 0
            ledger_lock.rollback()
            # The charge is durable although the database has not answered yet.
            assert _until(lambda: _charges(cfg, "carol") == 1)
            assert t.is_alive() and not out
        finally:
            ledger_lock.rollback()
            data_lock.rollback()
        t.join(30)
    assert len(out) == 1 and isinstance(out[0], list) and len(out[0]) == 1


def test_rows_wait_for_the_charge(overlap_proxy: tuple[ProxyProcess, Path]) -> None:
    proxy, cfg = overlap_proxy
    with psycopg.connect(ledger_dsn(cfg)) as lock, _connect(proxy, "dave") as conn:
        conn.execute("SELECT 1")  # logged in: the analyst's rows exist in the ledger
        lock.execute("SELECT * FROM dpproxy.datasets FOR UPDATE")  # the charge blocks
        t, out = _in_thread(conn, "SELECT COUNT(*) FROM orders WHERE o_totalprice > 22")
        try:
            assert _until(lambda: _waiters(ledger_dsn(cfg)) > 0), "the charge never started"
            time.sleep(1.0)  # the bounded SQL finishes meanwhile (scale 0.01: milliseconds)
            assert t.is_alive() and not out, "rows were released before the charge committed"
            assert _charges(cfg, "dave") == 0
        finally:
            lock.rollback()
        t.join(30)
    assert len(out) == 1 and isinstance(out[0], list)
    assert _charges(cfg, "dave") == 1


def test_refused_charge_does_not_wait_for_the_backend(
    overlap_proxy: tuple[ProxyProcess, Path], env: Env
) -> None:
    proxy, cfg = overlap_proxy
    with _connect(proxy, "erin") as conn:  # budget 2, at most 1 per query
        conn.execute("SET dp.epsilon = 1")
        conn.execute("SELECT COUNT(*) FROM orders WHERE o_totalprice > 23").fetchall()
        conn.execute("SELECT COUNT(*) FROM orders WHERE o_totalprice > 24").fetchall()
        with psycopg.connect(env.tpch_dsn) as lock:
            lock.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
            try:
                with pytest.raises(psycopg.Error) as info:
                    conn.execute("SELECT COUNT(*) FROM orders WHERE o_totalprice > 25")
                assert info.value.sqlstate == "53Z01"
                # The discarded run was cancelled, not left waiting on the lock.
                assert _until(lambda: _waiters(env.tpch_dsn) == 0)
            finally:
                lock.rollback()
    assert _charges(cfg, "erin") == 2  # the refused query cost nothing


def test_a_write_refused_after_the_rows_were_noised_releases_nothing(
    overlap_proxy: tuple[ProxyProcess, Path],
) -> None:
    """The answer is noised while an accepted charge's write is in flight; if the write
    then fails (another writer spent the budget meanwhile), it is refused and nothing of
    that answer is sent."""
    proxy, cfg = overlap_proxy
    with _connect(proxy, "bob") as conn:  # budget 3, at most 1 per query
        conn.execute("SET dp.epsilon = 1")
        conn.execute("SELECT COUNT(*) FROM orders WHERE o_totalprice > 27").fetchall()
        assert _charges(cfg, "bob") == 1  # this proxy now decides bob's charges on the row it wrote
        with psycopg.connect(ledger_dsn(cfg)) as other:
            # Another replica spends the rest of bob's budget, and holds the row meanwhile.
            other.execute("UPDATE dpproxy.budget_spent SET epsilon = budget_epsilon WHERE analyst = 'bob'")
            t, out = _in_thread(conn, "SELECT COUNT(*) FROM orders WHERE o_totalprice > 28")
            try:
                assert _until(lambda: _waiters(ledger_dsn(cfg)) > 0), "the write was never sent"
                time.sleep(0.5)  # the bounded SQL finishes and its rows are noised meanwhile
                assert t.is_alive() and not out
            finally:
                other.commit()
        t.join(30)
    assert len(out) == 1 and isinstance(out[0], psycopg.Error), out
    assert out[0].sqlstate == "53Z01"
    assert _charges(cfg, "bob") == 1


def test_a_repeat_while_its_answer_is_being_stored_is_answered_from_memory(
    overlap_proxy: tuple[ProxyProcess, Path],
) -> None:
    proxy, cfg = overlap_proxy
    q = "SELECT COUNT(*) FROM orders WHERE o_totalprice > 29"
    before = _charges(cfg, "carol")
    with psycopg.connect(ledger_dsn(cfg)) as lock, _connect(proxy, "carol") as conn:
        lock.execute("LOCK TABLE dpproxy.answers IN EXCLUSIVE MODE")  # stores wait, lookups do not
        try:
            first = conn.execute(q).fetchall()
            assert _until(lambda: _waiters(ledger_dsn(cfg)) > 0), "the answer was not being stored"
            t, out = _in_thread(conn, q)
            t.join(10)
            assert not t.is_alive(), "the repeat waited for the store"
            assert out == [first]
            assert _charges(cfg, "carol") == before + 1  # the repeat was free
        finally:
            lock.rollback()
    with _connect(proxy, "carol") as conn:  # stored once the lock went: still the same answer
        assert conn.execute(q).fetchall() == first
    assert _charges(cfg, "carol") == before + 1


def test_select_1_from_memory_is_the_mirrors_answer(overlap_proxy: tuple[ProxyProcess, Path]) -> None:
    proxy, _ = overlap_proxy
    with _connect(proxy, "carol") as conn:
        for _ in range(3):  # the first from the mirror, then remembered
            cur = conn.execute("SELECT 1 AS one, 'x', NULL, -2.50")
            assert cur.fetchall() == [(1, "x", None, Decimal("-2.50"))]
            assert [d.name for d in cur.description] == ["one", "?column?", "?column?", "?column?"]
            assert [d.type_code for d in cur.description] == [23, 25, 25, 1700]
        with conn.cursor(binary=True) as cur:  # binary results still come from the mirror
            assert cur.execute("SELECT 1").fetchall() == [(1,)]
        conn.execute("BEGIN")
        with pytest.raises(psycopg.Error):
            conn.execute("SELECT 1/0")
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")  # an aborted transaction refuses it, remembered or not
        conn.execute("ROLLBACK")
        assert conn.execute("SELECT 1").fetchall() == [(1,)]


def test_hit_from_another_replica_cancels_the_speculative_run(
    overlap_proxy: tuple[ProxyProcess, Path], env: Env
) -> None:
    proxy, cfg = overlap_proxy
    q = "SELECT COUNT(*) FROM orders WHERE o_totalprice > 26"
    with _connect(proxy, "mallory") as conn:
        first = conn.execute(q).fetchall()
    replica = ProxyProcess(cfg).start()  # the same ledger: the answer is stored there
    try:
        with psycopg.connect(env.tpch_dsn) as lock, _connect(replica, "mallory") as conn:
            lock.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
            try:
                # This replica never saw the answer, so the bounded SQL starts alongside
                # the lookup; the hit is answered without waiting for it, and it stops.
                assert conn.execute(q).fetchall() == first
                assert _until(lambda: _waiters(env.tpch_dsn) == 0)
            finally:
                lock.rollback()
    finally:
        replica.stop()
    assert _charges(cfg, "mallory") == 1


def test_select_1_extended_protocol_describes_from_memory(overlap_proxy: tuple[ProxyProcess, Path]) -> None:
    proxy, _ = overlap_proxy
    with _connect(proxy, "carol") as conn:
        for prepare in (False, True, True):  # Parse/Describe/Execute, then a prepared statement
            cur = conn.execute("SELECT 1 AS ping", prepare=prepare)
            assert cur.fetchall() == [(1,)]
            assert [(d.name, d.type_code) for d in cur.description] == [("ping", 23)]
