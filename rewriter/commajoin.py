"""Comma joins (`FROM a, b WHERE a.k = b.k`) as the inner joins they mean.

TPC-H-style SQL and many hand-written reports list their tables after FROM and put the
join conditions in WHERE. An inner join is a cross join filtered by its condition, so
moving a WHERE conjunct that links a table to the tables before it into that table's
ON changes no row of the result; it lets the join checks (unique keys of public
tables, privacy units of private ones) see the join as if written `JOIN ... ON`.

Only column = column conjuncts are moved; every other condition stays in WHERE. A
table that no such conjunct links to the tables before it stays a cross join, and is
refused as one. When every join of the FROM clause is a comma join, the tables may be
taken in another order (an inner join is commutative) so that each one links to
those already taken.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlglot import exp

# The column names a FROM item exposes (lower-cased), or None when they are unknown.
ColumnsOf = Callable[[exp.Expression], frozenset[str] | None]


def is_cross(join: exp.Join) -> bool:
    """True for a join with no condition: a comma join or a CROSS JOIN."""
    kind = (join.args.get("kind") or "").upper()
    side = (join.args.get("side") or "").upper()
    plain = kind in ("", "CROSS", "INNER") and not side and not join.args.get("method")
    return plain and join.args.get("on") is None and not join.args.get("using")


def inner_joins_from_where(select: exp.Select, columns_of: ColumnsOf) -> exp.Select:
    """`select` with each cross-joined table joined ON the WHERE equalities that link it.

    Returns `select` itself when there is nothing to move, else a rewritten copy (the
    analyst's tree, which may be cached, is never changed).
    """
    joins: list[exp.Join] = list(select.args.get("joins") or [])
    where = select.args.get("where")
    from_ = select.args.get("from_") or select.args.get("from")
    if where is None or from_ is None or not any(is_cross(j) for j in joins):
        return select
    items = [from_.this] + [j.this for j in joins]
    names = [_qualifier(i) for i in items]
    owner = _owners(items, names, columns_of)
    parts = conjuncts(where.this)
    parts += _common_to_all_disjuncts(parts)
    links = [_link(c, owner) for c in parts]
    order = _order(joins, names, links)
    taken = {names[0]}
    moved: set[int] = set()
    new_joins = []
    for j in order:
        join = joins[j - 1]
        name = names[j]
        if is_cross(join):
            on = [i for i, link in enumerate(links)
                  if i not in moved and link is not None and name in link and link <= taken | {name}]  # fmt: skip
            if on:
                moved.update(on)
                cond = exp.and_(*(parts[i].copy() for i in on))
                join = exp.Join(this=join.this.copy(), on=cond)
        new_joins.append(join)
        taken.add(name)
    if not moved:
        return select
    out = select.copy()
    out.set("joins", [j.copy() for j in new_joins])
    rest = [parts[i].copy() for i in range(len(parts)) if i not in moved]
    out.set("where", exp.Where(this=exp.and_(*rest)) if rest else None)
    return out


def _order(joins: list[exp.Join], names: list[str | None], links: list[frozenset[str] | None]) -> list[int]:
    """The item indexes (1-based over joins) in join order.

    Kept as written unless every join is a cross join: then greedily the first table
    that some equality links to the tables already taken, so `FROM lineitem, customer,
    orders` joins orders before customer.
    """
    written = list(range(1, len(joins) + 1))
    if not all(is_cross(j) for j in joins):
        return written
    taken = {names[0]}
    left = written[:]
    out = []
    while left:
        pick = next((k for k in left if any(
            link is not None and names[k] in link and link - {names[k]} and link <= taken | {names[k]}
            for link in links)), left[0])  # fmt: skip
        left.remove(pick)
        out.append(pick)
        taken.add(names[pick])
    return out


def _qualifier(item: exp.Expression) -> str | None:
    """The name columns use to qualify this item (its alias, else its table name)."""
    if isinstance(item, (exp.Table, exp.Subquery)):
        return (item.alias or item.name or "").lower() or None
    return None


def _owners(items: list[exp.Expression], names: list[str | None], columns_of: ColumnsOf) -> dict[str, str | None]:
    """Unqualified column name -> the one item exposing it (None when several do)."""
    owner: dict[str, str | None] = {}
    for item, name in zip(items, names, strict=True):
        cols = columns_of(item)
        if name is None or cols is None:
            continue
        for c in cols:
            owner[c] = name if c not in owner else None
    return owner


def _link(cond: exp.Expression, owner: dict[str, str | None]) -> frozenset[str] | None:
    """The two items a `column = column` conjunct links, or None."""
    if not isinstance(cond, exp.EQ):
        return None
    sides = []
    for col in (cond.this, cond.expression):
        if not isinstance(col, exp.Column) or col.args.get("db"):
            return None
        sides.append(col.table.lower() if col.table else owner.get(col.name.lower()))
    if None in sides or sides[0] == sides[1]:
        return None
    return frozenset(s for s in sides if s is not None)


def _common_to_all_disjuncts(parts: list[exp.Expression]) -> list[exp.Expression]:
    """Equalities that every branch of an OR conjunct requires (TPC-H Q19 repeats its join
    condition in each branch): each is implied by the OR, so it may be a conjunct too."""
    out: list[exp.Expression] = []
    for c in parts:
        inner = c
        while isinstance(inner, exp.Paren):
            inner = inner.this
        if not isinstance(inner, exp.Or):
            continue
        branches = [conjuncts(d) for d in _disjuncts(inner)]
        common = {e.sql(): e for e in branches[0] if isinstance(e, exp.EQ)}
        for b in branches[1:]:
            texts = {e.sql() for e in b}
            common = {k: v for k, v in common.items() if k in texts}
        out += [e.copy() for e in common.values()]
    return out


def _disjuncts(cond: exp.Expression) -> list[exp.Expression]:
    """The top-level OR branches of a condition (parentheses looked through)."""
    return _split(cond, exp.Or)


def conjuncts(cond: exp.Expression) -> list[exp.Expression]:
    """The top-level AND parts of a condition (parentheses looked through)."""
    return _split(cond, exp.And)


def _split(cond: exp.Expression, node: type[exp.Connector]) -> list[exp.Expression]:
    while isinstance(cond, exp.Paren):
        cond = cond.this
    if isinstance(cond, node):
        return _split(cond.this, node) + _split(cond.expression, node)
    return [cond]
