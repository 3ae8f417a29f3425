"""Reading a CHECK constraint's definition (as pg_get_constraintdef prints it) as bounds."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest

from proxy.enforced_bounds import check_bounds, enforced_columns, numeric_columns, typmod_digits
from rewriter.metadata import ColumnMeta, Metadata, with_enforced_bounds, with_numeric_types
from rewriter.parse import parse_one
from rewriter.rewrite import rewrite

D = Decimal


@pytest.mark.parametrize(("definition", "bounds"), [
    ("CHECK (((c_acctbal >= '-999.99'::numeric) AND (c_acctbal <= 9999.99)))", (D("-999.99"), D("9999.99"))),
    ("CHECK (((x >= (0)::numeric) AND (x <= (50)::numeric)))", (D(0), D(50))),
    ("CHECK (((x > '-5'::integer) AND (x < 7)))", (D(-5), D(7))),
    ("CHECK (((0 <= x) AND (10 >= x)))", (D(0), D(10))),
    ("CHECK (((x >= 1) AND (x >= 3) AND (x <= 9) AND (x <= 8)))", (D(3), D(8))),
    ("CHECK (((x >= 0) AND (x <= 5) AND (y > 2)))", (D(0), D(5))),
    ("CHECK (((x >= 0) AND (length(z) < 4) AND (x <= 5)))", (D(0), D(5))),
    ("CHECK (((x >= (0)::double precision) AND (x <= '1e3'::double precision)))", (D(0), D(1000))),
    ("CHECK ((x >= 0))", (D(0), None)),
    ("CHECK (((x >= 0) OR (x <= 5)))", (None, None)),
    ("CHECK ((((x)::numeric >= 0) AND ((x)::numeric <= 5)))", (None, None)),
    ("CHECK (((y >= 0) AND (y <= 5)))", (None, None)),
    ("CHECK (((x >= 'NaN'::numeric) AND (x <= 'Infinity'::numeric)))", (None, None)),
    ("CHECK (((x >= (- 3)) AND (x <= abs(4))))", (D(-3), None)),
    ("FOREIGN KEY (x) REFERENCES t(id)", (None, None)),
    ("CHECK (x >= 0 AND", (None, None)),
])  # fmt: skip
def test_check_bounds(definition: str, bounds: tuple[Decimal | None, Decimal | None]) -> None:
    assert check_bounds(definition, "x" if "c_acctbal" not in definition else "c_acctbal") == bounds


def test_between_counts_but_symmetric_does_not() -> None:
    assert check_bounds("CHECK (((x >= 1) AND (x BETWEEN 2 AND 9)))", "x") == (D(2), D(9))
    assert check_bounds("CHECK ((x BETWEEN SYMMETRIC 9 AND 2))", "x") == (None, None)


def meta(**col: object) -> Metadata:
    return Metadata.model_validate({"dataset": "d", "tables": {
        "t": {"privacy_unit": "u", "columns": {"u": {"type": "integer"},
                                               "x": {"type": "numeric", "lower": 0, "upper": 10, **col}}},
        "p": {"public": True, "columns": {"x": {"type": "numeric", "lower": 0, "upper": 10}}},
    }})  # fmt: skip


def row(table: str = "t", type_: str = "numeric(12,2)", definition: str = "CHECK (((x >= 0) AND (x <= 10)))",
        schema: str = "public", oid: int = 7) -> dict[str, object]:  # fmt: skip
    return {"oid": oid, "schema": schema, "table": table, "column": "x", "type": type_,
            "definition": definition}


def test_enforced_columns_match_schema_table_column_and_numeric_type() -> None:
    assert enforced_columns(meta(), [row()]) == {("t", "x"): 7}
    assert enforced_columns(meta(), [row(schema="other")]) == {}
    assert enforced_columns(meta(), [row(table="p")]) == {}  # public tables are never clamped
    assert enforced_columns(meta(), [row(type_="text")]) == {}  # '10' < '9' as text
    assert enforced_columns(meta(), [row(definition="CHECK (((x >= 0) AND (x <= 11)))")]) == {}
    assert enforced_columns(meta(), [row(definition="CHECK ((x <= 11))"), row(oid=8)]) == {("t", "x"): 8}


def test_enforced_by_is_never_read_from_a_metadata_file() -> None:
    with pytest.raises(ValueError, match="enforced_by"):
        meta(enforced_by=7)
    assert ColumnMeta.model_validate({"type": "numeric"}).enforced_by is None


def test_numeric_type_is_never_read_from_a_metadata_file() -> None:
    with pytest.raises(ValueError, match="numeric_type"):
        meta(numeric_type=[1, 2, 3, 4])


@pytest.mark.parametrize(("p", "s", "digits"), [(15, 2, 13), (12, 0, 12), (5, -2, 7), (3, 5, -2), (1000, 0, 1000)])
def test_typmod_digits_reads_precision_and_signed_scale(p: int, s: int, digits: int) -> None:
    assert typmod_digits(((p << 16) | (s & 0x7FF)) + 4) == digits


def test_numeric_columns_match_declared_bounded_private_columns() -> None:
    r = {"schema": "public", "table": "t", "column": "x", "attrelid": 11, "attnum": 2,
         "atttypmod": ((15 << 16) | 2) + 4}  # fmt: skip
    assert numeric_columns(meta(), [r]) == {("t", "x"): (11, 2, r["atttypmod"], 13)}
    assert numeric_columns(meta(), [{**r, "table": "p"}]) == {}  # public: never clamped
    assert numeric_columns(meta(), [{**r, "column": "u"}]) == {}  # not bounded


def _sum_sql(col: dict[str, object], digits: int = 13) -> str:
    m = meta(**col)
    typed = with_numeric_types(m, {("t", "x"): (11, 2, 4, digits)})
    return rewrite(parse_one("SELECT SUM(x) FROM t"), typed).sql


def test_integer_clamp_only_where_it_equals_the_numeric_one() -> None:
    fast = _sum_sql({"precision": "0.01"})
    assert "(i0.w1 * 100)::int8, 0), 1000)" in fast and "= 'NaN' THEN 1000" in fast
    assert "(VALUES (11::oid, 2::int2, 4))" in fast
    # Bounds off the step grid, a step not a power of ten, or too many digits for bigint.
    for col, digits in (({"precision": "0.01", "lower": "0.005"}, 13), ({"precision": "0.25"}, 13),
                        ({"precision": "0.01"}, 17), ({"precision": "0.01"}, 16)):  # fmt: skip
        sql = _sum_sql(col, digits)
        assert bool(re.search(r"w\d+ \* \d+\)::int8", sql)) == (digits == 16), (col, digits)


def test_only_clamped_columns_types_are_guarded() -> None:
    typed = with_numeric_types(meta(precision="0.01"), {("t", "x"): (11, 2, 4, 13)})
    assert typed.numeric_types_of(["t"]) == ((11, 2, 4),)
    # A CHECK constraint bounds it: no clamp to make cheaper, no type to guard.
    assert with_enforced_bounds(typed, {("t", "x"): 7}).numeric_types_of(["t"]) == ()


def test_a_query_is_guarded_by_the_checks_of_the_tables_it_reads_only() -> None:
    # Two private tables with a CHECK-enforced column each (constraints 7 and 8) and a
    # numeric(p, s) column clamped as an integer on the first: each query's guard names
    # exactly the tables its SQL reads, wherever they are nested.
    m = Metadata.model_validate({"dataset": "d", "tables": {
        "t": {"privacy_unit": "u", "columns": {"u": {"type": "integer"},
                                               "x": {"type": "numeric", "lower": 0, "upper": 10},
                                               "y": {"type": "numeric", "lower": 0, "upper": 10,
                                                     "precision": "0.01"}}},
        "s": {"privacy_unit": "u", "columns": {"u": {"type": "integer"},
                                               "x": {"type": "numeric", "lower": 0, "upper": 10}}},
    }})  # fmt: skip
    m = with_numeric_types(with_enforced_bounds(m, {("t", "x"): 7, ("s", "x"): 8}), {("t", "y"): (11, 3, 4, 13)})

    def guard(sql: str) -> tuple[str, bool]:
        out = rewrite(parse_one(sql), m).sql
        oids = re.search(r"WHERE oid IN \(([\d, ]*)\)", out)
        return (oids.group(1) if oids else ""), "(VALUES (11::oid, 3::int2, 4))" in out

    assert guard("SELECT SUM(x) FROM t") == ("7", True)
    assert guard("SELECT SUM(x) FROM s") == ("8", False)
    assert guard("SELECT SUM(s.x) FROM s JOIN t ON s.u = t.u") == ("7, 8", True)
    assert guard("SELECT COUNT(*) FROM s WHERE u IN (SELECT u FROM t WHERE y > 1)") == ("7, 8", True)
    assert guard("SELECT SUM(v) FROM (SELECT u, SUM(y) AS v FROM t GROUP BY u) AS d") == ("7", True)


def test_sql_that_names_no_declared_table_is_guarded_by_every_tables_checks() -> None:
    from rewriter.rewrite import _tables_read

    m = with_enforced_bounds(meta(), {("t", "x"): 7})
    assert _tables_read('SELECT 1 FROM "public"."t" AS t0', m) == {"t"}
    # A rendering the match misses: the guard checks every table rather than none.
    assert _tables_read("SELECT 1 FROM public.t AS t0", m) == set(m.tables)
