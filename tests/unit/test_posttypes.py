"""Static types of post-processing expressions (rewriter/posttypes.py): what would fail
on every released value is refused when the plan is made, with PostgreSQL's SQLSTATE,
and what PostgreSQL accepts is typed as PostgreSQL types it."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from rewriter.parse import parse_one
from rewriter.postprocess import PostProcessError, evaluate
from rewriter.posttypes import infer_type
from tests.unit.test_rewriter import plan

# Placeholders as plans name them: a released count (bigint), a date, an average
# (numeric), a text key and a boolean.
TYPES = {"n": "int8", "d": "date", "x": "numeric", "k": "text", "q": "bool", "t": "timestamptz"}


def _type(sql: str) -> str:
    return infer_type(parse_one(f"SELECT {sql}").expressions[0], TYPES)


@pytest.mark.parametrize(("sql", "sqlstate"), [
    ("ABS(d)", "42883"), ("ROUND(d)", "42883"), ("SQRT(d)", "42883"), ("SIGN(d)", "42883"), ("FLOOR(d)", "42883"),
    ("-d", "42883"), ("d * 2", "42883"), ("d + n", "42883"), ("d > 5", "42883"), ("d = TRUE", "42883"),
    ("d IN (1, 2)", "42883"), ("d BETWEEN 1 AND 2", "42883"), ("NULLIF(d, 3)", "42883"), ("n = TRUE", "42883"),
    ("k + 1", "42883"), ("q * 2", "42883"), ("ROUND(x, 1.5)", "42883"), ("ABS(k)", "42883"),
    ("GREATEST(d, 0)", "42804"), ("COALESCE(d, 0)", "42804"), ("CASE WHEN n > 1 THEN d ELSE 0 END", "42804"),
    ("n AND TRUE", "42804"), ("NOT n", "42804"), ("n IS TRUE", "42804"), ("CASE WHEN n THEN 1 END", "42804"),
    ("d > 'soon'", "22007"), ("t = 'May'", "22007"), ("n > 'abc'", "22P02"), ("n = '1.5'", "22P02"), ("ROUND(x, 'F')", "22P02"),
    ("d::numeric", "42846"), ("n::date", "42846"), ("q::bigint", "42846"), ("d::timestamp", "0A000"),
    ("n + '1'", "0A000"), ("t - t", "0A000"), ("n / 0", "22012"),
])  # fmt: skip
def test_what_fails_on_every_value_is_refused_as_postgresql_refuses_it(sql: str, sqlstate: str) -> None:
    with pytest.raises(PostProcessError) as e:
        _type(sql)
    assert e.value.sqlstate == sqlstate, (sql, e.value.message)


@pytest.mark.parametrize(("sql", "want"), [
    ("d - d", "int4"), ("d + 1", "date"), ("1 + d", "date"), ("d - 7", "date"), ("n * 100 / 3", "int8"),
    ("x * n", "numeric"), ("ROUND(x, 2)", "numeric"), ("ROUND(x, '2')", "numeric"), ("ROUND(n)", "float8"),
    ("d > '1995-01-01'", "bool"), ("n > '5'", "bool"), ("d IN ('1995-01-01', NULL)", "bool"),
    ("COALESCE(d, NULL)", "date"), ("COALESCE(n, '5')", "int8"), ("GREATEST(n, 2.5)", "numeric"),
    ("CASE WHEN n > 1 THEN 'many' ELSE 'few' END", "text"), ("CASE WHEN q THEN k END", "text"),
    ("n > 1 AND q", "bool"), ("q IS NOT TRUE", "bool"), ("d IS NULL", "bool"), ("t > d", "bool"),
    ("q::int", "int4"), ("q::text", "text"), ("d::text", "text"), ("'1995-03-01'::date", "date"),
    ("ABS(x)", "numeric"), ("-n", "int8"),
])  # fmt: skip
def test_what_postgresql_accepts_is_typed_as_it_types_it(sql: str, want: str) -> None:
    assert _type(sql) == want, sql


def test_untyped_literals_compare_as_the_other_side_after_the_noise() -> None:
    env = {"d": date(1995, 3, 1), "n": 7, "z": None, "t": datetime(1995, 1, 1, tzinfo=UTC)}
    for sql, want in (("d IN ('1995-03-01')", True), ("n IN ('7', '8')", True), ("n > '5'", True),
                      ("t = '1995-01-01'", True), ("COALESCE(z, '1995-02-01', t)", datetime(1995, 2, 1, tzinfo=UTC)),
                      ("d BETWEEN '1995-01-01' AND '1995-12-31'", True), ("NULLIF(n, '7')", None),
                      ("LEAST(d, '1990-01-01')", date(1990, 1, 1)), ("COALESCE(z, '5', n)", 5)):  # fmt: skip
        assert evaluate(parse_one(f"SELECT {sql}").expressions[0], env) == want, sql


def test_having_and_order_by_are_checked_when_the_plan_is_made() -> None:
    for q in ("SELECT o_orderstatus FROM orders GROUP BY 1 HAVING MIN(o_orderdate)::numeric > 0",
              "SELECT o_orderstatus, COUNT(*) FROM orders GROUP BY 1 ORDER BY ABS(MAX(o_orderdate))",
              "SELECT o_orderstatus FROM orders GROUP BY 1 HAVING COUNT(*) AND TRUE"):  # fmt: skip
        with pytest.raises(PostProcessError):
            plan(q)
    # HAVING itself must be a condition: a count there would have dropped every group.
    for q, state in (("SELECT o_orderstatus FROM orders GROUP BY 1 HAVING COUNT(*)", "42804"),
                     ("SELECT o_orderstatus FROM orders GROUP BY 1 HAVING MIN(o_orderdate)", "42804"),
                     ("SELECT o_orderstatus FROM orders GROUP BY 1 HAVING 'yes'", "0A000")):  # fmt: skip
        with pytest.raises(PostProcessError) as e:
            plan(q)
        assert e.value.sqlstate == state, q
    assert plan("SELECT o_orderstatus FROM orders GROUP BY 1 HAVING COUNT(*) > 5 OR NULL").having is not None
