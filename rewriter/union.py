"""`UNION ALL` of aggregate SELECTs: one DP query made of several releases.

Each branch is planned on its own and gets an equal share of the statement's epsilon
(and delta), so the statement costs what the analyst asked for, once; the rows are
the branches' released rows one after the other. `UNION` without ALL, and ORDER BY or
LIMIT over the whole union, are refused (they would need the released rows of all
branches compared, which is post-processing the proxy does not do yet).
"""

from __future__ import annotations

from decimal import Decimal

from sqlglot import exp

from rewriter.errors import RewriteError, unsupported
from rewriter.plan import DPPlan

DATATYPE_MISMATCH = "42804"
_NUMERIC = ("int2", "int4", "int8", "numeric", "float4", "float8")


def union_branches(tree: exp.Expression) -> list[exp.Expression] | None:
    """The SELECTs of a `UNION ALL` statement in order, or None if it is not one."""
    if not isinstance(tree, exp.Union):
        return None
    out: list[exp.Expression] = []

    def walk(n: exp.Expression) -> None:
        if isinstance(n, exp.Subquery) and not any(n.args.get(a) for a in ("order", "limit", "offset")):
            n = n.this
        if isinstance(n, exp.Union):
            if n.args.get("distinct"):
                raise unsupported("UNION (without ALL) is not supported on private tables",
                                  "use UNION ALL: each SELECT is then its own release")  # fmt: skip
            if any(n.args.get(a) for a in ("order", "limit", "offset", "with_", "with")):
                raise unsupported("ORDER BY, LIMIT or WITH around a UNION ALL is not supported",
                                  "order and limit inside each SELECT instead")  # fmt: skip
            walk(n.this)
            walk(n.expression)
            return
        out.append(n)

    walk(tree)
    return out


def union_columns(plans: list[DPPlan]) -> list[tuple[str, str]]:
    """The union's columns: the first branch's names, each type common to all branches."""
    first = plans[0].outputs
    for p in plans[1:]:
        if len(p.outputs) != len(first):
            raise RewriteError("42601", "each UNION query must have the same number of columns")
        if p.dataset != plans[0].dataset:
            raise unsupported("the SELECTs of a UNION ALL must read the same dataset")
    columns = []
    for i, out in enumerate(first):
        types = [p.outputs[i].type_name for p in plans]
        columns.append((out.name, _common_type(types)))
    return columns


def _common_type(types: list[str]) -> str:
    """PostgreSQL's resolution for UNION column types dpproxy can produce."""
    if len(set(types)) == 1:
        return types[0]
    if all(t in _NUMERIC for t in types):
        if any(t.startswith("float") for t in types):
            return "float8"
        return "numeric" if "numeric" in types else max(types, key=_NUMERIC.index)
    if set(types) <= {"text", "varchar", "bpchar"}:
        return "text"
    raise RewriteError(DATATYPE_MISMATCH, f"UNION types {' and '.join(sorted(set(types)))} cannot be matched")


def coerce(value: object, type_name: str) -> object:
    """A branch's value in the union column's type (ints and decimals widened)."""
    if value is None or isinstance(value, bool):
        return value
    if type_name in ("float4", "float8") and isinstance(value, (int, Decimal)):
        return float(value)
    if type_name == "numeric" and isinstance(value, int):
        return Decimal(value)
    return value
