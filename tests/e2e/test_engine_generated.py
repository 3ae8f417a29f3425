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
