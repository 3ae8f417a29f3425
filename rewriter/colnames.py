"""The name PostgreSQL gives a select-list item: its alias, its column, else its function."""

from __future__ import annotations

from sqlglot import exp


def output_name(item: exp.Expression) -> str:
    """The column name PostgreSQL reports for a select-list item (`?column?` if none)."""
    if isinstance(item, exp.Alias):
        return item.alias
    if isinstance(item, exp.Column):
        return item.name
    return default_name(item)


def default_name(body: exp.Expression) -> str:
    """PostgreSQL names an unaliased expression after its outermost function."""
    if isinstance(body, exp.Filter):
        body = body.this
    if isinstance(body, exp.WithinGroup):
        body = body.this
    if isinstance(body, (exp.PercentileCont, exp.PercentileDisc)):
        return "percentile_cont" if isinstance(body, exp.PercentileCont) else "percentile_disc"
    if isinstance(body, exp.Stddev):
        return "stddev"
    if isinstance(body, exp.Variance):
        return "variance" if body.key == "variance" else "var_samp"
    if isinstance(body, exp.AggFunc):
        return body.key.lower()
    if isinstance(body, exp.Extract):
        return "extract"
    if isinstance(body, exp.Anonymous):
        return str(body.this).lower()
    if isinstance(body, exp.Cast):
        return default_name(body.this) if not isinstance(body.this, exp.Column) else body.this.name
    if isinstance(body, exp.Func):
        return body.sql_name().lower()
    return "?column?"
