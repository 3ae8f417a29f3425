"""Mapping declared column types to PostgreSQL type names and safe SQL literals."""

from __future__ import annotations

from typing import Any

from sqlglot import exp

from rewriter.metadata import ColumnType

_PG_NAMES = {
    ColumnType.INTEGER: "int4",
    ColumnType.BIGINT: "int8",
    ColumnType.SMALLINT: "int2",
    ColumnType.NUMERIC: "numeric",
    ColumnType.FLOAT: "float8",
    ColumnType.TEXT: "text",
    ColumnType.DATE: "date",
    ColumnType.TIMESTAMP: "timestamp",
    ColumnType.TIMESTAMPTZ: "timestamptz",
    ColumnType.BOOLEAN: "bool",
}


def pg_type_name(t: ColumnType) -> str:
    """The PostgreSQL type name used for a declared column type."""
    return _PG_NAMES[t]


def sql_literal(value: Any, t: ColumnType) -> str:
    """A typed SQL literal for a declared domain value (quoted by sqlglot, never by hand)."""
    if value is None:
        return f"CAST(NULL AS {pg_type_name(t)})"
    if isinstance(value, bool):
        lit: exp.Expression = exp.Boolean(this=value)
    elif isinstance(value, int):
        lit = exp.Literal.number(value)
    else:
        lit = exp.Literal.string(str(value))
    return exp.cast(lit, pg_type_name(t)).sql(dialect="postgres")
