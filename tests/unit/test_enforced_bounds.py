"""Reading a CHECK constraint's definition (as pg_get_constraintdef prints it) as bounds."""

from __future__ import annotations

from decimal import Decimal

import pytest

from proxy.enforced_bounds import check_bounds, enforced_columns
from rewriter.metadata import ColumnMeta, Metadata

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
