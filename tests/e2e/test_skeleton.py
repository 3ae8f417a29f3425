"""The walking skeleton through real clients: psql (subprocess) and psycopg."""

from __future__ import annotations

import re
import shutil
import socket
import struct
import subprocess
from decimal import Decimal

import psycopg
import pytest

from tests.e2e.conftest import ANALYSTS, Env, truth
from tests.support.proxy_process import ProxyProcess

PSQL = shutil.which("psql")
ORDERS_BOUNDED = """
    SELECT sum(least(n, 8)) FROM (SELECT count(*) AS n FROM orders GROUP BY o_custkey) c
"""


def connect(proxy: ProxyProcess, user: str) -> psycopg.Connection:
    """A psycopg connection through the proxy, collecting NOTICEs in conn.notices."""
    conn = psycopg.connect(proxy.dsn(user, ANALYSTS[user].password), autocommit=True)
    notices: list[str] = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
    conn.notices = notices  # type: ignore[attr-defined]
    return conn


def run_psql(proxy: ProxyProcess, user: str, *commands: str) -> subprocess.CompletedProcess[str]:
    """psql -X with -c commands, verbose errors (SQLSTATE shown)."""
    assert PSQL is not None
    args = [PSQL, proxy.dsn(user, ANALYSTS[user].password), "-X", "-v", "VERBOSITY=verbose"]
    for c in commands:
        args += ["-c", c]
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(PSQL is None, reason="psql is not installed")
def test_psql_count_is_noisy_with_notice(proxy: ProxyProcess, env: Env) -> None:
    out = run_psql(proxy, "alice", "SET dp.epsilon = 5000", "SELECT COUNT(*) FROM orders")
    assert out.returncode == 0, out.stderr
    lines = [ln.strip() for ln in out.stdout.splitlines()]
    value = int(lines[lines.index("count") + 2])
    expected = int(truth(env.tpch_dsn, ORDERS_BOUNDED)[0][0])
    # scale = 8/5000: P(|noise| >= 1) < 1e-200, so the bounded count comes back exactly.
    assert value == expected
    assert "epsilon 5000 spent" in out.stderr
    assert "remaining" in out.stderr


def test_grouped_query_close_to_truth_at_large_epsilon(proxy: ProxyProcess, env: Env) -> None:
    q = (
        "SELECT o_orderpriority, COUNT(*), SUM(o_totalprice), AVG(o_totalprice) FROM orders "
        "WHERE o_orderdate >= '1995-01-01' GROUP BY o_orderpriority"
    )
    with connect(proxy, "alice") as conn:
        conn.execute("SET dp.epsilon = 9000")
        rows = conn.execute(q).fetchall()
        assert conn.notices and "epsilon 9000 spent" in conn.notices[-1]  # type: ignore[attr-defined]
    got = {r[0]: r for r in rows}
    assert set(got) == {"1-URGENT", "2-HIGH", "3-MEDIUM", "4-NOT SPECIFIED", "5-LOW"}
    exact = {r[0]: r for r in truth(env.tpch_dsn, q)}
    total_bounded = sum(r[1] for r in rows)
    filtered_bounded = int(truth(env.tpch_dsn, """
        SELECT sum(least(n, 8)) FROM (SELECT count(*) AS n FROM orders
        WHERE o_orderdate >= '1995-01-01' GROUP BY o_custkey) c""")[0][0])
    assert total_bounded == filtered_bounded
    for key, row in got.items():
        # Bounding keeps 8 random orders per customer: groups lose up to ~half their rows.
        assert 0.3 * exact[key][1] <= row[1] <= exact[key][1]
        assert isinstance(row[2], Decimal) and isinstance(row[3], Decimal)
        # The average is barely affected by which orders are kept.
        assert abs(row[3] - exact[key][3]) / exact[key][3] < 0.15


def test_answers_differ_from_truth_at_small_epsilon(proxy: ProxyProcess, env: Env) -> None:
    with connect(proxy, "carol") as conn:
        conn.execute("SET dp.epsilon = 0.003")
        rows = conn.execute(
            "SELECT o_orderstatus, COUNT(*) FROM orders GROUP BY o_orderstatus"
        ).fetchall()
    bounded = dict(truth(env.tpch_dsn, """
        SELECT o_orderstatus, count(*) FROM (SELECT o_orderstatus, row_number() OVER
        (PARTITION BY o_custkey ORDER BY random()) rn FROM orders) b WHERE rn <= 8 GROUP BY 1"""))
    # Scale 8/0.003: each count equals its exact value with probability < 2e-4, so all
    # three matching has probability < 1e-11 (the split of rows among groups varies too).
    assert any(r[1] != bounded.get(r[0]) for r in rows)


@pytest.mark.parametrize(
    ("query", "sqlstate", "named"),
    [
        ("SELECT * FROM orders", "42501", "SELECT *"),
        ("UPDATE orders SET o_totalprice = 0", "42501", "UPDATE"),
        ("DROP TABLE orders", "42501", "DROP"),
        ("SELECT 1; DROP TABLE orders", "42501", "DROP"),
        ("SELECT o_totalprice FROM orders", "42803", "o_totalprice"),
        ("SELECT o_custkey, COUNT(*) FROM orders GROUP BY o_custkey", "42501", "privacy unit"),
        ("SELECT COUNT(*) FROM nosuchtable", "42P01", "nosuchtable"),
        ("DELETE FROM orders", "42501", "DELETE"),
        ("INSERT INTO orders VALUES (1)", "42501", "INSERT"),
    ],
)
def test_refusals_name_what_and_keep_connection(
    proxy: ProxyProcess, query: str, sqlstate: str, named: str
) -> None:
    with connect(proxy, "dave") as conn:
        with pytest.raises(psycopg.Error) as info:
            conn.execute(query)
        assert info.value.sqlstate == sqlstate
        diag = info.value.diag
        assert named.lower() in (diag.message_primary or "").lower()
        assert diag.message_hint, "a refusal says what is allowed instead"
        # The connection stays usable, and nothing was charged for the refusal.
        assert conn.execute("SHOW dp.epsilon").fetchone() == ("1.0",)


@pytest.mark.skipif(PSQL is None, reason="psql is not installed")
def test_psql_refusal_shows_sqlstate(proxy: ProxyProcess) -> None:
    out = run_psql(proxy, "dave", "SELECT * FROM orders")
    assert out.returncode == 1
    assert "42501" in out.stderr and "HINT" in out.stderr


@pytest.mark.parametrize("value", ["0", "-1", "NaN", "'abc'", "Infinity", "1e400", "101"])
def test_invalid_epsilon_refused(proxy: ProxyProcess, value: str) -> None:
    with connect(proxy, "dave") as conn:
        with pytest.raises(psycopg.Error) as info:
            conn.execute(f"SET dp.epsilon = {value}")
        assert info.value.sqlstate == "22023"
        conn.execute("SET dp.epsilon = 0.5")
        assert conn.execute("SHOW dp.epsilon").fetchone() == ("0.5",)


def test_budget_exhaustion_survives_restart(env: Env) -> None:
    first = ProxyProcess(env.config).start()
    try:
        with connect(first, "erin") as conn:
            conn.execute("SET dp.epsilon = 1")
            conn.execute("SELECT COUNT(*) FROM orders")
            conn.execute("SELECT COUNT(*) FROM customer")
            with pytest.raises(psycopg.Error) as info:
                conn.execute("SELECT COUNT(*) FROM orders WHERE o_totalprice > 10")
            assert info.value.sqlstate == "53Z01"
            assert "budget" in (info.value.diag.message_primary or "")
            conn.execute("SELECT 1 AS still_usable")
    finally:
        first.stop()
    second = ProxyProcess(env.config).start()
    try:
        with connect(second, "erin") as conn:
            conn.execute("SET dp.epsilon = 0.5")
            with pytest.raises(psycopg.Error) as info:
                conn.execute("SELECT COUNT(*) FROM orders")
            assert info.value.sqlstate == "53Z01"
            budget = conn.execute("SHOW dp.budget").fetchone()
            assert budget is not None and budget[3] == 0
    finally:
        second.stop()


def test_wrong_password(proxy: ProxyProcess) -> None:
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(proxy.dsn("alice", "wrong"))
    assert 'password authentication failed for user "alice"' in str(info.value)
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(proxy.dsn("nobody", "x"))
    assert 'password authentication failed for user "nobody"' in str(info.value)


def test_unknown_database(proxy: ProxyProcess) -> None:
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(proxy.dsn("alice", "alice-pw", dbname="other"))
    assert 'database "other" does not exist' in str(info.value)


def _read_error(sock: socket.socket) -> dict[str, str]:
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    assert data[:1] == b"E", data
    fields = {}
    for part in data[5:].split(b"\x00"):
        if part:
            fields[chr(part[0])] = part[1:].decode()
    return fields


@pytest.mark.parametrize(
    "payload",
    [
        struct.pack("!ii", 8, 1234),  # unknown protocol version
        struct.pack("!i", 2) + b"xx",  # length below the minimum
        struct.pack("!i", 1 << 30),  # oversized
        struct.pack("!ii", 9, 196608) + b"u",  # parameters without terminators
    ],
)
def test_malformed_startup_gets_08P01(proxy: ProxyProcess, payload: bytes) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        fields = _read_error(s)
    assert fields["C"] == "08P01" and fields["S"] == "FATAL"
    # The server keeps serving others.
    with connect(proxy, "dave") as conn:
        assert conn.execute("SHOW dp.epsilon").fetchone() is not None


def test_bad_config_refuses_to_start(env: Env, tmp_path: object) -> None:
    import sys
    from pathlib import Path

    bad = Path(str(tmp_path)) / "bad.yaml"
    # The first analyst's budget made invalid, whatever it was.
    text = re.sub(r"budget_epsilon: '[0-9.]+'", "budget_epsilon: '-1'", env.config.read_text(),
                  count=1)  # fmt: skip
    bad.write_text(text)
    out = subprocess.run(
        [sys.executable, "-m", "proxy.cli", "serve", "--config", str(bad)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2
    assert str(bad) in out.stderr and "analysts.0.budget_epsilon" in out.stderr
