"""psycopg 3 through dpproxy: parameters, prepared statements, binary results, pipeline
mode, nested transactions, server-side cursors and COPY TO STDOUT."""

from __future__ import annotations

from decimal import Decimal

import psycopg
import pytest

from tests.e2e.conftest import ANALYSTS, Env, truth
from tests.support.proxy_process import ProxyProcess

PRIORITIES = {"1-URGENT", "2-HIGH", "3-MEDIUM", "4-NOT SPECIFIED", "5-LOW"}
GROUPED = "SELECT o_orderpriority, COUNT(*) FROM orders GROUP BY o_orderpriority"
# Epsilon 400, split over at most two primitives: each count has discrete Laplace noise
# of scale 8/200, which is non-zero with probability 2e^-25/(1+e^-25) < 3e-11 (< 1e-6).
EXACT_EPS = "SET dp.epsilon = 400"
BOUNDED_ABOVE = """
    SELECT sum(least(n, 8)) FROM (SELECT count(*) AS n FROM orders WHERE o_totalprice > %s
    GROUP BY o_custkey) c"""


def connect(proxy: ProxyProcess, **kw: object) -> psycopg.Connection:
    """A psycopg connection through the proxy as alice (large budget)."""
    return psycopg.connect(proxy.dsn("alice", ANALYSTS["alice"].password), **kw)  # type: ignore[arg-type]


def test_parameters_and_prepared_after_threshold(proxy: ProxyProcess, env: Env) -> None:
    with connect(proxy, autocommit=True, prepare_threshold=5) as conn:
        conn.execute(EXACT_EPS)
        got = []
        for price in (100000, 150000, 200000, 250000, 300000, 350000, 400000):
            got.append(conn.execute("SELECT COUNT(*) FROM orders WHERE o_totalprice > %s", (price,)).fetchone()[0])
        # psycopg prepared the statement as _pg3_0 after 5 executions: it exists in dpproxy
        # (DEALLOCATE of an unknown name fails with 26000).
        conn.execute("DEALLOCATE _pg3_0", prepare=False)
        with pytest.raises(psycopg.errors.InvalidSqlStatementName):
            conn.execute("DEALLOCATE _pg3_0", prepare=False)
    for price, value in zip((100000, 150000, 200000, 250000, 300000, 350000, 400000), got, strict=True):
        assert value == truth(env.tpch_dsn, BOUNDED_ABOVE.replace("%s", str(price)))[0][0]


def test_binary_cursor_types(proxy: ProxyProcess) -> None:
    with connect(proxy, autocommit=True) as conn:
        conn.execute("SET dp.epsilon = 50")
        cur = conn.cursor(binary=True)
        row = cur.execute(
            "SELECT COUNT(*), SUM(o_totalprice), AVG(o_totalprice) FROM orders WHERE o_orderpriority = %s",
            ("1-URGENT",),
        ).fetchone()
        assert row is not None
        assert [d.type_code for d in cur.description] == [20, 1700, 1700]  # int8, numeric, numeric
        assert isinstance(row[0], int) and isinstance(row[1], Decimal) and isinstance(row[2], Decimal)
        assert row[0] > 100
        # Text and binary answers have the same shape (dpproxy encodes both).
        text_row = conn.execute(GROUPED).fetchall()
        assert {r[0] for r in text_row} == PRIORITIES


def test_pipeline_mode(proxy: ProxyProcess, env: Env) -> None:
    with connect(proxy, autocommit=True) as conn:
        conn.execute(EXACT_EPS)
        with conn.pipeline():
            c1 = conn.execute("SELECT COUNT(*) FROM orders WHERE o_totalprice > %s", (200000,))
            c2 = conn.execute("SELECT COUNT(*) FROM orders WHERE o_totalprice > %s", (300000,))
            c3 = conn.execute("SHOW dp.epsilon")
        assert c1.fetchone()[0] == truth(env.tpch_dsn, BOUNDED_ABOVE.replace("%s", "200000"))[0][0]
        assert c2.fetchone()[0] == truth(env.tpch_dsn, BOUNDED_ABOVE.replace("%s", "300000"))[0][0]
        assert c3.fetchone()[0] == "400"


def test_pipeline_error_skips_to_sync(proxy: ProxyProcess) -> None:
    with connect(proxy, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.GroupingError), conn.pipeline():
            conn.execute("SELECT o_totalprice FROM orders WHERE o_totalprice > %s", (1,))
            conn.execute("SELECT COUNT(*) FROM orders")
        assert conn.execute("SHOW dp.epsilon").fetchone() is not None


def test_nested_transactions_scope_settings(proxy: ProxyProcess) -> None:
    with connect(proxy) as conn:
        conn.execute("SET dp.epsilon = 2")
        conn.commit()
        with conn.transaction():
            conn.execute("SET dp.epsilon = 3")
            with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
                conn.execute("SET dp.epsilon = 4")
                conn.execute("SELECT * FROM orders")
            # The savepoint rolled back to epsilon 3, and the transaction is usable.
            assert conn.execute("SHOW dp.epsilon").fetchone() == ("3",)
        assert conn.execute("SHOW dp.epsilon").fetchone() == ("3",)
    with connect(proxy) as conn:
        conn.execute("SET application_name = 'before'")
        conn.commit()
        conn.execute("SET application_name = 'rolled back'")
        conn.rollback()
        assert conn.info.parameter_status("application_name") == "before"
        assert conn.execute("SHOW application_name").fetchone() == ("before",)


def test_server_side_named_cursor(proxy: ProxyProcess) -> None:
    with connect(proxy) as conn:
        conn.execute("SET dp.epsilon = 50")
        with conn.cursor(name="srv") as cur:
            cur.execute("SELECT o_orderpriority, COUNT(*) FROM orders WHERE o_totalprice > %s "
                        "GROUP BY o_orderpriority ORDER BY o_orderpriority", (1000,))
            first = cur.fetchmany(2)
            rest = cur.fetchall()
            assert cur.description is not None and [d.type_code for d in cur.description] == [25, 20]
        assert [r[0] for r in first + rest] == sorted(PRIORITIES)
        conn.commit()
        with conn.cursor(name="bin", binary=True) as cur:
            cur.execute(GROUPED)
            rows = cur.fetchall()
        assert {r[0] for r in rows} == PRIORITIES and all(isinstance(r[1], int) for r in rows)


def test_copy_to_stdout(proxy: ProxyProcess) -> None:
    with connect(proxy, autocommit=True) as conn:
        conn.execute("SET dp.epsilon = 50")
        cur = conn.cursor()
        with cur.copy(f"COPY ({GROUPED} ORDER BY 1) TO STDOUT") as copy:
            rows = list(copy.rows())
        assert [r[0] for r in rows] == sorted(PRIORITIES)
        assert all(int(r[1]) > 0 for r in rows)
        with cur.copy(f"COPY ({GROUPED}) TO STDOUT WITH (FORMAT csv, HEADER)") as copy:
            text = b"".join(bytes(b) for b in copy).decode()
        assert text.splitlines()[0] == "o_orderpriority,count"
        with pytest.raises(psycopg.errors.InsufficientPrivilege), cur.copy("COPY orders FROM STDIN"):
            pass
        with pytest.raises(psycopg.errors.InsufficientPrivilege), cur.copy("COPY orders TO STDOUT"):
            pass
        assert conn.execute("SHOW dp.epsilon").fetchone() == ("50",)


def test_extreme_epsilon_and_delta_are_refused_and_default_resets(proxy: ProxyProcess) -> None:
    # Below 1e-6 (epsilon) and 1e-12 (a positive delta) the noise calibration leaves
    # floating point: such values are refused at SET (22023) and the session goes on;
    # at the smallest accepted values every kind of aggregate is answered.
    with connect(proxy, autocommit=True) as conn:
        conn.execute("SET dp.epsilon = 3")
        for setting in ("dp.epsilon = 1e-7", "dp.epsilon = 1e-400", "dp.delta = 1e-13", "dp.delta = 1e-400"):
            with pytest.raises(psycopg.errors.InvalidParameterValue):
                conn.execute(f"SET {setting}")
        assert conn.execute("SHOW dp.epsilon").fetchone() == ("3",)
        conn.execute("SET dp.epsilon TO DEFAULT")
        default = conn.execute("SHOW dp.epsilon").fetchone()
        conn.execute("SET dp.epsilon = 3")
        conn.execute("RESET dp.epsilon")
        assert conn.execute("SHOW dp.epsilon").fetchone() == default != ("3",)
        conn.execute("SET dp.epsilon = 1e-6")
        conn.execute("SET dp.delta = 1e-12")
        row = conn.execute("SELECT COUNT(*), AVG(o_totalprice), STDDEV(o_totalprice), "
                           "MEDIAN(o_totalprice), MAX(o_totalprice) FROM orders").fetchone()  # fmt: skip
        assert row is not None and len(row) == 5
        conn.execute("SELECT o_clerk, COUNT(*) FROM orders GROUP BY 1").fetchall()  # no group passes
        conn.execute("SET dp.delta = DEFAULT")
        assert conn.execute("SELECT 1").fetchone() == (1,)
