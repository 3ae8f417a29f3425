"""MIN and MAX through the proxy on the real TPC-H data: at large epsilon the rank target
is 1, so the released value is the grid cell of the true extreme; types, NULL semantics,
private groups and EXPLAIN work as for the quantiles."""

from __future__ import annotations

from decimal import Decimal

from tests.e2e.conftest import Env, truth
from tests.e2e.test_engine import connect
from tests.support.proxy_process import ProxyProcess
from tests.unit.test_corpus import plan_of


def test_min_max_at_large_epsilon_are_the_cells_of_the_true_extremes(
    proxy: ProxyProcess, env: Env
) -> None:
    # customer: one row per unit, so bounding keeps every row. At epsilon 9000 the rank
    # target is 1 and the wrong cells lose with probability below 1e-100: MIN is the
    # candidate at or just below the true minimum, MAX the one at or just above the maximum.
    q = "SELECT c_mktsegment, MIN(c_acctbal), MAX(c_acctbal) FROM customer GROUP BY 1 ORDER BY 1"
    lo_spec, hi_spec = plan_of(q).aggregates
    with connect(proxy, "alice") as conn:
        conn.execute("SET dp.epsilon = 9000")
        rows = conn.execute(q).fetchall()
        notice = conn.notices[-1]  # type: ignore[attr-defined]
    exact = truth(env.tpch_dsn, q)
    assert [r[0] for r in rows] == [r[0] for r in exact] and len(rows) == 5
    step, stride = lo_spec.step, lo_spec.stride
    for (_, got_min, got_max), (_, true_min, true_max) in zip(rows, exact, strict=True):
        min_steps = int(Decimal(true_min) / step)
        max_steps = int(Decimal(true_max) / step)
        want_min = lo_spec.lower + (min_steps - lo_spec.lower) // stride * stride
        want_max = hi_spec.upper - (hi_spec.upper - max_steps) // stride * stride
        assert isinstance(got_min, Decimal)
        assert got_min == want_min * step, (got_min, true_min)
        assert got_max == want_max * step, (got_max, true_max)
    assert "rank target t = 1" in notice and "smallest" in notice and "largest" in notice


def test_min_max_of_an_integer_column_keep_its_type(proxy: ProxyProcess, env: Env) -> None:
    # One candidate per value (stride 1): at large epsilon the answer is exact. Line
    # numbers 1 and 7 survive the bounding (16 of ~60 line items per customer kept).
    q = "SELECT MIN(l_linenumber), MAX(l_linenumber) FROM lineitem"
    with connect(proxy, "alice") as conn:
        conn.execute("SET dp.epsilon = 9000")
        cur = conn.execute(q)
        row = cur.fetchone()
        assert cur.description is not None
        oids = [c.type_code for c in cur.description]
    assert row == truth(env.tpch_dsn, q)[0] == (1, 7)
    assert oids == [23, 23]  # int4, like PostgreSQL's MIN/MAX of an integer column


def test_min_max_with_private_groups_land_near_the_extremes(proxy: ProxyProcess, env: Env) -> None:
    # orders: 8 of ~15 orders per customer are kept at random, so the bounded extreme is
    # one of the top values, not always the true one; with hundreds of customers per
    # group, all of a group's 100 smallest (largest) orders are dropped with probability
    # below 1e-25. Partition selection releases every group: the last digit of the
    # clerk's number, a key without a declared domain.
    q = ("SELECT RIGHT(o_clerk, 1) AS y, MIN(o_totalprice), MAX(o_totalprice) "
         "FROM orders GROUP BY y ORDER BY y")  # fmt: skip
    lo_spec, _ = plan_of(q).aggregates
    stride = lo_spec.stride * lo_spec.step
    with connect(proxy, "alice") as conn:
        conn.execute("SET dp.epsilon = 9000")
        rows = conn.execute(q).fetchall()
    exact = truth(env.tpch_dsn, """
        SELECT y, min(p), max(p), min(p) FILTER (WHERE r_up = 100), max(p) FILTER (WHERE r_down = 100)
        FROM (SELECT RIGHT(o_clerk, 1) AS y, o_totalprice AS p,
                     row_number() OVER (PARTITION BY RIGHT(o_clerk, 1) ORDER BY o_totalprice) AS r_up,
                     row_number() OVER (PARTITION BY RIGHT(o_clerk, 1) ORDER BY o_totalprice DESC) AS r_down
              FROM orders) o
        GROUP BY y ORDER BY y""")  # fmt: skip
    assert [r[0] for r in rows] == [r[0] for r in exact]
    for (_, got_min, got_max), (y, true_min, true_max, min_100, max_100) in zip(rows, exact, strict=True):
        assert true_min - stride < got_min <= min_100, (y, got_min, true_min, min_100)
        assert max_100 <= got_max < true_max + stride, (y, got_max, true_max, max_100)


def test_min_max_over_no_rows_is_a_noisy_value_within_the_bounds(proxy: ProxyProcess) -> None:
    with connect(proxy, "alice") as conn:
        conn.execute("SET dp.epsilon = 1")
        lo, hi = conn.execute(
            "SELECT MIN(o_totalprice), MAX(o_totalprice) FILTER (WHERE o_orderstatus = 'F') "
            "FROM orders WHERE o_orderdate < DATE '1900-01-01'"
        ).fetchone()  # type: ignore[misc]
    assert lo is not None and hi is not None
    assert 0 <= lo <= 600000 and 0 <= hi <= 600000


def test_explain_shows_the_rank_target(proxy: ProxyProcess) -> None:
    with connect(proxy, "dave") as conn:
        conn.execute("SET dp.epsilon = 1")
        rows = conn.execute("EXPLAIN SELECT MIN(c_acctbal), MAX(c_acctbal) FROM customer").fetchall()
    text = "\n".join(r[0] for r in rows)
    # Two releases at epsilon 0.5, sensitivity 1: scale 4, t = ceil(4 ln(999 / 0.05)).
    assert "exponential noisy max, sensitivity 1, scale 4" in text, text
    assert ("Output MIN(c_acctbal): 95% error within [smallest - 11.02, 80th smallest] (DP "
            "estimate of the 40th smallest value, rank target t = 40, for groups of at least "
            "40 values)") in text
    assert "Output MAX(c_acctbal): 95% error within [80th largest, largest + 11.02]" in text
    assert "would cost epsilon 1" in text
