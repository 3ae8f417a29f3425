"""Plans that keep filter parameters as bind parameters (rewriter/template.py)."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

import pytest

from rewriter.params import bind_parameters
from rewriter.parse import parse_one
from rewriter.rewrite import rewrite
from rewriter.template import filter_only, instantiate, make_template, value_kind, value_kinds
from tests.unit.test_corpus import META


@pytest.mark.parametrize(("value", "kind"), [
    (5, "int"), (-(1 << 63), "int"), ((1 << 63) - 1, "int"), (1 << 63, None),
    (True, None), (None, None), (1.5, None),
    (Decimal("12.50"), "numeric"), (Decimal("NaN"), None), (Decimal("Infinity"), None),
    (Decimal("1e100"), None), (Decimal("-9.99e99"), "numeric"),
    ("x", "text"), ("", "text"), ("a\x00b", None), ("\ud800", None),
    (date(1995, 1, 1), "date"), (datetime(1995, 1, 1, 12), "timestamp"),
    (datetime(1995, 1, 1, tzinfo=UTC), "timestamptz"), (time(12), None), (b"x", None),
])  # fmt: skip
def test_only_values_whose_comparison_cannot_fail_have_a_kind(value: Any, kind: str | None) -> None:
    assert value_kind(value) == kind


def test_one_value_without_a_kind_plans_every_value_as_a_literal() -> None:
    assert value_kinds([1, "a"]) == ("int", "text")
    assert value_kinds([1, None]) is None


FILTERS = [
    "SELECT COUNT(*) FROM (SELECT * FROM orders WHERE o_totalprice > $1) o",  # a derived table's WHERE
    "WITH t AS (SELECT o_totalprice FROM orders WHERE o_orderdate < $1) SELECT COUNT(*) FROM t WHERE o_totalprice > $2",
    "SELECT COUNT(*) FROM orders WHERE o_totalprice > $1",
    "SELECT COUNT(*) FROM orders WHERE $1 <= o_totalprice",
    "SELECT COUNT(*) FROM orders WHERE o_orderdate BETWEEN $1 AND $2",
    "SELECT COUNT(*) FROM orders WHERE o_custkey IN ($1, 7, $2)",
    "SELECT COUNT(*) FROM orders WHERE NOT (o_totalprice > $1 OR (o_shippriority = $2))",
    "SELECT COUNT(*) FROM orders WHERE o_totalprice > $1 / 100.0 AND o_shippriority <> $2",
]
NOT_FILTERS = [
    "SELECT COUNT(*) FROM orders WHERE o_totalprice > $1 + 1",  # arithmetic can overflow
    "SELECT COUNT(*) FROM orders WHERE o_totalprice > $1 / 100",  # integer division
    "SELECT COUNT(*) FROM orders WHERE o_totalprice > 100.0 / $1",  # divisor may be 0
    "SELECT COUNT(*) FROM orders WHERE o_totalprice > $1 / 0.0",
    "SELECT COUNT(*) FROM orders WHERE o_comment LIKE $1",  # the pattern is validated
    "SELECT COUNT(*) FROM orders WHERE $1 = $2",
    "SELECT COUNT(*) FROM orders WHERE o_totalprice > $1 AND o_totalprice > o_shippriority + $2",
    "SELECT COUNT(*) FROM orders WHERE o_totalprice > $2",  # $1 is never used
    "SELECT COUNT(*) FILTER (WHERE o_totalprice > $1) FROM orders",
    "SELECT COUNT(*) FROM orders GROUP BY o_orderpriority HAVING COUNT(*) > $1",
    "SELECT COUNT(*) FROM orders LIMIT $1",
    "SELECT COUNT(*) + $1 FROM orders",
    "SELECT COUNT(*) FROM (SELECT * FROM orders WHERE o_totalprice > $1 + 1) o",
    "SELECT COUNT(*) FROM orders WHERE o_custkey IN (SELECT c_custkey FROM customer WHERE c_acctbal > $1)",
    "SELECT COUNT(*) FROM orders WHERE o_totalprice > $1 UNION ALL SELECT COUNT(*) FROM orders",
]


def n_params(sql: str) -> int:
    """The highest $n of `sql`."""
    return max(int(n) for n in re.findall(r"\$(\d+)", sql))


@pytest.mark.parametrize("sql", FILTERS)
def test_filter_operands_are_recognised(sql: str) -> None:
    assert filter_only(parse_one(sql), n_params(sql))


@pytest.mark.parametrize("sql", NOT_FILTERS)
def test_any_other_use_of_a_parameter_is_planned_per_value(sql: str) -> None:
    tree, n = parse_one(sql), n_params(sql)
    assert not filter_only(tree, n)
    assert make_template(tree, ("int",) * n, META) is None


def test_an_outer_where_over_an_aggregate_is_not_a_filter() -> None:
    # Folded into HAVING (post-processing of noisy values): the marker would leave the SQL.
    sql = "SELECT * FROM (SELECT o_orderpriority, COUNT(*) AS n FROM orders GROUP BY 1) t WHERE n > $1"
    assert make_template(parse_one(sql), ("int",), META) is None


def test_a_text_value_compared_with_a_date_is_planned_per_value() -> None:
    # Its cast is checked against each value before any budget is spent.
    tree = parse_one("SELECT COUNT(*) FROM orders WHERE o_orderdate >= $1")
    assert make_template(tree, ("text",), META) is None
    assert make_template(tree, ("date",), META) is not None


@pytest.mark.parametrize(("kinds", "values", "placeholders"), [
    (("int", "numeric"), [5, Decimal("7.25")], ["$1::int8", "$2::numeric / 100.0"]),
    (("date", "text"), [date(1995, 1, 1), "1-URGENT"], ["$1::date", '= $2']),
    (("timestamp", "text"), [datetime(1995, 1, 1, 8), "x"], ["$1::timestamp"]),
    (("timestamptz", "text"), [datetime(1995, 1, 1, 8, tzinfo=UTC), "x"], ["$1::timestamptz"]),
])  # fmt: skip
def test_a_template_binds_its_values_and_plans_as_the_literals_do(
    kinds: tuple[str, ...], values: list[Any], placeholders: list[str]
) -> None:
    first = "o_totalprice > $2 / 100.0" if kinds[1] == "numeric" else "o_orderpriority = $2"
    col = "o_shippriority" if kinds[0] == "int" else "o_orderdate"
    sql = f"SELECT o_orderstatus, COUNT(*), AVG(o_totalprice) FROM orders WHERE {col} >= $1 AND {first} GROUP BY 1"
    tree = parse_one(sql)
    template = make_template(tree, kinds, META)
    assert template is not None
    for p in placeholders:
        assert p in template.sql
    plan = instantiate(template, values)
    literal = rewrite(bind_parameters(tree, values), META)
    assert plan.sql_params == tuple(values)
    # Everything but the SQL's constants is the literal plan's, the fingerprint included.
    skip = {"sql", "sql_params"}
    assert {f: getattr(plan, f) for f in plan.__dataclass_fields__ if f not in skip} == \
           {f: getattr(literal, f) for f in literal.__dataclass_fields__ if f not in skip}  # fmt: skip


def test_each_set_of_values_is_its_own_query_to_the_ledger_and_the_cache() -> None:
    template = make_template(parse_one("SELECT COUNT(*) FROM orders WHERE o_totalprice > $1"), ("int",), META)
    assert template is not None
    a, b, a2 = (instantiate(template, [v]) for v in (5, 6, 5))
    assert a.fingerprint == a2.fingerprint != b.fingerprint
    # The statement with the value as a literal: the same fingerprint, however planned.
    tree = parse_one("SELECT COUNT(*) FROM orders WHERE o_totalprice > $1")
    assert a.fingerprint == rewrite(bind_parameters(tree, [5]), META).fingerprint
    assert instantiate(template, [Decimal("5.0")]).fingerprint != a.fingerprint


def test_filter_literals_become_parameters_and_others_stay() -> None:
    from rewriter.template import parameterize

    sql = ("SELECT o_orderpriority, COUNT(*) + 1 FROM orders WHERE o_totalprice > 1000 "
           "AND (o_orderpriority = '1-URGENT' OR o_custkey IN (1, 2)) AND o_shippriority > -5 "
           "AND o_totalprice < 5 + 1 AND o_totalprice > 2500 / 100.0 GROUP BY 1 LIMIT 3")  # fmt: skip
    found = parameterize(parse_one(sql))
    assert found is not None
    shape, values = found
    assert sorted(map(str, values)) == sorted(["1000", "1-URGENT", "1", "2", "-5", "2500"])
    text = shape.sql(dialect="postgres")
    for kept in ("COUNT(*) + 1", "5 + 1", "/ 100.0", "LIMIT 3"):
        assert kept in text
    assert "-" not in text  # `-5` is one negative value
    assert {int(n) for n in re.findall(r"\$(\d+)", text)} == set(range(1, 7))
    assert isinstance(values[[str(v) for v in values].index("1000")], int)
    assert parameterize(parse_one("SELECT COUNT(*) FROM orders WHERE o_totalprice > 1.50")) is not None
    assert parameterize(parse_one("SELECT COUNT(*) FROM orders WHERE o_totalprice > $1 AND o_custkey = 3")) is None
    assert parameterize(parse_one("SELECT COUNT(*) FROM orders")) is None


def test_a_literal_statement_planned_from_its_template_is_its_literal_plan() -> None:
    from rewriter.template import parameterize

    sql = ("SELECT o_orderpriority, COUNT(*), AVG(o_totalprice) FROM orders WHERE o_totalprice > 1000.5 "
           "AND o_orderpriority IN ('1-URGENT', '2-HIGH') GROUP BY 1")  # fmt: skip
    found = parameterize(parse_one(sql))
    assert found is not None
    shape, values = found
    kinds = value_kinds(values)
    assert kinds is not None
    template = make_template(shape, kinds, META)
    assert template is not None
    plan, literal = instantiate(template, values), rewrite(parse_one(sql), META)
    skip = {"sql", "sql_params"}
    assert {f: getattr(plan, f) for f in plan.__dataclass_fields__ if f not in skip} == \
           {f: getattr(literal, f) for f in literal.__dataclass_fields__ if f not in skip}  # fmt: skip


def test_a_templates_fingerprint_is_the_same_in_every_process() -> None:
    # Markers are drawn afresh each time; the fingerprint (the answer cache's key) must
    # not depend on them, or a repeat after a restart or on a replica would miss.
    tree = parse_one("SELECT COUNT(*) FROM orders WHERE o_totalprice > $1")
    first, second = (make_template(tree, ("int",), META) for _ in range(2))
    assert first is not None and second is not None
    assert first.fingerprint == second.fingerprint
    assert instantiate(first, [5]).fingerprint == instantiate(second, [5]).fingerprint


def test_at_most_32_values_are_bound() -> None:
    from rewriter.template import MAX_PARAMETERS, parameterize

    def listed(n: int) -> str:
        return "SELECT COUNT(*) FROM orders WHERE o_custkey IN (" + ", ".join(str(i) for i in range(n)) + ")"

    assert parameterize(parse_one(listed(MAX_PARAMETERS))) is not None
    assert parameterize(parse_one(listed(MAX_PARAMETERS + 1))) is None
    params = "SELECT COUNT(*) FROM orders WHERE o_custkey IN (" + ", ".join(f"${i}" for i in range(1, 34)) + ")"
    assert make_template(parse_one(params), ("int",) * 33, META) is None


def test_a_statement_gets_its_template_the_second_time_it_is_seen() -> None:
    # One-off statements pay one rewrite (as literals), not a template's two.
    from accounting.mechanisms import Mechanisms
    from proxy.dp import DPEngine

    engine = DPEngine(META, Mechanisms(), None, None)  # type: ignore[arg-type]  # no I/O here
    tree = parse_one("SELECT COUNT(*) FROM orders WHERE o_totalprice > $1")
    text = "SELECT COUNT(*) FROM orders WHERE o_totalprice > $1"
    assert engine.bound_plan(text, tree, [5]) is None
    second, third = (engine.bound_plan(text, tree, [v]) for v in (6, 7))
    assert second is not None and third is not None and second.sql == third.sql
    assert (second.sql_params, third.sql_params) == ((6,), (7,))


def test_the_same_values_bound_again_reuse_their_plan() -> None:
    # A Describe and then an Execute of one portal bind the same values twice: the
    # second gets the first's plan; other values, or an equal value of another kind,
    # get their own.
    from accounting.mechanisms import Mechanisms
    from proxy.dp import DPEngine

    engine = DPEngine(META, Mechanisms(), None, None)  # type: ignore[arg-type]  # no I/O here
    text = "SELECT COUNT(*) FROM orders WHERE o_totalprice > $1"
    tree = parse_one(text)
    engine.bound_plan(text, tree, [5])  # seen once: planned as literals
    first = engine.bound_plan(text, tree, [6])
    assert first is not None and engine.bound_plan(text, tree, [6]) is first
    other = engine.bound_plan(text, tree, [7])
    assert other is not None and other is not first and other.sql_params == (7,)
    engine.bound_plan(text, tree, [Decimal(5)])  # another kind: seen once again
    as_numeric = engine.bound_plan(text, tree, [Decimal(6)])
    assert as_numeric is not None and as_numeric is not first
    assert as_numeric.fingerprint == engine.bound_plan(text, tree, [Decimal(6)]).fingerprint  # type: ignore[union-attr]


@pytest.mark.parametrize("value", [
    0, 7, -5, 2**63, -(2**63) - 1, 10**40, -(10**40),
    Decimal("0"), Decimal("-0"), Decimal("1.50"), Decimal("-1.50"), Decimal("-99900"),
    Decimal("1E+5"), Decimal("1e-7"), Decimal("-1E+5"), Decimal("0.000001"),
    Decimal("123456789012345678901234567890.123456789"),
])  # fmt: skip
def test_a_number_is_filled_in_as_sqlglot_renders_its_literal(value: int | Decimal) -> None:
    from rewriter.params import literal
    from rewriter.template import fill

    assert fill("x > $1", [value]) == f"x > {literal(value).sql(dialect='postgres', normalize=True)}"


@pytest.mark.parametrize(("where", "kinds", "placeholders"), [
    ("o_totalprice > $1", ("int",), ["o_totalprice\" > $1::numeric"]),
    ("o.o_totalprice BETWEEN $1 AND $2", ("int", "numeric"), ["BETWEEN $1::numeric AND $2::numeric"]),
    ("o_shippriority = $1", ("int",), ["o_shippriority\" = $1::int8"]),
    # One value against a numeric and an integer column: its kind's cast for both.
    ("o_totalprice > $1 AND o_shippriority = $1", ("int",), ["> $1::int8", "= $1::int8"]),
    ("o_totalprice > $1 / 100.0", ("int",), ["(SELECT $1::int8 / 100.0)"]),
])  # fmt: skip
def test_an_integer_compared_with_a_numeric_column_is_bound_as_numeric(
    where: str, kinds: tuple[str, ...], placeholders: list[str]
) -> None:
    template = make_template(parse_one(f"SELECT COUNT(*) FROM orders o WHERE {where}"), kinds, META)
    assert template is not None
    for p in placeholders:
        assert p in template.sql, (p, template.sql)


def test_a_negative_number_is_one_value_and_a_negated_parameter_is_not() -> None:
    from rewriter.template import parameterize

    found = parameterize(parse_one("SELECT COUNT(*) FROM customer WHERE c_acctbal > -5000 / 100.0 "
                                   "AND c_acctbal BETWEEN -1.5 AND 2"))  # fmt: skip
    assert found is not None
    assert found[1] == [-5000, Decimal("-1.5"), 2]  # $1, $2, $3 in the order written
    template = make_template(found[0], tuple(value_kind(v) or "" for v in found[1]), META)
    assert template is not None
    literal_plan = rewrite(parse_one("SELECT COUNT(*) FROM customer WHERE c_acctbal > -5000 / 100.0 "
                                     "AND c_acctbal BETWEEN -1.5 AND 2"), META)  # fmt: skip
    assert instantiate(template, found[1]).fingerprint == literal_plan.fingerprint
    # `-0` reads back as `0`: the statement is planned as literals.
    assert parameterize(parse_one("SELECT COUNT(*) FROM customer WHERE c_acctbal > -0")) is None
    # `-$1` is an expression over a parameter, not a filter value.
    assert make_template(parse_one("SELECT COUNT(*) FROM customer WHERE c_acctbal > -$1"), ("int",), META) is None


def test_a_typed_date_or_timestamp_literal_is_one_value_where_it_reads_back_as_written() -> None:
    from rewriter.template import parameterize

    sql = ("SELECT COUNT(*) FROM orders WHERE o_orderdate >= DATE '1995-01-01' AND o_orderdate < "
           "'1996-02-29'::date AND o_orderdate IN (CAST('1995-06-01' AS DATE), TIMESTAMP '1995-07-01 "
           "10:11:12') AND o_orderdate <> TIMESTAMP '1995-08-01 00:00:00.000001' AND o_totalprice > -7")  # fmt: skip
    found = parameterize(parse_one(sql))
    assert found is not None
    assert found[1] == [date(1995, 1, 1), date(1996, 2, 29), date(1995, 6, 1), datetime(1995, 7, 1, 10, 11, 12),
                        datetime(1995, 8, 1, 0, 0, 0, 1), -7]  # fmt: skip
    kinds = value_kinds(found[1])
    assert kinds == ("date", "date", "date", "timestamp", "timestamp", "int")
    template = make_template(found[0], kinds, META)
    assert template is not None and "$1::date" in template.sql and "1995" not in template.sql
    assert instantiate(template, found[1]).fingerprint == rewrite(parse_one(sql), META).fingerprint
    # Other spellings are planned as written (each reads back otherwise, or is no date);
    # so are typed literals with a precision, divided ones, and other types.
    for other in ("DATE '1995-1-1'", "DATE 'today'", "DATE '1995-02-30'", "DATE ' 1995-01-01'",
                  "TIMESTAMP '1995-01-01 10:00:00.000000'", "TIMESTAMP '1995-01-01T10:00:00'",
                  "TIMESTAMP '1995-01-01'", "'1995-01-01'::timestamp(3)", "TIMESTAMPTZ '1995-01-01 10:00:00'",
                  "DATE '1995-01-01' / 2.0", "'5'::int"):  # fmt: skip
        found = parameterize(parse_one(f"SELECT COUNT(*) FROM orders WHERE o_orderdate >= {other} "
                                       "AND o_totalprice > 5"))  # fmt: skip
        assert found is not None and found[1] == [5], other  # the other filter value only
