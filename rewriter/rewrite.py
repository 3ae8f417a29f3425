"""From a checked SELECT to a DP plan: validate, resolve, bound, and emit SQL.

The pipeline is: flatten FROM (tables, JOINs, row-level CTEs and derived tables) and
bind the privacy unit (relation.py); analyze WHERE and GROUP BY against the
row-expression allow-list (rowexpr.py); collect aggregates from SELECT, HAVING and
ORDER BY; choose the noisy primitives (sharing counts and sums between aggregates);
derive each primitive's sensitivity from declared bounds and contribution limits; emit
SQL that bounds contributions per unit after the join and aggregates exactly.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import re
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from sqlglot import exp

from rewriter.bounding import RowTerm, group_bounded_sql, weighted_sql
from rewriter.colnames import output_name
from rewriter.dates import days_sql
from rewriter.daykeys import day_index_sql
from rewriter.errors import GROUPING_ERROR, RewriteError, not_allowed, unsupported
from rewriter.fold import (
    distinct_as_group_by,
    fold_outer_select,
    inline_column_aliases,
    right_join_as_left,
)
from rewriter.metadata import Metadata
from rewriter.plan import (
    AggFunc,
    AggregateSpec,
    DPPlan,
    GroupKey,
    NoisyPrimitive,
    OrderItem,
    OutputColumn,
    PrimitiveKind,
    WindowSpec,
)
from rewriter.posttypes import infer_type, require_boolean
from rewriter.relation import FromResolver, Relation, Scope, bind_units, lookup
from rewriter.rowexpr import NUMERIC_KINDS, Analyzer, Typed, describe, reads_clock, written_name

MAX_GROUPS = 100_000
# Grouped weighted plans over short listed domains keep one partial per (cell,
# primitive) in each unit's hash-table entry (see bounding._pivot_sql); past these
# sizes the per-row FILTER checks and the entries outgrow the second scan they save.
PIVOT_MAX_CELLS = 64
PIVOT_MAX_PARTIALS = 128
MAX_PUBLIC_DOMAIN = 10_000
AGG_PREFIX = "__a"
KEY_PREFIX = "__k"
WIN_PREFIX = "__w"
# Fixed-point values are kept below 2^40 steps so that exact sums of up to 2^22 rows fit
# the i64 samplers (larger totals are clamped there, which keeps the sensitivity).
MAX_STEPS = Decimal(1 << 40)
# Squared deviations are summed in units chosen so each term is at most 2^30.
MAX_SQUARE_UNITS = 1 << 30
AGG_HINT = (
    "supported aggregates: COUNT(*), COUNT(expr), COUNT(DISTINCT expr), SUM, AVG, VARIANCE, "
    "VAR_SAMP, VAR_POP, STDDEV, STDDEV_SAMP, STDDEV_POP, MIN, MAX, MEDIAN, "
    "PERCENTILE_CONT/PERCENTILE_DISC(f) WITHIN GROUP (ORDER BY expr), each optionally with "
    "FILTER (WHERE ...)"
)


@dataclass
class _Builder:
    rel: Relation
    scope: Scope
    keys: list[GroupKey] = field(default_factory=list)
    key_sql: list[str] = field(default_factory=list)  # rendered key expressions
    key_typed: list[Typed] = field(default_factory=list)
    aggregates: list[AggregateSpec] = field(default_factory=list)
    agg_index: dict[str, int] = field(default_factory=dict)
    primitives: dict[str, NoisyPrimitive] = field(default_factory=dict)
    prim_index: dict[tuple[str, ...], str] = field(default_factory=dict)
    inner: dict[str, str] = field(default_factory=dict)  # inner column name -> SQL
    inner_index: dict[str, str] = field(default_factory=dict)  # SQL -> inner column name
    sums: list[tuple[int, str, str | None, str | None]] = field(default_factory=list)
    fixed_index: dict[str, str] = field(default_factory=dict)  # fixed-point SQL -> x column
    terms: dict[str, RowTerm] = field(default_factory=dict)  # primitive -> per-row term
    unit_distinct: set[str] = field(default_factory=set)  # COUNT(DISTINCT unit) primitives
    # x column -> (its raw clamped value over i0, in the value's own units; its step;
    # its bounds in steps)
    raw_of: dict[str, tuple[str, Decimal, int, int]] = field(default_factory=dict)
    steps_of: dict[str, str] = field(default_factory=dict)  # x column -> its whole steps, from the raw column
    literals: dict[int, list[str]] = field(default_factory=dict)  # key -> domain as SQL
    day_index: dict[int, str | None] = field(default_factory=dict)  # key -> _day_index
    group_bound: bool = False
    bounding: str = "sampled"  # set by _emit_sql: "weighted", "sampled" or "none"
    windows: list[WindowSpec] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return self.rel.max_rows

    def analyzer(self, context: str) -> Analyzer:
        return Analyzer(lambda c: lookup(self.scope, c), context)

    def column(self, sql: str, prefix: str) -> str:
        """The inner-query column computing `sql` (deduplicated)."""
        if sql in self.inner_index:
            return self.inner_index[sql]
        name = f"{prefix}{len(self.inner)}"
        self.inner[name] = sql
        self.inner_index[sql] = name
        return name


def canonical_sql(tree: exp.Expression) -> str:
    """The statement as the ledger and the answer cache know it (normalized SQL)."""
    return tree.sql(dialect="postgres", comments=False, normalize=True)


def fingerprint_of(canonical: str) -> str:
    """The fingerprint of a statement's canonical SQL."""
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def rewrite(tree: exp.Expression, meta: Metadata) -> DPPlan:
    """Turn one parsed statement into a DP plan, or raise a RewriteError saying why not."""
    try:
        return _rewrite(tree, meta)
    except (KeyError, AttributeError, IndexError, TypeError, ValueError) as e:
        # sqlglot accepts some malformed SQL (`COUNT() OVER ()`, `WIDTH_BUCKET(x, 0 ORDER
        # BY 1, ...)`) as trees with a missing or misplaced part, which PostgreSQL would
        # reject as a syntax error: refused as one, before anything runs or is charged.
        raise RewriteError(
            "42601", "syntax error: the statement has a missing or misplaced part",
            "check the arguments of each function and the order of the clauses",
        ) from e
    except ArithmeticError as e:
        # A constant such as 'NaN'::numeric or Infinity in row arithmetic: its bounds
        # cannot be derived, so the expression cannot be made total.
        raise unsupported(
            "arithmetic with NaN, Infinity or out-of-range constants is not supported on private rows",
            "compare with such a constant instead, or use a finite number",
        ) from e


def _rewrite(tree: exp.Expression, meta: Metadata) -> DPPlan:
    # An outer SELECT that only filters, sorts or renames an aggregate is folded into it.
    normal = right_join_as_left(distinct_as_group_by(inline_column_aliases(tree)))
    select = _check_shape(fold_outer_select(_check_shape(normal)))
    rel, scope = FromResolver(meta).resolve(select)
    bind_units(rel)
    b = _Builder(rel=rel, scope=scope)

    _collect_group_keys(select, b)
    outputs = _collect_outputs(select, b)
    having = select.args.get("having")
    having_expr = _post_expr(having.this, b, "HAVING") if having is not None else None
    if having_expr is not None:
        require_boolean(having_expr, _types(b), "HAVING")
    order_by = _collect_order(select, b, outputs)
    distinct = select.args.get("distinct") is not None
    if distinct:
        # (Without aggregates, DISTINCT was read as the GROUP BY it means, fold.py.)
        listed = {o.expr.sql(dialect="postgres") for o in outputs}
        if any(item.expr.sql(dialect="postgres") not in listed for item in order_by):
            raise RewriteError("42P10", "for SELECT DISTINCT, ORDER BY expressions must appear in select list")
    limit, offset = limit_offset(select)
    _choose_sum_forms(b)

    if not b.aggregates:
        if b.keys and all(not k.private and k.domain and k.domain_sql is None for k in b.keys):
            # Only declared public values are asked for (a BI tool listing a column's
            # values for a filter): the answer is the declared domain, never the data.
            return DPPlan(
                dataset=meta.dataset, tables=tuple(dict.fromkeys(s.name for s in rel.sources)),
                sql="", keys=tuple(b.keys), primitives=(), aggregates=(), outputs=tuple(outputs),
                having=having_expr, order_by=tuple(order_by), limit=limit, offset=offset,
                fingerprint="", bounding="none", public_only=True, windows=tuple(b.windows),
                distinct=distinct,
            )  # fmt: skip
        raise not_allowed(
            "the query reads private rows without aggregating them",
            "use aggregates such as COUNT(*), SUM(col), AVG(col), grouped by public keys; "
            "a column's declared public values can be listed with SELECT DISTINCT col",
        )
    selection = _selection_primitive(b)
    if selection is None and _group_count(b.keys) > MAX_GROUPS:
        raise unsupported(f"the GROUP BY keys have more than {MAX_GROUPS} combinations")

    sql = _emit_sql(b)
    sql = _guarded(sql, meta, _tables_read(sql, meta))
    canon = canonical_sql(tree)
    return DPPlan(
        dataset=meta.dataset,
        tables=tuple(dict.fromkeys(s.name for s in rel.sources)),
        sql=sql,
        keys=tuple(b.keys),
        primitives=tuple(b.primitives.values()),
        aggregates=tuple(b.aggregates),
        outputs=tuple(outputs),
        having=having_expr,
        order_by=tuple(order_by),
        limit=limit,
        offset=offset,
        fingerprint=fingerprint_of(canon),
        selection=selection,
        max_rows=b.rows,
        max_groups=_groups_per_unit(b),
        bounding=b.bounding,
        reads_clock=reads_clock(tree),
        windows=tuple(b.windows),
        distinct=distinct,
    )


# --- shape -------------------------------------------------------------------------------


# The clauses of a SELECT and of a table reference the rewriter reads (or refuses by
# name); any other clause sqlglot parses would be silently dropped, so it is refused.
_SELECT_ARGS = frozenset({"with_", "with", "expressions", "distinct", "from_", "from", "joins", "where",
                          "group", "having", "order", "limit", "offset", "into", "locks", "windows",
                          "laterals", "qualify"})  # fmt: skip
_TABLE_ARGS = frozenset({"this", "alias", "db", "catalog", "only"})


def _check_clauses(tree: exp.Expression) -> None:
    """Refuse a clause the rewriter does not read (TABLESAMPLE, ...) rather than drop it."""
    for node in tree.walk():
        allowed = _SELECT_ARGS if isinstance(node, exp.Select) else _TABLE_ARGS if isinstance(node, exp.Table) else None
        if allowed is None:
            continue
        for arg, value in node.args.items():
            if value and arg not in allowed:
                what = "TABLESAMPLE" if arg == "sample" else arg.rstrip("_").upper()
                raise unsupported(f"{what} is not supported in a query on private tables")


def _check_shape(tree: exp.Expression) -> exp.Select:
    _check_clauses(tree)
    if isinstance(tree, (exp.Union, exp.Intersect, exp.Except)):
        raise unsupported(
            "UNION (without ALL), INTERSECT and EXCEPT are not supported on private tables",
            "use UNION ALL (each SELECT is its own release), or send each SELECT separately",
        )
    if not isinstance(tree, exp.Select):
        kind = type(tree).__name__.upper()
        raise not_allowed(
            f"{kind} statements are not allowed on private tables",
            "only SELECT queries with aggregates (COUNT, SUM, AVG...) are allowed",
        )
    for arg, what in (
        ("into", "SELECT INTO"),
        ("locks", "FOR UPDATE/SHARE"),
        ("windows", "WINDOW clauses"),
        ("laterals", "LATERAL"),
        ("qualify", "QUALIFY"),
    ):
        if tree.args.get(arg):
            raise unsupported(f"{what} is not supported on private tables")
    distinct = tree.args.get("distinct")
    if distinct is not None and distinct.args.get("on") is not None:
        raise unsupported("SELECT DISTINCT ON is not supported on private tables",
                          "use GROUP BY, or SELECT DISTINCT over aggregates")  # fmt: skip
    return tree


# --- group keys --------------------------------------------------------------------------


def _collect_group_keys(select: exp.Select, b: _Builder) -> None:
    group = select.args.get("group")
    if group is None:
        return
    for arg in ("grouping_sets", "cube", "rollup"):
        if group.args.get(arg):
            raise unsupported(
                "GROUPING SETS, ROLLUP and CUBE are not supported: each grouping would be a "
                "separate release",
                "send one query per grouping",
            )
    items = list(select.expressions)
    analyzer = b.analyzer("GROUP BY")
    for g in group.expressions:
        if isinstance(g, exp.Tuple) and not g.expressions:
            continue  # GROUP BY (): the empty grouping, one group
        if isinstance(g, (exp.GroupingSets, exp.Cube, exp.Rollup)):
            raise unsupported(
                "GROUPING SETS, ROLLUP and CUBE are not supported: each grouping would be a "
                "separate release",
                "send one query per grouping",
            )
        g = _unalias_group_item(g, items)
        if any(isinstance(n, exp.AggFunc) for n in g.walk()):
            raise RewriteError(GROUPING_ERROR, "aggregate functions are not allowed in GROUP BY")
        t = analyzer.analyze(g)
        if t.unit:
            raise not_allowed(
                f"grouping by the privacy unit {g.sql(dialect='postgres')} would release one "
                "group per unit",
                "group by a column with a declared public domain, or by another column",
            )
        if t.constant:
            continue  # GROUP BY a constant does not split anything
        rendered = t.sql.sql(dialect="postgres")
        if rendered in b.key_sql:
            continue
        label = g.sql(dialect="postgres")
        public = t.domain is not None and len(t.domain) <= MAX_PUBLIC_DOMAIN
        domain_sql = None if public else _public_table_domain(t, b)
        b.key_sql.append(rendered)
        b.key_typed.append(t)
        b.keys.append(
            GroupKey(
                label=label,
                column=g.alias_or_name if isinstance(g, exp.Column) else label,
                type_name=t.type_name,
                domain=tuple(t.domain) if public and t.domain is not None else (),
                private=not public and domain_sql is None,
                domain_sql=domain_sql,
            )
        )
    if any(k.private for k in b.keys):
        # With one private key the group set comes from the data: all keys then do.
        b.keys[:] = [replace(k, private=True, domain=(), domain_sql=None) for k in b.keys]


def _public_table_domain(t: Typed, b: _Builder) -> str | None:
    """SQL listing every value of a key computed from one public table's columns only."""
    aliases = {a for a, _ in t.columns}
    if len(aliases) != 1:
        return None
    alias = next(iter(aliases))
    src = next((s for s in b.rel.sources if s.alias == alias), None)
    if src is None or not src.table.public:
        return None
    sql = (f'SELECT DISTINCT {t.sql.sql(dialect="postgres")} AS v FROM '
           f'"{src.table.schema_}"."{src.name}" AS {alias}')  # fmt: skip
    if src.left:
        sql += " UNION SELECT NULL"  # unmatched rows of a LEFT JOIN form the NULL group
    return sql


def _unalias_group_item(g: exp.Expression, items: list[exp.Expression]) -> exp.Expression:
    # PostgreSQL allows GROUP BY 1 (position) and GROUP BY <output alias>.
    if isinstance(g, exp.Literal) and not g.is_string:
        if not g.this.isdigit():
            raise RewriteError("42601", f"non-integer constant in GROUP BY: {g.this}")
        pos = int(g.this)
        if not 1 <= pos <= len(items):
            raise RewriteError(GROUPING_ERROR, f"GROUP BY position {pos} is not in select list")
        item = items[pos - 1]
        return item.this if isinstance(item, exp.Alias) else item
    if isinstance(g, exp.Column) and not g.table:
        for item in items:
            if isinstance(item, exp.Alias) and item.alias.lower() == g.name.lower():
                return item.this
    return g


def _group_count(keys: list[GroupKey]) -> int:
    n = 1
    for k in keys:
        n *= len(k.domain)
    return n


def _groups_per_unit(b: _Builder) -> int:
    """How many groups one unit can touch after bounding (the l0 sensitivity)."""
    if not b.keys or b.rel.row_level:
        return 1
    if b.group_bound:
        return min(b.rel.max_groups, b.rows)
    return b.rows


# --- outputs and post-processing ---------------------------------------------------------


def _collect_outputs(select: exp.Select, b: _Builder) -> list[OutputColumn]:
    outputs = []
    for item in select.expressions:
        if isinstance(item, exp.Star) or (isinstance(item, exp.Column) and item.is_star):
            raise not_allowed(
                "SELECT * would return private rows",
                "select aggregates such as COUNT(*), SUM(col), AVG(col), grouped by public keys",
            )
        body = item.this if isinstance(item, exp.Alias) else item
        name = output_name(item)
        post = _post_expr(body, b, "SELECT")
        outputs.append(OutputColumn(name=name, type_name=infer_type(post, _types(b)), expr=post))
    return outputs


def _types(b: _Builder) -> dict[str, str]:
    types = {f"{AGG_PREFIX}{i}": a.result_type for i, a in enumerate(b.aggregates)}
    types.update({f"{KEY_PREFIX}{i}": k.type_name for i, k in enumerate(b.keys)})
    types.update({f"{WIN_PREFIX}{i}": w.type_name for i, w in enumerate(b.windows)})
    return types


_POST_NODES: tuple[type[exp.Expression], ...] = (
    exp.Literal, exp.Null, exp.Boolean, exp.Paren, exp.Add, exp.Sub, exp.Mul, exp.Div,
    exp.Neg, exp.Mod, exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.And, exp.Or,
    exp.Not, exp.Is, exp.Round, exp.Abs, exp.Coalesce, exp.Greatest, exp.Least, exp.Case,
    exp.If, exp.Cast, exp.DataType, exp.DataTypeParam, exp.Ceil, exp.Floor, exp.Sqrt, exp.Column,
    exp.Identifier, exp.Between, exp.In, exp.Nullif, exp.Trunc, exp.Sign,
)  # fmt: skip

_AGG_NODES = (exp.AggFunc, exp.Filter, exp.WithinGroup)


def _post_expr(node: exp.Expression, b: _Builder, clause: str) -> exp.Expression:
    """Copy `node`, replacing aggregates and group keys by placeholders; check the rest."""

    def replace_node(n: exp.Expression) -> exp.Expression:
        if isinstance(n, exp.Window):
            return exp.column(f"{WIN_PREFIX}{_register_window(n, b, clause)}")
        if isinstance(n, _AGG_NODES):
            return exp.column(f"{AGG_PREFIX}{_register_aggregate(n, b)}")
        if isinstance(n, exp.Column) and n.is_star:
            raise not_allowed("* is only allowed inside COUNT(*)")
        if any(isinstance(x, exp.Column) for x in n.walk()) and not any(
            isinstance(x, _AGG_NODES) for x in n.walk()
        ):
            idx = _match_key(n, b)
            if idx is not None:
                return exp.column(f"{KEY_PREFIX}{idx}")
            if isinstance(n, exp.Column):
                lookup(b.scope, n)  # undefined columns are reported as such
                raise RewriteError(
                    GROUPING_ERROR,
                    f'column "{n.sql(dialect="postgres")}" must appear in the GROUP BY clause '
                    "or be used in an aggregate function",
                    "private columns can only be read through aggregates",
                )
        return n

    out = node.copy().transform(replace_node, copy=False)
    for n in out.walk():
        if not isinstance(n, _POST_NODES):
            raise unsupported(
                f"{describe(n)} is not supported in {clause} over aggregates",
                "use arithmetic, ROUND, COALESCE, NULLIF, CASE and comparisons over aggregates",
            )
    infer_type(out, _types(b))  # what would fail on every value is refused now, not after the charge
    return out


_WINDOW_AGGS = {exp.Sum: "sum", exp.Avg: "avg", exp.Count: "count", exp.Min: "min", exp.Max: "max"}
_RANKINGS = {exp.RowNumber: "row_number", exp.Rank: "rank", exp.DenseRank: "dense_rank"}
_NUMBER_TYPES = ("int2", "int4", "int8", "numeric", "float4", "float8")  # widening order
_OFFSETS = {exp.Lag: "lag", exp.Lead: "lead", exp.FirstValue: "first_value", exp.LastValue: "last_value"}
_DISTRIBUTIONS = {exp.PercentRank: "percent_rank", exp.CumeDist: "cume_dist"}


def _window_count(n: exp.Expression, func: str, *, minimum: int) -> int:
    """An integer-literal argument of a window function (LAG's offset, NTILE's buckets):
    the rows are released before any window runs, so it must be known up front."""
    if isinstance(n, exp.Literal) and not n.is_string and n.this.isdigit() and int(n.this) >= minimum:
        return int(n.this)
    raise unsupported(f"{func.upper()}'s count must be an integer literal of at least {minimum}",
                      f"write it as a number, e.g. {func.upper()}(x, 1)")  # fmt: skip


def _common_type(a: str, b: str, func: str) -> str:
    """The type of LAG/LEAD with a default: PostgreSQL's common type of the two."""
    if a == b:
        return a
    if a in _NUMBER_TYPES and b in _NUMBER_TYPES:
        return max(a, b, key=_NUMBER_TYPES.index)
    raise RewriteError("42804", f"{func.upper()} types {a} and {b} cannot be matched")


def _register_window(n: exp.Window, b: _Builder, clause: str) -> int:
    """A window function over the released groups: post-processing of noisy values."""
    if clause not in ("SELECT", "ORDER BY"):
        raise RewriteError("42P20", f"window functions are not allowed in {clause}")
    if n.args.get("spec") is not None:
        raise unsupported("window frames (ROWS/RANGE ...) are not supported",
                          "use the default frame: OVER (PARTITION BY ... ORDER BY ...)")  # fmt: skip
    fn = n.this
    if any(isinstance(x, exp.Window) for x in n.walk() if x is not n):
        raise RewriteError("42P20", "window function calls cannot be nested")
    arg: exp.Expression | None = None
    offset, default = 1, None
    if type(fn) in _RANKINGS:
        func = _RANKINGS[type(fn)]
    elif type(fn) in _WINDOW_AGGS and not isinstance(fn.this, exp.Distinct):
        func = _WINDOW_AGGS[type(fn)]
        if not (func == "count" and isinstance(fn.this, exp.Star)):
            arg = _post_expr(fn.this, b, clause)
    elif type(fn) in _OFFSETS:
        func = _OFFSETS[type(fn)]
        arg = _post_expr(fn.this, b, clause)
        if fn.args.get("offset") is not None:
            offset = _window_count(fn.args["offset"], func, minimum=0)
        if fn.args.get("default") is not None:
            default = _post_expr(fn.args["default"], b, clause)
    elif isinstance(fn, exp.Ntile):
        func, offset = "ntile", _window_count(fn.this, "ntile", minimum=1)
    elif type(fn) in _DISTRIBUTIONS:
        func = _DISTRIBUTIONS[type(fn)]
    else:
        raise unsupported(f"{describe(fn)} is not supported as a window function",
                          "use SUM, AVG, COUNT, MIN, MAX, ROW_NUMBER, RANK, DENSE_RANK, NTILE, "
                          "PERCENT_RANK, CUME_DIST, LAG, LEAD, FIRST_VALUE or LAST_VALUE OVER (...)")  # fmt: skip
    partition = tuple(_post_expr(p, b, clause) for p in n.args.get("partition_by") or [])
    order = []
    for o in (n.args["order"].expressions if n.args.get("order") is not None else []):
        desc = bool(o.args.get("desc"))
        nulls_first = o.args.get("nulls_first")
        order.append(OrderItem(expr=_post_expr(o.this, b, clause), descending=desc,
                               nulls_first=bool(nulls_first) if nulls_first is not None else desc))  # fmt: skip
    types = _types(b)
    arg_type = infer_type(arg, types) if arg is not None else "int8"
    if func in ("sum", "avg") and arg_type not in _NUMBER_TYPES:
        raise RewriteError("42883", f"function {func}({arg_type}) does not exist",
                           "SUM and AVG OVER (...) take numbers")  # fmt: skip
    if func in ("count", "row_number", "rank", "dense_rank"):
        type_name = "int8"
    elif func == "ntile":
        type_name = "int4"
    elif func in _DISTRIBUTIONS.values():
        type_name = "float8"
    elif func in ("min", "max"):
        type_name = arg_type
    elif func in _OFFSETS.values():
        type_name = arg_type if default is None else _common_type(arg_type, infer_type(default, types), func)
    else:  # sum and avg of integers and numerics are numeric; of floats, double
        type_name = "float8" if arg_type in ("float4", "float8") else "numeric"
    b.windows.append(WindowSpec(func=func, arg=arg, partition=partition, order=tuple(order),
                                type_name=type_name, offset=offset, default=default))  # fmt: skip
    return len(b.windows) - 1


def _match_key(n: exp.Expression, b: _Builder) -> int | None:
    if not b.key_sql:
        return None
    try:
        t = b.analyzer("SELECT").analyze(n)
    except RewriteError:
        return None
    rendered = t.sql.sql(dialect="postgres")
    return b.key_sql.index(rendered) if rendered in b.key_sql else None


def _collect_order(
    select: exp.Select, b: _Builder, outputs: list[OutputColumn]
) -> list[OrderItem]:
    order = select.args.get("order")
    if order is None:
        return []
    items = []
    aliases = {o.name.lower(): o for o in outputs}
    for o in order.expressions:
        body = o.this
        if isinstance(body, exp.Literal) and not body.is_string:
            pos = int(body.this)
            if not 1 <= pos <= len(outputs):
                raise RewriteError(GROUPING_ERROR, f"ORDER BY position {pos} is not in select list")
            expr = outputs[pos - 1].expr
        elif isinstance(body, exp.Column) and not body.table and body.name.lower() in aliases:
            expr = aliases[body.name.lower()].expr
        else:
            expr = _post_expr(body, b, "ORDER BY")
        desc = bool(o.args.get("desc"))
        nulls_first = o.args.get("nulls_first")
        items.append(
            OrderItem(expr=expr, descending=desc,
                      nulls_first=bool(nulls_first) if nulls_first is not None else desc)  # fmt: skip
        )
    return items


def limit_offset(select: exp.Expression) -> tuple[int | None, int]:
    """LIMIT (also LIMIT ALL, FETCH FIRST n ROWS ONLY) and OFFSET of a SELECT or UNION."""
    limit = None
    offset = 0
    lim = select.args.get("limit")
    if isinstance(lim, exp.Fetch):  # FETCH FIRST n ROWS ONLY
        opts = lim.args.get("limit_options")
        if opts is not None and (opts.args.get("percent") or opts.args.get("with_ties")):
            raise unsupported("FETCH FIRST ... PERCENT / WITH TIES is not supported", "use FETCH FIRST n ROWS ONLY")
        limit = _nonneg_int(lim.args.get("count") or exp.Literal.number(1), "FETCH FIRST")
    elif lim is not None and isinstance(lim.expression, exp.Var) and lim.expression.name.upper() == "ALL":
        limit = None  # LIMIT ALL: no limit
    elif lim is not None:
        limit = _nonneg_int(lim.expression, "LIMIT")
    off = select.args.get("offset")
    if off is not None:
        offset = _nonneg_int(off.expression, "OFFSET") or 0
    return limit, offset


def _nonneg_int(node: exp.Expression | None, what: str) -> int | None:
    """A LIMIT/OFFSET count; None for NULL, which PostgreSQL reads as no limit (a bound
    parameter's NULL too, as a statement is described before its values are bound)."""
    if isinstance(node, exp.Null) or isinstance(node, exp.Cast) and isinstance(node.this, exp.Null):
        return None
    if isinstance(node, exp.Literal) and not node.is_string and node.this.isdigit():
        return int(node.this)
    raise unsupported(f"{what} must be a non-negative integer literal")


# --- aggregates and primitives -----------------------------------------------------------


def _register_aggregate(node: exp.Expression, b: _Builder) -> int:
    key = node.sql(dialect="postgres", comments=False, normalize=True)
    if key in b.agg_index:
        return b.agg_index[key]
    spec = _aggregate_spec(node, b)
    b.aggregates.append(spec)
    b.agg_index[key] = len(b.aggregates) - 1
    return b.agg_index[key]


def _filter_column(cond: exp.Expression | None, b: _Builder) -> str | None:
    if cond is None:
        return None
    t = b.analyzer("FILTER (WHERE ...)").predicate(cond)
    # IS TRUE: a NULL condition excludes the row, as FILTER does.
    return b.column(f"(({t.sql.sql(dialect='postgres')}) IS TRUE)", "f")


def _prim(b: _Builder, kind: PrimitiveKind, value: str | None, filt: str | None,
          sensitivity: int, label: str, sql: str, term: RowTerm | None = None) -> str:  # fmt: skip
    """Register a noisy primitive (deduplicated); `term` is what one row adds to it,
    for primitives that weighted bounding can compute (counts and sums)."""
    key = (kind.value, value or "", filt or "")
    name = b.prim_index.get(key)
    if name is None:
        name = f"p{len(b.primitives)}"
        b.prim_index[key] = name
        if term is not None:
            b.terms[name] = term
        if filt is not None:
            sql = f"{sql} FILTER (WHERE b.{filt})"
        if kind in (PrimitiveKind.SUM, PrimitiveKind.NORMALIZED_SUM, PrimitiveKind.SUM_SQUARES):
            sql = f"coalesce({sql}, 0)"  # a sum over no rows is 0, never NULL
        b.primitives[name] = NoisyPrimitive(name=name, kind=kind, sensitivity=sensitivity,
                                            label=label, sql=sql)  # fmt: skip
    return name


def _count(b: _Builder, value: Typed | None, filt: str | None, label: str) -> str:
    if value is None or not value.nullable:
        # Rows of a non-NULL value are all rows: one shared count.
        label = "COUNT(*)" if filt is None else f"COUNT(*) FILTER ({b.inner[filt]})"
        return _prim(b, PrimitiveKind.COUNT, None, filt, b.rows, label, "count(*)",
                     RowTerm(None, filt, None, 1))  # fmt: skip
    col = b.column(value.sql.sql(dialect="postgres"), "v")
    return _prim(b, PrimitiveKind.COUNT, col, filt, b.rows, label, f"count(b.{col})",
                 RowTerm(None, filt, col, 1))  # fmt: skip


def _aggregate_spec(node: exp.Expression, b: _Builder) -> AggregateSpec:
    label = node.sql(dialect="postgres", comments=False)
    cond = None
    if isinstance(node, exp.Filter):
        where = node.expression
        cond = where.this if isinstance(where, exp.Where) else where
        node = node.this
    if isinstance(node, (exp.WithinGroup, exp.Median)):
        return _quantile_spec(node, filt_cond=cond, label=label, b=b)
    if isinstance(node, (exp.Min, exp.Max)):
        return _extreme_spec(node, filt_cond=cond, label=label, b=b)
    if isinstance(node, (exp.Quantile, exp.PercentileCont, exp.PercentileDisc)):
        raise unsupported(
            f"{label}: a percentile needs WITHIN GROUP (ORDER BY ...)",
            "write PERCENTILE_CONT(0.5) WITHIN GROUP (ORDER BY col) or MEDIAN(col)",
        )
    if not isinstance(node, exp.AggFunc):
        raise unsupported(f"{label} is not a supported aggregate", AGG_HINT)
    for n in node.iter_expressions():
        if any(isinstance(x, exp.AggFunc) for x in n.walk()):
            raise RewriteError(GROUPING_ERROR, f"{label}: aggregate calls cannot be nested")
    filt = _filter_column(cond, b)
    analyzer = b.analyzer(f"the aggregate {label}")
    if isinstance(node, exp.Count):
        arg = node.this
        if arg is None:
            # `count()`, or a token sqlglot dropped (`count(+)`): PostgreSQL refuses both.
            raise RewriteError("42809", "count(*) must be used to call a parameterless aggregate function")
        if isinstance(arg, exp.Star):
            return AggregateSpec(AggFunc.COUNT, label, count=_count(b, None, filt, label), sum=None)
        if isinstance(arg, exp.Distinct):
            if len(arg.expressions) != 1:
                raise unsupported(f"{label}: COUNT(DISTINCT ...) takes one expression")
            return _count_distinct(analyzer.analyze(arg.expressions[0]), filt, label, b)
        t = analyzer.analyze(arg)
        return AggregateSpec(AggFunc.COUNT, label, count=_count(b, t, filt, label), sum=None)
    funcs = {
        exp.Sum: AggFunc.SUM, exp.Avg: AggFunc.AVG, exp.Variance: AggFunc.VAR_SAMP,
        exp.VariancePop: AggFunc.VAR_POP, exp.Stddev: AggFunc.STDDEV_SAMP,
        exp.StddevSamp: AggFunc.STDDEV_SAMP, exp.StddevPop: AggFunc.STDDEV_POP,
    }  # fmt: skip
    func = funcs.get(type(node))  # type: ignore[call-overload]
    if func is None:
        name = written_name(node) if isinstance(node, exp.Func) else None
        raise unsupported(f"the aggregate {name or node.key.upper()}() is not supported", AGG_HINT)
    arg = node.this
    if isinstance(arg, exp.Distinct):
        raise unsupported(f"{label}: DISTINCT is only supported inside COUNT")
    t = analyzer.analyze(arg)
    if t.kind not in NUMERIC_KINDS:
        raise RewriteError("42883", f"{label}: cannot aggregate a value of type {t.type_name}")
    if not t.bounded:
        raise unsupported(
            f"{label}: no finite bounds follow for {arg.sql(dialect='postgres')}",
            "declare lower and upper bounds for the columns in the metadata, or clamp the "
            "value with LEAST(GREATEST(x, lo), hi)",
        )
    lo, hi, step = _steps(t)
    col = _fixed_column(t, lo, hi, step, b)
    counted = t if t.nullable else None
    if func == AggFunc.SUM:
        # As PostgreSQL types sum(): int8 of smallints and integers, numeric of bigints.
        rtype = "int8" if t.kind == "int" and t.type_name != "int8" else ("float8" if t.kind == "float" else "numeric")
        count = None  # decided in _choose_sum_forms, once every aggregate is known
    else:
        rtype = "float8" if func != AggFunc.AVG or t.kind == "float" else "numeric"
        count = _count(b, counted, filt, f"COUNT({arg.sql(dialect='postgres')})")
    spec = AggregateSpec(func, label, count=count, sum=None, step=step, lower=lo, upper=hi,
                         midpoint=(lo + hi) // 2, result_type=rtype)  # fmt: skip
    b.sums.append((len(b.aggregates), col, filt,
                   t.sql.sql(dialect="postgres") if t.nullable else None))  # fmt: skip
    if func in (AggFunc.VAR_POP, AggFunc.VAR_SAMP, AggFunc.STDDEV_POP, AggFunc.STDDEV_SAMP):
        half = max(hi - spec.midpoint, spec.midpoint - lo)
        scale = 1
        while (half // scale + 1) ** 2 > MAX_SQUARE_UNITS:
            scale *= 2
        sq_max = (-(-half // scale)) ** 2
        sq_sql = f"round(((b.{col} - {spec.midpoint})::numeric / {scale}) ^ 2)"
        # Unscaled squares are exact (numeric products); the sum is divided by
        # (scale * step)^2 once per group.
        dev = f"(b.r{col[1:]}::numeric - {_dec(spec.midpoint * step)})"
        # Over whole steps (the weighted plans' raw columns), the deviation is in steps.
        dev_steps = f"(b.r{col[1:]}::numeric - {spec.midpoint})"
        steps = RowTerm(f"{dev_steps} * {dev_steps}", filt, None, sq_max, Decimal(scale**2))
        sq = _prim(b, PrimitiveKind.SUM_SQUARES, col, filt, b.rows * sq_max,
                   f"SUM of squares of {arg.sql(dialect='postgres')}", f"sum({sq_sql})",
                   RowTerm(f"{dev} * {dev}", filt, None, sq_max, (scale * step) ** 2,
                           steps=steps))  # fmt: skip
        spec = replace(spec, sumsq=sq, sq_scale=scale)
    return spec


MAX_CANDIDATES = 1000


def _quantile_spec(
    node: exp.Expression, filt_cond: exp.Expression | None, label: str, b: _Builder
) -> AggregateSpec:
    """PERCENTILE_CONT/DISC(alpha) WITHIN GROUP (ORDER BY x) and MEDIAN(x).

    The database returns, per group, a histogram of the bounded values over cells: each
    of up to 1000 evenly spaced candidates, and the open interval after it. The proxy
    scores each candidate c by |(1 - alpha) #(x < c) - alpha #(x > c)| and picks one by
    report-noisy-max (OpenDP), the exponential mechanism over candidates.
    """
    if isinstance(node, exp.Median):
        alpha, arg, desc = Decimal("0.5"), node.this, False
    else:
        inner = node.this
        if not isinstance(inner, (exp.PercentileCont, exp.PercentileDisc)):
            raise unsupported(f"{label} is not a supported ordered-set aggregate", AGG_HINT)
        lit = inner.this
        if not (isinstance(lit, exp.Literal) and not lit.is_string):
            raise unsupported(f"{label}: the fraction must be a number literal")
        alpha = Decimal(lit.this)
        order = node.expression
        items = order.expressions if isinstance(order, exp.Order) else []
        if len(items) != 1:
            raise unsupported(f"{label}: ORDER BY one expression")
        arg, desc = items[0].this, bool(items[0].args.get("desc"))
    if not 0 <= alpha <= 1:
        raise RewriteError("22003", f"{label}: percentile value {alpha} is not between 0 and 1")
    if desc:
        alpha = 1 - alpha
    filt = _filter_column(filt_cond, b)
    t = b.analyzer(f"the aggregate {label}").analyze(arg)
    rtype = "date" if t.kind == "date" else ("float8" if t.kind == "float" else "numeric")
    t = _as_days(t)
    grid = _candidate_grid(t, label, "quantiles need", b)
    num, den = alpha.as_integer_ratio()
    # One unit's rows (at most max_rows) each move #(x < c) or #(x > c) by one.
    sens = b.rows * max(num, den - num)
    # One primitive (and one noisy-max release) per fraction, even over the same values.
    name = _prim(b, PrimitiveKind.QUANTILE, f"{grid.col}/{num}/{den}", filt, sens, label,
                 grid.histogram_sql)  # fmt: skip
    return AggregateSpec(AggFunc.QUANTILE, label, count=None, sum=name, step=grid.step,
                         lower=grid.lo, upper=grid.hi,
                         result_type=rtype, alpha_num=num, alpha_den=den, stride=grid.stride,
                         candidates=grid.candidates)  # fmt: skip


def _extreme_spec(
    node: exp.Min | exp.Max, filt_cond: exp.Expression | None, label: str, b: _Builder
) -> AggregateSpec:
    """MIN(x) and MAX(x): a DP estimate of the t-th smallest (largest) value.

    Quantile 0 would score every candidate below the minimum alike, so its answer would
    be uniform between the lower bound and the minimum. Instead the proxy scores each
    candidate by the distance between a small rank target t (fixed at release time from
    the noise scale, never from the data) and the ranks its cell covers, using the same
    histogram as a quantile; see accounting/extremes.py.
    """
    arg = node.this
    if isinstance(arg, exp.Distinct):
        raise unsupported(f"{label}: DISTINCT is only supported inside COUNT")
    if any(isinstance(x, exp.AggFunc) for x in arg.walk()):
        raise RewriteError(GROUPING_ERROR, f"{label}: aggregate calls cannot be nested")
    filt = _filter_column(filt_cond, b)
    t = b.analyzer(f"the aggregate {label}").analyze(arg)
    # MIN and MAX keep PostgreSQL's result type: the value's own type.
    rtype = t.type_name if t.kind in ("int", "float", "date") else "numeric"
    t = _as_days(t)
    func = AggFunc.MIN if isinstance(node, exp.Min) else AggFunc.MAX
    # MAX(x) is MIN(-x): its candidates are spaced down from the upper bound.
    grid = _candidate_grid(t, label, f"{func.value.upper()} needs", b,
                           descending=func == AggFunc.MAX)  # fmt: skip
    # One unit's rows (at most max_rows) each move #(x < c) (or #(x > c)) by one, for
    # every candidate c: the score's sensitivity.
    name = _prim(b, PrimitiveKind.QUANTILE, f"{grid.col}/{func.value}", filt, b.rows, label,
                 grid.histogram_sql)  # fmt: skip
    return AggregateSpec(func, label, count=None, sum=name, step=grid.step, lower=grid.lo,
                         upper=grid.hi, result_type=rtype, stride=grid.stride,
                         candidates=grid.candidates)  # fmt: skip


def _as_days(t: Typed) -> Typed:
    """A date with declared bounds as its days since 1970-01-01 (clamped, an integer in
    the declared range), so that quantiles, MIN and MAX run over numbers; the released
    day is turned back into a date. Any other value is returned as it is."""
    if t.kind != "date" or t.span is None or t.value is None:
        return t
    return Typed(days_sql(t.value), "int", Decimal(t.span[0]), Decimal(t.span[1]), None, t.nullable,
                 step=Decimal(1), pg_type="int4", columns=t.columns)  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Grid:
    """Evenly spaced candidates lower + j * stride (in steps) and the histogram over them."""

    col: str  # the inner column holding the clamped fixed-point value
    lo: int
    hi: int
    step: Decimal
    stride: int
    candidates: int
    histogram_sql: str


def _candidate_grid(t: Typed, label: str, what: str, b: _Builder,
                    descending: bool = False) -> _Grid:  # fmt: skip
    """Up to MAX_CANDIDATES candidates within the value's bounds.

    Cell 2j of the histogram counts values equal to candidate j, cell 2j + 1 those
    strictly between candidates j and j + 1 (or beyond the last one). Candidates are
    lower + j * stride, or upper - j * stride when `descending`.
    """
    if t.kind not in NUMERIC_KINDS or not t.bounded:
        raise unsupported(
            f"{label}: {what} a number or a date with finite bounds",
            "declare lower and upper bounds for the column in the metadata (dates: "
            "lower: 1992-01-01)",
        )
    lo, hi, step = _steps(t)
    width = hi - lo
    stride = max(1, -(-width // (MAX_CANDIDATES - 1)))
    candidates = width // stride + 1
    col = _fixed_column(t, lo, hi, step, b)
    offset = f"({hi} - b.{col})" if descending else f"(b.{col} - {lo})"
    cell = (f"({offset} / {stride}) * 2 + "
            f"(CASE WHEN {offset} % {stride} = 0 THEN 0 ELSE 1 END)")  # fmt: skip
    return _Grid(col, lo, hi, step, stride, candidates, f"quantile_histogram({cell})")


def _count_distinct(t: Typed, filt: str | None, label: str, b: _Builder) -> AggregateSpec:
    col = b.column(t.sql.sql(dialect="postgres"), "v")
    if t.unit or (b.rel.unit is not None and t.sql.sql(dialect="postgres") ==
                  b.rel.unit.sql(dialect="postgres")):  # fmt: skip
        # Counting units: one unit adds 1 to each group it touches.
        b.group_bound = True
        name = _prim(b, PrimitiveKind.COUNT_DISTINCT, col, filt, -1, label,
                     f"count(DISTINCT b.{col})")  # fmt: skip
        b.unit_distinct.add(name)
    else:
        # Removing a unit removes at most max_rows rows, each lowering one count by <= 1.
        name = _prim(b, PrimitiveKind.COUNT_DISTINCT, col, filt, b.rows, label,
                     f"count(DISTINCT b.{col})")  # fmt: skip
    return AggregateSpec(AggFunc.COUNT, label, count=name, sum=None)


def _steps(t: Typed) -> tuple[int, int, Decimal]:
    """Bounds in fixed-point steps, widened outwards so the declared range is covered."""
    assert t.lo is not None and t.hi is not None
    if t.kind == "int":
        step = Decimal(1)
    else:
        step = t.step if t.step is not None else Decimal("0.01")
    top = max(abs(t.lo), abs(t.hi))
    while top / step > MAX_STEPS:
        step *= 10
    lo = int((t.lo / step).to_integral_value(rounding=ROUND_FLOOR))
    hi = int((t.hi / step).to_integral_value(rounding=ROUND_CEILING))
    return lo, hi, step


def _choose_sum_forms(b: _Builder) -> None:
    """Pick, per summed value, a plain sum or a midpoint-normalized sum plus a count.

    A normalized sum has half the sensitivity of a plain one when the bounds straddle
    no zero, and with the count it yields SUM, AVG and COUNT together. When no count
    of the value is needed anyway, a plain sum at the full share of epsilon is the
    more accurate release, so that is used instead.
    """
    rows = b.rows
    for idx, col, filt, counted_sql in b.sums:
        spec = b.aggregates[idx]
        lo, hi, mid = spec.lower, spec.upper, spec.midpoint
        count_name = spec.count
        if count_name is None:
            # A count of the same rows may exist already (COUNT(*) or COUNT(expr)).
            vcol = b.inner_index.get(counted_sql) if counted_sql is not None else ""
            if vcol is not None:
                count_name = b.prim_index.get((PrimitiveKind.COUNT.value, vcol, filt or ""))
        label = spec.label
        raw, step = f"b.r{col[1:]}", spec.step
        nullable = counted_sql is not None
        if count_name is not None:
            term = f"b.{col} - {mid}" if mid else f"b.{col}"
            half = max(hi - mid, mid - lo)
            steps = RowTerm(raw, filt, None, half, offset=Decimal(mid), nullable=nullable,
                            narrow=_narrow(lo, hi))  # fmt: skip
            s = _prim(b, PrimitiveKind.NORMALIZED_SUM, col, filt, rows * half,
                      f"normalized {label}", f"sum({term})",
                      RowTerm(raw, filt, None, half, step, offset=mid * step,
                              nullable=nullable, steps=steps))  # fmt: skip
            b.aggregates[idx] = replace(spec, count=count_name, sum=s)
        else:
            top = max(abs(lo), abs(hi))
            steps = RowTerm(raw, filt, None, top, nullable=nullable, narrow=_narrow(lo, hi))
            s = _prim(b, PrimitiveKind.SUM, col, filt, rows * top, label, f"sum(b.{col})",
                      RowTerm(raw, filt, None, top, step, nullable=nullable,
                              steps=steps))  # fmt: skip
            b.aggregates[idx] = replace(spec, sum=s, midpoint=0)


def _fixed_column(t: Typed, lo: int, hi: int, step: Decimal, b: _Builder) -> str:
    """The inner column holding the value as clamped fixed-point steps.

    The expression is computed once (a `w` column of `i0`); clamping and scaling read
    that column (an `x` column of `i`), so the expression is not repeated.
    """
    w = b.column(t.operand.sql(dialect="postgres"), "w")
    fixed = _fixed_point_sql(f"i0.{w}", lo, hi, step)
    if fixed not in b.fixed_index:
        name = f"x{len(b.fixed_index)}"
        b.fixed_index[fixed] = name
        b.raw_of[name] = (_raw_clamp_sql(f"i0.{w}", lo, hi, step, t), step, lo, hi)
        steps = _int_steps_sql(t, lo, hi, step, b)
        if steps is not None:
            b.steps_of[name] = steps
    return b.fixed_index[fixed]


def _int_steps_sql(t: Typed, lo: int, hi: int, step: Decimal, b: _Builder) -> str | None:
    """A bare numeric(p, s) column's value in whole steps, clamped to [lo, hi] as an
    integer; None where that is not certain to equal `_whole_steps_sql` of its clamp.

    The numeric clamp costs two numeric comparisons a row; here the value is scaled and
    cast first (it cannot overflow bigint: at most p - s digits before the point, times
    10^k for a step of 10^-k, with p - s + k <= 18) and clamped as an integer, with one
    numeric comparison left for NaN (which a numeric(p, s) may hold; the clamp sends it
    to the upper bound). Rounding then clamping equals clamping then rounding because
    the bounds are whole steps. NULL stays NULL. Each plan checks the type still stands
    (`_guarded`).
    """
    if t.value is None or t.int_digits is None or t.kind != "numeric" or t.lo is None or t.hi is None:
        return None
    inverse = Decimal(1) / step
    if inverse != inverse.to_integral_value():
        return None
    scale = len(str(int(inverse))) - 1
    if int(inverse) != 10**scale or t.int_digits + scale > 18:
        return None
    if t.lo * inverse != lo or t.hi * inverse != hi:  # declared bounds off the step grid
        return None
    v = "i0." + b.column(t.sql.sql(dialect="postgres"), "w")
    clamped = f"LEAST(GREATEST(({v} * {int(inverse)})::int8, {lo}), {hi})"
    typ = "int4" if _narrow(lo, hi) else "int8"
    return f"(CASE WHEN {v} IS NULL THEN NULL WHEN {v} = 'NaN' THEN {hi} ELSE {clamped} END)::{typ}"


def _raw_clamp_sql(value: str, lo: int, hi: int, step: Decimal, t: Typed) -> str:
    """The value clamped to [lo, hi] steps, in its own units (no per-row scaling).

    Weighted bounding sums these per group and scales the sums, which is much cheaper
    than scaling every row. Floats are cast to numeric first, so that sums are exact
    and do not depend on the order of the rows. NULL stays NULL; NaN and infinities
    clamp to a bound, as in `_fixed_point_sql`. A bare bounded column is already
    clamped to its declared bounds (`t.value`), which [lo, hi] steps contain.
    """
    if t.value is not None:
        # bigint: differences from the midpoint of any int column fit (|bounds| < 2^40).
        return f"({value})::numeric" if t.kind == "float" else (
            f"({value})::bigint" if t.kind == "int" else value)  # fmt: skip
    if t.kind == "int" and step == 1:
        # Clamp, then cast: the expression itself may exceed bigint (it is numeric then).
        inner = f"(LEAST(GREATEST({value}, {lo}), {hi}))::bigint"
    else:
        inner = f"LEAST(GREATEST(({value})::numeric, {_dec(lo * step)}), {_dec(hi * step)})"
    return f"(CASE WHEN ({value}) IS NULL THEN NULL ELSE {inner} END)"


def _narrow(lo: int, hi: int) -> bool:
    """True when every value in [lo, hi] steps fits int4 (see `_whole_steps_sql`)."""
    return max(abs(lo), abs(hi)) < 1 << 31


def _whole_steps_sql(raw: str, step: Decimal, lo: int, hi: int) -> str:
    """A raw clamped value (`_raw_clamp_sql`) as a whole number of steps: int4 when the
    bounds fit, so per-unit sums keep a by-value int8 state; int8 otherwise.

    The value is already clamped within [lo, hi] steps and finite, so the cast cannot
    fail; it rounds half away from zero, as `_fixed_point_sql` does (each row rounded to
    its fixed-point step, the definition of a fixed-point sum). NULL stays NULL.
    """
    typ = "int4" if _narrow(lo, hi) else "int8"
    inverse = Decimal(1) / step
    if step == 1:
        return f"({raw})::{typ}"
    if inverse == inverse.to_integral_value():
        return f"(({raw})::numeric * {int(inverse)})::{typ}"
    return f"(({raw})::numeric / {_dec(step)})::{typ}"


def _tables_read(sql: str, meta: Metadata) -> set[str]:
    """The declared tables `sql` reads: every base table is rendered `"schema"."name"`
    (the FROM clause, derived tables grouped by unit, semi-joins, public domains), so a
    mention of one, wherever it is nested, counts. Should none be found (a rendering this
    misses), every table counts: the guard then checks too much, never too little."""
    found = {name for name, t in meta.tables.items() if f'"{t.schema_}"."{name}"' in sql}
    return found or set(meta.tables)


def _guarded(sql: str, meta: Metadata, tables: set[str]) -> str:
    """`sql`, failing in the database unless every CHECK constraint that replaces a
    clamp (`ColumnMeta.enforced_by`) of the tables it reads still stands, validated, in
    the query's snapshot (and every numeric type a clamp relies on is unchanged, and every
    key a declared unique column relies on, `ColumnMeta.key_constraint`, still stands).

    A constraint dropped after start-up must not let unclamped values through: the query
    then divides by zero (an error that depends on the catalog, not on the data) instead
    of answering. The CASE is computed from a subquery, so it cannot be folded early.
    Only the query's own tables are checked: each catalog subquery costs ~0.1 ms to plan,
    every execution, and another table's constraints cannot change this query's rows.
    """
    oids, types = meta.enforced_checks_of(sorted(tables)), meta.numeric_types_of(sorted(tables))
    keys = meta.key_constraints_of(sorted(tables))
    if not oids and not types and not keys:
        return sql
    conditions = []
    if oids or keys:
        # (one subquery for both: each costs its planning, every execution)
        listed = ", ".join(str(o) for o in sorted(oids + keys))
        kinds = "contype = 'c' AND convalidated"
        if keys:
            kinds = f"(contype IN ('p', 'u') OR {kinds})"
        conditions.append(f"(SELECT count(*) FROM pg_catalog.pg_constraint WHERE oid IN ({listed}) "
                          f"AND {kinds}) = {len(oids) + len(keys)}")  # fmt: skip
    if types:
        # (attrelid, attnum) as they are typed: the lookups then use pg_attribute's index.
        listed = ", ".join(f"({r}::oid, {n}::int2, {m})" for r, n, m in types)
        conditions.append(f"(SELECT count(*) FROM pg_catalog.pg_attribute AS a JOIN (VALUES {listed}) "
                          "AS t(rel, num, typmod) ON a.attrelid = t.rel AND a.attnum = t.num "
                          "WHERE a.atttypmod = t.typmod AND a.atttypid = 1700 AND NOT a.attisdropped) "
                          f"= {len(types)}")  # fmt: skip
    return (f"SELECT * FROM ({sql}) AS checked "
            f"WHERE 1 / (CASE WHEN {' AND '.join(conditions)} THEN 1 ELSE 0 END) = 1")


def _dec(d: Decimal | int) -> str:
    """A numeric literal for SQL (never in exponent notation)."""
    return format(Decimal(d), "f")


def _fixed_point_sql(value: str, lo: int, hi: int, step: Decimal) -> str:
    """The value rounded to a whole number of steps and clamped to [lo, hi] steps.

    The value is scaled and rounded once (numeric division is the costly part of the
    bounded SQL), multiplying by 1/step when that is a whole number. NULL stays NULL
    (the CASE: GREATEST/LEAST alone would turn NULL into a bound); NaN compares above
    every number in PostgreSQL and infinities beyond every bound, so they clamp to a
    bound and never reach a sampler.
    """
    inverse = Decimal(1) / step
    if step == 1:
        scaled = f"({value})::numeric"
    elif inverse == inverse.to_integral_value():
        scaled = f"(({value})::numeric * {int(inverse)})"
    else:
        scaled = f"(({value})::numeric / {step})"
    return (
        f"(CASE WHEN ({value}) IS NULL THEN NULL "
        f"ELSE LEAST(GREATEST(round({scaled}), {lo}), {hi}) END)::bigint"
    )


# --- partition selection -----------------------------------------------------------------


def _selection_primitive(b: _Builder) -> str | None:
    groups = _groups_per_unit(b)
    # Distinct-unit counts have sensitivity = groups per unit (known only now).
    for name, p in list(b.primitives.items()):
        if p.sensitivity == -1:
            b.primitives[name] = replace(p, sensitivity=groups if b.keys else 1,
                                         groups_per_unit=groups)  # fmt: skip
    if not any(k.private for k in b.keys):
        return None
    b.group_bound = True
    groups = _groups_per_unit(b)
    for name, p in list(b.primitives.items()):
        if p.kind == PrimitiveKind.COUNT_DISTINCT and p.groups_per_unit > 1:
            b.primitives[name] = replace(p, sensitivity=groups, groups_per_unit=groups)
    sql = "count(*)" if b.rel.row_level else "count(DISTINCT b.u)"
    name = f"p{len(b.primitives)}"
    b.primitives[name] = NoisyPrimitive(
        name=name, kind=PrimitiveKind.UNIT_COUNT, sensitivity=groups,
        label="units per group (partition selection)", sql=sql, groups_per_unit=groups,
    )  # fmt: skip
    return name


# --- SQL emission ------------------------------------------------------------------------


def _inner_sql(b: _Builder, *, map_keys: bool, filter_keys: bool = True) -> str:
    """The row-level query: keys, inner columns and the unit of every joined row.

    Keys with a listed public domain are kept to that domain: with `map_keys`, by a join
    to the domain's VALUES that turns each key into its index; otherwise by an IN filter
    (cheaper per row), the raw key being mapped to its index after aggregation
    (`_map_domain_keys`, whose join also drops groups outside the domain, so without
    `filter_keys` the filter is left out when nothing else depends on the kept rows).
    """
    rel = b.rel
    cols = []
    joins = []
    filters = []
    for i, (key, t) in enumerate(zip(b.keys, b.key_typed, strict=True)):
        expr = t.sql.sql(dialect="postgres")
        if key.private or key.domain_sql:
            cols.append(f"{expr} AS k{i}")
            continue
        by_day = _day_index(b, i)
        if by_day is not None:  # already the index (NULL outside the domain)
            cols.append(f"{by_day} AS k{i}")
            if map_keys or filter_keys:
                filters.append(f"({by_day}) IS NOT NULL")
            continue
        if not map_keys and not filter_keys:
            cols.append(f"{expr} AS k{i}")
            continue
        if not map_keys:
            listed = [v for v in key.domain if v is not None]
            lits = [lit for v, lit in zip(key.domain, _domain_literals(b, i), strict=True)
                    if v is not None]  # fmt: skip
            cond = f"({expr}) IN ({', '.join(lits)})" if listed else ""
            if None in key.domain:
                cond = f"({cond} OR ({expr}) IS NULL)" if cond else f"({expr}) IS NULL"
            filters.append(cond)
            cols.append(f"{expr} AS k{i}")
            continue
        values = ", ".join(f"({j}, {lit})" for j, lit in enumerate(_domain_literals(b, i)))
        op = "IS NOT DISTINCT FROM" if None in key.domain else "="
        joins.append(f"JOIN (VALUES {values}) AS d{i}(i, v) ON ({expr}) {op} d{i}.v")
        cols.append(f"d{i}.i AS k{i}")
    for name, sql in b.inner.items():
        cols.append(f"{sql} AS {name}")
    if not rel.row_level:
        assert rel.unit is not None
        cols.append(f"{rel.unit.sql(dialect='postgres')} AS u")
    inner = f"SELECT {', '.join(cols) or '1 AS one'} FROM {rel.from_sql()}"
    if joins:
        inner += " " + " ".join(joins)
    conds = [f"({c.sql(dialect='postgres')})" for c in rel.conditions] + filters
    if conds:
        inner += " WHERE " + " AND ".join(conds)
    return inner


def _domain_literals(b: _Builder, i: int) -> list[str]:
    """Key `i`'s listed domain as typed SQL literals (rendered once: sqlglot is slow)."""
    if i not in b.literals:
        t = b.key_typed[i]
        domain = b.keys[i].domain
        if t.kind == "null":
            b.literals[i] = [_literal(v, t) for v in domain]
        else:
            # The type is rendered once and plain values are written by hand: thousands
            # of listed days through sqlglot took 170 ms.
            typ = exp.DataType.build(t.type_name).sql(dialect="postgres")
            b.literals[i] = list(_plain_literals(domain, typ) or [_plain_literal(v, typ) or _literal(v, t) for v in domain])
    return b.literals[i]


@functools.lru_cache(maxsize=32)
def _plain_literals(domain: tuple[object, ...], typ: str) -> tuple[str, ...] | None:
    """A long domain of plain values as literals (`_plain_literal`), or None. (Cached:
    a declared date column lists the same thousands of days in every statement.)"""
    if len(domain) < 100:
        return None
    out = [lit for v in domain if (lit := _plain_literal(v, typ)) is not None]
    return tuple(out) if len(out) == len(domain) else None


def _plain_literal(v: object, typ: str) -> str | None:
    """`v` cast to `typ` as `_literal` writes it, for strings without backslashes, dates,
    timestamps and integers; None for other values."""
    if isinstance(v, str):
        return None if "\\" in v else "CAST('" + v.replace("'", "''") + f"' AS {typ})"
    if isinstance(v, (date, datetime)):
        return f"CAST('{v}' AS {typ})"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"CAST({v} AS {typ})"
    return None


def _day_index(b: _Builder, i: int) -> str | None:
    """Listed key `i`'s domain index read by the day of its date (rewriter/daykeys.py),
    or None when the key is not such a function of a declared date."""
    if i not in b.day_index:
        t, key = b.key_typed[i], b.keys[i]
        by_day = t.by_day
        b.day_index[i] = None
        if by_day is not None and by_day.key is t.sql and not (key.private or key.domain_sql):
            b.day_index[i] = day_index_sql(by_day, key.domain, _domain_literals(b, i),
                                           t.sql.sql(dialect="postgres"))  # fmt: skip
    return b.day_index[i]


def _pivot_cells(b: _Builder) -> list[tuple[int, ...]] | None:
    """Every combination of the keys' domain indexes, when the grouped weighted plan can
    pivot (every key a short listed public domain); None otherwise."""
    if not b.keys or any(k.private or k.domain_sql for k in b.keys):
        return None
    n = _group_count(b.keys)
    if n > PIVOT_MAX_CELLS or n * len(b.primitives) > PIVOT_MAX_PARTIALS:
        return None
    return list(itertools.product(*(range(len(k.domain)) for k in b.keys)))


def _cell_index_sql(b: _Builder) -> str:
    """A row's cell: its keys' domain indexes in row-major order (NULL outside them)."""
    index = ""
    for i, key in enumerate(b.keys):
        if _day_index(b, i) is not None:
            index = f"i0.k{i}" if not index else f"({index}) * {len(key.domain)} + i0.k{i}"
            continue
        lits = _domain_literals(b, i)
        whens = " ".join(f"WHEN {lit} THEN {j}"
                         for j, (v, lit) in enumerate(zip(key.domain, lits, strict=True))
                         if v is not None)  # fmt: skip
        case = f"CASE i0.k{i} {whens} END" if whens else "NULL::int"
        if None in key.domain:
            case = f"CASE WHEN i0.k{i} IS NULL THEN {key.domain.index(None)} ELSE {case} END"
        index = f"({case})" if not index else f"({index}) * {len(key.domain)} + ({case})"
    return index


def _map_domain_keys(sql: str, b: _Builder) -> str:
    """Replace raw listed-domain keys of `sql`'s groups by their domain indexes."""
    cols = []
    joins = []
    listed = []
    for i, key in enumerate(b.keys):
        if key.private or key.domain_sql:
            cols.append(f"a.k{i}")
            continue
        if _day_index(b, i) is not None:  # an index already (NULL outside the domain)
            cols.append(f"a.k{i}")
            listed.append(f"a.k{i} IS NOT NULL")
            continue
        values = ", ".join(f"({j}, {lit})" for j, lit in enumerate(_domain_literals(b, i)))
        # Hashable (`_same_key`): thousands of listed days matched by IS NOT DISTINCT
        # FROM were a nested loop over every pair (2,557 x 2,406: 0.37 s at SF 1).
        on = _same_key(f"a.k{i}", f"d{i}.v", b.key_typed[i].kind, None in key.domain)
        joins.append(f"JOIN (VALUES {values}) AS d{i}(i, v) ON {on}")
        cols.append(f"d{i}.i AS k{i}")
    cols += [f"a.{name}" for name in b.primitives]
    where = f" WHERE {' AND '.join(listed)}" if listed else ""
    return f"SELECT {', '.join(cols)} FROM ({sql}) AS a {' '.join(joins)}{where}"


_REFERENCE = re.compile(r'"?([A-Za-z_]\w*)"?\."?([A-Za-z_]\w*)"?')


def _bare_column(sql: str, b: _Builder) -> bool:
    """Whether `sql` reads a table column as it is (through `i0`'s columns): repeating
    it costs nothing, unlike a clamp."""
    m = _REFERENCE.fullmatch(sql)
    if m is None:
        return False
    if m.group(1) != "i0":
        return True
    inner = b.inner.get(m.group(2))
    return inner is not None and _REFERENCE.fullmatch(inner) is not None


def _emit_sql(b: _Builder) -> str:
    rel = b.rel
    keys = [f"k{i}" for i in range(len(b.keys))]
    if not rel.row_level and not rel.one_row_per_unit and not keys and _row_counts_only(b):
        # An ungrouped COUNT(*) over bounded rows is sum(min(rows of the unit, max_rows))
        # whichever rows a window would keep: a hash aggregate per unit, no sort.
        ctes = _window_ctes(b)
        outer = ", ".join(
            f"coalesce(sum(least(b.c, {rel.max_rows})), 0) AS {p.name}" for p in b.primitives.values()
        )
        return (f"WITH {', '.join(ctes)} SELECT {outer} "
                "FROM (SELECT count(*) AS c FROM i GROUP BY i.u) AS b")  # fmt: skip
    if not b.group_bound and not any(k.private for k in b.keys):
        one_row = rel.row_level or rel.one_row_per_unit
        cells = None if one_row else _pivot_cells(b)
        wctes, terms = _weighted_rows(b, one_row, cells)
        # Rounding each group's sum to whole units can move it by one unit per group.
        groups = MAX_GROUPS if any(k.domain_sql for k in b.keys) else _group_count(b.keys)
        weighted = weighted_sql(wctes, keys, b.primitives, terms, rel.max_rows,
                                rounding_slack=groups,
                                one_row_per_unit=one_row, cells=cells)  # fmt: skip
        if weighted is not None:
            sql, b.primitives = weighted
            b.bounding = "none" if one_row else "weighted"
            return _keys_completed(sql, b, mapped=cells is not None)
    elif keys and not (rel.row_level or rel.one_row_per_unit):
        wctes, terms = _weighted_rows(b, False, None)
        unit_counts = {n for n, p in b.primitives.items() if p.kind == PrimitiveKind.UNIT_COUNT}
        unit_counts |= {n for n in b.unit_distinct if " FILTER " not in b.primitives[n].sql}
        bounded = group_bounded_sql(wctes, keys, b.primitives, terms, rel.max_rows,
                                    _groups_per_unit(b), unit_counts)  # fmt: skip
        if bounded is not None:
            sql, b.primitives = bounded
            b.bounding = "weighted_groups"
            return _keys_completed(sql, b, mapped=False)
    ctes = _window_ctes(b)
    units_only = not keys and set(b.primitives) <= b.unit_distinct
    if rel.row_level or rel.one_row_per_unit or units_only:
        b.bounding = "none"
        # No window needed: every unit already contributes at most one row (or, counting
        # distinct units without groups, adds at most 1 however many rows it has).
        source = "i AS b"
        where = ""
    else:
        if b.group_bound and keys and rel.max_groups < rel.max_rows:
            # Each unit keeps at most max_groups groups (chosen at random), then at most
            # max_rows rows among them (chosen at random).
            klist = ", ".join(keys)
            ctes.append(
                f"g AS (SELECT u, {klist}, row_number() OVER (PARTITION BY u ORDER BY random()) "
                f"AS gn FROM (SELECT DISTINCT u, {klist} FROM i) AS x)"
            )
            on = " AND ".join(["g.u = i.u"] + [_key_match(b, j, f"g.{k}", f"i.{k}") for j, k in enumerate(keys)])
            # Rows are then taken round-robin over the kept groups (every kept group keeps
            # a row before any keeps two), so a unit is counted in each group it kept.
            ctes.append(
                f"q AS (SELECT i.*, row_number() OVER (PARTITION BY i.u, {', '.join('i.' + k for k in keys)} "
                f"ORDER BY random()) AS gr FROM i JOIN g ON {on} WHERE g.gn <= {rel.max_groups})"
            )
            ctes.append(
                "r AS (SELECT q.*, row_number() OVER (PARTITION BY q.u ORDER BY q.gr, random()) "
                "AS rn FROM q)"
            )
        else:
            ctes.append(
                "r AS (SELECT i.*, row_number() OVER (PARTITION BY i.u ORDER BY random()) AS rn "
                "FROM i)"
            )
        source = "r AS b"
        where = f" WHERE b.rn <= {rel.max_rows}"
    quantiles = [p for p in b.primitives.values() if p.kind == PrimitiveKind.QUANTILE]
    if keys and quantiles:
        sql = _grouped_with_histograms(b, keys, ctes, source, where)
    else:
        outer = [f"b.{k}" for k in keys]
        for p in b.primitives.values():
            if p.kind == PrimitiveKind.QUANTILE:
                outer.append(f"{_histogram_sql(p, source, where)} AS {p.name}")
            else:
                outer.append(f"{p.sql} AS {p.name}")
        sql = f"WITH {', '.join(ctes)} SELECT {', '.join(outer)} FROM {source}{where}"
        if keys:
            sql += " GROUP BY " + ", ".join(f"b.{k}" for k in keys)
        elif quantiles:
            sql += " GROUP BY ()"  # one row even when the histogram subquery is all it selects
    if any(k.domain_sql for k in b.keys):
        sql = _complete_public_groups(sql, b)
    return sql


def _weighted_rows(b: _Builder, one_row: bool, cells: list[tuple[int, ...]] | None) -> tuple[list[str], dict[str, RowTerm]]:
    """The rows (`i`, with the raw values as whole steps and the cell index) and the row
    terms the weighted plans sum."""
    # Weighted plans sum whole steps (integers) in their per-unit hash entries; with
    # one row per unit, the raw values are summed once per group, where a per-row
    # cast to steps would cost more than the numeric sum it replaces.
    raw = ", ".join(
        f"{sql if one_row else b.steps_of.get(name) or _whole_steps_sql(sql, step, lo, hi)} AS r{name[1:]}"
        for name, (sql, step, lo, hi) in b.raw_of.items()
    )
    terms = b.terms if one_row else {n: t.steps or t for n, t in b.terms.items()}
    # With one row per unit, rows outside a key's domain change nothing but their
    # own (dropped) groups; otherwise they would count in their unit's weight (the
    # pivot plan counts only rows inside the domains, so it needs no filter either).
    rows = _inner_sql(b, map_keys=False, filter_keys=not one_row and cells is None)
    extra = ([raw] if raw else []) + ([f"{_cell_index_sql(b)} AS g"] if cells else [])
    # OFFSET 0 keeps `i` a subquery: inlined, each clamp and cell index would be
    # evaluated again at every use (a sum and its count, every cell's FILTER):
    # TPC-H SF 1, the pivot plan of a grouped AVG took 5.6 s inlined, 2.4 s fenced.
    # Bare column references cost nothing to repeat: inlined, the plan is the plain
    # query's (4% faster than fenced on a grouped SUM over one row per unit).
    computed = cells is not None or not all(_bare_column(e.rsplit(" AS ", 1)[0], b) for e in extra)
    reused = cells is not None or any(t.offset for t in b.terms.values())
    fence = " OFFSET 0" if reused and computed else ""  # (a single use is cheaper inlined)
    wctes = [f"i0 AS ({rows})", f"i AS (SELECT i0.*, {', '.join(extra)} FROM i0{fence})"
             ] if extra else [f"i AS ({rows})"]  # fmt: skip
    return wctes, terms


def _keys_completed(sql: str, b: _Builder, *, mapped: bool) -> str:
    """A weighted plan's groups with listed-domain keys as their domain indexes (unless
    the plan `mapped` them already) and every value of a public table's domain."""
    if not mapped and any(not k.private and not k.domain_sql for k in b.keys):
        sql = _map_domain_keys(sql, b)
    if any(k.domain_sql for k in b.keys):
        sql = _complete_public_groups(sql, b)
    return sql


def _window_ctes(b: _Builder) -> list[str]:
    """The rows (`i0`) and their fixed-point values (`i`) for the sampling plans."""
    inner = _inner_sql(b, map_keys=True)
    if b.fixed_index:
        fixed = ", ".join(f"{sql} AS {name}" for sql, name in b.fixed_index.items())
        return [f"i0 AS ({inner})", f"i AS (SELECT i0.*, {fixed} FROM i0)"]
    return [f"i AS ({inner})"]


def _row_counts_only(b: _Builder) -> bool:
    """True when every primitive is a plain COUNT(*) of the bounded rows."""
    return bool(b.primitives) and not b.group_bound and all(
        p.kind == PrimitiveKind.COUNT and p.sql == "count(*)" for p in b.primitives.values()
    )


def _complete_public_groups(sql: str, b: _Builder) -> str:
    """Every combination of the keys' public domains, with zeros for empty groups."""
    doms = []
    for i, k in enumerate(b.keys):
        if k.domain_sql is not None:
            doms.append(f"({k.domain_sql}) AS dk{i}")
        else:
            vals = ", ".join(f"({j})" for j in range(len(k.domain)))
            doms.append(f"(VALUES {vals}) AS dk{i}(v)")
    on = " AND ".join(
        _same_key(f"a.k{i}", f"dk{i}.v", b.key_typed[i].kind, _key_nullable(b.key_typed[i], b))
        if k.domain_sql else f"a.k{i} IS NOT DISTINCT FROM dk{i}.v"  # a listed domain: few values
        for i, k in enumerate(b.keys)
    )  # fmt: skip
    cols = [f"dk{i}.v" for i in range(len(b.keys))]
    for p in b.primitives.values():
        zero = "'{}'::jsonb" if p.kind == PrimitiveKind.QUANTILE else "0"
        cols.append(f"coalesce(a.{p.name}, {zero}) AS {p.name}")
    return (f"SELECT {', '.join(cols)} FROM {' CROSS JOIN '.join(doms)} "
            f"LEFT JOIN ({sql}) AS a ON {on}")  # fmt: skip


# A value of each kind, standing in for NULL where a NULL-safe match must stay hashable.
_NULL_STAND_INS = {"text": "''", "int": "0", "numeric": "0", "float": "0", "bool": "false",
                   "date": "DATE 'epoch'", "timestamp": "TIMESTAMP 'epoch'",
                   "timestamptz": "TIMESTAMPTZ 'epoch'"}  # fmt: skip


def _key_nullable(t: Typed, b: _Builder) -> bool:
    """Whether a group key can be NULL: its expression can, or it reads a LEFT-joined
    table (whose unmatched rows form the NULL group)."""
    aliases = {alias for alias, _ in t.columns}
    return t.nullable or any(s.left for s in b.rel.sources if s.alias in aliases)


def _same_key(left: str, right: str, kind: str, nullable: bool) -> str:
    """`left IS NOT DISTINCT FROM right`, written so PostgreSQL can hash-join on it.

    A public table's domain can hold tens of thousands of values; IS NOT DISTINCT FROM
    is not hashable, so matching the groups to it was a nested loop (20,000 part names:
    12 s). A key that cannot be NULL matches with `=`; a nullable one with its NULL-ness
    and its value with NULL replaced by a stand-in of its kind, each side on its own."""
    if not nullable:
        return f"{left} = {right}"
    stand_in = _NULL_STAND_INS.get(kind)
    if stand_in is None:
        return f"{left} IS NOT DISTINCT FROM {right}"
    return (f"({left} IS NULL) = ({right} IS NULL) AND "
            f"coalesce({left}, {stand_in}) = coalesce({right}, {stand_in})")  # fmt: skip


def _key_match(b: _Builder, i: int, left: str, right: str) -> str:
    """NULL-safe, hashable equality of group key i between two row sets of the sampling
    plans (whose listed-domain keys are domain indexes, never NULL)."""
    key, t = b.keys[i], b.key_typed[i]
    if not (key.private or key.domain_sql):
        return f"{left} = {right}"
    return _same_key(left, right, t.kind, _key_nullable(t, b))


def _histogram_parts(p: NoisyPrimitive, alias: str) -> tuple[str, str]:
    """A quantile primitive's cell index and its FILTER condition (" AND ..." or "")
    over the bounded rows aliased `alias`."""
    cell = p.sql[len("quantile_histogram("):-1]
    filt = ""
    if " FILTER (WHERE " in p.sql:
        cell, cond = cell.split(") FILTER (WHERE ")
        filt = f" AND {cond}"
    return cell.replace("b.", f"{alias}."), filt.replace("b.", f"{alias}.")


def _histogram_sql(p: NoisyPrimitive, source: str, where: str) -> str:
    """The JSON object {cell: count} of the bounded values of an ungrouped query."""
    hcell, hfilt = _histogram_parts(p, "h")
    inner_where = (where or " WHERE TRUE").replace("b.rn", "h.rn")
    src = source.replace(" AS b", " AS h")
    return (
        f"(SELECT coalesce(jsonb_object_agg(c.cell, c.n), '{{}}'::jsonb) FROM (SELECT {hcell} AS "
        f"cell, count(*) AS n FROM {src}{inner_where}{hfilt} AND {hcell} IS NOT NULL "
        "GROUP BY 1) AS c)"
    )


def _grouped_with_histograms(b: _Builder, keys: list[str], ctes: list[str], source: str, where: str) -> str:
    """A grouped sampling plan with quantile primitives: each group's histogram {cell:
    count} comes from one pass grouped by (keys, cell), joined to the other primitives by
    the keys. (A correlated subquery per group rescanned the bounded rows once per
    group: 2,400 dates took 4.6 s on TPC-H 0.1.)"""
    klist = ", ".join(f"b.{k}" for k in keys)
    others = [f"{p.sql} AS {p.name}" for p in b.primitives.values() if p.kind != PrimitiveKind.QUANTILE]
    ctes = [*ctes, f"m AS (SELECT {', '.join([klist, *others])} FROM {source}{where} GROUP BY {klist})"]
    joins = []
    for p in b.primitives.values():
        if p.kind != PrimitiveKind.QUANTILE:
            continue
        cell, filt = _histogram_parts(p, "b")
        ctes.append(
            f"h_{p.name} AS (SELECT {', '.join(keys)}, jsonb_object_agg(cell, n) AS v FROM "
            f"(SELECT {klist}, {cell} AS cell, count(*) AS n FROM {source}{where or ' WHERE TRUE'}{filt} "
            f"AND {cell} IS NOT NULL GROUP BY {klist}, {cell}) AS c GROUP BY {', '.join(keys)})"
        )
        on = " AND ".join(_key_match(b, j, f"m.{k}", f"h_{p.name}.{k}") for j, k in enumerate(keys))
        joins.append(f"LEFT JOIN h_{p.name} ON {on}")
    outer = [f"m.{k}" for k in keys] + [
        f"coalesce(h_{p.name}.v, '{{}}'::jsonb) AS {p.name}" if p.kind == PrimitiveKind.QUANTILE
        else f"m.{p.name}" for p in b.primitives.values()
    ]  # fmt: skip
    return f"WITH {', '.join(ctes)} SELECT {', '.join(outer)} FROM m {' '.join(joins)}"


def _literal(v: object, t: Typed) -> str:
    type_name = t.type_name if t.kind != "null" else "text"
    if v is None:
        return f"CAST(NULL AS {type_name})"
    if isinstance(v, bool):
        lit: exp.Expression = exp.Boolean(this=v)
    elif isinstance(v, (int, Decimal)):
        lit = exp.Literal.number(str(v))
    else:
        lit = exp.Literal.string(str(v))
    return exp.cast(lit, type_name).sql(dialect="postgres")
