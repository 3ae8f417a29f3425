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


_CAST_NAMES = {
    exp.DataType.Type.INT: "int4", exp.DataType.Type.BIGINT: "int8",
    exp.DataType.Type.SMALLINT: "int2", exp.DataType.Type.DECIMAL: "numeric",
    exp.DataType.Type.DOUBLE: "float8", exp.DataType.Type.FLOAT: "float4",
    exp.DataType.Type.TEXT: "text", exp.DataType.Type.VARCHAR: "varchar",
    exp.DataType.Type.CHAR: "bpchar", exp.DataType.Type.DATE: "date",
    exp.DataType.Type.TIMESTAMP: "timestamp", exp.DataType.Type.TIMESTAMPTZ: "timestamptz",
    exp.DataType.Type.BOOLEAN: "bool",
}  # fmt: skip


def pg_cast_name(to: exp.DataType) -> str | None:
    """The PostgreSQL type name (`int4`, `text[]`) of a cast's target as sqlglot parsed
    it (`int`, `INTEGER[]`...), or None for a type dpproxy does not name."""
    if to.is_type(exp.DataType.Type.ARRAY):
        element = pg_cast_name(to.expressions[0]) if to.expressions else None
        return f"{element}[]" if element is not None and not element.endswith("[]") else None
    return _CAST_NAMES.get(to.this)
