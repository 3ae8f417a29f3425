"""Scalar aggregate subqueries in WHERE through the proxy: the subquery's noisy value
filters the outer query, the statement is charged once for both releases, and what
cannot be planned before the value is known is refused before anything is spent."""

from __future__ import annotations

import re
from decimal import Decimal

import psycopg
import pytest

from tests.e2e.conftest import Env, refused_free, spent, truth
from tests.e2e.test_engine import connect
from tests.support.proxy_process import ProxyProcess

ABOVE_AVERAGE = "SELECT COUNT(*) FROM customer WHERE c_acctbal > (SELECT AVG(c_acctbal) FROM customer)"


def test_the_released_value_filters_the_outer_query_and_one_charge_pays_both(
    proxy: ProxyProcess, env: Env
) -> None:
    # customer has one row per unit, so at epsilon 9000 the count is exact (its noise is
    # 0 except with probability below 1e-100) for whatever value the AVG released.
    with connect(proxy, "alice") as conn:
        conn.execute("SET dp.epsilon = 9000")
        before = spent(conn)
        ((count,),) = conn.execute(ABOVE_AVERAGE).fetchall()
        notice = conn.notices[-1]  # type: ignore[attr-defined]
        after = spent(conn)
    match = re.search(r"noisy values: (-?[0-9.]+)\)", notice)
    assert match and "over 2 releases" in notice, notice
    released = Decimal(match.group(1))
    ((true_avg,),) = truth(env.tpch_dsn, "SELECT AVG(c_acctbal) FROM customer")
    assert abs(released - true_avg) < 1  # type: ignore[operator]
    ((want,),) = truth(env.tpch_dsn, f"SELECT COUNT(*) FROM customer WHERE c_acctbal > {released}")
    assert count == want
    assert after == (before[0] + 9000, before[1] + 1)
    with connect(proxy, "alice") as conn:  # a repeat is the stored answer, spending nothing
        conn.execute("SET dp.epsilon = 9000")
        assert conn.execute(ABOVE_AVERAGE).fetchall() == [(count,)]
        assert "cache hit, epsilon 0 spent" in conn.notices[-1]  # type: ignore[attr-defined]
        assert spent(conn) == after


def test_dates_constant_arithmetic_and_bind_parameters(proxy: ProxyProcess) -> None:
    with connect(proxy, "alice") as conn:
        conn.execute("SET dp.epsilon = 1")
        rows = conn.execute("SELECT o_orderpriority, COUNT(*) FROM orders WHERE o_orderdate >= "
                            "(SELECT MAX(o_orderdate) FROM orders) - 365 GROUP BY 1 ORDER BY 1").fetchall()  # fmt: skip
        assert [r[0] for r in rows] == ["1-URGENT", "2-HIGH", "3-MEDIUM", "4-NOT SPECIFIED", "5-LOW"]
        assert re.search(r"noisy values: '199\d-\d\d-\d\d'", conn.notices[-1])  # type: ignore[attr-defined]
        q = "SELECT COUNT(*) FROM orders WHERE o_orderstatus = %s AND o_totalprice > (SELECT AVG(o_totalprice) FROM orders)"
        for prepare in (False, True):
            cur = conn.execute(q, ["F"], prepare=prepare)
            assert cur.description is not None and cur.description[0].type_code == 20
            assert isinstance(cur.fetchone()[0], int)  # type: ignore[index]


def test_explain_lists_both_releases_and_spends_nothing(proxy: ProxyProcess) -> None:
    with connect(proxy, "dave") as conn:
        before = spent(conn)
        text = "\n".join(r[0] for r in conn.execute(f"EXPLAIN {ABOVE_AVERAGE}").fetchall())
        assert spent(conn) == before
    assert "2 releases, each with 1/2 of epsilon" in text
    assert "[1] Output AVG(c_acctbal)" in text and "$1::numeric" in text.split("[2] Rewritten SQL:")[1]


@pytest.mark.parametrize(("sql", "sqlstate"), [
    ("SELECT COUNT(*) FROM orders WHERE o_totalprice > (SELECT AVG(o_totalprice) FROM orders GROUP BY o_orderstatus)", "0A000"),
    ("SELECT COUNT(*) FROM orders WHERE o_totalprice > o_shippriority * (SELECT AVG(o_totalprice) FROM orders)", "0A000"),
    ("SELECT COUNT(*) FROM orders o WHERE o_totalprice > (SELECT AVG(o2.o_totalprice) FROM orders o2 "
     "WHERE o2.o_custkey = o.o_custkey)", "0A000"),
    ("SELECT COUNT(*) FROM orders WHERE o_totalprice > (SELECT AVG(o_totalprice), COUNT(*) FROM orders)", "42601"),
])  # fmt: skip
def test_what_cannot_be_planned_first_is_refused_before_any_charge(
    proxy: ProxyProcess, sql: str, sqlstate: str
) -> None:
    with connect(proxy, "dave") as conn:
        assert refused_free(conn, sql) == sqlstate


Q22 = """select cntrycode, count(*) as numcust, sum(c_acctbal) as totacctbal
from (select substring(c_phone from 1 for 2) as cntrycode, c_acctbal from customer
      where substring(c_phone from 1 for 2) in ('13', '31', '23', '29', '30', '18', '17')
        and c_acctbal > (select avg(c_acctbal) from customer where c_acctbal > 0.00
                         and substring(c_phone from 1 for 2) in ('13', '31', '23', '29', '30', '18', '17'))
        and not exists (select * from orders where o_custkey = c_custkey)) as custsale
group by cntrycode order by cntrycode"""


def test_tpch_q22_as_written(proxy: ProxyProcess, env: Env) -> None:
    # The subquery sits in a derived table's WHERE. customer has one row per unit, so at
    # epsilon 9000 every released count is exact for the value the AVG released, and
    # partition selection (threshold ~2 units there) keeps every group of 3 or more.
    with connect(proxy, "alice") as conn:
        conn.execute("SET dp.epsilon = 9000")
        rows = conn.execute(Q22).fetchall()
        notice = conn.notices[-1]  # type: ignore[attr-defined]
    match = re.search(r"noisy values: (-?[0-9.]+)\)", notice)
    assert match, notice
    exact = truth(env.tpch_dsn, Q22.replace(Q22[Q22.index("(select avg"):Q22.index("17'))") + 5], match.group(1)))
    # Counts exact; sums within 100 (Laplace scale ~4.4 there: beyond 100 w.p. < 1e-9).
    want = {r[0]: r for r in exact}
    assert rows and all(r[0] in want and r[1] == want[r[0]][1] for r in rows)
    assert all(abs(r[2] - want[r[0]][2]) < 100 for r in rows)  # type: ignore[operator]
    assert {r[0] for r in exact if r[1] >= 3} <= {r[0] for r in rows}  # type: ignore[operator]


def test_a_share_of_the_total_is_post_processing_of_two_releases(proxy: ProxyProcess, env: Env) -> None:
    # customer: one row per unit; at epsilon 9000 both counts are exact, so the shares
    # are PostgreSQL's to the last digit (numeric division, as PostgreSQL scales it).
    q = ("SELECT c_mktsegment, COUNT(*) * 100.0 / (SELECT COUNT(*) FROM customer) AS pct FROM customer "
         "GROUP BY 1 HAVING COUNT(*) > (SELECT COUNT(*) FROM customer) / 10 ORDER BY 1")  # fmt: skip
    with connect(proxy, "alice") as conn:
        conn.execute("SET dp.epsilon = 9000")
        before = spent(conn)
        cur = conn.execute(q)
        rows = cur.fetchall()
        assert cur.description is not None and [d.type_code for d in cur.description] == [25, 1700]
        assert "over 3 releases" in conn.notices[-1]  # type: ignore[attr-defined]
        assert spent(conn) == (before[0] + 9000, before[1] + 1)
    assert rows == truth(env.tpch_dsn, q) and len(rows) == 5


def test_a_null_released_value_acts_as_sql_null(proxy: ProxyProcess) -> None:
    # NULLIF(COUNT(*), COUNT(*)) releases NULL whatever the noise. As in PostgreSQL, a
    # comparison with it holds for no row (customer: one row per unit, so at epsilon
    # 9000 the outer count of no rows is exactly 0), and after the noise it stays NULL.
    with connect(proxy, "alice") as conn:
        conn.execute("SET dp.epsilon = 9000")
        assert conn.execute(
            "SELECT COUNT(*) FROM customer WHERE c_acctbal > "
            "(SELECT NULLIF(COUNT(*), COUNT(*)) FROM customer)"
        ).fetchall() == [(0,)]
        assert "noisy values: NULL)" in conn.notices[-1]  # type: ignore[attr-defined]
        ((count, share),) = conn.execute(
            "SELECT COUNT(*), COUNT(*) * 100.0 / (SELECT NULLIF(COUNT(*), COUNT(*)) FROM customer) "
            "FROM customer"
        ).fetchall()
    assert count > 0 and share is None


def test_scalar_subqueries_over_public_tables_are_values_in_the_sql(proxy: ProxyProcess, env: Env) -> None:
    # A subquery over a public table is the same value for every row: it stays in the
    # SQL (one release, not two), exactly as PostgreSQL computes it. customer has one
    # row per unit, so at epsilon 9000 the counts are PostgreSQL's.
    queries = [
        "SELECT COUNT(*) FROM customer WHERE c_nationkey = (SELECT n_nationkey FROM nation WHERE n_nationkey = 6)",
        "SELECT COUNT(*) FROM customer WHERE c_acctbal > (SELECT MAX(s_acctbal) FROM supplier WHERE s_nationkey = 3)",
        "SELECT COUNT(*) FROM customer WHERE c_nationkey = (SELECT n_nationkey FROM nation WHERE n_nationkey = 99)",
        "SELECT COUNT(*) FROM customer WHERE c_nationkey = (SELECT MIN(n_nationkey) FROM nation WHERE n_name = 'FRANCE')",
        # subqueries over public tables inside subqueries
        "SELECT COUNT(*) FROM customer WHERE c_nationkey IN (SELECT n_nationkey FROM nation WHERE n_regionkey = "
        "(SELECT MIN(r_regionkey) FROM region WHERE r_name = 'ASIA'))",
        "SELECT COUNT(*) FROM customer c WHERE EXISTS (SELECT 1 FROM nation n WHERE n.n_nationkey = c.c_nationkey "
        "AND n.n_regionkey IN (SELECT r_regionkey FROM region WHERE r_name LIKE 'A%'))",
    ]
    with connect(proxy, "alice") as conn:
        conn.execute("SET dp.epsilon = 9000")
        for q in queries:
            assert conn.execute(q).fetchall() == truth(env.tpch_dsn, q), q
            assert "over 2 releases" not in conn.notices[-1]  # type: ignore[attr-defined]
        before = spent(conn)
        refused = []
        for q in (
            # Several rows could match: PostgreSQL would raise only once some private
            # row reached the subquery, so the error would tell that one did.
            "SELECT COUNT(*) FROM customer WHERE c_nationkey = (SELECT n_nationkey FROM nation WHERE n_name = 'FRANCE')",
            "SELECT COUNT(*) FROM customer WHERE c_nationkey = (SELECT n_nationkey FROM nation WHERE n_name = c_name)",
            "SELECT COUNT(*) FROM customer WHERE c_nationkey = (SELECT o_custkey FROM orders WHERE o_orderkey = 1)",
            "SELECT COUNT(*) FROM orders WHERE o_custkey IN (SELECT c_custkey FROM customer WHERE c_custkey IN "
            "(SELECT o_custkey FROM orders WHERE o_totalprice > 5))",
        ):
            with pytest.raises(psycopg.Error) as e:
                conn.execute(q)
            refused.append(e.value.sqlstate)
        assert spent(conn) == before  # refused before anything is spent
    assert refused == ["0A000"] * 4


def test_in_an_aggregate_of_a_public_table(proxy: ProxyProcess, env: Env) -> None:
    # One public value (NULL over no rows, as in PostgreSQL: then no row is in it).
    queries = [
        "SELECT COUNT(*) FROM customer WHERE c_nationkey IN (SELECT MIN(n_nationkey) FROM nation WHERE n_regionkey = 2)",
        "SELECT COUNT(*) FROM customer WHERE c_nationkey NOT IN (SELECT AVG(n_nationkey) FROM nation WHERE n_regionkey = 9)",
        "SELECT COUNT(*) FROM customer WHERE c_acctbal > (SELECT AVG(s_acctbal) FROM supplier WHERE s_nationkey = 3)",
    ]
    with connect(proxy, "alice") as conn:
        conn.execute("SET dp.epsilon = 9000")
        for q in queries:
            assert conn.execute(q).fetchall() == truth(env.tpch_dsn, q), q
