"""The allow-list for per-row expressions (WHERE, and later values inside aggregates).

Every node of the tree must be of an allowed type; anything else is refused by name.
Row expressions run on private rows inside the database, so they must not be able to
raise an error for some rows only (division by a column, failing casts) or have effects.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlglot import exp

from rewriter.errors import not_allowed, unsupported

_ALLOWED: tuple[type[exp.Expression], ...] = (
    exp.Column,
    exp.Identifier,
    exp.Literal,
    exp.Null,
    exp.Boolean,
    exp.Paren,
    exp.And,
    exp.Or,
    exp.Not,
    exp.EQ,
    exp.NEQ,
    exp.GT,
    exp.GTE,
    exp.LT,
    exp.LTE,
    exp.Is,
    exp.Between,
    exp.In,
    exp.Like,
    exp.ILike,
    exp.Add,
    exp.Sub,
    exp.Mul,
    exp.Neg,
    exp.Div,
    exp.Tuple,
)

_SAFE_LITERAL_CASTS = {"DATE", "TIMESTAMP", "TIMESTAMPTZ", "NUMERIC", "DECIMAL", "INT", "BIGINT",
                       "SMALLINT", "TEXT", "VARCHAR", "DOUBLE", "FLOAT", "BOOLEAN", "INTERVAL"}


def check_row_expr(
    node: exp.Expression,
    resolve: Callable[[exp.Column], Any],
    context: str,
) -> None:
    """Raise a RewriteError if `node` contains anything outside the row allow-list."""
    for n in node.walk():
        if isinstance(n, exp.Column):
            if n.is_star:
                raise not_allowed(f"* is not allowed in {context}")
            resolve(n)
        elif isinstance(n, (exp.Subquery, exp.Select)):
            raise unsupported(f"subqueries are not supported in {context} yet")
        elif isinstance(n, exp.AggFunc):
            raise not_allowed(f"aggregate functions are not allowed in {context}")
        elif isinstance(n, exp.Cast):
            _check_cast(n, context)
        elif isinstance(n, exp.DataType):
            continue
        elif isinstance(n, exp.Div):
            _check_divisor(n.expression, context)
        elif isinstance(n, exp.In) and n.args.get("query") is not None:
            raise unsupported(f"IN (subquery) is not supported in {context} yet")
        elif not isinstance(n, _ALLOWED):
            raise unsupported(
                f"{_describe(n)} is not allowed in {context}",
                "use comparisons, AND/OR/NOT, IN (list), BETWEEN, LIKE, IS NULL and + - * "
                "over columns and literals",
            )


def _check_cast(n: exp.Cast, context: str) -> None:
    # A cast of a literal fails (or not) the same way for every row; a cast of a
    # column could fail for some rows only, which would leak through the error.
    if not isinstance(n.this, (exp.Literal, exp.Null)):
        raise unsupported(f"casts of columns are not supported in {context} yet")
    to = n.to.this.name if isinstance(n.to, exp.DataType) else ""
    if to not in _SAFE_LITERAL_CASTS:
        raise unsupported(f"a cast to {to} is not supported in {context}")


def _check_divisor(divisor: exp.Expression, context: str) -> None:
    value = divisor.this if isinstance(divisor, exp.Paren) else divisor
    if isinstance(value, exp.Literal) and not value.is_string:
        try:
            if Decimal(value.this) != 0:
                return
        except InvalidOperation:
            pass
    raise not_allowed(
        f"division by anything but a non-zero number is not allowed in {context}",
        "a division by a column can fail for some rows, which would reveal them",
    )


def _describe(n: exp.Expression) -> str:
    if isinstance(n, exp.Anonymous):
        return f"the function {str(n.this).upper()}()"
    if isinstance(n, exp.Func):
        return f"the function {n.sql_name().upper()}()"
    return f"the construct {type(n).__name__.upper()}"
