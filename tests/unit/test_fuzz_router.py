"""Fuzzing the router and rewriter: any input is answered or refused, never a crash.

A crash here would surface to the client as an internal error (or, worse, a traceback);
every outcome must be a ProxyError or RewriteError with a SQLSTATE.
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.errors import ProxyError
from proxy.router import Route, classify
from rewriter.errors import RewriteError
from rewriter.metadata import load_metadata
from rewriter.parse import split_statements
from rewriter.rewrite import rewrite

META = load_metadata(Path(__file__).resolve().parents[2] / "proxy" / "examples" / "tpch.yaml")

WORDS = [
    "SELECT", "COUNT(*)", "SUM(o_totalprice)", "AVG(c_acctbal)", "FROM", "orders", "customer",
    "WHERE", "GROUP BY", "o_orderstatus", "HAVING", "ORDER BY", "LIMIT", "1", "0", "-1", "'x'",
    "$$y$$", "(", ")", ",", ";", "AND", "OR", "NOT", "=", "<", ">", "+", "-", "*", "/", "::int",
    "/*", "*/", "--", "\n", "NULL", "IN", "BETWEEN", "CASE", "WHEN", "THEN", "ELSE", "END",
    "JOIN", "ON", "o_custkey", "c_custkey", "DISTINCT", "WITH", "AS", "t", "UNION", "$1",
    "DELETE", "pg_sleep(1)", "1e999", "'NaN'", "E'\\\\'", '"o_totalprice"', "o_orderdate",
]  # fmt: skip


def route_and_plan(sql: str) -> None:
    """What the proxy does before any I/O: split, classify, rewrite."""
    try:
        for statement in split_statements(sql):
            routed = classify(statement, META)
            if routed.route == Route.DP and routed.tree is not None:
                plan = rewrite(routed.tree, META)
                assert plan.sql and plan.primitives
    except (ProxyError, RewriteError) as e:
        assert e.sqlstate and len(e.sqlstate) == 5
        assert e.message


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(WORDS), min_size=1, max_size=25))
def test_token_soup_never_crashes(words: list[str]) -> None:
    route_and_plan(" ".join(words))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_never_crashes(text: str) -> None:
    route_and_plan(text)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="()+-*/ 1o_totalprice,", max_size=60))
def test_aggregate_arguments_never_crash(inner: str) -> None:
    route_and_plan(f"SELECT SUM({inner}) FROM orders")
    route_and_plan(f"SELECT COUNT(*) FROM orders WHERE {inner} > 0")
