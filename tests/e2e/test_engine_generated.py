"""Generated queries: every one the rewriter accepts runs on PostgreSQL without an error.

An error after the charge costs budget and, if it depended on the data, would leak it;
the allow-list must only accept total SQL. The grammar crosses ~30 expressions with ~37
functions in six query shapes over a three-table join (about 1100 accepted queries); lineitem's
foreign-key join is exercised by the corpus.
"""

from __future__ import annotations

import psycopg
import pytest

from rewriter.errors import RewriteError
from rewriter.parse import parse_one
from rewriter.plan import DPPlan
from rewriter.rewrite import rewrite
from tests.e2e.conftest import Env
from tests.unit.test_corpus import META

EXPRS = [
    "o_totalprice", "o_orderstatus", "o_orderdate", "o_custkey", "NULL", "1", "'x'", "TRUE",
    "o_totalprice/2", "CAST(NULL AS int)", "-o_totalprice", "o_orderdate::timestamp",
    "DATE '1995-01-01'", "INTERVAL '1 day'", "o_comment", "1.5", "(o_totalprice > 1)",
    "CASE WHEN o_totalprice > 1 THEN NULL END", "COALESCE(NULL, NULL)",
    "NULLIF(o_orderstatus, NULL)", "EXTRACT(MONTH FROM o_orderdate)", "LENGTH(o_comment)",
    "DATE_TRUNC('year', o_orderdate)", "o_shippriority", "o_orderkey", "c_acctbal", "n_name",
    "'1995-01-01'",
]  # fmt: skip
FUNCS = [
    "SUM({})", "AVG({})", "COUNT({})", "COUNT(DISTINCT {})", "MEDIAN({})", "VARIANCE({})",
    "MIN({})", "MAX({})",
    "{} + 1", "{} * {}", "{} / {}", "{} % 3", "ABS({})", "ROUND({}, 1)", "GREATEST({}, 0)",
    "LEAST({}, {})", "COALESCE({}, 0)", "NULLIF({}, 1)", "CAST({} AS int)", "CAST({} AS text)",
    "LOWER({})", "{} || 'a'", "{} = {}", "{} IS NULL", "{} BETWEEN 1 AND 2", "{} IN (1, 2)",
    "{} LIKE 'a%'", "-({})", "SIGN({})", "FLOOR({})", "SUBSTRING({} FROM 1 FOR 2)",
    "EXTRACT(DAY FROM {})", "{} / o_shippriority", "{} % o_shippriority",
    "CASE WHEN {} THEN 1 ELSE 0 END", "{} > '1995-01-01'", "CAST({} AS date)",
    "CAST({} AS numeric)", "{} - 1.5",
]  # fmt: skip
FROM = "orders JOIN customer ON o_custkey = c_custkey JOIN nation ON c_nationkey = n_nationkey"
SHAPES = [
    "SELECT {b} FROM {f}", "SELECT COUNT(*) FROM {f} WHERE {b}",
    "SELECT {b}, COUNT(*) FROM {f} GROUP BY 1", "SELECT SUM({b}) FROM {f}",
    "SELECT AVG({b}), MEDIAN({b}) FROM {f}",
    "SELECT c_mktsegment, COUNT(DISTINCT c_custkey) FILTER (WHERE {b}) FROM {f} GROUP BY 1",
]  # fmt: skip


def accepted_plans() -> list[tuple[str, DPPlan]]:
    """Every generated query the rewriter accepts, with its plan."""
    out = []
    for e in EXPRS:
        for fn in FUNCS:
            body = fn.format(*([e] * fn.count("{}")))
            for shape in SHAPES:
                q = shape.format(b=body, f=FROM)
                try:
                    out.append((q, rewrite(parse_one(q), META)))
                except RewriteError:
                    continue
    return out


@pytest.mark.slow
def test_every_accepted_generated_query_runs_without_error(env: Env) -> None:
    plans = accepted_plans()
    assert len(plans) > 1000
    failures = []
    with psycopg.connect(env.tpch_dsn, autocommit=True) as conn:
        conn.execute("SET statement_timeout = '60s'")
        for q, p in plans:
            try:
                conn.execute(p.sql).fetchall()  # type: ignore[arg-type]
            except psycopg.Error as e:
                failures.append(f"{q}: {str(e).splitlines()[0]}")
    assert not failures, "\n".join(failures[:20])


# This release's constructs crossed with each other: semi-joins, date differences, the
# clock, TO_CHAR, WIDTH_BUCKET, windows over groups, folded outer SELECTs, per-unit
# derived tables, DISTINCT of public values, comma and private LEFT joins.
NEW_CONDITIONS = [
    "EXISTS (SELECT 1 FROM lineitem WHERE l_orderkey = o_orderkey)", "o_custkey IN (SELECT c_custkey FROM customer)",
    "o_orderdate - DATE '1995-01-01' > 3", "to_char(o_orderdate, 'YYYY') = '1995'",
    "o_orderdate >= CURRENT_DATE - 1000", "NOT (o_comment NOT LIKE '%a%')", "o_totalprice BETWEEN SYMMETRIC 1 AND 2",
    "o_clerk IS DISTINCT FROM 'x'", "width_bucket(o_totalprice, 0, 1000, 3) = 1", "o_orderdate::timestamp > now()",
]  # fmt: skip
NEW_OUTPUTS = [
    "COUNT(*)", "SUM(COUNT(*)) OVER ()", "RANK() OVER (ORDER BY COUNT(*))", "NULLIF(COUNT(*), 0)",
    "TRUNC(AVG(o_totalprice), 1)", "SIGN(SUM(o_totalprice))", "AVG(o_orderdate - DATE '1990-01-01')",
    "COUNT(*) FILTER (WHERE o_orderstatus = 'F')",
]  # fmt: skip
NEW_SHAPES = [
    "SELECT o_orderpriority, {o} FROM orders WHERE {w} GROUP BY 1",
    "SELECT {o} FROM orders, customer WHERE o_custkey = c_custkey AND {w}",
    "SELECT * FROM (SELECT o_orderpriority AS p, {o} AS v FROM orders WHERE {w} GROUP BY 1) s WHERE v > 0 ORDER BY v",
    "SELECT AVG(n) FROM (SELECT o_custkey, COUNT(*) AS n FROM orders WHERE {w} GROUP BY o_custkey HAVING {o} > 0) t",
    "SELECT DISTINCT o_orderstatus FROM orders WHERE {w}",
    "WITH x AS (SELECT o_orderstatus, {o} AS v FROM orders WHERE {w} GROUP BY 1) SELECT * FROM x",
    "SELECT c_mktsegment, {o} FROM customer LEFT JOIN orders ON o_custkey = c_custkey WHERE {w} GROUP BY 1",
]  # fmt: skip


@pytest.mark.slow
def test_this_release_constructs_crossed_run_without_error(env: Env) -> None:
    ran, failures = 0, []
    with psycopg.connect(env.tpch_dsn, autocommit=True) as conn:
        conn.execute("SET statement_timeout = '60s'")
        for shape in NEW_SHAPES:
            for o in NEW_OUTPUTS:
                for w in NEW_CONDITIONS:
                    q = shape.format(o=o, w=w)
                    try:
                        p = rewrite(parse_one(q), META)
                    except RewriteError:
                        continue
                    if p.public_only:
                        continue
                    ran += 1
                    try:
                        conn.execute(p.sql).fetchall()  # type: ignore[arg-type]
                    except psycopg.Error as e:
                        failures.append(f"{q}: {str(e).splitlines()[0]}")
    assert ran > 300
    assert not failures, "\n".join(failures[:20])
