"""Binding protocol parameters ($1, $2...) into a parsed statement as typed literals.

Parameters of DP queries are treated as literals of their declared types, so the plan
(and its cost) is a function of the final statement text only.
"""

from __future__ import annotations

from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

from sqlglot import exp

from rewriter.errors import RewriteError

PARAM_ERROR = "08P01"


def literal(value: Any) -> exp.Expression:
    """A sqlglot literal for a decoded parameter value."""
    if value is None:
        return exp.Null()
    if isinstance(value, bool):
        return exp.Boolean(this=value)
    if isinstance(value, Decimal) and not value.is_finite():
        # NaN and ±Infinity are no number tokens in SQL: as written in PostgreSQL.
        return exp.cast(exp.Literal.string(str(value).replace("sNaN", "NaN")), "numeric")
    if isinstance(value, (int, Decimal)):
        return exp.Literal.number(str(value))
    if isinstance(value, float):
        return exp.cast(exp.Literal.string(repr(value)), "float8")
    if isinstance(value, datetime):
        kind = "timestamptz" if value.tzinfo is not None else "timestamp"
        return exp.cast(exp.Literal.string(value.isoformat(sep=" ")), kind)
    if isinstance(value, date):
        return exp.cast(exp.Literal.string(value.isoformat()), "date")
    if isinstance(value, time):
        return exp.cast(exp.Literal.string(value.isoformat()), "time")
    if isinstance(value, bytes):
        raise RewriteError("0A000", "bytea parameters are not supported")
    if isinstance(value, list):
        # A binary array parameter (proxy.wire.binary_values): an ARRAY[...] of its values,
        # which only `x op ANY/ALL(...)` accepts (rewriter.quantified).
        return exp.Array(expressions=[literal(v) for v in value])
    return exp.Literal.string(str(value))


def parameter_number(node: exp.Parameter) -> int | None:
    """The n of a `$n` parameter (None for a named one)."""
    inner = node.this
    text = str(inner.this if isinstance(inner, exp.Literal) else inner)
    return int(text) if text.isdigit() else None


def bind_parameters(tree: exp.Expression, values: list[Any]) -> exp.Expression:
    """A copy of `tree` with every $n replaced by the literal of values[n-1]."""

    def sub(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Parameter):
            n = parameter_number(node)
            if n is None:
                return node
            if not 1 <= n <= len(values):
                raise RewriteError(PARAM_ERROR, f"there is no parameter ${n}")
            return literal(values[n - 1])
        return node

    return tree.copy().transform(sub, copy=False)


def count_parameters(tree: exp.Expression) -> int:
    """The highest $n used in the statement."""
    return max((n for p in tree.find_all(exp.Parameter) if (n := parameter_number(p)) is not None), default=0)
