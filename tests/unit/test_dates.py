"""Dates with declared bounds: metadata, the values derived from them, plans and
post-processing (rewriter/dates.py; PostgreSQL's own values are checked end to end in
tests/e2e/test_dates.py)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from pydantic import ValidationError
from sqlglot import exp

from accounting.release import _typed
from rewriter.dates import (
    day_renderer,
    epoch_days,
    extract_domain,
    extract_range,
    from_epoch_days,
    shifted_span,
    to_char_domain,
    trunc_domain,
)
from rewriter.daykeys import MAX_INDEXED_DAYS
from rewriter.errors import RewriteError
from rewriter.metadata import ColumnMeta, Metadata
from rewriter.parse import parse_one
from rewriter.postprocess import PostProcessError, evaluate
from rewriter.posttypes import infer_type
from rewriter.rewrite import _literal, _plain_literal
from rewriter.rowexpr import Typed
from tests.unit.test_rewriter import META, META_UNDATED, plan

FIRST, LAST = date(1992, 1, 1), date(1998, 12, 31)


def test_date_columns_declare_dates_and_only_dates() -> None:
    col = ColumnMeta(type="date", lower="1992-01-01", upper=date(1998, 12, 31))  # type: ignore[arg-type]
    assert col.date_bounds == (FIRST, LAST) and not col.bounded
    assert ColumnMeta(type="numeric", lower=1, upper=2).date_bounds is None  # type: ignore[arg-type]
    bad = [
        {"type": "date", "lower": 1, "upper": 2},
        {"type": "integer", "lower": "1992-01-01", "upper": "1993-01-01"},
        {"type": "date", "lower": "1999-01-01", "upper": "1998-01-01"},
        {"type": "date", "lower": "1999-01-01"},
        {"type": "timestamp", "lower": "1992-01-01", "upper": "1993-01-01"},
        {"type": "text", "lower": 1, "upper": 2},
    ]
    for fields in bad:
        with pytest.raises(ValidationError):
            ColumnMeta(**fields)  # type: ignore[arg-type]


def test_epoch_days_round_trip() -> None:
    assert epoch_days(date(1970, 1, 1)) == 0 and epoch_days(FIRST) == 8035
    assert from_epoch_days(epoch_days(LAST)) == LAST and from_epoch_days(-1) == date(1969, 12, 31)


def test_truncated_values_of_a_date_range() -> None:
    weeks = trunc_domain("week", date(1992, 1, 1), date(1992, 1, 20), 100)  # a Wednesday to a Monday
    assert weeks is not None
    assert [w.date() for w in weeks] == [date(1991, 12, 30), date(1992, 1, 6), date(1992, 1, 13),
                                         date(1992, 1, 20)]  # fmt: skip
    assert all(w.tzinfo is UTC and w.hour == 0 for w in weeks)
    assert len(trunc_domain("month", FIRST, LAST, 100) or ()) == 84
    quarters = trunc_domain("quarter", date(1992, 2, 15), date(1992, 12, 1), 100)
    assert [q.month for q in quarters or ()] == [1, 4, 7, 10]
    assert len(trunc_domain("year", FIRST, LAST, 100) or ()) == 7
    assert trunc_domain("decade", FIRST, LAST, 100) == (datetime(1990, 1, 1, tzinfo=UTC),)
    assert len(trunc_domain("day", FIRST, LAST, 10_000) or ()) == 2557
    assert trunc_domain("day", FIRST, LAST, 2556) is None  # too many to list
    assert trunc_domain("century", FIRST, LAST, 100) is None


def test_extracted_ranges_of_a_date_range() -> None:
    assert extract_range("year", FIRST, LAST) == (1992, 1998)
    assert extract_range("isoyear", FIRST, LAST) == (1991, 1999)  # 1992-01-01 is in ISO 1991
    assert extract_range("century", FIRST, LAST) == (20, 20)
    assert extract_range("decade", FIRST, LAST) == (199, 199)
    assert extract_range("epoch", FIRST, LAST) == (8035 * 86_400, 10_591 * 86_400)
    assert extract_range("month", FIRST, LAST) is None
    assert extract_domain("year", FIRST, LAST, 1000) == tuple(range(1992, 1999))
    assert extract_domain("epoch", FIRST, LAST, 1000) is None


def test_min_max_and_quantiles_of_a_date_are_released_as_dates() -> None:
    p = plan("SELECT MIN(o_orderdate), MAX(o_orderdate), MEDIAN(o_orderdate), "
             "PERCENTILE_DISC(0.9) WITHIN GROUP (ORDER BY o_orderdate) FROM orders")  # fmt: skip
    assert [a.result_type for a in p.aggregates] == ["date"] * 4
    assert all((a.lower, a.upper, a.step) == (8035, 10_591, 1) for a in p.aggregates)
    assert [o.type_name for o in p.outputs] == ["date"] * 4
    assert [o.name for o in p.outputs][2:] == ["median", "percentile_disc"]
    # The histogram reads the clamped date's days, never an infinite or unbounded one.
    assert "- CAST('1970-01-01' AS DATE)" in p.sql and "WHEN \"t0\".\"o_orderdate\" > CAST('1998-12-31' AS DATE)" in p.sql
    assert _typed(Decimal(8035), "date") == FIRST and _typed(Decimal("10590.6"), "date") == LAST


def test_undeclared_dates_are_refused_where_bounds_are_needed() -> None:
    for q in ("SELECT MIN(o_orderdate) FROM orders", "SELECT AVG(EXTRACT(YEAR FROM o_orderdate)) FROM orders"):
        with pytest.raises(RewriteError) as e:
            plan(q, META_UNDATED)
        assert e.value.sqlstate == "0A000"
        assert "lower: 1992-01-01" in (e.value.hint or "") or "bounds" in e.value.message
    assert plan("SELECT EXTRACT(YEAR FROM o_orderdate), COUNT(*) FROM orders GROUP BY 1", META_UNDATED).needs_delta


@pytest.mark.parametrize(("key", "values"), [
    ("EXTRACT(YEAR FROM o_orderdate)", tuple(range(1992, 1999))),
    ("DATE_PART('year', o_orderdate)::int", tuple(range(1992, 1999))),
    ("EXTRACT(MONTH FROM o_orderdate)", tuple(range(1, 13))),  # no NULL: the date is NOT NULL
    ("DATE_TRUNC('year', o_orderdate)", tuple(datetime(y, 1, 1, tzinfo=UTC) for y in range(1992, 1999))),
    ("DATE_TRUNC('year', o_orderdate)::date", tuple(date(y, 1, 1) for y in range(1992, 1999))),
    ("DATE_TRUNC('year', CAST(o_orderdate AS timestamp))", tuple(datetime(y, 1, 1) for y in range(1992, 1999))),
])  # fmt: skip
def test_keys_over_declared_dates_list_every_value(key: str, values: tuple[object, ...]) -> None:
    p = plan(f"SELECT {key} AS k, COUNT(*) FROM orders GROUP BY 1")
    (k,) = p.keys
    assert not k.private and k.domain == values and not p.needs_delta


def test_a_date_key_lists_every_declared_day_and_nullable_dates_add_null() -> None:
    (k,) = plan("SELECT o_orderdate, COUNT(*) FROM orders GROUP BY 1").keys
    assert len(k.domain) == 2557 and k.domain[0] == FIRST and k.domain[-1] == LAST
    col = META.tables["orders"].columns["o_orderdate"].model_copy(update={"nullable": True})
    orders = META.tables["orders"].model_copy(update={"columns": {**META.tables["orders"].columns, "o_orderdate": col}})
    nullable = Metadata.model_validate({**META.model_dump(by_alias=True), "tables": {**META.tables, "orders": orders}})
    (k,) = plan("SELECT EXTRACT(YEAR FROM o_orderdate), COUNT(*) FROM orders GROUP BY 1", nullable).keys
    assert k.domain == (*range(1992, 1999), None)


def test_differences_of_declared_dates_are_bounded_and_clamped() -> None:
    p = plan("SELECT AVG(l_receiptdate - l_shipdate) FROM lineitem")
    (avg,) = p.aggregates
    assert (avg.lower, avg.upper) == (-2556, 2556)
    p = plan("SELECT AVG(o_orderdate - DATE '1995-01-01') FROM orders")
    assert (p.aggregates[0].lower, p.aggregates[0].upper) == (8035 - 9131, 10_591 - 9131)
    # Without declared dates the difference has no useful bound (PostgreSQL's whole range).
    p = plan("SELECT AVG(l_receiptdate - l_shipdate) FROM lineitem", META_UNDATED)
    assert p.aggregates[0].upper > 2_000_000_000


def _post(sql: str, env: dict[str, object]) -> object:
    return evaluate(parse_one(f"SELECT {sql}").expressions[0], env)


def test_post_processing_of_released_dates_follows_postgresql() -> None:
    env = {"a": date(1998, 7, 1), "b": date(1992, 1, 1)}
    assert _post("a - b", env) == 2373  # date - date: whole days, an integer
    assert _post("a + 1", env) == date(1998, 7, 2) and _post("a - 31", env) == date(1998, 5, 31)
    assert _post("a > DATE '1998-06-30'", env) is True
    assert _post("a > '1998-07-01'", env) is False  # an untyped literal compared as a date
    assert _post("CAST('1995-03-01' AS DATE)", env) == date(1995, 3, 1)
    with pytest.raises(PostProcessError) as e:
        _post("a > 'soon'", env)
    assert e.value.sqlstate == "22007"
    with pytest.raises(PostProcessError):
        _post("a * 2", env)
    with pytest.raises(PostProcessError) as e:
        _post("a + 100000000", env)  # beyond the dates Python holds
    assert e.value.sqlstate == "22008"
    types = {"a": "date", "b": "date"}
    for sql, want in (("a - b", "int4"), ("a + 1", "date"), ("CAST(b AS date)", "date")):
        assert infer_type(parse_one(f"SELECT {sql}").expressions[0], types) == want, sql
    assert isinstance(parse_one("SELECT DATE '1995-01-01'").expressions[0], exp.Cast)
    # No cast between dates and numbers, nor from booleans to numbers but integer: known
    # before anything runs, as in PostgreSQL (42846).
    types = {"a": "date", "n": "int8", "f": "float8", "q": "bool"}
    for sql in ("a::numeric", "CAST(a AS int)", "n::date", "f::date", "q::bigint", "q::numeric", "q::date"):
        with pytest.raises(PostProcessError) as e:
            infer_type(parse_one(f"SELECT {sql}").expressions[0], types)
        assert e.value.sqlstate == "42846", sql
    with pytest.raises(PostProcessError) as e:
        infer_type(parse_one("SELECT a::timestamp").expressions[0], types)
    assert e.value.sqlstate == "0A000"
    assert infer_type(parse_one("SELECT q::int").expressions[0], types) == "int4"
    assert _post("CAST(q AS int)", {"q": True}) == 1 and _post("q::text", {"q": False}) == "false"


@pytest.mark.parametrize(("key", "first"), [
    ("date_trunc('week', (o_orderdate + INTERVAL '1 day')) + INTERVAL '-1 day'", datetime(1991, 12, 29)),
    ("o_orderdate + 1", date(1992, 1, 2)),
    ("1 + o_orderdate", date(1992, 1, 2)),
    ("o_orderdate - INTERVAL '2 weeks'", datetime(1991, 12, 18)),
    ("EXTRACT(YEAR FROM o_orderdate - 100)", 1991),
    # whole months too (a fiscal year): the declared dates move, months first
    ("EXTRACT(YEAR FROM o_orderdate + INTERVAL '6 months')::int", 1992),
    ("DATE_TRUNC('month', o_orderdate - INTERVAL '1 year 1 day')", datetime(1990, 12, 1)),
])  # fmt: skip
def test_shifts_by_whole_days_keep_the_listed_values(key: str, first: object) -> None:
    (k,) = plan(f"SELECT {key} AS k, COUNT(*) FROM orders GROUP BY 1").keys
    assert not k.private and k.domain[0] == first


def test_the_readme_counts_of_shifted_lists() -> None:
    weeks = "date_trunc('week', (o_orderdate + INTERVAL '1 day')) + INTERVAL '-1 day'"
    (k,) = plan(f"SELECT {weeks} AS w, COUNT(*) FROM orders GROUP BY 1").keys
    assert len(k.domain) == 366 and None not in k.domain
    (k,) = plan("SELECT EXTRACT(YEAR FROM o_orderdate + INTERVAL '6 months') AS fy, COUNT(*) FROM orders GROUP BY 1").keys
    assert k.domain == tuple(range(1992, 2000))


@pytest.mark.parametrize("key", ["o_orderdate + INTERVAL '1 day 2 hours'", "o_orderdate + INTERVAL '1 month'",
                                 "EXTRACT(YEAR FROM o_orderdate + INTERVAL '6 hours')"])  # fmt: skip
def test_other_shifts_are_private_keys(key: str) -> None:
    (k,) = plan(f"SELECT {key} AS k, COUNT(*) FROM orders GROUP BY 1").keys
    assert k.private


def test_a_shifted_declared_date_is_still_declared() -> None:
    (agg,) = plan("SELECT MAX(o_orderdate + 30) FROM orders").aggregates
    assert agg.result_type == "date" and (agg.lower, agg.upper) == (8035 + 30, 10_591 + 30)


def test_shifted_spans_move_months_first_and_clamp_the_day() -> None:
    jan31, mar31 = epoch_days(date(1992, 1, 31)), epoch_days(date(1992, 3, 31))
    assert shifted_span((jan31, mar31), 1, 0) == (epoch_days(date(1992, 2, 29)), epoch_days(date(1992, 4, 30)))
    assert shifted_span((jan31, mar31), -12, 1) == (epoch_days(date(1991, 2, 1)), epoch_days(date(1991, 4, 1)))
    assert shifted_span((jan31, mar31), 12 * 9000, 0) is None


def test_to_char_domains_read_each_month_once_and_stop_short_of_the_last_date() -> None:
    from rewriter.dates import to_char_domain

    # Without a day field one day per month is read: a partial first and last month count.
    assert to_char_domain("YYYY-MM", date(1992, 1, 15), date(1992, 3, 2), 10) == ("1992-01", "1992-02", "1992-03")
    assert to_char_domain("DD", date(1992, 1, 30), date(1992, 2, 2), 10) == ("30", "31", "01", "02")
    # Too many values, a year PostgreSQL would not write in four digits, or a range
    # reaching the last date Python holds: no domain (the key stays private), no error.
    assert to_char_domain("YYYY-MM-DD", date(1992, 1, 1), date(1998, 12, 31), 100) is None
    assert to_char_domain("YYYY", date(999, 1, 1), date(1001, 1, 1), 10) is None
    assert to_char_domain("YYYY", date(9990, 1, 1), date(9999, 12, 31), 100) is None


@pytest.mark.parametrize(("function", "argument", "listed"), [
    ("extract", "year", lambda: extract_domain("year", FIRST, LAST, 100)),
    ("extract", "isoyear", lambda: extract_domain("isoyear", FIRST, LAST, 100)),
    ("extract", "month", lambda: tuple(range(1, 13))),
    ("extract", "dow", lambda: tuple(range(7))),
    ("trunc", "week", lambda: trunc_domain("week", FIRST, LAST, 10_000)),
    ("trunc", "quarter", lambda: trunc_domain("quarter", FIRST, LAST, 10_000)),
    ("to_char", "IYYY-IW", lambda: to_char_domain("IYYY-IW", FIRST, LAST, 10_000)),
    ("to_char", "Dy DD Mon", lambda: to_char_domain("Dy DD Mon", FIRST, LAST, 10_000)),
])  # fmt: skip
def test_each_day_renders_to_a_listed_value_and_every_listed_value_has_a_day(
    function: str, argument: str, listed: object
) -> None:
    # rewriter/daykeys.py indexes each declared day by its key: the keys of the days
    # must be the listed values (PostgreSQL's own are checked end to end). ISO years
    # list one more year on either side, whatever the days.
    render = day_renderer(function, argument)
    assert render is not None
    days = [from_epoch_days(d) for d in range(epoch_days(FIRST), epoch_days(LAST) + 1)]
    values = set(listed()) - ({1991, 1999} if argument == "isoyear" else set())  # type: ignore[operator]
    assert set(map(render, days)) == values


def test_keys_not_listed_have_no_day_renderer() -> None:
    assert day_renderer("extract", "epoch") is None and day_renderer("extract", "hour") is None
    assert day_renderer("trunc", "century") is None and day_renderer("to_char", "HH24") is None
    assert day_renderer("median", "") is None


def test_keys_over_long_declared_spans_keep_the_listed_lookup() -> None:
    short = plan("SELECT EXTRACT(YEAR FROM o_orderdate), COUNT(*) FROM orders GROUP BY 1")
    assert "::int2[])[" in short.sql
    days = MAX_INDEXED_DAYS + 1
    wide = Metadata.model_validate({**META.model_dump(by_alias=True), "tables": {**META.tables, "orders": {
        **META.tables["orders"].model_dump(by_alias=True), "columns": {
            **META.tables["orders"].model_dump(by_alias=True)["columns"],
            "o_orderdate": {"type": "date", "nullable": False, "lower": FIRST.isoformat(),
                            "upper": from_epoch_days(epoch_days(FIRST) + days - 1).isoformat()}}}}})  # fmt: skip
    long = plan("SELECT EXTRACT(YEAR FROM o_orderdate), COUNT(*) FROM orders GROUP BY 1", wide)
    assert "[])[" not in long.sql and "CASE" in long.sql


@pytest.mark.parametrize(("kind", "value"), [
    ("date", date(1992, 1, 1)), ("date", date(1, 1, 1)), ("timestamptz", datetime(1992, 1, 1, tzinfo=UTC)),
    ("timestamp", datetime(1992, 3, 1, 12, 30)), ("numeric", 1992), ("numeric", -5), ("int", 2**40),
    ("text", "O'Brien"), ("text", "a b"),
])  # fmt: skip
def test_listed_values_written_by_hand_are_sqlglot_renderings(kind: str, value: object) -> None:
    t = Typed(exp.Null(), kind)
    assert _plain_literal(value, exp.DataType.build(t.type_name).sql(dialect="postgres")) == _literal(value, t)
