"""From a checked SELECT to a DP plan: validate, resolve, bound, and emit SQL.

The pipeline is: resolve the FROM clause against the metadata; walk WHERE against the
row-expression allow-list; collect aggregates and group keys from SELECT, HAVING and
ORDER BY; choose the noisy primitives (sharing counts between aggregates); derive each
primitive's sensitivity from declared bounds and contribution limits; emit SQL that
clamps, bounds contributions per unit and aggregates exactly.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from sqlglot import exp

from rewriter.errors import (
    GROUPING_ERROR,
    UNDEFINED_COLUMN,
    UNDEFINED_TABLE,
    RewriteError,
    not_allowed,
    unsupported,
)
from rewriter.metadata import ColumnMeta, ColumnType, Metadata, TableMeta
from rewriter.plan import (
    AggFunc,
    AggregateSpec,
    DPPlan,
    GroupKey,
    NoisyPrimitive,
    OrderItem,
    OutputColumn,
    PrimitiveKind,
)
from rewriter.postprocess import infer_type
from rewriter.rowexpr import check_row_expr
from rewriter.sqltypes import pg_type_name, sql_literal

MAX_GROUPS = 100_000
ALIAS = "t"
AGG_PREFIX = "__a"
KEY_PREFIX = "__k"


@dataclass
class _Scope:
    table_name: str
    table: TableMeta
    names: set[str]  # names by which the FROM table may be referenced

    def column(self, col: exp.Column) -> tuple[str, ColumnMeta]:
        qual = col.table
        if qual and qual.lower() not in self.names:
            raise RewriteError(
                UNDEFINED_TABLE,
                f'missing FROM-clause entry for table "{qual}"',
                hint="qualify columns with the name or alias of the table in FROM",
            )
        name = col.name
        for cname, cmeta in self.table.columns.items():
            if cname.lower() == name.lower() if not _quoted(col) else cname == name:
                return cname, cmeta
        raise RewriteError(
            UNDEFINED_COLUMN,
            f'column "{name}" does not exist or is not declared in the metadata of '
            f'"{self.table_name}"',
            hint="declared columns: " + ", ".join(self.table.columns),
        )


def _quoted(col: exp.Column) -> bool:
    ident = col.this
    return isinstance(ident, exp.Identifier) and bool(ident.args.get("quoted"))


@dataclass
class _Builder:
    scope: _Scope
    meta: Metadata
    keys: list[GroupKey] = field(default_factory=list)
    key_exprs: list[str] = field(default_factory=list)  # column names of the keys
    aggregates: list[AggregateSpec] = field(default_factory=list)
    agg_index: dict[str, int] = field(default_factory=dict)
    primitives: dict[str, NoisyPrimitive] = field(default_factory=dict)
    value_sql: dict[str, str] = field(default_factory=dict)  # inner column -> SQL


def rewrite(tree: exp.Expression, meta: Metadata) -> DPPlan:
    """Turn one parsed statement into a DP plan, or raise a RewriteError saying why not."""
    select = _check_shape(tree)
    scope = _resolve_from(select, meta)
    b = _Builder(scope=scope, meta=meta)

    where = select.args.get("where")
    if where is not None:
        check_row_expr(where.this, scope.column, context="WHERE")

    _collect_group_keys(select, b)
    outputs = _collect_outputs(select, b)
    having = select.args.get("having")
    having_expr = _post_expr(having.this, b, "HAVING") if having is not None else None
    order_by = _collect_order(select, b, outputs)
    limit, offset = _limit_offset(select)
    _choose_sum_forms(b)

    if not b.aggregates:
        raise not_allowed(
            "the query reads private rows without aggregating them",
            "use aggregates such as COUNT(*), SUM(col), AVG(col), grouped by public keys",
        )
    if _group_count(b.keys) > MAX_GROUPS:
        raise unsupported(f"the GROUP BY keys have more than {MAX_GROUPS} combinations")

    sql = _emit_sql(select, b)
    canon = tree.sql(dialect="postgres", comments=False, normalize=True)
    return DPPlan(
        dataset=meta.dataset,
        tables=(scope.table_name,),
        sql=sql,
        keys=tuple(b.keys),
        primitives=tuple(b.primitives.values()),
        aggregates=tuple(b.aggregates),
        outputs=tuple(outputs),
        having=having_expr,
        order_by=tuple(order_by),
        limit=limit,
        offset=offset,
        fingerprint=hashlib.sha256(canon.encode()).hexdigest()[:32],
    )


# --- shape and FROM -------------------------------------------------------------------


def _check_shape(tree: exp.Expression) -> exp.Select:
    if isinstance(tree, (exp.Union, exp.Intersect, exp.Except)):
        raise unsupported("UNION, INTERSECT and EXCEPT are not supported on private tables")
    if not isinstance(tree, exp.Select):
        kind = type(tree).__name__.upper()
        raise not_allowed(
            f"{kind} statements are not allowed on private tables",
            "only SELECT queries with aggregates (COUNT, SUM, AVG) are allowed",
        )
    for arg, what in (
        ("with", "WITH (common table expressions)"),
        ("joins", "JOIN"),
        ("into", "SELECT INTO"),
        ("locks", "FOR UPDATE/SHARE"),
        ("windows", "WINDOW clauses"),
        ("distinct", "SELECT DISTINCT"),
        ("laterals", "LATERAL"),
        ("qualify", "QUALIFY"),
    ):
        if tree.args.get(arg):
            raise unsupported(f"{what} is not supported on private tables yet")
    if tree.find(exp.Window):
        raise not_allowed("window functions are not allowed on private tables")
    return tree


def _resolve_from(select: exp.Select, meta: Metadata) -> _Scope:
    from_ = select.args.get("from_") or select.args.get("from")
    if from_ is None:
        raise not_allowed("the query has no FROM clause over a private table")
    source = from_.this
    if not isinstance(source, exp.Table) or not source.name:
        raise unsupported(
            "subqueries and table functions in FROM are not supported yet",
            "select directly from a declared private table",
        )
    if source.args.get("catalog"):
        raise not_allowed("cross-database references are not allowed")
    found = meta.find(source.name, source.db or None)
    if found is None:
        raise RewriteError(
            UNDEFINED_TABLE,
            f'relation "{source.name}" does not exist or is not declared',
            hint="declared tables: " + ", ".join(sorted(meta.tables)),
        )
    tname, table = found
    if table.public:
        raise unsupported(f'"{tname}" is a public table; DP queries must read a private table')
    names = {tname.lower(), f"{table.schema_}.{tname}".lower()}
    if source.alias:
        names = {source.alias.lower()}
    return _Scope(table_name=tname, table=table, names=names)


# --- group keys ------------------------------------------------------------------------


def _collect_group_keys(select: exp.Select, b: _Builder) -> None:
    group = select.args.get("group")
    if group is None:
        return
    if group.args.get("grouping_sets") or group.args.get("cube") or group.args.get("rollup"):
        raise unsupported("GROUPING SETS, ROLLUP and CUBE are not supported yet")
    items = list(select.expressions)
    for g in group.expressions:
        g = _unalias_group_item(g, items)
        if not isinstance(g, exp.Column):
            raise unsupported(
                f"GROUP BY {g.sql(dialect='postgres')} is not supported yet",
                "group by a column that has a declared public domain",
            )
        cname, cmeta = b.scope.column(g)
        if cname == b.scope.table.privacy_unit:
            raise not_allowed(
                f'grouping by the privacy unit "{cname}" would release one group per unit',
                "group by a column with a declared public domain",
            )
        if cmeta.domain is None:
            raise unsupported(
                f'GROUP BY "{cname}": the column has no declared public domain',
                "group by a column whose metadata lists its public domain",
            )
        if cname in b.key_exprs:
            continue
        b.key_exprs.append(cname)
        b.keys.append(
            GroupKey(
                label=cname,
                column=cname,
                type_name=pg_type_name(cmeta.type),
                domain=tuple(cmeta.domain),
            )
        )


def _unalias_group_item(g: exp.Expression, items: list[exp.Expression]) -> exp.Expression:
    # PostgreSQL allows GROUP BY 1 (position) and GROUP BY <output alias>.
    if isinstance(g, exp.Literal) and not g.is_string:
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


# --- outputs and post-processing ---------------------------------------------------------


def _collect_outputs(select: exp.Select, b: _Builder) -> list[OutputColumn]:
    outputs = []
    for item in select.expressions:
        if isinstance(item, exp.Star) or (isinstance(item, exp.Column) and item.is_star):
            raise not_allowed(
                "SELECT * would return private rows",
                "select aggregates such as COUNT(*), SUM(col), AVG(col), grouped by public keys",
            )
        name = item.alias_or_name if isinstance(item, (exp.Alias, exp.Column)) else None
        body = item.this if isinstance(item, exp.Alias) else item
        post = _post_expr(body, b, "SELECT")
        if name is None:
            name = _default_name(body)
        outputs.append(OutputColumn(name=name, type_name=infer_type(post, _types(b)), expr=post))
    return outputs


def _default_name(body: exp.Expression) -> str:
    # PostgreSQL names an unaliased aggregate column after its function.
    if isinstance(body, exp.AggFunc):
        return body.key.lower() if body.key != "count" else "count"
    if isinstance(body, exp.Anonymous):
        return str(body.this).lower()
    if isinstance(body, exp.Func):
        return body.sql_name().lower()
    return "?column?"


def _types(b: _Builder) -> dict[str, str]:
    types = {f"{AGG_PREFIX}{i}": a.result_type for i, a in enumerate(b.aggregates)}
    types.update({f"{KEY_PREFIX}{i}": k.type_name for i, k in enumerate(b.keys)})
    return types


_POST_NODES: tuple[type[exp.Expression], ...] = (
    exp.Literal,
    exp.Null,
    exp.Boolean,
    exp.Paren,
    exp.Add,
    exp.Sub,
    exp.Mul,
    exp.Div,
    exp.Neg,
    exp.Mod,
    exp.EQ,
    exp.NEQ,
    exp.GT,
    exp.GTE,
    exp.LT,
    exp.LTE,
    exp.And,
    exp.Or,
    exp.Not,
    exp.Is,
    exp.Round,
    exp.Abs,
    exp.Coalesce,
    exp.Greatest,
    exp.Least,
    exp.Case,
    exp.If,
    exp.Cast,
    exp.DataType,
    exp.Ceil,
    exp.Floor,
    exp.Sqrt,
    exp.Column,
    exp.Identifier,
    exp.Between,
    exp.In,
)


def _post_expr(node: exp.Expression, b: _Builder, clause: str) -> exp.Expression:
    """Copy `node`, replacing aggregates and group keys by placeholders; check the rest."""

    def replace(n: exp.Expression) -> exp.Expression:
        if isinstance(n, exp.AggFunc):
            return exp.column(f"{AGG_PREFIX}{_register_aggregate(n, b)}")
        if isinstance(n, exp.Column):
            if n.is_star:
                raise not_allowed("* is only allowed inside COUNT(*)")
            cname, _ = b.scope.column(n)
            if cname not in b.key_exprs:
                raise RewriteError(
                    GROUPING_ERROR,
                    f'column "{cname}" must appear in the GROUP BY clause or be used in an '
                    "aggregate function",
                    "private columns can only be read through aggregates",
                )
            return exp.column(f"{KEY_PREFIX}{b.key_exprs.index(cname)}")
        return n

    out = node.copy().transform(replace, copy=False)
    for n in out.walk():
        if not isinstance(n, _POST_NODES):
            raise unsupported(
                f"{_node_name(n)} is not supported in {clause} over aggregates",
                "use arithmetic, ROUND, COALESCE, CASE and comparisons over aggregates",
            )
    return out


def _node_name(n: exp.Expression) -> str:
    if isinstance(n, exp.Anonymous):
        return f"the function {str(n.this).upper()}()"
    if isinstance(n, exp.Func):
        return f"the function {n.sql_name().upper()}()"
    return f"the construct {type(n).__name__.upper()}"


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
            OrderItem(expr=expr, descending=desc, nulls_first=bool(nulls_first) if nulls_first is not None else desc)
        )
    return items


def _limit_offset(select: exp.Select) -> tuple[int | None, int]:
    limit = None
    offset = 0
    lim = select.args.get("limit")
    if lim is not None:
        limit = _nonneg_int(lim.expression, "LIMIT")
    off = select.args.get("offset")
    if off is not None:
        offset = _nonneg_int(off.expression, "OFFSET")
    return limit, offset


def _nonneg_int(node: exp.Expression | None, what: str) -> int:
    if isinstance(node, exp.Literal) and not node.is_string and node.this.isdigit():
        return int(node.this)
    raise unsupported(f"{what} must be a non-negative integer literal")


# --- aggregates and primitives -----------------------------------------------------------


def _register_aggregate(node: exp.AggFunc, b: _Builder) -> int:
    key = node.sql(dialect="postgres", comments=False, normalize=True)
    if key in b.agg_index:
        return b.agg_index[key]
    spec = _aggregate_spec(node, b)
    b.aggregates.append(spec)
    b.agg_index[key] = len(b.aggregates) - 1
    return b.agg_index[key]


def _aggregate_spec(node: exp.AggFunc, b: _Builder) -> AggregateSpec:
    label = node.sql(dialect="postgres", comments=False)
    if node.find(exp.Distinct):
        raise unsupported(f"{label}: DISTINCT inside aggregates is not supported yet")
    if isinstance(node, exp.Count):
        arg = node.this
        if arg is None or isinstance(arg, exp.Star):
            return AggregateSpec(AggFunc.COUNT, label, count=_count_primitive(None, b), sum=None)
        col, cmeta = _aggregate_column(arg, b, label)
        counted = None if not cmeta.nullable else col
        return AggregateSpec(AggFunc.COUNT, label, count=_count_primitive(counted, b), sum=None)
    if isinstance(node, (exp.Sum, exp.Avg)):
        col, cmeta = _aggregate_column(node.this, b, label)
        if not cmeta.type.is_numeric:
            raise RewriteError("42883", f"{label}: cannot sum a column of type {cmeta.type}")
        if not cmeta.bounded:
            raise unsupported(
                f'{label}: the column "{col}" has no declared bounds',
                "declare lower and upper bounds for the column in the metadata",
            )
        lo, hi, step = _steps(cmeta)
        counted = None if not cmeta.nullable else col
        b.value_sql[f"v_{col}"] = _qcol(col)
        b.value_sql[f"x_{col}"] = _fixed_point_sql(col, lo, hi, step)
        if isinstance(node, exp.Avg):
            rtype = "float8" if cmeta.type == ColumnType.FLOAT else "numeric"
            count = _count_primitive(counted, b)
            func = AggFunc.AVG
        else:
            rtype = "int8" if cmeta.type in (ColumnType.INTEGER, ColumnType.SMALLINT) else (
                "float8" if cmeta.type == ColumnType.FLOAT else "numeric"
            )
            count = None  # decided in _choose_sum_forms, once every aggregate is known
            func = AggFunc.SUM
        return AggregateSpec(
            func, label, count=count, sum=f"s_{col}", step=step, lower=lo, upper=hi,
            midpoint=(lo + hi) // 2, result_type=rtype,
        )  # fmt: skip
    name = node.sql_name() if isinstance(node, exp.Func) else type(node).__name__
    raise unsupported(
        f"the aggregate {name.upper()}() is not supported yet",
        "supported aggregates: COUNT(*), COUNT(col), SUM(col), AVG(col)",
    )


def _aggregate_column(arg: exp.Expression, b: _Builder, label: str) -> tuple[str, ColumnMeta]:
    if not isinstance(arg, exp.Column):
        raise unsupported(
            f"{label}: expressions inside aggregates are not supported yet",
            "aggregate a declared column directly",
        )
    return b.scope.column(arg)


def _steps(cmeta: ColumnMeta) -> tuple[int, int, Decimal]:
    """Bounds in fixed-point steps, widened outwards so the declared range is covered."""
    step = cmeta.step
    assert cmeta.lower is not None and cmeta.upper is not None
    lo = int((cmeta.lower / step).to_integral_value(rounding=ROUND_FLOOR))
    hi = int((cmeta.upper / step).to_integral_value(rounding=ROUND_CEILING))
    return lo, hi, step


def _rows_per_unit(b: _Builder) -> int:
    t = b.scope.table
    return 1 if t.row_level else t.max_rows


def _count_primitive(column: str | None, b: _Builder) -> str:
    name = "n_rows" if column is None else f"n_{column}"
    if name not in b.primitives:
        if column is not None:
            b.value_sql[f"v_{column}"] = _qcol(column)
        b.primitives[name] = NoisyPrimitive(
            name=name,
            kind=PrimitiveKind.COUNT,
            sensitivity=_rows_per_unit(b),
            label="COUNT(*)" if column is None else f"COUNT({column})",
        )
    return name


def _choose_sum_forms(b: _Builder) -> None:
    """Pick, per summed column, a plain sum or a midpoint-normalized sum plus a count.

    A normalized sum has half the sensitivity of a plain one when the bounds straddle
    no zero, and with the count it yields SUM, AVG and COUNT together. When no count
    of the column is needed anyway, a plain sum at the full share of epsilon is the
    more accurate release, so that is used instead.
    """
    rows = _rows_per_unit(b)
    specs = []
    for spec in b.aggregates:
        if spec.sum is None:
            specs.append(spec)
            continue
        col = spec.sum[2:]
        cmeta = b.scope.table.columns[col]
        count_name = "n_rows" if not cmeta.nullable else f"n_{col}"
        lo, hi, mid = spec.lower, spec.upper, spec.midpoint
        if count_name in b.primitives:
            if spec.count is None:
                spec = replace(spec, count=count_name)
            b.primitives[spec.sum] = NoisyPrimitive(
                name=spec.sum,
                kind=PrimitiveKind.NORMALIZED_SUM,
                sensitivity=rows * max(hi - mid, mid - lo),
                label=f"SUM({col})",
            )
        else:
            spec = replace(spec, midpoint=0)
            b.primitives[spec.sum] = NoisyPrimitive(
                name=spec.sum,
                kind=PrimitiveKind.SUM,
                sensitivity=rows * max(abs(lo), abs(hi)),
                label=f"SUM({col})",
            )
        specs.append(spec)
    b.aggregates[:] = specs


def _fixed_point_sql(column: str, lo: int, hi: int, step: Decimal) -> str:
    """The value clamped to [lo, hi] and rounded to a whole number of steps.

    NULL stays NULL (a CASE, not GREATEST/LEAST, which would turn NULL into a bound);
    NaN compares above every number in PostgreSQL and infinities beyond every bound, so
    they clamp to a bound and never reach a sampler.
    """
    scaled = f"({_qcol(column)}::numeric / {step})" if step != 1 else f"{_qcol(column)}::numeric"
    return (
        f"(CASE WHEN {scaled} < {lo} THEN {lo} WHEN {scaled} > {hi} THEN {hi} "
        f"ELSE round({scaled}) END)::bigint"
    )


def _qcol(column: str) -> str:
    return f'{ALIAS}."{column}"'


# --- SQL emission ------------------------------------------------------------------------


def _emit_sql(select: exp.Select, b: _Builder) -> str:
    table = b.scope.table
    src = f'"{table.schema_}"."{b.scope.table_name}" AS {ALIAS}'
    joins = []
    inner_cols = []
    for i, key in enumerate(b.keys):
        cmeta = table.columns[key.column]
        values = ", ".join(
            f"({j}, {sql_literal(v, cmeta.type)})" for j, v in enumerate(key.domain)
        )
        op = "IS NOT DISTINCT FROM" if None in key.domain else "="
        joins.append(f"JOIN (VALUES {values}) AS d{i}(i, v) ON {_qcol(key.column)} {op} d{i}.v")
        inner_cols.append(f"d{i}.i AS k{i}")
    for name, sql in b.value_sql.items():
        inner_cols.append(f"{sql} AS {name}")
    where = select.args.get("where")
    conds = []
    if where is not None:
        conds.append(_render_row_expr(where.this, b))
    if not table.row_level:
        inner_cols.append(
            f"row_number() OVER (PARTITION BY {_qcol(table.privacy_unit or '')} "
            "ORDER BY random()) AS rn"
        )
    inner = f"SELECT {', '.join(inner_cols) or '1 AS one'} FROM {src}"
    if joins:
        inner += " " + " ".join(joins)
    if conds:
        inner += " WHERE " + " AND ".join(conds)

    outer_cols = [f"b.k{i}" for i in range(len(b.keys))]
    for p in b.primitives.values():
        if p.kind == PrimitiveKind.COUNT:
            what = "*" if p.name == "n_rows" else f"b.v_{p.name[2:]}"
            outer_cols.append(f"count({what}) AS {p.name}")
        else:
            col = p.name[2:]
            mid = next(a.midpoint for a in b.aggregates if a.sum == p.name)
            shift = f" - {mid}" if p.kind == PrimitiveKind.NORMALIZED_SUM and mid else ""
            outer_cols.append(f"coalesce(sum(b.x_{col}{shift}), 0) AS {p.name}")
    sql = f"SELECT {', '.join(outer_cols)} FROM ({inner}) AS b"
    if not table.row_level:
        sql += f" WHERE b.rn <= {table.max_rows}"
    if b.keys:
        sql += " GROUP BY " + ", ".join(f"b.k{i}" for i in range(len(b.keys)))
    return sql


def _render_row_expr(node: exp.Expression, b: _Builder) -> str:
    def qualify(n: exp.Expression) -> exp.Expression:
        if isinstance(n, exp.Column):
            cname, cmeta = b.scope.column(n)
            col = exp.column(cname, table=ALIAS, quoted=True)
            if cmeta.type.is_integer and isinstance(n.parent, (exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Neg, exp.Mod)):
                # Integer arithmetic can overflow for some rows only; numeric cannot.
                return exp.cast(col, "numeric")
            return col
        return n

    rendered = node.copy().transform(qualify, copy=False)
    return "(" + rendered.sql(dialect="postgres", comments=False) + ")"
