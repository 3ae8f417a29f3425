"""Inferring the types of $n parameters from the columns they are compared with.

Drivers that send no parameter types (asyncpg, node-postgres) encode parameters from
the types dpproxy reports in ParameterDescription, so those types must be right.
"""

from __future__ import annotations

from sqlglot import exp

from rewriter.metadata import ColumnMeta, Metadata
from rewriter.params import parameter_number
from rewriter.parse import table_refs
from rewriter.sqltypes import pg_type_name

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
            out[n] = parent.to.sql(dialect="postgres").lower()
            continue
        if isinstance(parent, _ARITHMETIC):
            # As PostgreSQL resolves `$1 / 100.0` or `$1 + col`: the other operand's type.
            other = parent.expression if parent.this is param else parent.this
            if isinstance(other, exp.Column) and (cmeta := columns.get(other.name.lower())) is not None:
                out[n] = pg_type_name(cmeta.type)
            elif isinstance(other, exp.Literal) and not other.is_string:
                out[n] = "int4" if other.this.isdigit() else "numeric"
        elif isinstance(parent, _COMPARISONS):
            for sibling in parent.iter_expressions():
                if isinstance(sibling, exp.Column):
                    cmeta = columns.get(sibling.name.lower())
                    if cmeta is not None:
                        out[n] = pg_type_name(cmeta.type)
                        break
    return out


_ARITHMETIC = (exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Mod)


def _visible_columns(tree: exp.Expression, meta: Metadata) -> dict[str, ColumnMeta]:
    cols: dict[str, ColumnMeta] = {}
    for t in table_refs(tree):
        found = meta.find(t.name, t.db or None)
        if found is not None:
            for cname, cmeta in found[1].columns.items():
                cols.setdefault(cname.lower(), cmeta)
    return cols
