"""`[NOT] EXISTS (...)` and `x [NOT] IN (SELECT y ...)` in WHERE: semi-joins kept inside one unit.

Contribution bounding assumes a row's presence depends on its own unit's data only. A
subquery over a private table keeps that when the match itself ties the subquery's
rows to the outer row's unit:
- on the privacy unit: `o_custkey IN (SELECT c_custkey FROM customer WHERE ...)`;
- on the foreign key that gives the subquery's table its unit:
  `EXISTS (SELECT 1 FROM lineitem WHERE l_orderkey = o_orderkey AND ...)` (TPC-H Q4);
- on the foreign key that gives the outer row its unit, into the table it references:
  `l_orderkey IN (SELECT o_orderkey FROM orders WHERE ...)`, or on that same foreign key
  of both (TPC-H Q21: `l2.l_orderkey = l1.l_orderkey`, line items of one order).
Any match against a public table is fine. Anything else (a match on another column)
would let one unit's rows decide whether other units' rows count, and is refused.

The subquery reads one declared table (no joins, grouping or limits); its conditions
are analyzed like any WHERE clause, and it is regenerated with its own alias (s0,
s1, ...), so the SQL PostgreSQL runs is the checked one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from decimal import Decimal
from typing import TYPE_CHECKING

from sqlglot import exp

from rewriter.commajoin import conjuncts
from rewriter.errors import GROUPING_ERROR, UNDEFINED_TABLE, RewriteError, not_allowed, unsupported
from rewriter.metadata import Metadata, TableMeta
from rewriter.rowexpr import (
    INT2,
    INT4,
    INT8_MAX,
    INT8_MIN,
    NUMERIC_KINDS,
    Analyzer,
    Typed,
    describe,
)

if TYPE_CHECKING:
    from rewriter.relation import Relation, Scope

_HINT = ("match the subquery on the privacy unit (o_custkey IN (SELECT c_custkey ...)) or on "
         "the foreign key that gives its table a unit (EXISTS (SELECT 1 FROM lineitem WHERE "
         "l_orderkey = o_orderkey ...))")  # fmt: skip
_SHAPE_ARGS = ("joins", "group", "having", "distinct", "limit", "offset", "order", "windows", "with", "with_")


class SemiJoins:
    """Analyzes EXISTS and IN (subquery) for one query's WHERE clause."""

    def __init__(self, meta: Metadata, rel: Relation, outer: Callable[[exp.Column], Typed],
                 *, public_only: bool = False, aliases: list[int] | None = None) -> None:  # fmt: skip
        self.meta = meta
        self.rel = rel
        self.outer = outer
        # Inside a subquery, further subqueries may read public tables only: a public
        # row's presence depends on no unit, so it filters the subquery's rows as a
        # literal list would (`l_suppkey IN (SELECT s_suppkey FROM supplier WHERE
        # s_nationkey IN (SELECT n_nationkey FROM nation WHERE ...))`).
        self.public_only = public_only
        # The subqueries' aliases (s0, s1, ...), counted across nesting levels.
        self.aliases = aliases if aliases is not None else [0]

    def _nested(self, resolve: Callable[[exp.Column], Typed]) -> SemiJoins:
        """What analyzes the subqueries of a subquery whose columns `resolve` reads."""
        return SemiJoins(self.meta, self.rel, resolve, public_only=True, aliases=self.aliases)

    def __call__(self, node: exp.Expression, analyzer: Analyzer) -> Typed:
        """The Typed of an EXISTS or IN (subquery) node of `analyzer`'s clause."""
        if isinstance(node, exp.Exists):
            return self._exists(node)
        assert isinstance(node, exp.In)
        return self._in(node, analyzer)

    def _in(self, node: exp.In, analyzer: Analyzer) -> Typed:
        query = node.args["query"]
        select = query.this if isinstance(query, exp.Subquery) else query
        grouped = isinstance(select, exp.Select) and bool(select.args.get("group") or select.args.get("having"))
        distinct = isinstance(select, exp.Select) and select.args.get("distinct") is not None
        if isinstance(select, exp.Select) and (grouped or distinct):
            if distinct and select.args["distinct"].args.get("on") is not None:
                raise unsupported("DISTINCT ON in a subquery is not supported", _HINT)
            # `IN (SELECT DISTINCT y ...)` means `IN (SELECT y ...)`; the grouping is
            # checked below, once y is known.
            select = select.copy()
            for arg in ("group", "having", "distinct"):
                select.set(arg, None)
            original = query.this if isinstance(query, exp.Subquery) else query
        alias, table, inner = self._table(select)
        if len(select.expressions) != 1:
            raise RewriteError("42601", "subquery has too many columns")
        x = analyzer.analyze(node.this)
        inner_analyzer = Analyzer(inner, "a subquery", self._nested(inner))
        item = select.expressions[0].unalias()
        aggregate = table.meta.public and not grouped and item.find(exp.AggFunc) is not None
        if aggregate:
            # An aggregate of a public table: one public value (`IN (SELECT MIN(s_suppkey) ...)`).
            y = self._aggregate(item, inner_analyzer)
        else:
            y = inner_analyzer.analyze(item)
        having = self._grouping(original, y, inner) if grouped else None
        # A type mismatch (`(a IN (1)) IN (SELECT key ...)`) would fail in PostgreSQL for
        # every row alike: refused here, before anything is charged.
        analyzer.comparable(x, y, "IN (subquery)")
        where = select.args.get("where")
        cond = inner_analyzer.predicate(where.this) if where is not None else None
        if not self._unit_local(x, y, table):
            raise not_allowed(f'IN (SELECT ... FROM "{table.name}") must match on the privacy unit', _HINT)
        cond_sql = cond.sql if cond is not None else None
        if y.nullable and not aggregate:
            # One NULL among the subquery's values makes `x NOT IN (...)` NULL for every
            # row not found, whichever unit that NULL belongs to: NULLs are left out (so
            # a row not found is simply not in it; PostgreSQL would give NULL).
            not_null = exp.Not(this=exp.Is(this=y.sql.copy(), expression=exp.Null()))
            cond_sql = not_null if cond_sql is None else exp.and_(exp.Paren(this=cond_sql), not_null)
        sub = self._select(y.sql, alias, table, cond_sql)
        if grouped:
            sub.set("group", exp.Group(expressions=[y.sql.copy()]))
            if having is not None:
                sub.set("having", exp.Having(this=having))
        return Typed(exp.In(this=x.sql, query=exp.Subquery(this=sub)), "bool", domain=(True, False, None),
                     columns=x.columns)  # fmt: skip

    def scalar(self, node: exp.Subquery) -> Typed:
        """A scalar subquery over one public table, a value the same for every row
        (`c_acctbal > (SELECT MAX(s_acctbal) FROM supplier)`, `n_regionkey = (SELECT
        r_regionkey FROM region WHERE r_regionkey = 3)`), kept in the SQL as PostgreSQL's
        own scalar subquery (NULL when no row matches).

        It must return one row at most: an aggregate, or a lookup that pins a declared
        unique column to a constant. PostgreSQL runs such a subquery the first time a row
        reaches it, so its error for several rows (`21000`) would come only when some
        private row passed the conditions before it: an answer-or-error oracle."""
        select = node.this
        alias, table, inner = self._table(select)
        if not table.meta.public:
            raise unsupported(f'a scalar subquery over the private table "{table.name}" must aggregate',
                              "compare with an aggregate, o_totalprice > (SELECT AVG(o_totalprice) FROM "
                              "orders), or match rows with IN (SELECT ...)")  # fmt: skip
        if len(select.expressions) != 1:
            raise RewriteError("42601", "subquery must return only one column")

        def own(c: exp.Column) -> Typed:
            try:
                return inner(c)
            except RewriteError as e:
                raise unsupported(f"correlated scalar subqueries are not supported ({e.message})",
                                  "use a join, or IN (SELECT ...)") from e  # fmt: skip

        analyzer = Analyzer(own, "a scalar subquery", self._nested(own))
        item = select.expressions[0].unalias()
        where = select.args.get("where")
        if item.find(exp.AggFunc) is not None:
            y = self._aggregate(item, analyzer)  # without GROUP BY: exactly one row
        elif where is not None and self._pins_unique(where.this, table, own):
            y = analyzer.analyze(item)
        else:
            raise unsupported(f'a scalar subquery over "{table.name}" must return one row: an aggregate, '
                              "or a declared unique column equal to a constant",
                              "use IN (SELECT ...) to match several rows, or an aggregate such as "
                              "(SELECT MIN(y) FROM t WHERE ...)")  # fmt: skip
        cond = analyzer.predicate(where.this) if where is not None else None
        cond_sql = cond.sql if cond is not None else None
        sub = self._select(y.sql, alias, table, cond_sql)
        # Arithmetic reads the value clamped to its declared bounds, as it does a column's:
        # the public rows may break those bounds, and an overflow would then raise only
        # where private rows reach the expression. Without a clamped form, no bounds.
        value: exp.Expression | None = None
        lo, hi = (y.lo, y.hi) if (y.lo, y.hi) in _TYPE_RANGES else (None, None)  # (an integer type's own)
        if y.value is not None:
            value = exp.Subquery(this=self._select(y.value.copy(), alias, table, cond_sql))
            lo, hi = y.lo, y.hi
        # Public: no private column, the same value for every row; NULL when no row matches.
        domain = None if y.domain is None else tuple(dict.fromkeys((*y.domain, None)))
        return replace(y, sql=exp.Subquery(this=sub), nullable=True, domain=domain, columns=frozenset(),
                       value=value, lo=lo, hi=hi, unit=False, span=None, span_key=None, constant=False)  # fmt: skip

    @staticmethod
    def _pins_unique(cond: exp.Expression, table: _Table, resolve: Callable[[exp.Column], Typed]) -> bool:
        """Whether `cond` holds `unique column = constant` among its AND parts (then
        the subquery returns at most one row: the key is checked per query)."""
        for part in conjuncts(cond):
            if not isinstance(part, exp.EQ):
                continue
            for col, other in ((part.this, part.expression), (part.expression, part.this)):
                if isinstance(col, exp.Column) and isinstance(other, exp.Literal):
                    base = _base(resolve(col))
                    if base is not None and table.meta.columns[base[1]].unique:
                        return True
        return False

    @staticmethod
    def _aggregate(item: exp.Expression, rows: Analyzer) -> Typed:
        """An aggregate over a public table's rows, as a subquery's one value."""
        aggregates = _HavingAnalyzer(rows.resolve, rows)
        aggregates.context = "a subquery over a public table"
        return aggregates.analyze(item)

    def _grouping(self, select: exp.Select, y: Typed, inner: Callable[[exp.Column], Typed]) -> exp.Expression | None:
        """The checked HAVING of `IN (SELECT y FROM t ... GROUP BY y HAVING ...)`.

        Grouped by the matched value itself, each group's aggregates read the rows that
        match one outer value only, which the match keeps within the outer row's unit
        (TPC-H Q18: `o_orderkey IN (SELECT l_orderkey FROM lineitem GROUP BY l_orderkey
        HAVING SUM(l_quantity) > 300)`). Any other grouping is refused."""
        group = select.args.get("group")
        keys = group.expressions if group is not None else []
        rendered = y.sql.sql(dialect="postgres")
        checker = Analyzer(inner, "a subquery")
        if len(keys) != 1 or checker.analyze(keys[0]).sql.sql(dialect="postgres") != rendered:
            raise unsupported("a subquery in WHERE may group only by the value it returns "
                              "(x IN (SELECT y FROM t GROUP BY y HAVING ...))", _HINT)  # fmt: skip
        having = select.args.get("having")
        if having is None:
            return None

        def resolve(c: exp.Column) -> Typed:
            t = inner(c)
            if t.sql.sql(dialect="postgres") != rendered:
                raise RewriteError(GROUPING_ERROR, f'column "{c.name}" must appear in the GROUP BY '
                                   "clause or be used in an aggregate function")  # fmt: skip
            return t

        return _HavingAnalyzer(resolve, Analyzer(inner, "an aggregate in HAVING")).predicate(having.this).sql

    def _exists(self, node: exp.Exists) -> Typed:
        select = node.this
        if not isinstance(select, exp.Select):
            raise unsupported("EXISTS needs a SELECT")
        alias, table, inner = self._table(select)
        outer_cols: list[exp.Column] = []

        def resolve(c: exp.Column) -> Typed:
            # The subquery's own columns first, as PostgreSQL resolves names.
            try:
                return inner(c)
            except RewriteError:
                outer_cols.append(c)
                return self.outer(c)

        analyzer = Analyzer(resolve, "EXISTS", self._nested(resolve))
        where = select.args.get("where")
        if where is None:
            raise not_allowed("EXISTS must be correlated with the outer row on its privacy unit", _HINT)
        cond = analyzer.predicate(where.this)
        linked = False
        for part in conjuncts(where.this):
            if isinstance(part, exp.EQ) and all(isinstance(s, exp.Column) for s in (part.this, part.expression)):
                sides = [(s, _try(inner, s)) for s in (part.this, part.expression)]
                mine = [t for _, t in sides if t is not None]
                other = [s for s, t in sides if t is None]
                if len(mine) == 1 and len(other) == 1:
                    linked = linked or self._unit_local(self.outer(other[0]), mine[0], table)
        if not linked:
            raise not_allowed(f'EXISTS (SELECT ... FROM "{table.name}") must be correlated on the privacy '
                              "unit or the foreign key to it", _HINT)  # fmt: skip
        sub = self._select(exp.Literal.number(1), alias, table, cond.sql)
        return Typed(exp.Exists(this=sub), "bool", domain=(True, False), nullable=False,
                     columns=frozenset(c for col in outer_cols for c in self.outer(col).columns))  # fmt: skip

    def _table(self, select: exp.Expression) -> tuple[str, _Table, Callable[[exp.Column], Typed]]:
        """The subquery's one table: its alias, metadata and a resolver for its columns."""
        from rewriter.relation import column_typed, lookup  # relation imports this module

        if not isinstance(select, exp.Select):
            raise unsupported("set operations in a subquery are not supported")
        for arg in _SHAPE_ARGS:
            if select.args.get(arg):
                raise unsupported("a subquery in WHERE may read one table with a WHERE clause only "
                                  "(no joins, grouping, DISTINCT, ORDER BY or LIMIT)", _HINT)  # fmt: skip
        from_ = select.args.get("from_") or select.args.get("from")
        item = from_.this if from_ is not None else None
        if not isinstance(item, exp.Table) or not item.name:
            raise unsupported("a subquery in WHERE must read a declared table", _HINT)
        found = self.meta.find(item.name, item.db or None)
        if found is None:
            raise RewriteError(UNDEFINED_TABLE, f'relation "{item.name}" does not exist or is not declared')
        name, meta = found
        if self.public_only and not meta.public:
            raise unsupported(f'a subquery inside a subquery may read public tables only, not "{name}"', _HINT)
        alias = f"s{self.aliases[0]}"
        self.aliases[0] += 1
        cols = {c: column_typed(alias, c, m, meta) for c, m in meta.columns.items()}
        scope: Scope = {(item.alias or item.name).lower(): cols}
        if not item.alias:
            scope[f"{meta.schema_}.{name}".lower()] = cols
        return alias, _Table(name, meta), lambda c: lookup(scope, c)

    def _unit_local(self, x: Typed, y: Typed, table: _Table) -> bool:
        """True when x = y ties the subquery's row to the outer row's unit."""
        if table.meta.public:
            return True
        ycol = _base(y)
        xcol = _base(x)
        if ycol is None or xcol is None:
            return False
        src = next((s for s in self.rel.sources if s.alias == xcol[0]), None)
        outer_hop = src.table.unit_path[0] if src is not None and src.table.unit_path else None
        if outer_hop is not None and (outer_hop.column, outer_hop.table, outer_hop.references) == (
                xcol[1], table.name, ycol[1]):  # fmt: skip
            # The outer row's own foreign key into the subquery's table (lineitem's
            # `l_orderkey IN (SELECT o_orderkey FROM orders ...)`): the one row it matches
            # is the row that gives it its unit.
            return True
        inner_hop = table.meta.unit_path[0] if table.meta.unit_path else None
        if outer_hop is not None and inner_hop is not None and xcol[1] == outer_hop.column \
                and ycol[1] == inner_hop.column and (outer_hop.table, outer_hop.references) == (
                    inner_hop.table, inner_hop.references):  # fmt: skip
            # Both rows reference the same row of the table that gives them their unit
            # (TPC-H Q21's `l2.l_orderkey = l1.l_orderkey`: line items of one order).
            return True
        if src is not None and src.name == table.name and xcol[1] == ycol[1] and table.meta.columns[ycol[1]].unique:
            # A table matched to itself on a declared key: the row matches itself only.
            return True
        if table.meta.privacy_unit is not None:
            return ycol[1] == table.meta.privacy_unit and x.unit
        if table.meta.unit_path is not None:
            hop = table.meta.unit_path[0]
            src = next((s for s in self.rel.sources if s.alias == xcol[0]), None)
            return ycol[1] == hop.column and src is not None and src.name == hop.table \
                and xcol[1] == hop.references  # fmt: skip
        return False

    @staticmethod
    def _select(what: exp.Expression, alias: str, table: _Table, cond: exp.Expression | None) -> exp.Select:
        ref = exp.Table(this=exp.to_identifier(table.name, quoted=True),
                        db=exp.to_identifier(table.meta.schema_, quoted=True),
                        alias=exp.TableAlias(this=exp.to_identifier(alias)))  # fmt: skip
        sub = exp.Select(expressions=[what]).from_(ref)
        return sub.where(cond) if cond is not None else sub


# The ranges of PostgreSQL's integer types: bounds no row can break.
_TYPE_RANGES = frozenset({INT2, INT4, (INT8_MIN, INT8_MAX)})


class _HavingAnalyzer(Analyzer):
    """HAVING of a grouped subquery: the row-expression allow-list, plus COUNT, SUM,
    AVG, MIN and MAX of row expressions, none of which can raise."""

    def __init__(self, resolve: Callable[[exp.Column], Typed], rows: Analyzer) -> None:
        super().__init__(resolve, "HAVING of a subquery")
        self.rows = rows

    def _aggregate(self, n: exp.Expression) -> Typed:
        arg = n.this
        if isinstance(arg, exp.Distinct) or any(isinstance(x, exp.AggFunc) for x in n.find_all(exp.AggFunc) if x is not n):
            raise unsupported(f"{describe(n)} is not supported in HAVING of a subquery")
        if isinstance(n, exp.Count) and (arg is None or isinstance(arg, exp.Star)):
            return Typed(exp.Count(this=exp.Star()), "int", Decimal(0), INT8_MAX, nullable=False, pg_type="int8")
        t = self.rows.analyze(arg)
        if isinstance(n, exp.Count):
            return Typed(exp.Count(this=t.sql), "int", Decimal(0), INT8_MAX, nullable=False, pg_type="int8")
        if isinstance(n, (exp.Min, exp.Max)):
            return replace(t, sql=type(n)(this=t.sql), value=None, domain=None, unit=False, span=None, span_key=None)
        if t.kind not in NUMERIC_KINDS:
            raise RewriteError("42883", f"function {n.sql_name().lower()}({t.type_name}) does not exist")
        # The raw values, as PostgreSQL sums them: an int8 or numeric sum cannot overflow,
        # and a float one could, so floats are summed as numeric (which holds infinities).
        value = t.sql if t.kind != "float" else exp.cast(exp.Paren(this=t.sql), "numeric")
        kind = "numeric" if isinstance(n, exp.Avg) or t.kind != "int" else "int"
        return Typed(type(n)(this=value), kind, nullable=True, pg_type=None if kind == "int" else "numeric")

    _n_Sum = _n_Avg = _n_Count = _n_Min = _n_Max = _aggregate


class _Table:
    """A declared table read by a subquery."""

    def __init__(self, name: str, meta: TableMeta) -> None:
        self.name = name
        self.meta = meta


def _base(t: Typed) -> tuple[str, str] | None:
    if isinstance(t.sql, exp.Column) and len(t.columns) == 1:
        return next(iter(t.columns))
    return None


def _try(resolve: Callable[[exp.Column], Typed], c: exp.Column) -> Typed | None:
    try:
        return resolve(c)
    except RewriteError:
        return None


