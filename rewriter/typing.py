"""Inferring the types of $n parameters from the columns they are compared with.

Drivers that send no parameter types (asyncpg, node-postgres) encode parameters from
the types dpproxy reports in ParameterDescription, so those types must be right.
"""

from __future__ import annotations

from sqlglot import exp

from rewriter.metadata import ColumnMeta, Metadata
from rewriter.params import parameter_number
from rewriter.parse import table_refs
from rewriter.sqltypes import pg_cast_name, pg_type_name

_COMPARISONS = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.Between, exp.In,
                exp.Like, exp.ILike)  # fmt: skip


def infer_parameter_types(tree: exp.Expression, meta: Metadata) -> dict[int, str]:
    """Map parameter number -> PostgreSQL type name, where it can be inferred."""
    columns = _visible_columns(tree, meta)
    out: dict[int, str] = {}
    for param in tree.find_all(exp.Parameter):
        n = parameter_number(param)
        if n is None:
            continue
        parent = param.parent
        if isinstance(parent, (exp.Limit, exp.Offset)):
            out[n] = "int8"
            continue
        if isinstance(parent, exp.Cast):
            out[n] = pg_cast_name(parent.to) or parent.to.sql(dialect="postgres").lower()
            continue
        quantified = _quantified_comparison(param)
        if quantified is not None:
            # `col = ANY($1)`: an array of the column's type (asyncpg encodes by it).
            for sibling in quantified.iter_expressions():
                if isinstance(sibling, exp.Column) and (cmeta := columns.get(sibling.name.lower())):
                    out[n] = pg_type_name(cmeta.type) + "[]"
                    break
            continue
        if isinstance(parent, _ARITHMETIC):
            # As PostgreSQL resolves `$1 / 100.0` or `$1 + col`: the other operand's type.
            other = parent.expression if parent.this is param else parent.this
            if isinstance(other, exp.Column) and (cmeta := columns.get(other.name.lower())) is not None:
                out[n] = pg_type_name(cmeta.type)
            elif isinstance(other, exp.Literal) and not other.is_string:
                out[n] = "int4" if other.this.isdigit() else "numeric"
            elif (agg := _aggregate_type(other, columns)) is not None:
                out[n] = agg
        elif isinstance(parent, _COMPARISONS):
            for sibling in parent.iter_expressions():
                if isinstance(sibling, exp.Column):
                    cmeta = columns.get(sibling.name.lower())
                    if cmeta is not None:
                        out[n] = pg_type_name(cmeta.type)
                        break
                elif sibling is not param and (agg := _aggregate_type(sibling, columns)) is not None:
                    out[n] = agg  # HAVING COUNT(*) > $1
                    break
    return out


def _aggregate_type(node: exp.Expression, columns: dict[str, ColumnMeta]) -> str | None:
    """The type PostgreSQL gives an aggregate a parameter is compared or combined with:
    bigint for COUNT, the column's for MIN/MAX of a column, numeric for the others."""
    if isinstance(node, exp.Count):
        return "int8"
    if isinstance(node, (exp.Min, exp.Max)) and isinstance(node.this, exp.Column):
        cmeta = columns.get(node.this.name.lower())
        return pg_type_name(cmeta.type) if cmeta is not None else None
    if isinstance(node, exp.AggFunc):
        return "numeric"
    return None


_ARITHMETIC = (exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Mod)


def _quantified_comparison(param: exp.Parameter) -> exp.Expression | None:
    """The comparison of which `param` is the array of `ANY($n)`/`SOME($n)`/`ALL($n)`."""
    node = param.parent
    if isinstance(node, exp.Paren):
        node = node.parent
    quantifier = isinstance(node, (exp.Any, exp.All)) or (
        isinstance(node, exp.Anonymous) and str(node.this).upper() in ("ALL", "SOME"))  # fmt: skip
    if not quantifier or node is None:
        return None
    parent = node.parent
    return parent if isinstance(parent, _COMPARISONS) else None


def _visible_columns(tree: exp.Expression, meta: Metadata) -> dict[str, ColumnMeta]:
    cols: dict[str, ColumnMeta] = {}
    for t in table_refs(tree):
        found = meta.find(t.name, t.db or None)
        if found is not None:
            for cname, cmeta in found[1].columns.items():
                cols.setdefault(cname.lower(), cmeta)
    return cols
