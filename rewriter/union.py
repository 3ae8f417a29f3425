"""`UNION ALL` and grouping sets: one DP query made of several releases.

Each branch is planned on its own and gets an equal share of the statement's epsilon
(and delta), so the statement costs what the analyst asked for, once; the rows are
the branches' released rows one after the other, then sorted and limited by an ORDER
BY / LIMIT around the union (post-processing of released rows; ORDER BY may name
output columns by position or name). `GROUP BY ROLLUP / CUBE / GROUPING SETS` is the
UNION ALL of its groupings, each with NULL for the keys it does not group by (and
GROUPING() as the constant it is there). `UNION` without ALL is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from sqlglot import exp

from rewriter.errors import GROUPING_ERROR, RewriteError, unsupported
from rewriter.plan import DPPlan
from rewriter.rewrite import limit_offset

DATATYPE_MISMATCH = "42804"
_NUMERIC = ("int2", "int4", "int8", "numeric", "float4", "float8")


@dataclass(frozen=True)
class UnionQuery:
    """The branches of a UNION ALL (or of grouping sets) and what is done to all rows."""

    branches: list[exp.Expression]
    order: list[exp.Ordered] = field(default_factory=list)
    limit: int | None = None
    offset: int = 0


def union_query(tree: exp.Expression) -> UnionQuery | None:
    """The UNION ALL or grouping-sets statement `tree` is, or None for any other."""
    if isinstance(tree, exp.Select):
        return _grouping_sets(tree)
    if not isinstance(tree, exp.Union):
        return None
    order = tree.args.get("order")
    inner = tree.copy()
    for arg in ("order", "limit", "offset"):
        inner.set(arg, None)
    limit, offset = limit_offset(tree)
    return UnionQuery(union_branches(inner) or [], list(order.expressions) if order else [], limit, offset)


def order_keys(columns: list[tuple[str, str]], q: UnionQuery) -> list[tuple[int, bool, bool]]:
    """The union's ORDER BY as (output index, descending, nulls first), checked before
    anything is charged: items must name an output column or position."""
    names = [n.lower() for n, _ in columns]
    keys = []
    for item in q.order:
        target = item.this
        if isinstance(target, exp.Literal) and not target.is_string and target.this.isdigit():
            i = int(target.this) - 1
        elif isinstance(target, exp.Column) and not target.table and target.name.lower() in names:
            i = names.index(target.name.lower())
        else:
            raise unsupported("ORDER BY around a UNION ALL or grouping sets must name an output column "
                              "or position", "add the expression to the select list and order by its name")  # fmt: skip
        if not 0 <= i < len(names):
            raise RewriteError("42P10", f"ORDER BY position {i + 1} is not in select list")
        desc = bool(item.args.get("desc"))
        nulls_first = item.args.get("nulls_first")
        keys.append((i, desc, bool(nulls_first) if nulls_first is not None else desc))
    return keys


def sort_rows(rows: list[tuple[object, ...]], keys: list[tuple[int, bool, bool]], q: UnionQuery) -> list[tuple[object, ...]]:
    """The union's released rows sorted by `keys` (see order_keys), then LIMIT/OFFSET."""
    for i, desc, nulls_first in reversed(keys):  # stable sorts, last key first
        present = sorted((r for r in rows if r[i] is not None), key=lambda r: r[i], reverse=desc)  # type: ignore[arg-type, return-value]
        missing = [r for r in rows if r[i] is None]
        rows = missing + present if nulls_first else present + missing
    end = None if q.limit is None else q.offset + q.limit
    return rows[q.offset : end]


def _grouping_sets(select: exp.Select) -> UnionQuery | None:
    """`GROUP BY [keys,] ROLLUP/CUBE/GROUPING SETS (...)` as the UNION ALL of its groupings."""
    group = select.args.get("group")
    if group is None:
        return None
    plain = [g for g in group.expressions if not isinstance(g, (exp.Rollup, exp.Cube, exp.GroupingSets))]
    special = [g for g in group.expressions if isinstance(g, (exp.Rollup, exp.Cube, exp.GroupingSets))]
    for arg in ("rollup", "cube", "grouping_sets"):
        if group.args.get(arg):
            raise unsupported("this spelling of grouping sets is not supported", "write GROUP BY ROLLUP (a, b)")
    if not special:
        return None
    if len(special) > 1:
        raise unsupported("only one ROLLUP, CUBE or GROUPING SETS per GROUP BY is supported")
    sets = [[_output_reference(k, select) for k in keys] for keys in _sets(special[0])]
    if len(sets) > 16:
        raise unsupported("at most 16 groupings per query (each is its own release)")
    every = {k.sql(): k for s in sets for k in s}
    branches = []
    for s in sets:
        kept = {k.sql() for k in s}
        dropped = {t for t in every if t not in kept}
        branch = select.copy()
        for arg in ("order", "limit", "offset"):
            branch.set(arg, None)
        keys = [*(g.copy() for g in plain), *(k.copy() for k in s)]
        branch.set("group", exp.Group(expressions=keys) if keys else None)
        branch.set("expressions", [_without(e, dropped) for e in select.expressions])
        if select.args.get("having") is not None:
            branch.set("having", exp.Having(this=_without(select.args["having"].this, dropped)))
        branches.append(branch)
    limit, offset = limit_offset(select)
    order = select.args.get("order")
    return UnionQuery(branches, list(order.expressions) if order else [], limit, offset)


def _output_reference(key: exp.Expression, select: exp.Select) -> exp.Expression:
    """A grouping-set key written as an output column's position (`CUBE (1, 2)`) or
    name (`ROLLUP (y)` for `... AS y`), as the expression it stands for, so that each
    grouping drops that expression from the select list as it drops the key."""
    items = select.expressions
    if isinstance(key, exp.Literal) and not key.is_string and key.this.isdigit():
        pos = int(key.this)
        if not 1 <= pos <= len(items):
            raise RewriteError(GROUPING_ERROR, f"GROUP BY position {pos} is not in select list")
        item = items[pos - 1]
        return (item.this if isinstance(item, exp.Alias) else item).copy()
    if isinstance(key, exp.Column) and not key.table:
        name = key.name.lower()
        # An input column of that name wins in PostgreSQL: only an alias of something
        # else is resolved.
        if any(isinstance(i, exp.Column) and i.name.lower() == name for i in items):
            return key
        for item in items:
            if isinstance(item, exp.Alias) and item.alias.lower() == name:
                return item.this.copy()
    return key


def _sets(node: exp.Expression) -> list[list[exp.Expression]]:
    items = list(node.expressions)
    if isinstance(node, exp.Rollup):
        return [items[:n] for n in range(len(items), -1, -1)]
    if isinstance(node, exp.Cube):
        return [[x for j, x in enumerate(items) if mask >> (len(items) - 1 - j) & 1]
                for mask in range((1 << len(items)) - 1, -1, -1)]  # fmt: skip
    return [list(i.expressions) if isinstance(i, exp.Tuple) else [i.unnest()] for i in items]


def _without(e: exp.Expression, dropped: set[str]) -> exp.Expression:
    """`e` with the dropped keys as NULL (outside aggregates) and GROUPING() as its value."""
    aggregates: dict[str, exp.Expression] = {}

    def hide(n: exp.Expression) -> exp.Expression:
        if isinstance(n, exp.Grouping):  # a bit per argument: 1 where it is not grouped by
            bits = 0
            for arg in n.expressions:
                bits = bits << 1 | (arg.sql() in dropped)
            return exp.Literal.number(bits)
        # Inside an aggregate a key is each row's value, not the group's: left alone.
        if isinstance(n, exp.AggFunc):
            name = f"__grouping_agg{len(aggregates)}"
            aggregates[name] = n.copy()
            return exp.column(name)
        return n

    def swap(n: exp.Expression) -> exp.Expression:
        return exp.Null() if n.sql() in dropped else n

    def restore(n: exp.Expression) -> exp.Expression:
        if isinstance(n, exp.Column) and not n.table and n.name in aggregates:
            return aggregates[n.name].copy()
        return n

    return e.copy().transform(hide).transform(swap).transform(restore)


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
        # A key a grouping drops is a bare NULL there: it takes the other branches' type.
        types = [p.outputs[i].type_name for p in plans if not isinstance(p.outputs[i].expr, exp.Null)]
        columns.append((out.name, _common_type(types or ["text"])))
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
