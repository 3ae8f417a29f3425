"""Scalar aggregate subqueries in WHERE split into releases (rewriter/nested.py); the
outer query's template is fixed before any value (tests/e2e/test_nested.py runs them)."""

from __future__ import annotations

import pytest

from rewriter.errors import RewriteError
from rewriter.nested import outer_template, post_values, split_scalar_subqueries, with_post_values
from rewriter.parse import parse_one
from rewriter.template import make_template
from tests.unit.test_rewriter import META


def split(sql: str) -> tuple[str, list[str]] | None:
    n = split_scalar_subqueries(parse_one(sql))
    return None if n is None else (n.outer.sql(dialect="postgres"), [s.sql(dialect="postgres") for s in n.inner])


def test_a_scalar_subquery_becomes_a_parameter_of_the_outer_query() -> None:
    assert split("SELECT COUNT(*) FROM orders WHERE o_totalprice > (SELECT AVG(o_totalprice) FROM orders)") == (
        "SELECT COUNT(*) FROM orders WHERE o_totalprice > $1", ["SELECT AVG(o_totalprice) FROM orders"])
    outer, inner = split("SELECT COUNT(*) FROM orders WHERE o_totalprice BETWEEN (SELECT MIN(o_totalprice) "
                         "FROM orders) AND (SELECT MAX(o_totalprice) FROM orders) AND o_orderstatus = 'F'") or ("", [])
    assert outer.endswith("BETWEEN $1 AND $2 AND o_orderstatus = 'F'") and len(inner) == 2


def test_constant_arithmetic_around_a_subquery_is_its_post_processing() -> None:
    assert split("SELECT COUNT(*) FROM orders WHERE o_orderdate >= (SELECT MAX(o_orderdate) FROM orders) - 365") == (
        "SELECT COUNT(*) FROM orders WHERE o_orderdate >= $1", ["SELECT (MAX(o_orderdate)) - 365 FROM orders"])
    outer, inner = split("SELECT COUNT(*) FROM orders WHERE o_totalprice > 2 * (SELECT AVG(o_totalprice) AS a FROM orders)") or ("", [])
    assert inner == ["SELECT 2 * (AVG(o_totalprice)) FROM orders"]
    # Arithmetic with a column stays in the outer query (whose template then refuses it).
    outer, inner = split("SELECT COUNT(*) FROM orders WHERE o_totalprice > o_shippriority * (SELECT AVG(o_totalprice) FROM orders)") or ("", [])
    assert outer.endswith("o_shippriority * $1")
    assert make_template(parse_one(outer), ("numeric",), META) is None


@pytest.mark.parametrize("sql", [
    "SELECT COUNT(*) FROM orders WHERE o_custkey IN (SELECT c_custkey FROM customer)",
    "SELECT COUNT(*) FROM orders WHERE EXISTS (SELECT 1 FROM lineitem WHERE l_orderkey = o_orderkey)",
    "SELECT COUNT(*) FROM orders WHERE EXISTS (SELECT 1 FROM lineitem WHERE l_orderkey = o_orderkey "
    "AND l_quantity > (SELECT AVG(l_quantity) FROM lineitem))",
    "SELECT COUNT(*) FROM orders WHERE o_totalprice > 5",
    "SELECT COUNT(*) FROM orders",
])  # fmt: skip
def test_other_statements_are_left_to_the_rewriter(sql: str) -> None:
    assert split(sql) is None


def test_parameters_and_scalar_subqueries_are_not_mixed() -> None:
    with pytest.raises(RewriteError) as e:
        split("SELECT COUNT(*) FROM orders WHERE o_orderstatus = $1 AND o_totalprice > (SELECT AVG(o_totalprice) FROM orders)")
    assert e.value.sqlstate == "0A000"


def test_the_outer_template_does_not_depend_on_the_value() -> None:
    outer, _ = split("SELECT o_orderpriority, COUNT(*) FROM orders WHERE o_totalprice > (SELECT AVG(o_totalprice) FROM orders) GROUP BY 1") or ("", [])
    template = make_template(parse_one(outer), ("numeric",), META)
    assert template is not None and template.sql.count("$1::numeric") == 1


def test_subqueries_after_the_noise_are_numbered_after_the_filters() -> None:
    n = split_scalar_subqueries(parse_one(
        "SELECT o_orderpriority, COUNT(*) * 100.0 / (SELECT COUNT(*) FROM orders) FROM orders "
        "WHERE o_totalprice > (SELECT AVG(o_totalprice) FROM orders) GROUP BY 1 "
        "HAVING COUNT(*) > (SELECT COUNT(*) FROM orders) / 20 ORDER BY 2"))  # fmt: skip
    assert n is not None and n.filters == 1
    assert n.outer.sql(dialect="postgres") == (
        "SELECT o_orderpriority, COUNT(*) * 100.0 / $2 FROM orders WHERE o_totalprice > $1 "
        "GROUP BY 1 HAVING COUNT(*) > $3 ORDER BY 2")
    # `COUNT(*) * 100.0` is no constant: only `/ 20` is the subquery's post-processing.
    assert [s.sql(dialect="postgres") for s in n.inner][1:] == [
        "SELECT COUNT(*) FROM orders", "SELECT (COUNT(*)) / 20 FROM orders"]


def test_a_subquery_read_per_row_is_refused() -> None:
    with pytest.raises(RewriteError, match="inside an aggregate"):
        split("SELECT SUM(o_totalprice * (SELECT AVG(o_totalprice) FROM orders)) FROM orders")
    n = split_scalar_subqueries(parse_one(
        "SELECT COUNT(*) FILTER (WHERE o_totalprice > (SELECT AVG(o_totalprice) FROM orders)) FROM orders"))
    assert n is not None  # planned with two markers, the FILTER's SQL differs: refused
    with pytest.raises(RewriteError, match="after the noise"):
        outer_template(n, ("numeric",), META)


def test_the_post_processing_markers_are_replaced_by_the_released_values() -> None:
    n = split_scalar_subqueries(parse_one(
        "SELECT c_mktsegment, COUNT(*) * 100.0 / (SELECT COUNT(*) FROM customer) AS pct FROM customer GROUP BY 1"))
    assert n is not None
    plan = outer_template(n, ("int",), META)
    assert "7123456789012345" not in plan.sql  # the marker is in the outputs only
    released = with_post_values(plan, post_values(("int",), 0, [1500]))
    assert released.outputs[1].expr.sql(dialect="postgres").endswith("/ 1500")
    assert released.sql == plan.sql and released.primitives == plan.primitives
    with pytest.raises(RewriteError, match="must aggregate"):
        outer_template(split_scalar_subqueries(parse_one(  # type: ignore[arg-type]
            "SELECT c_mktsegment, (SELECT COUNT(*) FROM customer) FROM customer GROUP BY 1")), ("int",), META)
