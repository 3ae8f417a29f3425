"""An outer SELECT over an aggregate subquery, folded into that subquery.

BI tools nest a question's aggregate inside another SELECT to filter, sort or rename
its result (Metabase: `SELECT "source"."count" FROM (SELECT ..., COUNT(*) AS "count"
FROM ... GROUP BY ...) AS "source" WHERE "source"."count" > 10 ORDER BY ... LIMIT 10`).
Without aggregates of its own, the outer query only reads the rows the aggregate
releases, so it is post-processing: it is rewritten into the one query it means, with
the subquery's columns replaced by their expressions, the outer WHERE as HAVING, and
the outer ORDER BY and LIMIT. The result is the same in PostgreSQL; the DP path then
treats it as any other aggregate query.
"""

from __future__ import annotations

from sqlglot import exp

from rewriter.colnames import output_name
from rewriter.errors import UNDEFINED_COLUMN, RewriteError, unsupported


def inline_column_aliases(tree: exp.Expression) -> exp.Expression:
    """A copy of `tree` where a derived table's or a CTE's column alias list
    (`(SELECT c_custkey, COUNT(o_orderkey) ...) AS c_orders (c_custkey, c_count)`, TPC-H
    Q13) names its SELECT's items instead, as the same statement written without the list.
    A body with `*` or with fewer items than names keeps its list (refused later)."""
    if not any(isinstance(a, exp.TableAlias) and a.args.get("columns") for a in tree.find_all(exp.TableAlias)):
        return tree
    out = tree.copy()
    for node in list(out.find_all(exp.Subquery, exp.CTE)):
        alias = node.args.get("alias")
        body = node.this
        names = alias.args.get("columns") if isinstance(alias, exp.TableAlias) else None
        if not names or not isinstance(body, exp.Select) or len(names) > len(body.expressions):
            continue
        if not all(isinstance(name, exp.Identifier) for name in names):
            # `AS t(k v)`: typed column definitions, not names; refused with the table.
            raise unsupported("a column definition list (name and type) is not supported here",
                              "name the columns only: AS t(a, b)")  # fmt: skip
        if any(isinstance(e, exp.Star) or (isinstance(e, exp.Column) and e.is_star) for e in body.expressions):
            continue
        items = list(body.expressions)
        for i, name in enumerate(names):
            item = items[i]
            items[i] = exp.alias_(item.this if isinstance(item, exp.Alias) else item, name.copy())
        body.set("expressions", items)
        alias.set("columns", None)
    return out


def right_join_as_left(select: exp.Expression) -> exp.Expression:
    """`FROM a RIGHT JOIN b ON ...` (two relations) as the `FROM b LEFT JOIN a ON ...` it
    is, which the join rules then check; longer chains with a RIGHT JOIN stay as written
    (and refused)."""
    if not isinstance(select, exp.Select):
        return select
    joins = select.args.get("joins") or []
    source = select.args.get("from_")
    if len(joins) != 1 or source is None or (joins[0].args.get("side") or "").upper() != "RIGHT":
        return select
    join = joins[0]
    if join.args.get("kind") or join.args.get("using") or join.args.get("on") is None:
        return select
    out = select.copy()
    first, second = out.args["from_"].this, out.args["joins"][0].this
    out.set("from_", exp.From(this=second.copy()))
    out.set("joins", [exp.Join(this=first.copy(), side="LEFT", on=join.args["on"].copy())])
    return out


def distinct_as_group_by(select: exp.Expression) -> exp.Expression:
    """`SELECT DISTINCT a, b FROM ...` (no aggregates) as the `GROUP BY a, b` it means."""
    if not isinstance(select, exp.Select):
        return select
    distinct = select.args.get("distinct")
    if distinct is None or distinct.args.get("on") is not None or select.args.get("group"):
        return select
    if any(isinstance(n, (exp.AggFunc, exp.Window)) for e in select.expressions for n in e.walk()):
        return select
    if any(isinstance(e, exp.Star) or (isinstance(e, exp.Column) and e.is_star) for e in select.expressions):
        return select
    out = select.copy()
    out.set("distinct", None)
    out.set("group", exp.Group(expressions=[exp.Literal.number(i + 1) for i in range(len(select.expressions))]))
    return out


def fold_outer_select(select: exp.Select) -> exp.Select:
    """`select` with an outer projection over an aggregate subquery folded in, else itself."""
    inner, name = _aggregate_source(select)
    if inner is None:
        return select
    outputs = _outputs(inner)

    def substitute(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Column) and not node.args.get("db"):
            if node.table and node.table.lower() != name:
                raise RewriteError(UNDEFINED_COLUMN, f'missing FROM-clause entry for table "{node.table}"')
            key = node.name.lower()
            if key not in outputs:
                raise RewriteError(UNDEFINED_COLUMN, f'column "{node.name}" does not exist in "{name}"',
                                   hint="its columns: " + ", ".join(outputs))  # fmt: skip
            return exp.Paren(this=outputs[key].copy())
        return node

    items: list[exp.Expression] = []
    for e in select.expressions:
        if isinstance(e, exp.Star) or (isinstance(e, exp.Column) and e.is_star):
            items += [exp.alias_(v.copy(), k, quoted=True) for k, v in outputs.items()]
            continue
        body = e.this if isinstance(e, exp.Alias) else e
        alias = e.alias if isinstance(e, exp.Alias) else (body.name if isinstance(body, exp.Column) else None)
        folded = body.copy().transform(substitute)
        items.append(exp.alias_(folded, alias, quoted=True) if alias else folded)
    out = _without_output_refs(inner.copy())
    out.set("expressions", items)
    where = select.args.get("where")
    if where is not None:
        cond = where.this.copy().transform(substitute)
        having = out.args.get("having")
        out.set("having", exp.Having(this=exp.and_(having.this, cond) if having is not None else cond))
    if select.args.get("order") is not None:
        order = select.args["order"].copy()
        # ORDER BY an output name or position of the outer SELECT keeps meaning the same.
        for o in order.expressions:
            target = o.this
            if isinstance(target, exp.Column) and not target.table and any(
                    isinstance(i, exp.Alias) and i.alias.lower() == target.name.lower() for i in items):  # fmt: skip
                continue
            if not (isinstance(target, exp.Literal) and not target.is_string):
                o.set("this", target.transform(substitute))
        out.set("order", order)
    for arg in ("limit", "offset"):
        if select.args.get(arg) is not None:
            out.set(arg, select.args[arg].copy())
    outer_with = select.args.get("with_") or select.args.get("with")
    if outer_with is not None:
        key = "with_" if "with_" in exp.Select.arg_types else "with"
        own = out.args.get(key)
        merged = outer_with.copy()
        if own is not None:  # the subquery's own CTEs, next to the outer ones
            merged.set("expressions", [*merged.expressions, *(c.copy() for c in own.expressions)])
        out.set(key, merged)
    return out


def _aggregate_source(select: exp.Select) -> tuple[exp.Select | None, str]:
    """The aggregate subquery an outer SELECT reads, and its name; (None, "") otherwise."""
    from_ = select.args.get("from_") or select.args.get("from")
    if from_ is None or select.args.get("joins") or select.args.get("group") or select.args.get("having"):
        return None, ""
    own = [*select.expressions, *(select.args[a] for a in ("where", "order") if select.args.get(a) is not None)]
    if select.args.get("distinct") or any(isinstance(n, (exp.AggFunc, exp.Window, exp.Subquery))
                                          for e in own for n in e.walk()):  # fmt: skip
        return None, ""
    item = from_.this
    body: exp.Expression | None = None
    if isinstance(item, exp.Subquery):
        body = item.this
    elif isinstance(item, exp.Table) and not item.db:
        with_ = select.args.get("with_") or select.args.get("with")
        for cte in (with_.expressions if with_ is not None else []):
            if cte.alias_or_name.lower() == item.name.lower():
                body = cte.this
    if not isinstance(body, exp.Select):
        return None, ""
    grouped = body.args.get("group") is not None or any(
        isinstance(n, exp.AggFunc) for e in body.expressions for n in e.walk())  # fmt: skip
    if not grouped:
        return None, ""
    inner_limited = body.args.get("limit") is not None or body.args.get("offset") is not None
    outer_shapes = any(select.args.get(a) is not None for a in ("where", "order", "limit", "offset"))
    if inner_limited and outer_shapes:
        raise unsupported("filtering, sorting or limiting the result of a subquery that has its own "
                          "LIMIT/OFFSET is not supported", "put the LIMIT in the outer query only")  # fmt: skip
    return body, (item.alias_or_name or "").lower()


def _outputs(inner: exp.Select) -> dict[str, exp.Expression]:
    """The subquery's output columns by (lower-cased) name: name -> expression."""
    out: dict[str, exp.Expression] = {}
    for e in inner.expressions:
        out.setdefault(output_name(e).lower(), e.this if isinstance(e, exp.Alias) else e)
    return out


def _without_output_refs(inner: exp.Select) -> exp.Select:
    """The subquery with GROUP BY / ORDER BY positions and output aliases spelled out,
    since its select list is about to be replaced by the outer one."""
    items = inner.expressions
    aliases = {e.alias.lower(): e.this for e in items if isinstance(e, exp.Alias)}

    def spelled(g: exp.Expression) -> exp.Expression:
        if isinstance(g, exp.Literal) and not g.is_string and g.this.isdigit() and 1 <= int(g.this) <= len(items):
            item = items[int(g.this) - 1]
            return (item.this if isinstance(item, exp.Alias) else item).copy()
        if isinstance(g, exp.Column) and not g.table and g.name.lower() in aliases:
            return aliases[g.name.lower()].copy()
        return g

    group = inner.args.get("group")
    if group is not None:
        group.set("expressions", [spelled(g) for g in group.expressions])
    order = inner.args.get("order")
    if order is not None:
        for o in order.expressions:
            o.set("this", spelled(o.this))
    return inner
