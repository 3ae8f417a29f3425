"""Contribution bounding by weighting: each unit's rows count for at most `max_rows` rows.

The sampling plan (a window `row_number() OVER (PARTITION BY unit ORDER BY random())`
keeping `max_rows` rows per unit) sorts every row. This plan needs no sort and keeps
every row: a unit with `n` rows has each row weighted by `min(1, max_rows / n)`. A row's
term `t` (1 for a count; a clamped value for a sum) then contributes `t * w`, so one
unit contributes at most `n * |t|max * max_rows / n = max_rows * |t|max` in total, over
every group: the L1 bound of keeping `max_rows` rows, without the sampling error.

The weights are exact integers: a primitive is computed in units of `1 / S` (S a power
of ten, its `denominator`); the weight of a unit with `n` rows is `S` when
`n <= max_rows` and `floor(max_rows * S / n)` otherwise, so rounding only ever shrinks
a contribution, and the sensitivity in those units is the sampling plan's times `S`.
A weight depends on the unit's own rows only, so adding or removing a unit changes no
other unit's contribution.

Ungrouped queries aggregate per unit (one hash aggregate) and weight and round each
unit's partial sums. Grouped queries count each unit's rows (a hash aggregate), join
that count back to the rows (a hash join), and sum the raw clamped terms per (group,
row count of the unit):
the units of one group with the same row count share one weight, so the weights are
applied to a few dozen partial sums per group instead of to every row. Sums of values
are then scaled to whole units of `step / S` and rounded once per group; rounding moves
a group by at most one unit, so the sensitivity of a sum allows one unit per group.

Values reach these plans as whole fixed-point steps (integers: int4 when the bounds
fit), so the per-unit hash entries hold int8 sums instead of numeric states; a unit of
2^31 rows or more is dropped (`_UNIT_ROWS`) so that those sums can neither wrap nor
overflow.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal

from rewriter.plan import NoisyPrimitive

# A primitive's unit values stay below 2^40 (as fixed-point steps do, see rewrite.py),
# so that exact totals of millions of rows fit the i64 samplers.
_UNIT_LIMIT = 1 << 40
# Per-unit aggregates drop a unit with this many rows or more (a function of the unit's
# own rows, so no other unit's contribution changes): below it, a unit's sum of int4
# steps cannot wrap its int8 state, nor its offset product overflow (2^31 * 2^31 < 2^63),
# so no error and no wrapped value can depend on the data.
_UNIT_ROWS = 1 << 31
# The largest denominator: rounding heavy units' weights down loses less than 1 / S
# of a row per row, far below any noise scale.
_MAX_DENOMINATOR = 10**6


@dataclass(frozen=True, slots=True)
class RowTerm:
    """What one row adds to a primitive, in the value's own units.

    `sql` (None: 1, a count) is summed only where `filt` (a boolean inner column) holds
    and `nonnull` (an inner column) is not NULL; the sum divided by `step` is in the
    primitive's integer units (fixed-point steps). `bound` is the largest |term| of one
    row in those units: the sampling plan's sensitivity is `max_rows * bound`.
    """

    sql: str | None
    filt: str | None
    nonnull: str | None
    bound: int
    step: Decimal = Decimal(1)
    # The term is `sql - offset` (a midpoint): subtracted once per partial sum, as
    # `sum(sql) - offset * count(sql)`, because numeric arithmetic on every row costs
    # more than the sum itself (TPC-H SF 1 orders: +260 ms on a 700 ms query).
    offset: Decimal = Decimal(0)
    # False when `sql` is never NULL: its count is then `count(*)`, which PostgreSQL
    # computes once for every aggregate that shares it (the row count included).
    nullable: bool = True
    # `sql` is an int4 column of whole steps: below `_UNIT_ROWS` rows, its sum (an int8
    # state, the cheapest PostgreSQL has) and offset products fit int8 (see `_partial`).
    narrow: bool = False
    # The same term over the raw column in whole fixed-point steps (integers), which the
    # weighted plans read: per-unit sums of integers keep a by-value int8 state per hash
    # entry where numeric sums keep a ~500-byte one (TPC-H SF 1, 100,000 units: a
    # filtered SUM over orders 741 -> 549 ms, a grouped AVG 1195 -> 767 ms).
    steps: RowTerm | None = None

    def condition(self) -> str | None:
        """The FILTER condition over the row alias `b`, or None."""
        parts = []
        if self.filt is not None:
            parts.append(f"b.{self.filt}")
        if self.nonnull is not None:
            parts.append(f"b.{self.nonnull} IS NOT NULL")
        return " AND ".join(parts) or None


def denominator(bound: int) -> int:
    """The largest power of ten S <= 10^6 with bound * S <= 2^40 (at least 1)."""
    s = _MAX_DENOMINATOR
    while s > 1 and bound * s > _UNIT_LIMIT:
        s //= 10
    return s


def _filtered(agg: str, cond: str | None) -> str:
    return agg if cond is None else f"{agg} FILTER (WHERE {cond})"


def _partial(term: RowTerm, cell: str | None = None, *, per_unit: bool = True) -> str:
    """The exact aggregate of one primitive's row terms (its FILTER included), over
    the rows where `cell` (a condition) also holds.

    `per_unit`: the aggregate is per unit (fewer than `_UNIT_ROWS` rows, see
    `_unit_having`), so int8 arithmetic on a narrow term cannot overflow; otherwise a
    narrow term is summed as int8 (an int128 state that cannot wrap) and its offset
    taken off in numeric."""
    cond = " AND ".join(c for c in (cell, term.condition()) if c) or None
    if term.sql is None:
        return _filtered("count(*)", cond)
    narrow = term.narrow and per_unit
    arg = f"{term.sql}::int8" if term.narrow and not per_unit else term.sql
    total = _filtered(f"sum({arg})", cond)
    if not term.offset:
        return total
    offset = format(term.offset, "f")
    if not narrow and "." not in offset:
        offset += "::numeric"  # an int8 product could overflow
    counted = _filtered("count(*)" if not term.nullable else f"count({term.sql})", cond)
    return f"({total} - {offset} * {counted})"


def _unit_having(terms: dict[str, RowTerm], rows: str) -> str:
    """The HAVING that keeps per-unit int8 sums of narrow terms exact (`_UNIT_ROWS`)."""
    return f" HAVING {rows} < {_UNIT_ROWS}" if any(t.narrow for t in terms.values()) else ""


def _weight(rows: str, k: int, s: int) -> str:
    """The integer weight, in units of 1/s, of a unit with `rows` rows: s, or
    floor(k * s / rows) when it has more than k (rounding shrinks it)."""
    return f"(CASE WHEN {rows} <= {k} THEN {s} ELSE {k * s} / {rows} END)"


def _per_unit_sql(
    ctes: list[str], primitives: dict[str, NoisyPrimitive], terms: dict[str, RowTerm], k: int
) -> str:
    """Ungrouped: partial sums per unit (one hash aggregate), weighted and rounded per
    unit, so rounding stays inside each unit's contribution and needs no slack."""
    partials = ["count(*) AS c"]
    outer = []
    for j, (name, p) in enumerate(primitives.items()):
        term = terms[name]
        partials.append(f"{_partial(term)} AS a{j}")
        weighted = f"q.a{j}::numeric * {_weight('q.c', k, p.denominator)}"
        value = weighted if term.sql is None else _to_units(weighted, term.step)
        outer.append(f"coalesce(sum({value}), 0) AS {name}")
    return (f"WITH {', '.join(ctes)} SELECT {', '.join(outer)} FROM "
            f"(SELECT {', '.join(partials)} FROM i AS b GROUP BY b.u"
            f"{_unit_having(terms, 'count(*)')}) AS q")  # fmt: skip


def _pivot_sql(
    ctes: list[str], keys: list[str], primitives: dict[str, NoisyPrimitive],
    terms: dict[str, RowTerm], k: int, cells: list[tuple[int, ...]],
) -> str:
    """Grouped by keys from short listed domains: one pass, one hash aggregate per unit.

    Each row of `i` carries `g`, the index of its cell (its keys' domain indexes, row
    major; NULL outside the domains). Per unit, one partial per (cell, primitive) and
    the unit's row count in the domains; then the partials are summed per row count (a
    few dozen rows), unpivoted into one row per cell, weighted and rounded per cell.
    """
    names = list(primitives)
    parts = ["count(*) FILTER (WHERE b.g IS NOT NULL) AS c"]
    cols = []
    for g in range(len(cells)):
        for j, name in enumerate(names):
            parts.append(f"{_partial(terms[name], f'b.g = {g}')} AS x{g}_{j}")
            cols.append(f"x{g}_{j}")
    per_count = ", ".join(f"sum(pu.{c}) AS {c}" for c in cols)
    rows = ", ".join(
        "(" + ", ".join([str(i) for i in cell] + [f"pc.x{g}_{j}" for j in range(len(names))]) + ")"
        for g, cell in enumerate(cells)
    )
    alias = ", ".join(keys + [f"a{j}" for j in range(len(names))])
    outer = [f"v.{key}" for key in keys]
    for j, (name, p) in enumerate(primitives.items()):
        term = terms[name]
        total = f"coalesce(sum(v.a{j}::numeric * {_weight('pc.c', k, p.denominator)}), 0)"
        outer.append(f"{total if term.sql is None else _to_units(total, term.step)} AS {name}")
    return (
        f"WITH {', '.join(ctes)}, "
        # Every cell's rows are among the `c` rows inside the domains.
        f"pu AS (SELECT {', '.join(parts)} FROM i AS b GROUP BY b.u"
        f"{_unit_having(terms, 'count(*) FILTER (WHERE b.g IS NOT NULL)')}), "
        f"pc AS (SELECT pu.c, {per_count} FROM pu GROUP BY pu.c) "
        f"SELECT {', '.join(outer)} FROM pc CROSS JOIN LATERAL (VALUES {rows}) AS v({alias}) "
        f"GROUP BY {', '.join(f'v.{key}' for key in keys)}"
    )


def _unweighted_sql(
    ctes: list[str], keys: list[str], primitives: dict[str, NoisyPrimitive],
    terms: dict[str, RowTerm],
) -> str:
    """One row per unit: exact sums per group, scaled to units of `1 / S` once."""
    outer = [f"b.{key}" for key in keys]
    for name, p in primitives.items():
        term = terms[name]
        total = _partial(term)
        if term.sql is not None:
            total = _to_units(f"coalesce({total}, 0) * {p.denominator}", term.step)
        outer.append(f"{total} AS {name}")
    sql = f"WITH {', '.join(ctes)} SELECT {', '.join(outer)} FROM i AS b"
    if keys:
        sql += " GROUP BY " + ", ".join(f"b.{key}" for key in keys)
    return sql


def _to_units(total: str, step: Decimal) -> str:
    """`total` (a numeric in the value's units) in whole units of `step`, rounded."""
    if step == 1:
        return f"round({total})"
    inverse = Decimal(1) / step
    if inverse == inverse.to_integral_value():
        return f"round({total} * {int(inverse)})"
    return f"round({total} / {format(step, 'f')})"


def _scaled(
    primitives: dict[str, NoisyPrimitive], terms: dict[str, RowTerm], slack: int,
    *, whole_counts: bool = False,
) -> dict[str, NoisyPrimitive]:
    """The primitives in integer units of 1/S (S their `denominator`), sensitivities
    scaled to match; a sum's also allows `slack` units of rounding. A primitive without
    a row term (a count of units) is left as it is; `whole_counts`: counts need no
    finer unit (one row per unit)."""
    out: dict[str, NoisyPrimitive] = {}
    for name, p in primitives.items():
        term = terms.get(name)
        if term is None:
            out[name] = p
            continue
        s = 1 if whole_counts and term.sql is None else denominator(term.bound)
        extra = 0 if term.sql is None else slack
        out[name] = replace(p, sensitivity=p.sensitivity * s + extra, denominator=s)
    return out


def weighted_sql(
    ctes: list[str],
    keys: list[str],
    primitives: dict[str, NoisyPrimitive],
    terms: dict[str, RowTerm],
    max_rows: int,
    *,
    rounding_slack: int,
    one_row_per_unit: bool = False,
    cells: list[tuple[int, ...]] | None = None,
) -> tuple[str, dict[str, NoisyPrimitive]] | None:
    """The weighted plan over the rows of CTE `i` (unit column `u`), or None when a
    primitive has no row term.

    `rounding_slack`: how many groups the answer can have (each may round by one unit).
    `one_row_per_unit`: every unit has at most one row (a declared unique unit key, or a
    row-level table), so no weights are needed; sums are still scaled once per group.
    `cells`: every combination of the keys' domain indexes, when each key is a listed
    public domain and `i` has the cell column `g` (see `_pivot_sql`); the plan's keys are
    then domain indexes, not raw keys.
    Returns the SQL and the primitives with their denominators and scaled sensitivities.
    """
    if any(name not in terms for name in primitives):
        return None
    # Counts of units with one row are whole numbers: no finer unit needed.
    whole = one_row_per_unit
    slack = rounding_slack if keys or one_row_per_unit else 0
    scaled = _scaled(primitives, terms, slack, whole_counts=whole)
    if one_row_per_unit:
        return _unweighted_sql(ctes, keys, scaled, terms), scaled
    if not keys:
        return _per_unit_sql(ctes, scaled, terms, max_rows), scaled
    if cells is not None:
        return _pivot_sql(ctes, keys, scaled, terms, max_rows, cells), scaled
    # The rows are read twice (to count each unit's rows, then to sum them): recomputing
    # them, joins included, measured cheaper than materializing them.
    defs = [c.replace(" AS (", " AS NOT MATERIALIZED (", 1) for c in ctes]
    defs.append("n AS (SELECT i.u, count(*) AS c FROM i GROUP BY i.u)")
    k = max_rows
    # Rows without a unit form one unit, as in the sampling plan; the subquery counting
    # them runs only if such a row exists (an InitPlan is evaluated on first use).
    rows = (
        "(SELECT i.*, coalesce(n.c, (SELECT count(*) FROM i AS z WHERE z.u IS NULL)) AS nc "
        "FROM i LEFT JOIN n ON n.u = i.u) AS b"
    )
    partials = [f"b.{key}" for key in keys] + ["b.nc"]
    outer = [f"q.{key}" for key in keys]
    for j, (name, p) in enumerate(scaled.items()):
        term = terms[name]
        partials.append(f"{_partial(term, per_unit=False)} AS a{j}")
        total = f"coalesce(sum(q.a{j}::numeric * {_weight('q.nc', k, p.denominator)}), 0)"
        outer.append(f"{total if term.sql is None else _to_units(total, term.step)} AS {name}")
    by = ", ".join(f"b.{key}" for key in keys + ["nc"])
    sql = (
        f"WITH {', '.join(defs)} SELECT {', '.join(outer)} FROM "
        f"(SELECT {', '.join(partials)} FROM {rows} GROUP BY {by}) AS q"
    )
    if keys:
        sql += " GROUP BY " + ", ".join(f"q.{key}" for key in keys)
    return sql, scaled


def group_bounded_sql(
    ctes: list[str],
    keys: list[str],
    primitives: dict[str, NoisyPrimitive],
    terms: dict[str, RowTerm],
    max_rows: int,
    max_groups: int,
    unit_counts: set[str],
) -> tuple[str, dict[str, NoisyPrimitive]] | None:
    """The weighted plan for grouped queries that also bound the groups a unit touches
    (keys without a public domain, which pass partition selection; or counts of units).

    The sampling plan sorts every row twice (a window choosing each unit's groups, then
    one choosing its rows). Here the rows are first summed per (unit, group), one hash
    aggregate; each unit keeps `max_groups` of its groups chosen at random (a window over
    those partials only), and its rows in them are weighted by `min(1, max_rows / n)`,
    `n` its rows in the kept groups. One unit then adds at most `max_rows * bound` over
    at most `max_groups` groups, as with sampling, and 1 to the units of each kept group
    (`unit_counts`: the partition-selection count and unfiltered COUNT(DISTINCT unit)).
    Each group's sums are rounded once; only the groups of the unit added or removed can
    round differently, so the slack is one unit per kept group.

    None when a primitive is neither a row term nor a unit count.
    """
    if any(name not in terms and name not in unit_counts for name in primitives):
        return None
    scaled = _scaled(primitives, terms, max_groups)
    by = ", ".join(f"b.{key}" for key in keys)
    partials = [f"b.{key}" for key in keys] + ["count(*) AS c"]
    outer = [f"w.{key}" for key in keys]
    for j, (name, p) in enumerate(scaled.items()):
        term = terms.get(name)
        if term is None:
            outer.append(f"count(*) AS {name}")  # one (unit, group) row per kept unit
            continue
        partials.append(f"{_partial(term)} AS a{j}")
        total = f"coalesce(sum(w.a{j}::numeric * {_weight('w.n', max_rows, p.denominator)}), 0)"
        outer.append(f"{total if term.sql is None else _to_units(total, term.step)} AS {name}")
    return (
        f"WITH {', '.join(ctes)}, "
        f"pk AS (SELECT b.u, {', '.join(partials)} FROM i AS b GROUP BY b.u, {by}"
        f"{_unit_having(terms, 'count(*)')}), "
        "pg AS (SELECT pk.*, row_number() OVER (PARTITION BY pk.u ORDER BY random()) AS gn FROM pk), "
        # (sum() of bigint is numeric: as int8, the weight's division is an integer one.)
        f"w AS (SELECT pg.*, (sum(pg.c) OVER (PARTITION BY pg.u))::int8 AS n FROM pg WHERE pg.gn <= {max_groups}) "
        f"SELECT {', '.join(outer)} FROM w GROUP BY {', '.join(f'w.{key}' for key in keys)}"
    ), scaled
