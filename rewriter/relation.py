"""The FROM clause: base tables, JOINs, CTEs and derived tables, flattened into one relation.

Row-level CTEs and derived tables (no aggregation, DISTINCT, LIMIT or window inside)
are inlined: their output columns become expressions over the base tables, their
WHERE clauses become conditions of the flattened relation. What remains is a list of
base-table sources with fresh aliases (t0, t1, ...), the JOIN conditions, and the
privacy unit of every row of the join.

Joins allowed on private rows:
- private to public, on a declared unique key of the public table (no fan-out);
- private to private, when the join equates the two tables' privacy units;
- a private table whose unit is reached through a declared foreign-key path
  (lineitem -> orders) is joined to the referenced table automatically, or through the
  analyst's own join on that key.
Contribution bounding happens after the join, per unit (see rewrite.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlglot import exp

from rewriter.commajoin import conjuncts, inner_joins_from_where
from rewriter.dates import date_literal, epoch_days, trunc_domain
from rewriter.daykeys import DayKey
from rewriter.errors import (
    UNDEFINED_COLUMN,
    UNDEFINED_TABLE,
    RewriteError,
    not_allowed,
    unsupported,
)
from rewriter.fold import distinct_as_group_by
from rewriter.metadata import ColumnMeta, ColumnType, Metadata, TableMeta
from rewriter.perunit import per_unit_table
from rewriter.rowexpr import MAX_DATE_DOMAIN, Analyzer, Typed
from rewriter.semijoin import SemiJoins

AMBIGUOUS_COLUMN = "42702"
JOIN_HINT = (
    "join a public table on its declared unique key, or private tables on their privacy "
    "unit (e.g. customer JOIN orders ON c_custkey = o_custkey)"
)
_KIND = {
    ColumnType.INTEGER: ("int", "int4"),
    ColumnType.BIGINT: ("int", "int8"),
    ColumnType.SMALLINT: ("int", "int2"),
    ColumnType.NUMERIC: ("numeric", "numeric"),
    ColumnType.FLOAT: ("float", "float8"),
    ColumnType.TEXT: ("text", "text"),
    ColumnType.DATE: ("date", "date"),
    ColumnType.TIMESTAMP: ("timestamp", "timestamp"),
    ColumnType.TIMESTAMPTZ: ("timestamptz", "timestamptz"),
    ColumnType.BOOLEAN: ("bool", "bool"),
}
_INT_RANGES = {
    ColumnType.INTEGER: (-(1 << 31), (1 << 31) - 1),
    ColumnType.BIGINT: (-(1 << 63), (1 << 63) - 1),
    ColumnType.SMALLINT: (-(1 << 15), (1 << 15) - 1),
}


@dataclass
class Source:
    """One base table of the flattened relation."""

    alias: str
    name: str
    table: TableMeta
    hidden: bool = False  # joined by dpproxy to reach a privacy unit
    left: bool = False  # LEFT JOINed (public tables, or private ones on their unit)
    on: exp.Expression | None = None  # rendered condition
    subquery: str | None = None  # a derived table grouped by the unit (see perunit.py)


@dataclass
class Relation:
    """The flattened FROM clause."""

    meta: Metadata
    sources: list[Source] = field(default_factory=list)
    conditions: list[exp.Expression] = field(default_factory=list)  # rendered WHERE parts
    equalities: list[tuple[tuple[str, str], tuple[str, str]]] = field(default_factory=list)
    unit: exp.Expression | None = None
    max_rows: int = 1
    max_groups: int = 1

    def fresh_alias(self) -> str:
        """A new table alias for the rewritten SQL."""
        return f"t{len(self.sources)}"

    @property
    def private(self) -> list[Source]:
        """The private sources."""
        return [s for s in self.sources if not s.table.public]

    @property
    def row_level(self) -> bool:
        """True when each row is its own unit (a private table without a unit)."""
        return self.unit is None

    @property
    def one_row_per_unit(self) -> bool:
        """True when the declared keys already give each unit at most one row.

        That holds for one private table whose privacy-unit column is declared unique
        (public tables are joined only on their unique keys, so they never fan out):
        contribution bounding would then keep every row and can be skipped.
        """
        priv = self.private
        if self.unit is None or len(priv) != 1 or priv[0].table.privacy_unit is None:
            return False
        table = priv[0].table
        return bool(table.columns[table.privacy_unit].unique)

    def from_sql(self) -> str:
        """The FROM clause of the rewritten SQL."""
        parts = []
        for i, s in enumerate(self.sources):
            ref = f'"{s.table.schema_}"."{s.name}" AS {s.alias}' if s.subquery is None \
                else f"({s.subquery}) AS {s.alias}"  # fmt: skip
            if i == 0:
                parts.append(ref)
            else:
                kind = "LEFT JOIN" if s.left else "JOIN"
                assert s.on is not None
                parts.append(f"{kind} {ref} ON {s.on.sql(dialect='postgres')}")
        return " ".join(parts)


Scope = dict[str, dict[str, Typed]]  # qualifier -> column -> Typed


def column_typed(alias: str, cname: str, cmeta: ColumnMeta, table: TableMeta) -> Typed:
    """The Typed of a base-table column: raw SQL, clamped value, bounds, domain."""
    kind, pg = _KIND[cmeta.type]
    col = exp.column(cname, table=alias, quoted=True)
    lo = hi = None
    value = None
    if cmeta.bounded and cmeta.enforced_by is not None:
        # A CHECK constraint keeps every value within [lo, hi] (and rejects NaN and
        # infinities): the clamp would change nothing. The plan's SQL checks that the
        # constraint still stands (`rewrite._guarded`).
        lo, hi = cmeta.lower, cmeta.upper
        value = exp.cast(col.copy(), "numeric") if kind == "float" else col.copy()
        if kind == "float":
            kind = "numeric"
    elif cmeta.bounded:
        lo, hi = cmeta.lower, cmeta.upper
        # Clamp before any expression: NULL stays NULL (CASE, not GREATEST/LEAST), NaN
        # (above every number in PostgreSQL) and infinities clamp to a bound.
        value = exp.Paren(
            this=exp.Case(
                ifs=[
                    exp.If(this=exp.LT(this=col.copy(), expression=_num(lo)), true=_num(lo)),
                    exp.If(this=exp.GT(this=col.copy(), expression=_num(hi)), true=_num(hi)),
                ],
                default=exp.cast(col.copy(), "numeric") if kind == "float" else col.copy(),
            )
        )
        if kind == "float":
            kind = "numeric"  # the clamped value is computed exactly, as numeric
    elif cmeta.type in _INT_RANGES:
        from decimal import Decimal

        lo, hi = (Decimal(x) for x in _INT_RANGES[cmeta.type])
    span = None
    if cmeta.date_bounds is not None:
        first, last = cmeta.date_bounds
        span = (epoch_days(first), epoch_days(last))
        # As numbers are: before any expression, NULL kept; infinities clamp to a bound.
        value = exp.Paren(this=exp.Case(ifs=[
            exp.If(this=exp.LT(this=col.copy(), expression=date_literal(first)), true=date_literal(first)),
            exp.If(this=exp.GT(this=col.copy(), expression=date_literal(last)), true=date_literal(last)),
        ], default=col.copy()))  # fmt: skip
    domain = None
    by_day = None
    if cmeta.domain is not None:
        domain = tuple(cmeta.domain) + ((None,) if cmeta.nullable and None not in cmeta.domain else ())
    elif cmeta.type == ColumnType.BOOLEAN:
        domain = (True, False, None) if cmeta.nullable else (True, False)
    elif cmeta.date_bounds is not None:
        # Every day of the declared range (unless too many): grouped by the raw date,
        # days outside it are left out like any value outside a domain.
        days = trunc_domain("day", *cmeta.date_bounds, MAX_DATE_DOMAIN)
        if days is not None:
            domain = tuple(d.date() for d in days) + ((None,) if cmeta.nullable else ())
            by_day = DayKey(col, col, *cmeta.date_bounds, "date")
    step = cmeta.step if cmeta.type.is_numeric else None
    return Typed(col, kind, lo, hi, domain, cmeta.nullable, value=value, step=step,
                 unit=cname == table.privacy_unit, pg_type=pg,
                 columns=frozenset({(alias, cname)}),
                 # (only where a clamp is computed: an enforced bound has none to save)
                 int_digits=cmeta.numeric_type[3] if cmeta.numeric_type and cmeta.enforced_by is None
                 else None, span=span, by_day=by_day)  # fmt: skip


def _num(v: object) -> exp.Expression:
    return exp.Literal.number(str(v))


class FromResolver:
    """Flattens a SELECT's FROM clause into a Relation and a column scope."""

    def __init__(
        self,
        meta: Metadata,
        ctes: dict[str, exp.Expression] | None = None,
        expanding: frozenset[str] = frozenset(),
    ) -> None:
        self.meta = meta
        self.ctes = dict(ctes or {})
        # CTEs being inlined around this point: a CTE cannot refer to itself (a name in
        # its own body means the table of that name), which also stops endless inlining.
        self.expanding = expanding

    def resolve(self, select: exp.Select, rel: Relation | None = None) -> tuple[Relation, Scope]:
        """The relation and scope of `select` (WHERE conditions included)."""
        rel = rel if rel is not None else Relation(meta=self.meta)
        with_ = select.args.get("with_") or select.args.get("with")
        if with_ is not None:
            if with_.args.get("recursive"):
                raise unsupported("WITH RECURSIVE is not supported on private tables")
            for cte in with_.expressions:
                self.ctes[cte.alias_or_name.lower()] = cte.this
        select = inner_joins_from_where(select, self._columns_of)
        from_ = select.args.get("from_") or select.args.get("from")
        if from_ is None:
            raise not_allowed("the query has no FROM clause over a private table")
        scope: Scope = {}
        self._add_item(from_.this, rel, scope, join=None)
        for j in select.args.get("joins") or []:
            self._add_item(j.this, rel, scope, join=j)
        where = select.args.get("where")
        if where is not None:
            analyzer = Analyzer(lambda c: lookup(scope, c), "WHERE",
                                SemiJoins(self.meta, rel, lambda c: lookup(scope, c)))  # fmt: skip
            cond = analyzer.predicate(where.this)
            rel.conditions.append(cond.sql)
            self._record_equalities(where.this, scope, rel)
        return rel, scope

    # -- FROM items -------------------------------------------------------------------

    def _columns_of(self, item: exp.Expression) -> frozenset[str] | None:
        """The column names a FROM item exposes, when they can be told without resolving it."""
        body: exp.Expression | None = None
        if isinstance(item, exp.Subquery):
            body = item.this
        elif isinstance(item, exp.Table):
            cname = item.name.lower()
            body = self.ctes.get(cname) if not item.db and cname not in self.expanding else None
            if body is None:
                found = self.meta.find(item.name, item.db or None)
                return frozenset(c.lower() for c in found[1].columns) if found else None
        if not isinstance(body, exp.Select) or any(
            isinstance(e, exp.Star) or (isinstance(e, exp.Column) and e.is_star) for e in body.expressions
        ):
            return None
        return frozenset(e.alias_or_name.lower() for e in body.expressions)

    def _add_item(
        self, item: exp.Expression, rel: Relation, scope: Scope, join: exp.Join | None
    ) -> None:
        if join is not None:
            kind = (join.args.get("side") or "").upper()
            jkind = (join.args.get("kind") or "").upper()
            if jkind == "CROSS" or (join.args.get("on") is None and not join.args.get("using")):
                raise unsupported("joins without an ON condition (CROSS JOIN, comma joins) are "
                                  "not supported on private tables", JOIN_HINT)  # fmt: skip
            if join.args.get("using"):
                raise unsupported("JOIN ... USING is not supported yet", "write JOIN ... ON a = b")
            if kind in ("RIGHT", "FULL") or jkind in ("OUTER",) and kind != "LEFT":
                raise unsupported(f"{kind or jkind} JOIN is not supported on private tables",
                                  JOIN_HINT)  # fmt: skip
            if jkind in ("SEMI", "ANTI", "NATURAL") or join.args.get("method"):
                raise unsupported(f"{jkind or 'this'} JOIN is not supported", JOIN_HINT)
        left = join is not None and (join.args.get("side") or "").upper() == "LEFT"
        if isinstance(item, exp.Table):
            if not item.name:
                raise unsupported("table functions in FROM are not supported")
            catalog = item.catalog
            if catalog and catalog.lower() != self.meta.dataset.lower():
                # The database clients connect to is the dataset's (a BI tool may write
                # three-part names with it); any other is PostgreSQL's own refusal.
                raise unsupported(f'cross-database references are not implemented: "{item.sql(dialect="postgres")}"')
            qual = (item.alias or item.name).lower()
            if qual in scope:
                raise RewriteError("42712", f'table name "{qual}" specified more than once')
            cname = item.name.lower()
            cte = self.ctes.get(cname) if not item.db and cname not in self.expanding else None
            if cte is not None:
                before = len(rel.sources)
                self._add_derived(cte, qual, rel, scope, left, expanding=cname)
                if join is not None:
                    self._join_condition(join, rel, scope, rel.sources[before:], left)
                return
            found = self.meta.find(item.name, item.db or None)
            if found is None:
                raise RewriteError(
                    UNDEFINED_TABLE,
                    f'relation "{item.name}" does not exist or is not declared',
                    hint="declared tables: " + ", ".join(sorted(self.meta.tables)),
                )
            tname, table = found
            if left and not table.public and table.privacy_unit is None:
                raise unsupported("LEFT JOIN to a private table is only supported on its privacy "
                                  "unit column", JOIN_HINT)  # fmt: skip
            src = Source(alias=rel.fresh_alias(), name=tname, table=table, left=left)
            rel.sources.append(src)
            cols = {c: column_typed(src.alias, c, m, table) for c, m in table.columns.items()}
            scope[qual] = cols
            if not item.alias:
                scope[f"{table.schema_}.{tname}".lower()] = cols
            if join is not None:
                self._join_condition(join, rel, scope, [src], left)
            return
        if isinstance(item, exp.Subquery):
            if not item.alias:
                raise RewriteError("42601", "subquery in FROM must have an alias")
            before = len(rel.sources)
            self._add_derived(item.this, item.alias.lower(), rel, scope, left)
            if join is not None:
                self._join_condition(join, rel, scope, rel.sources[before:], left)
            return
        raise unsupported(f"{type(item).__name__.upper()} in FROM is not supported",
                          "select from declared tables, row-level subqueries or CTEs")  # fmt: skip

    def _add_derived(
        self, body: exp.Expression, qual: str, rel: Relation, scope: Scope, left: bool,
        expanding: str | None = None,
    ) -> None:
        if left:
            raise unsupported("LEFT JOIN to a subquery is not supported", JOIN_HINT)
        if not isinstance(body, exp.Select):
            raise unsupported("set operations (UNION...) in a derived table are not supported")
        hidden = self.expanding | ({expanding} if expanding else set())
        # `SELECT DISTINCT o_custkey FROM orders WHERE ...` is the grouping it means: one
        # row per unit (the per-unit rules below then apply to it).
        body = distinct_as_group_by(body)
        if body.args.get("group"):
            self._add_per_unit(body, qual, rel, scope, frozenset(hidden))
            return
        _check_row_level(body)
        inner = FromResolver(self.meta, self.ctes, frozenset(hidden))
        _, inner_scope = inner.resolve(body, rel)
        analyzer = Analyzer(lambda c: lookup(inner_scope, c), "a derived table")
        cols: dict[str, Typed] = {}
        for e in body.expressions:
            if isinstance(e, exp.Star) or (isinstance(e, exp.Column) and e.is_star):
                quals = [e.table.lower()] if isinstance(e, exp.Column) and e.table else None
                for q, qcols in inner_scope.items():
                    if "." in q or (quals is not None and q not in quals):
                        continue
                    for c, t in qcols.items():
                        cols.setdefault(c.lower(), t)
                continue
            name = e.alias_or_name
            body_e = e.this if isinstance(e, exp.Alias) else e
            cols[name.lower()] = analyzer.analyze(body_e)
        scope[qual] = cols

    def _add_per_unit(self, body: exp.Select, qual: str, rel: Relation, scope: Scope,
                      hidden: frozenset[str]) -> None:  # fmt: skip
        """A derived table grouped by the privacy unit: one source with one row per unit."""
        inner = FromResolver(self.meta, self.ctes, hidden)
        inner_rel, inner_scope = inner.resolve(body)
        bind_units(inner_rel)
        table = per_unit_table(body, inner_rel, inner_scope)
        src = Source(alias=rel.fresh_alias(), name=qual, table=table.table, subquery=table.sql)
        rel.sources.append(src)
        meta = table.table
        scope[qual] = {name: column_typed(src.alias, c, meta.columns[c], meta) for name, c in table.names.items()}

    def _join_condition(
        self, join: exp.Join, rel: Relation, scope: Scope, added: list[Source], left: bool
    ) -> None:
        on = join.args["on"]
        cond = Analyzer(lambda c: lookup(scope, c), "JOIN ... ON").predicate(on)
        first = added[0]
        private_left = left and not first.table.public
        eqs = self._record_equalities(on, scope, rel, keep=not left or private_left)
        if private_left and not any(_links_units(eq, first, rel) for eq in eqs):
            # The preserved rows must belong to a unit already: a public row kept only
            # because no private row matched it would depend on other units' data.
            raise unsupported(
                f'a LEFT JOIN to the private table "{first.name}" must equate its privacy unit '
                "with the privacy unit of a private table before it",
                "e.g. customer LEFT JOIN orders ON o_custkey = c_custkey",
            )
        if first.table.public:
            aliases = {s.alias for s in added}
            if not any(_unique_side(eq, aliases, self.meta, rel) for eq in eqs):
                raise unsupported(
                    f'the join to the public table "{first.name}" must be on one of its '
                    "declared unique keys",
                    "declare the key with unique: true in the metadata and join on it",
                )
        if first.on is None and len(added) == 1:
            first.on = cond.sql
        else:
            # A derived table brings its own sources; its join condition becomes a filter.
            rel.conditions.append(cond.sql)
            for s in added:
                if s.on is None and s is not rel.sources[0]:
                    s.on = exp.Boolean(this=True)

    def _record_equalities(
        self, cond: exp.Expression, scope: Scope, rel: Relation, keep: bool = True
    ) -> list[tuple[tuple[str, str], tuple[str, str]]]:
        """Column = column equalities among the top-level AND parts of a condition."""
        out = []
        for part in conjuncts(cond):
            if isinstance(part, exp.EQ):
                a, b = part.this, part.expression
                if isinstance(a, exp.Column) and isinstance(b, exp.Column):
                    ta, tb = lookup(scope, a), lookup(scope, b)
                    ca, cb = _base_column(ta), _base_column(tb)
                    if ca is not None and cb is not None:
                        out.append((ca, cb))
        if keep:
            rel.equalities.extend(out)
        return out


def _links_units(eq: tuple[tuple[str, str], tuple[str, str]], src: Source, rel: Relation) -> bool:
    """True when `eq` equates `src`'s unit column with an earlier private source's unit column."""
    for mine, other in (eq, eq[::-1]):
        if mine != (src.alias, src.table.privacy_unit):
            continue
        before = next((s for s in rel.sources if s.alias == other[0] and s is not src), None)
        if before is not None and not before.table.public and before.table.privacy_unit == other[1] \
                and not before.left:  # fmt: skip
            return True
    return False


def _unique_side(eq: tuple[tuple[str, str], tuple[str, str]], aliases: set[str],
                 meta: Metadata, rel: Relation) -> bool:  # fmt: skip
    for mine, other in (eq, eq[::-1]):
        if mine[0] in aliases and other[0] not in aliases:
            src = next(s for s in rel.sources if s.alias == mine[0])
            if src.table.columns[mine[1]].unique:
                return True
    return False


def _base_column(t: Typed) -> tuple[str, str] | None:
    if isinstance(t.sql, exp.Column) and len(t.columns) == 1:
        return next(iter(t.columns))
    return None


def _check_row_level(body: exp.Select) -> None:
    for arg, what in (("group", "GROUP BY"), ("having", "HAVING"), ("distinct", "DISTINCT"),
                      ("limit", "LIMIT"), ("offset", "OFFSET"), ("windows", "WINDOW"),
                      ("order", "ORDER BY")):  # fmt: skip
        if body.args.get(arg):
            raise unsupported(
                f"{what} inside a derived table or CTE is not supported: only row-level "
                "subqueries (SELECT expressions FROM ... WHERE ...) can be inlined",
                "move the aggregation to the outer query",
            )
    if any(isinstance(n, exp.AggFunc) for e in body.expressions for n in e.walk()):
        raise unsupported(
            "aggregates inside a derived table or CTE are not supported (a per-unit "
            "aggregate would need its own contribution bound)",
            "aggregate in the outer query, or group the derived table by the privacy unit",
        )


def lookup(scope: Scope, col: exp.Column) -> Typed:
    """Resolve a column reference in a scope (qualified or not; ambiguity is an error)."""
    name = col.name if _quoted(col) else col.name.lower()

    def find(cols: dict[str, Typed]) -> Typed | None:
        if name in cols:
            return cols[name]
        if not _quoted(col):
            for c, t in cols.items():
                if c.lower() == name:
                    return t
        return None

    qual = col.table
    if qual:
        q = qual.lower() if not col.db else f"{col.db}.{qual}".lower()
        if q not in scope:
            raise RewriteError(UNDEFINED_TABLE, f'missing FROM-clause entry for table "{qual}"',
                               hint="qualify columns with the name or alias of a table in FROM")  # fmt: skip
        t = find(scope[q])
        if t is None:
            raise _undefined(col.name, [qual], scope)
        return t
    hits = []
    for q, cols in scope.items():
        if "." in q:
            continue
        t = find(cols)
        if t is not None:
            hits.append(t)
    if not hits:
        raise _undefined(col.name, [q for q in scope if "." not in q], scope)
    if len(hits) > 1:
        raise RewriteError(AMBIGUOUS_COLUMN, f'column reference "{col.name}" is ambiguous',
                           "qualify it with a table name or alias")  # fmt: skip
    return hits[0]


def _undefined(name: str, quals: list[str], scope: Scope) -> RewriteError:
    declared = sorted({c for q in quals for c in scope.get(q.lower(), {})})
    return RewriteError(
        UNDEFINED_COLUMN,
        f'column "{name}" does not exist or is not declared in the metadata of '
        + ", ".join(f'"{q}"' for q in quals),
        hint="declared columns: " + ", ".join(declared),
    )


def _quoted(col: exp.Column) -> bool:
    ident = col.this
    return isinstance(ident, exp.Identifier) and bool(ident.args.get("quoted"))


# -- privacy units ------------------------------------------------------------------------


def bind_units(rel: Relation) -> None:
    """Attach the privacy unit to the relation, adding foreign-key joins where needed.

    Raises when private tables are joined other than on their common unit, or when a
    row-level private table is joined to another private table.
    """
    private = rel.private
    if not private:
        raise unsupported("DP queries must read a private table",
                          "public tables can be queried directly as catalog queries")  # fmt: skip
    units: dict[str, tuple[str, str] | None] = {}
    for src in list(private):
        units[src.alias] = _unit_of(src, rel)
    classes = _UnionFind()
    for a, b in rel.equalities:
        classes.union(a, b)
    # Hidden foreign-key joins equate their columns too.
    present = [u for u in units.values()]
    if any(u is None for u in present):
        if len(rel.private) > 1:
            raise unsupported("a table without a privacy unit cannot be joined to another "
                              "private table", JOIN_HINT)  # fmt: skip
        rel.unit = None
    else:
        roots = {classes.find(u) for u in present if u is not None}
        if len(roots) > 1:
            raise not_allowed(
                "private tables must be joined on their privacy unit: otherwise one row "
                "would mix the data of several units",
                JOIN_HINT,
            )
        u = present[0]
        assert u is not None
        rel.unit = exp.column(u[1], table=u[0], quoted=True)
    rel.max_rows = max(s.table.max_rows for s in rel.private) if rel.unit is not None else 1
    rel.max_groups = max(s.table.max_groups for s in rel.private) if rel.unit is not None else 1


def _unit_of(src: Source, rel: Relation) -> tuple[str, str] | None:
    table = src.table
    if table.privacy_unit is not None:
        return (src.alias, table.privacy_unit)
    if table.unit_path is None:
        return None
    hop = table.unit_path[0]
    # Reuse the analyst's own join on the foreign key when there is one.
    for a, b in rel.equalities:
        for mine, other in ((a, b), (b, a)):
            if mine == (src.alias, hop.column):
                target = next((s for s in rel.sources if s.alias == other[0]), None)
                if target is not None and target.name == hop.table and other[1] == hop.references:
                    return _unit_of(target, rel)
    found = rel.meta.find(hop.table)
    assert found is not None  # validated by the metadata model
    tname, ttable = found
    alias = rel.fresh_alias()
    on = exp.EQ(this=exp.column(hop.column, table=src.alias, quoted=True),
                expression=exp.column(hop.references, table=alias, quoted=True))  # fmt: skip
    target = Source(alias=alias, name=tname, table=ttable, hidden=True, on=on)
    rel.sources.append(target)
    rel.equalities.append(((src.alias, hop.column), (alias, hop.references)))
    return _unit_of(target, rel)


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[tuple[str, str], tuple[str, str]] = {}

    def find(self, x: tuple[str, str]) -> tuple[str, str]:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: tuple[str, str], b: tuple[str, str]) -> None:
        self.parent[self.find(a)] = self.find(b)
