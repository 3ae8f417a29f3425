"""Scalar aggregate subqueries in WHERE: one release filters another.

`SELECT COUNT(*) FROM orders WHERE o_totalprice > (SELECT AVG(o_totalprice) FROM orders)`
asks for two releases: the noisy average, then a count whose filter compares each row
with that (public, because noised) value. The statement is split into the subqueries,
each planned as a query of its own, and the outer query with `$n` in their places,
planned once as a template (rewriter/template.py), so nothing about the outer plan
(its SQL shape, sensitivities, cost) can depend on the value the subqueries release: the
value is bound as a parameter when the outer query runs. The template's shape rule is
what makes this safe, and it is also what limits it: each subquery must be a direct
operand of a comparison, BETWEEN or IN item against a bare column of the outermost
WHERE (TPC-H Q22's `c_acctbal > (SELECT AVG(c_acctbal) FROM customer WHERE ...)`).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlglot import exp

from rewriter.errors import RewriteError, unsupported
from rewriter.params import count_parameters
from rewriter.template import filter_wheres


@dataclass(frozen=True, slots=True)
class Nested:
    """A statement split into its scalar subqueries and the outer query that reads them
    as $1..$n (the i-th subquery is $i+1)."""

    outer: exp.Select
    inner: tuple[exp.Select, ...]


def split_scalar_subqueries(tree: exp.Expression) -> Nested | None:
    """The split of `tree` when its outermost WHERE (or that of a derived table or CTE
    it reads: TPC-H Q22's `custsale`) holds scalar subqueries that aggregate; None when
    none does (any other subquery is for the rewriter)."""
    if not isinstance(tree, exp.Select):
        return None
    found = [s for where in filter_wheres(tree) for s in where.find_all(exp.Subquery)
             if _scalar_aggregate(s, where)]  # fmt: skip
    if not found:
        return None
    if count_parameters(tree):
        raise unsupported("a scalar subquery together with $n parameters is not supported",
                          "write the values as literals")  # fmt: skip
    outer = tree.copy()
    # The copy's nodes are matched to the found ones by their position in the walk.
    wanted = {id(s) for s in found}
    copies = [c for c, o in zip(outer.walk(), tree.walk(), strict=True) if id(o) in wanted]
    inner: list[exp.Select] = []
    for sub in copies:
        top = _constant_arithmetic(sub)
        body = sub.this.copy()
        if len(body.expressions) != 1:
            raise RewriteError("42601", "subquery must return only one column")
        item = body.expressions[0]
        if top is not sub:
            # `2 * (SELECT AVG(x) ...)`, `(SELECT MAX(d) ...) - 365`: the arithmetic is
            # post-processing of the subquery's own release.
            lifted = top.copy()
            hole = next(n for n in lifted.walk() if isinstance(n, exp.Subquery))
            hole.replace(exp.Paren(this=item.unalias().copy()))
            body.set("expressions", [lifted])
        inner.append(body)
        top.replace(exp.Parameter(this=exp.Literal.number(len(inner))))
    return Nested(outer=outer, inner=tuple(inner))


def _constant_arithmetic(sub: exp.Subquery) -> exp.Expression:
    """The largest arithmetic over `sub` and constants only that contains it (`sub` itself
    when it stands alone)."""
    node: exp.Expression = sub
    while isinstance(node.parent, (exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Paren, exp.Neg)):
        others = [c for c in node.parent.iter_expressions() if c is not node]
        if any(o.find(exp.Column, exp.Subquery, exp.Select) for o in others):
            break
        node = node.parent
    return node


def _scalar_aggregate(s: exp.Subquery, where: exp.Where) -> bool:
    """A subquery used as a value (not under IN or EXISTS, not inside another subquery)
    whose SELECT returns aggregates."""
    body = s.this
    if not isinstance(body, exp.Select) or not any(e.find(exp.AggFunc) for e in body.expressions):
        return False
    node: exp.Expression | None = s.parent
    while node is not None and node is not where:
        if isinstance(node, (exp.Subquery, exp.Exists, exp.Select)) or (
                isinstance(node, exp.In) and node.args.get("query") is not None):  # fmt: skip
            return False
        node = node.parent
    return True
