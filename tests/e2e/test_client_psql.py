"""psql through dpproxy: multi-statement strings, FETCH_COUNT cursors, Tableau's cursor
batch, session statements, Ctrl-C cancel, and cancel from psycopg."""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Iterator

import psycopg
import pytest

from tests.e2e.conftest import ANALYSTS, Env
from tests.support.ops import cancel_blocked_query, wait_lock_waiters
from tests.support.proxy_process import ProxyProcess

PSQL = shutil.which("psql")
needs_psql = pytest.mark.skipif(PSQL is None, reason="psql is not installed")
PRIORITIES = ["1-URGENT", "2-HIGH", "3-MEDIUM", "4-NOT SPECIFIED", "5-LOW"]
GROUPED = "SELECT o_orderpriority, COUNT(*) FROM orders GROUP BY o_orderpriority ORDER BY 1"


def keys(stdout: str) -> list[str]:
    """The first column of the result rows in psql -At output (status lines dropped)."""
    return [ln.split("|")[0] for ln in stdout.splitlines() if "|" in ln]


def psql(proxy: ProxyProcess, *args: str, user: str = "alice") -> subprocess.CompletedProcess[str]:
    """psql -X -At with verbose errors."""
    assert PSQL is not None
    cmd = [PSQL, proxy.dsn(user, ANALYSTS[user].password), "-X", "-At", "-v", "VERBOSITY=verbose", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


@needs_psql
def test_multi_statement_and_implicit_transaction(proxy: ProxyProcess) -> None:
    out = psql(proxy, "-c", f"SET dp.epsilon = 20; {GROUPED}; SHOW dp.epsilon")
    assert out.returncode == 0, out.stderr
    assert keys(out.stdout) == PRIORITIES
    assert out.stdout.splitlines()[-1] == "20"
    assert "epsilon 20 spent" in out.stderr
    # An error later in the string rolls back the SET made earlier in it.
    out = psql(proxy, "-c", "SET dp.epsilon = 7; SELECT * FROM orders", "-c", "SHOW dp.epsilon")
    assert "42501" in out.stderr
    assert out.stdout.strip().splitlines()[-1] == "1.0"


@needs_psql
def test_describe_commands_work(proxy: ProxyProcess) -> None:
    # psql's catalog commands, the "+" ones included (they read sizes, tablespace
    # locations: answered NULL), and the current database's name as the client knows it.
    for command in ("\\d", "\\dt+", "\\d+ orders", "\\di+", "\\l+", "\\db+", "\\dn+", "\\df now",
                    "\\dT", "\\du", "\\dp orders", "\\conninfo"):  # fmt: skip
        out = psql(proxy, "-c", command)
        assert out.returncode == 0 and "ERROR" not in out.stderr, (command, out.stderr)
    out = psql(proxy, "-c", "\\dt+")
    assert {"customer", "lineitem", "orders"} <= {ln.split("|")[1] for ln in out.stdout.splitlines()}
    assert psql(proxy, "-c", "SELECT current_database()").stdout.strip() == "tpch"


@needs_psql
def test_fetch_count_uses_cursors(proxy: ProxyProcess) -> None:
    # epsilon 21: a query text and epsilon no other test uses, so the answer cache misses.
    out = psql(proxy, "-c", "\\set FETCH_COUNT 2", "-c", "SET dp.epsilon = 21", "-c", GROUPED)
    assert out.returncode == 0, out.stderr
    assert keys(out.stdout) == PRIORITIES
    assert out.stderr.count("epsilon 21 spent") == 1  # charged once, at DECLARE


@needs_psql
def test_tableau_cursor_batch_and_session_statements(proxy: ProxyProcess) -> None:
    out = psql(
        proxy,
        "-c", f'BEGIN;declare "SQL_CUR0x1" cursor with hold for {GROUPED};fetch 2 in "SQL_CUR0x1"',
        "-c", 'fetch 2048 in "SQL_CUR0x1"; close "SQL_CUR0x1"; COMMIT',
        "-c", "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ UNCOMMITTED",
        "-c", "BEGIN READ WRITE; SAVEPOINT a; SET LOCAL application_name = 'x'; ROLLBACK TO a; RELEASE a; COMMIT",
        "-c", "SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;",
        "-c", "DISCARD ALL",
        "-c", "DEALLOCATE ALL",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert keys(out.stdout) == PRIORITIES
    # Declared WITH HOLD inside the block, it survived COMMIT... and CLOSE found it.
    out = psql(proxy, "-c", "FETCH 1 FROM nosuch")
    assert "34000" in out.stderr
    out = psql(proxy, "-c", f"DECLARE c CURSOR FOR {GROUPED}")
    assert "25P01" in out.stderr
    out = psql(proxy, "-c", f"BEGIN; DECLARE c SCROLL CURSOR FOR {GROUPED}; FETCH LAST c; FETCH PRIOR c;"
                            "MOVE ABSOLUTE 0 c; FETCH NEXT c; FETCH ALL c; FETCH BACKWARD 1 FROM c")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert keys(out.stdout) == [
        PRIORITIES[4], PRIORITIES[3], PRIORITIES[0], *PRIORITIES[1:], PRIORITIES[4]]


@needs_psql
def test_wrong_password_message(proxy: ProxyProcess) -> None:
    assert PSQL is not None
    out = subprocess.run([PSQL, proxy.dsn("alice", "nope"), "-X", "-c", "SELECT 1"],
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    assert out.returncode != 0
    assert 'password authentication failed for user "alice"' in out.stderr


@pytest.fixture
def locked_orders(env: Env) -> Iterator[psycopg.Connection]:
    """Hold an exclusive lock on orders, so a DP query blocks in the backend until cancelled."""
    with psycopg.connect(env.tpch_dsn) as conn:
        conn.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
        yield conn
        conn.rollback()


def test_psycopg_cancel_reaches_backend(proxy: ProxyProcess, env: Env, locked_orders: psycopg.Connection) -> None:
    with psycopg.connect(proxy.dsn("alice", ANALYSTS["alice"].password), autocommit=True) as conn:
        cancel_blocked_query(conn, env.tpch_dsn, "SELECT COUNT(*) FROM orders WHERE o_totalprice > 17")
        locked_orders.rollback()
        assert conn.execute("SELECT COUNT(*) FROM orders").fetchone()[0] > 0


@needs_psql
def test_psql_ctrl_c_cancels(proxy: ProxyProcess, env: Env, locked_orders: psycopg.Connection) -> None:
    assert PSQL is not None
    p = subprocess.Popen([PSQL, proxy.dsn("alice", ANALYSTS["alice"].password), "-X", "-v",
                          "VERBOSITY=verbose", "-c", "SELECT COUNT(*) FROM orders WHERE o_totalprice > 18"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert wait_lock_waiters(env.tpch_dsn, True), "the DP query never reached the backend"
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert "57014" in err and "canceling statement due to user request" in err
    assert wait_lock_waiters(env.tpch_dsn, False)
