"""Derived tables grouped by the privacy unit: one row per unit, read like a table.

Grouped instead by a key that decides the unit (lineitem's `l_orderkey`, orders'
`o_orderkey`: one row per order), the rows are grouped by key and unit, carry their unit,
and are a private table whose units may have several rows: the outer query bounds them
to the key's table's `max_rows` (orders: 8), as it would that table's rows.

`SELECT AVG(n) FROM (SELECT o_custkey, COUNT(*) AS n FROM orders GROUP BY o_custkey) t`
asks for a statistic over units. Grouped by the unit, the derived table has exactly one
row per unit, so adding or removing a unit adds or removes one of its rows: it is a
private table whose privacy unit is unique, and the outer query needs no contribution
bounding. What one unit can put in its row is bounded instead: every per-unit
aggregate is clamped to the range that `max_rows` rows of declared values can reach
(`COUNT` to [0, max_rows], `SUM(x)` to max_rows times x's bounds; `AVG`, `MIN` and
`MAX` stay within x's bounds), and expressions over them are analyzed like any row
expression. The clamp is a declaration, never read from the data.

Supported inside: a FROM clause and WHERE as anywhere else, `GROUP BY` the privacy unit
(by name, alias or position), the unit and expressions over `COUNT`, `SUM`, `AVG`,
`MIN`, `MAX` in the select list, and `HAVING` (it keeps or drops a unit's one row).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

from sqlglot import exp

from rewriter.colnames import output_name
from rewriter.errors import RewriteError, not_allowed, unsupported
from rewriter.metadata import ColumnMeta, ColumnType, TableMeta
from rewriter.rowexpr import NUMERIC_KINDS, Analyzer, Typed, describe

if TYPE_CHECKING:
    from rewriter.relation import Relation, Scope

GROUPING_ERROR = "42803"
_HINT = ("group the derived table by the privacy unit, e.g. (SELECT o_custkey, COUNT(*) AS n FROM orders "
         "GROUP BY o_custkey), or by a key that decides it (SELECT l_orderkey, COUNT(*) FROM lineitem GROUP BY l_orderkey)")
# The unit column of a derived table grouped by a key that decides the unit.
_SUB_UNIT = "c_unit"
_MAX_DOMAIN = 1000
_AVG_STEP = Decimal("0.000001")  # AVG per unit is rounded to this step so it sums exactly
_TYPES = {"int": ColumnType.BIGINT, "numeric": ColumnType.NUMERIC}
_UNIT_TYPES = {"int4": ColumnType.INTEGER, "int8": ColumnType.BIGINT, "int2": ColumnType.SMALLINT}


@dataclass(frozen=True)
class PerUnitTable:
    """A derived table with one row per unit: its SQL and its metadata as a table."""

    sql: str
    table: TableMeta
    # The analyst's column names -> the table's own (c0, c1, ...): an output name such as
    # "?column?" or "Orders per customer" is no identifier the metadata model accepts.
    names: dict[str, str]


def per_unit_table(body: exp.Select, rel: Relation, scope: Scope) -> PerUnitTable:
    """The per-unit table of `body`, whose FROM and WHERE are already resolved into
    `rel` and `scope` (a relation of its own, units bound)."""
    for arg, what in (("distinct", "DISTINCT"), ("limit", "LIMIT"), ("offset", "OFFSET"),
                      ("windows", "WINDOW")):  # fmt: skip
        if body.args.get(arg):
            raise unsupported(f"{what} in a derived table grouped by the privacy unit is not supported")
    if rel.unit is None:
        raise unsupported("a derived table over a table without a privacy unit cannot be grouped",
                          "each row is its own unit there: aggregate in the outer query")  # fmt: skip
    items = list(body.expressions)
    unit, per = _unit_key(body, items, scope, rel)
    rows = rel.max_rows
    analyzer = Analyzer(lambda c: _lookup(scope, c), "a derived table")
    columns: dict[str, ColumnMeta] = {}
    names: dict[str, str] = {}
    select_sql: list[str] = []
    unit_name: str | None = None
    for item in items:
        body_e = item.this if isinstance(item, exp.Alias) else item
        name = output_name(item).lower()
        if name in names:
            raise RewriteError("42701", f'the derived table has two columns named "{name}"')
        internal = names[name] = f"c{len(names)}"
        if not any(isinstance(n, exp.AggFunc) for n in body_e.walk()):
            t = analyzer.analyze(body_e)
            if not _is_unit(t, unit):
                raise RewriteError(GROUPING_ERROR, f'column "{name}" of the derived table must be '
                                   "the column it is grouped by, or an aggregate", _HINT)  # fmt: skip
            unit_name = internal
            columns[internal] = ColumnMeta(type=_unit_type(t), nullable=False, unique=per is None)
            select_sql.append(f"{t.sql.sql(dialect='postgres')} AS {internal}")
            continue
        t = _aggregate_expression(body_e, analyzer, rows, unit)
        if t.kind not in NUMERIC_KINDS or not t.bounded:
            raise unsupported(f'column "{name}" of the derived table has no finite bounds',
                              "aggregate bounded columns, or clamp with LEAST/GREATEST")  # fmt: skip
        kind = "numeric" if t.kind == "float" else t.kind
        step = t.step if t.step is not None else _AVG_STEP
        sql = t.sql if t.step is not None else exp.Round(this=t.sql, decimals=exp.Literal.number(6))
        # A small integer range (a count per unit) is a public domain: GROUP BY it needs
        # no partition selection, and empty groups are released too.
        small = kind == "int" and t.hi - t.lo <= _MAX_DOMAIN  # type: ignore[operator]
        domain = [int(v) for v in range(int(t.lo), int(t.hi) + 1)] if small else None  # type: ignore[arg-type]
        columns[internal] = ColumnMeta(type=_TYPES[kind], lower=t.lo, upper=t.hi,
                                   precision=step if kind == "numeric" else None,
                                   nullable=t.nullable, domain=domain)  # fmt: skip
        select_sql.append(f"{sql.sql(dialect='postgres')} AS {internal}")
    if unit_name is None:
        raise unsupported("a derived table grouped by the privacy unit must select the unit",
                          "select it so the outer query can join on it, e.g. SELECT o_custkey, COUNT(*) ...")  # fmt: skip
    group_by = unit.sql.sql(dialect="postgres")
    if per is not None:
        # Grouped by a key each unit holds several of (an order): the rows carry their
        # unit, and a unit has at most as many rows as it may have rows of that key's table.
        assert rel.unit is not None
        unit_sql = rel.unit.sql(dialect="postgres")
        select_sql.append(f"{unit_sql} AS {_SUB_UNIT}")
        columns[_SUB_UNIT] = ColumnMeta(type=_unit_column_type(rel), nullable=True)
        group_by += f", {unit_sql}"
    where = " AND ".join(f"({c.sql(dialect='postgres')})" for c in rel.conditions)
    sql = f"SELECT {', '.join(select_sql)} FROM {rel.from_sql()}"
    if where:
        sql += f" WHERE {where}"
    sql += f" GROUP BY {group_by}"
    having = body.args.get("having")
    if having is not None:
        pred = Analyzer(lambda c: _lookup(scope, c), "HAVING")
        sql += f" HAVING {_having(having.this, pred, rows).sql.sql(dialect='postgres')}"
    if per is None:
        table = TableMeta(privacy_unit=unit_name, max_rows=1, max_groups=1, columns=columns)
    else:
        keyed = per[1]
        table = TableMeta(privacy_unit=_SUB_UNIT, max_rows=keyed.max_rows, max_groups=keyed.max_groups,
                          columns=columns)  # fmt: skip
    return PerUnitTable(sql=sql, table=table, names=names)


def _lookup(scope: Scope, col: exp.Column) -> Typed:
    from rewriter.relation import lookup  # relation imports this module

    return lookup(scope, col)


def _unit_key(body: exp.Select, items: list[exp.Expression], scope: Scope,
              rel: Relation) -> tuple[Typed, tuple[str, TableMeta] | None]:  # fmt: skip
    """The one GROUP BY item: the relation's privacy unit (then None), or a key that
    determines it (then the key's kind and the table with one row per key value)."""
    group = body.args.get("group")
    parts = list(group.expressions) if group is not None else []
    if group is not None and any(group.args.get(k) for k in ("rollup", "cube", "grouping_sets")):
        raise unsupported("GROUPING SETS, ROLLUP and CUBE are not supported in a derived table")
    if len(parts) != 1:
        raise unsupported("a derived table may be grouped by the privacy unit only", _HINT)
    g = parts[0]
    if isinstance(g, exp.Literal) and not g.is_string and not g.this.isdigit():
        raise RewriteError("42601", f"non-integer constant in GROUP BY: {g.this}")
    if isinstance(g, exp.Literal) and not g.is_string and 1 <= int(g.this) <= len(items):
        g = items[int(g.this) - 1]
    elif isinstance(g, exp.Column) and not g.table:
        for it in items:
            if isinstance(it, exp.Alias) and it.alias.lower() == g.name.lower():
                g = it
    g = g.this if isinstance(g, exp.Alias) else g
    t = Analyzer(lambda c: _lookup(scope, c), "GROUP BY").analyze(g)
    if t.unit:
        return t, None
    keyed = _unit_determining(t, rel)
    if keyed is None:
        raise not_allowed("a derived table may be grouped by the privacy unit, or by a key that "
                          "decides it (a foreign key on its path, a declared unique column): other "
                          "groups would mix the rows of several units", _HINT)  # fmt: skip
    return t, (t.kind, keyed)


def _unit_column_type(rel: Relation) -> ColumnType:
    """The declared type of the relation's unit column."""
    unit = rel.unit
    if isinstance(unit, exp.Column):
        src = next((s for s in rel.sources if s.alias == unit.table), None)
        if src is not None and unit.name in src.table.columns:
            return src.table.columns[unit.name].type
    return ColumnType.TEXT


def _unit_determining(t: Typed, rel: Relation) -> TableMeta | None:
    """The table with one row per value of `t` when `t` is a bare column whose value
    decides the row's unit: the first foreign key of its table's unit path (lineitem's
    `l_orderkey`: orders) or a declared unique column (`o_orderkey`: orders)."""
    if not isinstance(t.sql, exp.Column) or len(t.columns) != 1:
        return None
    alias, col = next(iter(t.columns))
    src = next((s for s in rel.sources if s.alias == alias and s.subquery is None), None)
    if src is None or src.table.public:
        return None
    # (Privacy does not rest on this: the rows are grouped by key and unit, so none
    # mixes units, and the outer query bounds each unit's rows. It makes the grouping
    # the analyst's: one row per key.)
    if src.table.columns[col].unique:
        return src.table
    path = src.table.unit_path
    if path and path[0].column == col:
        return rel.meta.tables.get(path[0].table)
    return None


def _unit_type(t: Typed) -> ColumnType:
    """The declared type of the unit column (integers keep their width; else text)."""
    if t.kind == "int":
        return _UNIT_TYPES.get(t.pg_type or "", ColumnType.BIGINT)
    return ColumnType.TEXT


def _is_unit(t: Typed, unit: Typed) -> bool:
    """`t` is the column the derived table is grouped by."""
    return isinstance(t.sql, exp.Column) and t.columns == unit.columns


def _swap_aggregates(e: exp.Expression, analyzer: Analyzer, rows: int) -> tuple[exp.Expression, dict[str, Typed]]:
    """`e` with each aggregate replaced by a placeholder column, and the placeholders'
    Typed (each per-unit aggregate clamped to what `rows` rows can reach)."""
    placeholders: dict[str, Typed] = {}

    def swap(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.AggFunc):
            name = f"__agg{len(placeholders)}"
            placeholders[name] = _aggregate(node, analyzer, rows)
            return exp.column(name)
        return node

    return e.copy().transform(swap), placeholders


def _aggregate_expression(e: exp.Expression, analyzer: Analyzer, rows: int, key: Typed) -> Typed:
    """A select item over per-unit aggregates (and the unit's own columns)."""
    tree, placeholders = _swap_aggregates(e, analyzer, rows)

    def resolve(c: exp.Column) -> Typed:
        if c.name in placeholders and not c.table:
            return placeholders[c.name]
        t = analyzer.resolve(c)
        if not _is_unit(t, key):  # outside an aggregate only the column it is grouped by may be read
            raise RewriteError(GROUPING_ERROR, f'column "{c.name}" must appear in the GROUP BY clause '
                               "or be used in an aggregate function")  # fmt: skip
        return t

    return Analyzer(resolve, "a derived table").analyze(tree)


def _having(cond: exp.Expression, analyzer: Analyzer, rows: int) -> Typed:
    """HAVING over per-unit aggregates (it keeps or drops the unit's one row)."""
    tree, placeholders = _swap_aggregates(cond, analyzer, rows)

    def resolve(c: exp.Column) -> Typed:
        if c.name in placeholders and not c.table:
            return placeholders[c.name]
        raise RewriteError(GROUPING_ERROR, f'column "{c.name}" must appear in the GROUP BY clause '
                           "or be used in an aggregate function")  # fmt: skip

    return Analyzer(resolve, "HAVING").predicate(tree)


def _aggregate(node: exp.AggFunc, analyzer: Analyzer, rows: int) -> Typed:
    """One per-unit aggregate, clamped: its SQL, type and bounds."""
    r = Decimal(rows)
    arg = node.this
    distinct = isinstance(arg, exp.Distinct)
    if distinct:
        assert isinstance(arg, exp.Distinct)
        if len(arg.expressions) != 1:
            raise unsupported("COUNT(DISTINCT a, b) is not supported")
        arg = arg.expressions[0]
    if isinstance(node, exp.Count):
        if isinstance(arg, exp.Star) or arg is None:
            inner = "count(*)"
        else:
            t = analyzer.analyze(arg)
            inner = f"count({'DISTINCT ' if distinct else ''}{t.sql.sql(dialect='postgres')})"
        sql = exp.maybe_parse(f"least({inner}, {rows})", dialect="postgres")
        return Typed(sql, "int", Decimal(0), r, None, False, step=Decimal(1), pg_type="int8")
    if distinct:
        raise unsupported(f"{node.sql_name()}(DISTINCT ...) is not supported in a derived table")
    if not isinstance(node, (exp.Sum, exp.Avg, exp.Min, exp.Max)):
        raise unsupported(f"{describe(node)} is not supported in a derived table",
                          "use COUNT, SUM, AVG, MIN or MAX per unit")  # fmt: skip
    t = analyzer.analyze(arg)
    if t.kind not in NUMERIC_KINDS or not t.bounded:
        raise unsupported(f"{node.sql_name()}() in a derived table needs a value with declared bounds")
    assert t.lo is not None and t.hi is not None
    value = t.operand.sql(dialect="postgres")
    kind = "numeric" if t.kind == "float" else t.kind
    if isinstance(node, exp.Sum):
        lo, hi = r * min(t.lo, Decimal(0)), r * max(t.hi, Decimal(0))
        cast = "bigint" if kind == "int" else "numeric"
        sql = f"greatest(least(sum({value})::{cast}, {hi}), {lo})"
        return Typed(exp.maybe_parse(sql, dialect="postgres"), kind, lo, hi, None, True, step=t.step,
                     pg_type="int8" if kind == "int" else None)  # fmt: skip
    if isinstance(node, exp.Avg):  # numeric, its step unknown: rounded by the caller
        sql = f"avg({value})::numeric"
        return Typed(exp.maybe_parse(sql, dialect="postgres"), "numeric", t.lo, t.hi, None, True)
    fn = "min" if isinstance(node, exp.Min) else "max"
    sql = f"{fn}({value})::{'bigint' if kind == 'int' else 'numeric'}"
    return Typed(exp.maybe_parse(sql, dialect="postgres"), kind, t.lo, t.hi, None, True, step=t.step,
                 pg_type="int8" if kind == "int" else None)  # fmt: skip
