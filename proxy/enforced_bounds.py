"""What the database's catalog guarantees about declared bounded columns: bounds it
enforces with CHECK constraints, and numeric(p, s) types that cap a value's digits.

A column clamped to its declared [lower, upper] costs two comparisons a row (on
TPC-H SF 1, a customer SUM that needs no contribution bounding ran 1.26x the plain
query, all of it the clamp). Where a validated, inherited CHECK constraint on that one
column already keeps every value within the declared bounds, the clamp changes nothing
and the rewriter leaves it out (`rewriter.metadata.with_enforced_bounds`); each plan's
SQL then checks that the constraint still stands (`rewriter.rewrite._guarded`).

Only what is certain counts: the constraint's definition is parsed with sqlglot and
read as a conjunction; a conjunct that compares the bare column with a numeric
constant (or a BETWEEN of two) bounds it, anything else is ignored (it only adds a
condition). A constraint whose bounds are not inside the declared ones, or a column
whose database type is not numeric, keeps its clamp. NaN and infinities fail one side
of a two-sided numeric check, so no such value can be in the table either.

A column of type numeric(p, s) holds no value with more than p - s digits before the
point (nor an infinity; NaN it may hold): its value in whole steps of its declared
precision then fits bigint, so the clamp can be done on that integer, with one numeric
comparison (for NaN) instead of two (`rewriter.rewrite._int_steps_sql`). Each plan's SQL
checks that the type still stands too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from decimal import Decimal, InvalidOperation

import sqlglot
from sqlglot import exp

from accounting.pool import LeanPool
from rewriter.metadata import Metadata

log = logging.getLogger("dpproxy.enforced_bounds")

_NUMERIC_TYPES = ("smallint", "integer", "bigint", "numeric", "real", "double precision")

# Single-column CHECK constraints that hold for every row (validated) of the table and
# of every child table (inherited), with the column's type.
CHECKS_SQL = """
SELECT c.oid, n.nspname AS schema, r.relname AS table, a.attname AS column,
       format_type(a.atttypid, a.atttypmod) AS type, pg_get_constraintdef(c.oid) AS definition
  FROM pg_catalog.pg_constraint c
  JOIN pg_catalog.pg_class r ON r.oid = c.conrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace
  JOIN pg_catalog.pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
 WHERE c.contype = 'c' AND c.convalidated AND NOT c.connoinherit
   AND cardinality(c.conkey) = 1
"""


def check_bounds(definition: str, column: str) -> tuple[Decimal | None, Decimal | None]:
    """The (lower, upper) bounds a CHECK constraint's definition puts on `column`.

    `definition` is what pg_get_constraintdef returns (`CHECK ((x >= 0) AND ...)`).
    A side that is not certain is None.
    """
    text = definition.strip()
    if not text.upper().startswith("CHECK"):
        return None, None
    try:
        tree = sqlglot.parse_one(text[5:].strip(), read="postgres")
    except sqlglot.errors.ParseError:
        return None, None
    lower: Decimal | None = None
    upper: Decimal | None = None
    for conjunct in _conjuncts(tree):
        lo, hi = _conjunct_bounds(conjunct, column)
        if lo is not None:
            lower = lo if lower is None else max(lower, lo)
        if hi is not None:
            upper = hi if upper is None else min(upper, hi)
    return lower, upper


def _conjuncts(node: exp.Expression) -> Iterator[exp.Expression]:
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.And):
        yield from _conjuncts(node.this)
        yield from _conjuncts(node.expression)
    else:
        yield node


def _is_column(node: exp.Expression, column: str) -> bool:
    while isinstance(node, exp.Paren):
        node = node.this
    return isinstance(node, exp.Column) and not node.table and node.name == column


def _constant(node: exp.Expression) -> Decimal | None:
    """A numeric constant's value: a number, a string cast to a number, or its negation."""
    while isinstance(node, exp.Paren | exp.Cast):
        node = node.this
    if isinstance(node, exp.Neg):
        inner = _constant(node.this)
        return None if inner is None else -inner
    if isinstance(node, exp.Literal):
        try:
            value = Decimal(node.this)
        except InvalidOperation:
            return None
        return value if value.is_finite() else None
    return None


def _conjunct_bounds(node: exp.Expression, column: str) -> tuple[Decimal | None, Decimal | None]:
    """The bounds one conjunct puts on the column (strict comparisons bound it too)."""
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.Between) and _is_column(node.this, column) and not node.args.get("symmetric"):
        return _constant(node.args["low"]), _constant(node.args["high"])
    below, above = (exp.LT, exp.LTE), (exp.GT, exp.GTE)
    if not isinstance(node, below + above):
        return None, None
    left, right = node.this, node.expression
    if _is_column(left, column):
        value = _constant(right)
        return (value, None) if isinstance(node, above) else (None, value)
    if _is_column(right, column):  # `0 <= x`: the column on the right
        value = _constant(left)
        return (None, value) if isinstance(node, above) else (value, None)
    return None, None


def enforced_columns(meta: Metadata, rows: list[dict[str, object]]) -> dict[tuple[str, str], int]:
    """(table, column) -> constraint OID for each declared bounded column of a private
    table that one of `rows` (the catalog query's) keeps within its declared bounds."""
    found: dict[tuple[str, str], int] = {}
    for tname, table in meta.private_tables().items():
        for cname, cmeta in table.columns.items():
            if not cmeta.bounded:
                continue
            assert cmeta.lower is not None and cmeta.upper is not None
            for row in rows:
                if (row["schema"], row["table"], row["column"]) != (table.schema_, tname, cname):
                    continue
                if not str(row["type"]).startswith(_NUMERIC_TYPES):
                    continue
                lo, hi = check_bounds(str(row["definition"]), cname)
                if lo is not None and hi is not None and cmeta.lower <= lo and hi <= cmeta.upper:
                    found[(tname, cname)] = int(row["oid"])  # type: ignore[call-overload]
                    break
    return found


async def find_enforced_bounds(pool: LeanPool, meta: Metadata) -> dict[tuple[str, str], int]:
    """The declared bounds the data database enforces (see `enforced_columns`)."""
    rows = [dict(r) for r in await pool.fetch(CHECKS_SQL)]
    found = enforced_columns(meta, rows)
    for (tname, cname), oid in sorted(found.items()):
        log.info("%s.%s: its declared bounds hold by CHECK constraint %d; no clamp", tname, cname, oid)
    return found


# Columns of a numeric(p, s) type (atttypmod -1 is plain, unconstrained numeric).
NUMERIC_TYPES_SQL = """
SELECT n.nspname AS schema, r.relname AS table, a.attname AS column,
       a.attrelid::int8 AS attrelid, a.attnum, a.atttypmod
  FROM pg_catalog.pg_attribute a
  JOIN pg_catalog.pg_class r ON r.oid = a.attrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace
 WHERE a.atttypid = 'pg_catalog.numeric'::pg_catalog.regtype AND a.atttypmod >= 4
   AND a.attnum > 0 AND NOT a.attisdropped
"""


def typmod_digits(typmod: int) -> int:
    """How many digits numeric(p, s) allows before the decimal point (p - s).

    atttypmod is ((p << 16) | s) + 4, with s an 11-bit two's-complement number
    (PostgreSQL 15 allows a negative scale).
    """
    packed = typmod - 4
    precision, scale = (packed >> 16) & 0xFFFF, packed & 0x7FF
    return precision - ((scale ^ 0x400) - 0x400)


def numeric_columns(meta: Metadata, rows: list[dict[str, object]]) -> dict[tuple[str, str], tuple[int, int, int, int]]:
    """(table, column) -> (attrelid, attnum, atttypmod, digits before the point) for each
    declared bounded column of a private table whose type (in `rows`) is numeric(p, s)."""
    by_name = {(r["schema"], r["table"], r["column"]): r for r in rows}
    found = {}
    for tname, table in meta.private_tables().items():
        for cname, cmeta in table.columns.items():
            row = by_name.get((table.schema_, tname, cname))
            if cmeta.bounded and row is not None:
                typmod = int(row["atttypmod"])  # type: ignore[call-overload]
                found[(tname, cname)] = (int(row["attrelid"]), int(row["attnum"]), typmod,  # type: ignore[call-overload]
                                         typmod_digits(typmod))  # fmt: skip
    return found


async def find_numeric_types(pool: LeanPool, meta: Metadata) -> dict[tuple[str, str], tuple[int, int, int, int]]:
    """The declared bounded columns whose numeric(p, s) type caps their digits."""
    return numeric_columns(meta, [dict(r) for r in await pool.fetch(NUMERIC_TYPES_SQL)])
