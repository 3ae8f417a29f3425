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

from dataclasses import dataclass, replace
from datetime import date
from decimal import Decimal
from typing import Any

from sqlglot import exp

from rewriter.errors import RewriteError, unsupported
from rewriter.metadata import Metadata
from rewriter.params import bind_parameters, count_parameters, literal, parameter_number
from rewriter.plan import DPPlan
from rewriter.rewrite import rewrite
from rewriter.template import filter_wheres, make_template


@dataclass(frozen=True, slots=True)
class Nested:
    """A statement split into its scalar subqueries and the outer query that reads them
    as $1..$n (the i-th subquery is $i+1): the first `filters` in WHERE clauses, the
    rest in post-processing (the select list, HAVING, ORDER BY)."""

    outer: exp.Select
    inner: tuple[exp.Select, ...]
    filters: int


def split_scalar_subqueries(tree: exp.Expression, public: frozenset[str] = frozenset()) -> Nested | None:
    """The split of `tree` when its outermost WHERE (or that of a derived table or CTE
    it reads: TPC-H Q22's `custsale`), its select list, HAVING or ORDER BY holds scalar
    subqueries that aggregate private rows; None when none does (any other subquery,
    one over `public` tables only among them, is for the rewriter)."""
    if not isinstance(tree, exp.Select):
        return None
    filters = [s for where in filter_wheres(tree) for s in where.find_all(exp.Subquery)
               if _scalar_aggregate(s, where) and not _reads_only(s, public)]  # fmt: skip
    roots = [*tree.expressions, tree.args.get("having"), tree.args.get("order")]
    post = [s for root in roots if root is not None for s in root.find_all(exp.Subquery)
            if _scalar_aggregate(s, root, post=True)]  # fmt: skip
    found = filters + post
    if not found:
        return None
    if count_parameters(tree):
        raise unsupported("a scalar subquery together with $n parameters is not supported",
                          "write the values as literals")  # fmt: skip
    outer = tree.copy()
    # The copy's nodes are matched to the found ones by their position in the walk.
    index = {id(s): i for i, s in enumerate(found)}
    matched = {index[id(o)]: c for c, o in zip(outer.walk(), tree.walk(), strict=True) if id(o) in index}
    copies = [matched[i] for i in range(len(found))]
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
    return Nested(outer=outer, inner=tuple(inner), filters=len(filters))


def _reads_only(sub: exp.Subquery, public: frozenset[str]) -> bool:
    """Whether every table `sub` reads is one of `public` (unqualified names)."""
    tables = list(sub.find_all(exp.Table))
    return bool(tables) and all(t.name.lower() in public for t in tables)


def _constant_arithmetic(sub: exp.Subquery) -> exp.Expression:
    """The largest arithmetic over `sub` and constants only that contains it (`sub` itself
    when it stands alone)."""
    node: exp.Expression = sub
    while isinstance(node.parent, (exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Paren, exp.Neg)):
        others = [c for c in node.parent.iter_expressions() if c is not node]
        if any(o.find(exp.Column, exp.Subquery, exp.Select, exp.AggFunc, exp.Star, exp.Window,
                      exp.Parameter) for o in others):  # fmt: skip
            break
        node = node.parent
    return node


def _scalar_aggregate(s: exp.Subquery, root: exp.Expression, post: bool = False) -> bool:
    """A subquery used as a value (not under IN or EXISTS, not inside another subquery;
    with `post`, not inside an aggregate or window either, which would read it per row)
    whose SELECT returns aggregates."""
    body = s.this
    if not isinstance(body, exp.Select) or not any(e.find(exp.AggFunc) for e in body.expressions):
        return False
    node: exp.Expression | None = s
    while node is not None and node is not root:
        node = node.parent
        if isinstance(node, (exp.Subquery, exp.Exists, exp.Select)) or (
                isinstance(node, exp.In) and node.args.get("query") is not None):  # fmt: skip
            return False
        if post and isinstance(node, (exp.AggFunc, exp.Window)):
            raise unsupported("a scalar subquery inside an aggregate's argument is not supported",
                              "use it outside the aggregate: COUNT(*) * 100.0 / (SELECT COUNT(*) ...)")  # fmt: skip
    return True


def bind_markers(tree: exp.Expression, values: dict[int, Any]) -> exp.Expression:
    """A copy of `tree` with the parameters numbered in `values` replaced by literals of
    those values (the others kept)."""

    def sub(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Parameter) and parameter_number(node) in values:
            return literal(values[parameter_number(node)])  # type: ignore[index]
        return node

    return tree.copy().transform(sub, copy=False)


def marker(kind: str, j: int, seed: int) -> Any:
    """A stand-in value of `kind` for post-processing subquery j while the outer query is
    planned: distinct per (j, seed), never a value an analyst writes."""
    if kind == "date":
        return date(2900 + 10 * j + seed, 1, 1)
    n = 7_123_456_789_012_345_000 + 10 * j + seed
    return n if kind == "int" else Decimal(f"{n}.25")


def with_post_values(plan: DPPlan, values: dict[str, Any]) -> DPPlan:
    """`plan` with each marker (by its literal's SQL) in its post-processing expressions
    (outputs, HAVING, ORDER BY, windows) replaced by the released value's literal."""

    def sub(node: exp.Expression) -> exp.Expression:
        if isinstance(node, (exp.Literal, exp.Cast)):
            value = values.get(node.sql(dialect="postgres"), _NONE)
            if value is not _NONE:
                return literal(value)
        return node

    def fix(e: exp.Expression | None) -> Any:
        return None if e is None else e.copy().transform(sub, copy=False)

    return replace(
        plan,
        outputs=tuple(replace(o, expr=fix(o.expr)) for o in plan.outputs),
        having=fix(plan.having),
        order_by=tuple(replace(o, expr=fix(o.expr)) for o in plan.order_by),
        windows=tuple(replace(w, arg=fix(w.arg), default=fix(w.default), partition=tuple(fix(p) for p in w.partition),
                              order=tuple(replace(o, expr=fix(o.expr)) for o in w.order))
                      for w in plan.windows),
    )  # fmt: skip


_NONE = object()
# A value of each kind, to ask the rewriter whether it refuses the outer query outright.
_SAMPLES: dict[str, Any] = {"int": 1, "numeric": Decimal("1.5"), "date": date(2000, 1, 1)}
HINT = ("compare a column with an uncorrelated aggregate, o_totalprice > (SELECT AVG(o_totalprice) "
        "FROM orders), or compute with one after the noise, COUNT(*) * 100.0 / (SELECT COUNT(*) "
        "FROM orders); each costs one release more")  # fmt: skip


def outer_template(nested: Nested, kinds: tuple[str, ...], meta: Metadata) -> DPPlan:
    """The outer query's plan, fixed before any subquery's value is known: a template
    (rewriter/template.py) binding the WHERE subqueries' values as $1..$filters, and the
    post-processing ones as markers that `with_post_values` replaces. Planned with two
    sets of markers, which must give the same plan outside post-processing (so those
    values can reach nothing but expressions over noisy values). RewriteError otherwise."""
    f = nested.filters
    plans = []
    for seed in (1, 2):
        tree = bind_markers(nested.outer, {j + 1: marker(kinds[j], j, seed) for j in range(f, len(kinds))})
        if not f:
            plan = rewrite(tree, meta)
        else:
            template = make_template(tree, kinds[:f], meta)
            if template is None:
                # A refusal of any value (a date compared with a number) as the rewriter
                # words it; else the position is what cannot be planned in advance.
                rewrite(bind_parameters(tree, [_SAMPLES[k] for k in kinds[:f]]), meta)
                raise unsupported("a scalar subquery in WHERE is supported only as a direct operand "
                                  "of a comparison, BETWEEN or IN item against a bare column", HINT)  # fmt: skip
            plan = template
        if plan.public_only:
            raise unsupported("the query around a scalar subquery must aggregate private rows", HINT)
        if f == len(kinds):
            return plan
        plans.append(plan)
    if _skeleton(plans[0]) != _skeleton(plans[1]):
        raise unsupported("a scalar subquery in the select list, HAVING or ORDER BY may only be "
                          "computed with after the noise (outside aggregates and FILTER)", HINT)  # fmt: skip
    return plans[0]


def post_values(kinds: tuple[str, ...], filters: int, values: list[Any]) -> dict[str, Any]:
    """The post-processing subqueries' released values by their markers' SQL (seed 1)."""
    return {literal(marker(kinds[j], j, 1)).sql(dialect="postgres"): values[j]
            for j in range(filters, len(kinds))}  # fmt: skip


def _skeleton(plan: DPPlan) -> str:
    """Everything of a plan but its post-processing expressions and fingerprint."""
    return repr(replace(plan, fingerprint="", having=None, windows=(),
                        outputs=tuple(replace(o, expr=exp.Null()) for o in plan.outputs),
                        order_by=tuple(replace(o, expr=exp.Null()) for o in plan.order_by)))  # fmt: skip
