"""Per-row expressions: the allow-list, static types, interval bounds and safe rendering.

Row expressions run on private rows inside the database (WHERE, JOIN ... ON, GROUP BY,
the values inside aggregates), so every one must be *total*: it may not raise for some
rows only (that error would reveal those rows) and may not have effects. The analyzer
walks a sqlglot tree bottom-up and returns a `Typed` for each node: the SQL to run
(regenerated, never the analyst's text), a static kind, interval bounds derived from
the declared column bounds, and, where one follows, a finite public domain.

What makes an expression total here:
- bounded numeric columns are clamped to their declared bounds before any arithmetic,
  and all arithmetic runs in `numeric` (or `bigint` when the interval proves it fits),
  so overflow is impossible; arithmetic over an operand without finite bounds is refused;
- a division or modulo by anything but a non-zero constant is guarded with NULLIF(d, 0);
- casts that can fail for some values (text to number, numeric out of an integer's range)
  are refused; date arithmetic over columns (which can leave the range PostgreSQL holds)
  is refused except a constant shift of a column, made total (`_shifted`);
- function arguments that make a function fail (negative substring lengths, LIKE
  patterns ending in an escape) must be constants and are checked here.
"""

from __future__ import annotations

import functools
import re
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_DOWN, ROUND_FLOOR, ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Protocol

from sqlglot import exp
from sqlglot.dialects.postgres import Postgres

from rewriter.dates import (
    epoch_days,
    extract_domain,
    extract_range,
    from_epoch_days,
    shifted_span,
    to_char_domain,
    trunc_domain,
)
from rewriter.daykeys import DayKey
from rewriter.errors import GROUPING_ERROR, RewriteError, not_allowed, unsupported
from rewriter.quantified import expand_quantified

INT8_MIN = Decimal(-(1 << 63))
INT8_MAX = Decimal((1 << 63) - 1)
INT4 = (Decimal(-(1 << 31)), Decimal((1 << 31) - 1))
INT2 = (Decimal(-(1 << 15)), Decimal((1 << 15) - 1))
MAX_TEXT_LENGTH = Decimal(1 << 30)  # PostgreSQL's largest field is 1 GB
MAX_DERIVED_DOMAIN = 1000
# DATE_TRUNC over declared date bounds lists every truncated value up to this many (the
# days of 27 years): a domain releases every group, where partition selection drops some.
MAX_DATE_DOMAIN = 10_000
NUMERIC_KINDS = frozenset({"int", "numeric", "float"})
TEMPORAL_KINDS = frozenset({"date", "timestamp", "timestamptz"})
DATATYPE_ERROR = "42804"
INVALID_TEXT = "22P02"

# kind -> the PostgreSQL type name the value is reported with.
PG_NAMES = {
    "int": "int8",
    "numeric": "numeric",
    "float": "float8",
    "text": "text",
    "date": "date",
    "timestamp": "timestamp",
    "timestamptz": "timestamptz",
    "bool": "bool",
    "interval": "interval",
    "null": "text",
}


@dataclass(frozen=True, slots=True)
class Typed:
    """One analyzed row expression.

    `sql` is the safe rendering over the rewritten FROM aliases; `value` is the same
    value clamped to its bounds where the expression is a bounded column (used as an
    operand of arithmetic and as an aggregated value). `lo`/`hi` are None when unbounded.
    `domain` is a finite public set of the values it can take (None: unknown/too large).
    `columns` are the (alias, column) pairs it reads; `unit` marks a bare privacy unit.
    """

    sql: exp.Expression
    kind: str
    lo: Decimal | None = None
    hi: Decimal | None = None
    domain: tuple[object, ...] | None = None
    nullable: bool = True
    constant: bool = False
    value: exp.Expression | None = None
    step: Decimal | None = None
    unit: bool = False
    pg_type: str | None = None
    columns: frozenset[tuple[str, str]] = frozenset()
    # A bare column of type numeric(p, s): p - s, the most digits before its point.
    int_digits: int | None = None
    # A date with declared bounds: their days since 1970-01-01; `value` is then the date
    # clamped to them (never infinite, never outside them).
    span: tuple[int, int] | None = None
    # EXTRACT(field) of such a date: `sql` (raw) and `value` (clamped) differ, and a cast
    # to an integer keeps both.
    span_key: str | None = None
    # A function of such a date's day (the date, EXTRACT, DATE_TRUNC, TO_CHAR): as a
    # group key, its domain index is read by the day (rewriter/daykeys.py).
    by_day: DayKey | None = None

    @property
    def bounded(self) -> bool:
        """True when both bounds are finite."""
        return self.lo is not None and self.hi is not None

    @property
    def operand(self) -> exp.Expression:
        """The rendering used inside arithmetic and aggregates (clamped if a column)."""
        return self.value if self.value is not None else self.sql

    @property
    def type_name(self) -> str:
        """The PostgreSQL type name reported for this value."""
        return self.pg_type or PG_NAMES[self.kind]


Resolver = Callable[[exp.Column], Typed]

_EXTRACT_RANGES: dict[str, tuple[int, int] | None] = {
    "month": (1, 12),
    "quarter": (1, 4),
    "day": (1, 31),
    "dow": (0, 6),
    "isodow": (1, 7),
    "doy": (1, 366),
    "week": (1, 53),
    "hour": (0, 23),
    "minute": (0, 59),
    # year-like fields are infinite for infinite dates, so they have no finite bound.
    "year": None,
    "isoyear": None,
    "decade": None,
    "century": None,
    "millennium": None,
    "epoch": None,
}
# The same fields over finite dates and timestamps (PostgreSQL's years run from 4713 BC
# to 5874897 AD; epoch seconds of those): what an integer cast of them may assume once
# infinite values are mapped to NULL.
_FINITE_RANGES: dict[str, tuple[int, int]] = {
    "year": (-4714, 5874898),
    "isoyear": (-4714, 5874898),
    "decade": (-472, 587490),
    "century": (-48, 58749),
    "millennium": (-5, 5875),
    "epoch": (-210_900_000_000, 185_400_000_000_000),
}
# (left kind, operator, right kind) -> result kind, for constant date/time arithmetic.
_CONSTANT_TEMPORAL: dict[tuple[str, str, str], str] = {
    ("date", "+", "int"): "date", ("int", "+", "date"): "date", ("date", "-", "int"): "date",
    ("date", "-", "date"): "int", ("date", "+", "interval"): "timestamp",
    ("interval", "+", "date"): "timestamp", ("date", "-", "interval"): "timestamp",
    ("interval", "+", "interval"): "interval", ("interval", "-", "interval"): "interval",
    **{(t, op, "interval"): t for t in ("timestamp", "timestamptz") for op in "+-"},
    **{("interval", "+", t): t for t in ("timestamp", "timestamptz")},
    **{(x, "-", y): "interval" for x in ("date", "timestamp", "timestamptz")
       for y in ("date", "timestamp", "timestamptz") if "date" not in (x, y) or x != y},
}  # fmt: skip
_SMALL_DOMAIN_FIELDS = {"month", "quarter", "dow", "isodow", "hour", "day", "week"}
_TRUNC_UNITS = {"microseconds", "milliseconds", "second", "minute", "hour", "day", "week",
                "month", "quarter", "year", "decade", "century", "millennium"}  # fmt: skip
_INT_TYPES = {"INT": INT4, "SMALLINT": INT2, "BIGINT": (INT8_MIN, INT8_MAX)}
_NUMERIC_TYPES = {"DECIMAL", "NUMERIC", "BIGDECIMAL"}
_FLOAT_TYPES = {"DOUBLE", "FLOAT"}
_TEXT_TYPES = {"TEXT", "VARCHAR", "CHAR", "NVARCHAR", "NCHAR"}
_TEMPORAL_TYPES = {"DATE": "date", "TIMESTAMP": "timestamp", "TIMESTAMPTZ": "timestamptz"}
_CMP = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE)

ROW_HINT = (
    "use columns and literals with comparisons, AND/OR/NOT, IN (list), BETWEEN, LIKE, IS NULL, "
    "+ - * /, CASE, COALESCE, NULLIF, GREATEST/LEAST, ROUND/FLOOR/CEIL/ABS, casts that cannot "
    "fail, EXTRACT/DATE_PART/DATE_TRUNC and string functions (LOWER, UPPER, LENGTH, TRIM, "
    "SUBSTRING, LEFT, RIGHT, ||, REPLACE, POSITION)"
)


class Subqueries(Protocol):
    """What analyzes a WHERE clause's subqueries (rewriter/semijoin.py's SemiJoins)."""

    def __call__(self, node: exp.Expression, analyzer: Analyzer) -> Typed:
        """EXISTS or IN (subquery)."""
        ...

    def scalar(self, node: exp.Subquery) -> Typed:
        """A scalar subquery used as a value."""
        ...


class Analyzer:
    """Analyzes row expressions against a column resolver (see module docstring)."""

    def __init__(self, resolve: Resolver, context: str, semijoins: Subqueries | None = None) -> None:
        self.resolve = resolve
        self.context = context
        # EXISTS / IN (subquery) and scalar subqueries are analyzed by the FROM clause's
        # owner (semijoin.py), which knows the tables; elsewhere they are refused.
        self.semijoins = semijoins

    # -- entry points -----------------------------------------------------------------

    def analyze(self, node: exp.Expression) -> Typed:
        """The Typed of `node`, or a RewriteError naming the refused construct."""
        if self.semijoins is not None and (
                isinstance(node, exp.Exists) or isinstance(node, exp.In) and node.args.get("query") is not None):  # fmt: skip
            return self.semijoins(node, self)
        if self.semijoins is not None and isinstance(node, exp.Subquery) and isinstance(node.this, exp.Select):
            return self.semijoins.scalar(node)
        handler = getattr(self, f"_n_{type(node).__name__}", None)
        if handler is None:
            if isinstance(node, exp.AggFunc):
                raise RewriteError(
                    GROUPING_ERROR, f"aggregate functions are not allowed in {self.context}"
                )
            if isinstance(node, (exp.Subquery, exp.Select, exp.Exists)):
                raise unsupported(
                    f"subqueries are not supported in {self.context}",
                    "join the table instead, or use a derived table in FROM",
                )
            if isinstance(node, exp.Window):
                raise not_allowed(f"window functions are not allowed in {self.context}")
            raise unsupported(f"{describe(node)} is not allowed in {self.context}", ROW_HINT)
        return handler(node)

    def predicate(self, node: exp.Expression) -> Typed:
        """Analyze a boolean condition (WHERE, ON, FILTER, CASE WHEN)."""
        t = self.analyze(node)
        if t.kind not in ("bool", "null"):
            raise RewriteError(
                DATATYPE_ERROR,
                f"argument of {self.context} must be type boolean, not {t.type_name}",
            )
        return t

    # -- leaves -----------------------------------------------------------------------

    def _n_Column(self, n: exp.Column) -> Typed:
        if n.is_star:
            raise not_allowed(f"* is not allowed in {self.context}")
        return self.resolve(n)

    def _n_RawString(self, n: exp.Expression) -> Typed:
        """A dollar-quoted string ($$1995-01-01$$): a string literal like any other."""
        return self._n_Literal(exp.Literal.string(str(n.this)))

    def _n_Literal(self, n: exp.Literal) -> Typed:
        if n.is_string:
            return Typed(exp.Literal.string(n.this), "text", domain=(n.this,), nullable=False,
                         constant=True, pg_type="text")  # fmt: skip
        try:
            v = Decimal(n.this)
        except InvalidOperation as e:
            raise RewriteError(INVALID_TEXT, f"invalid number {n.this!r}") from e
        if v == v.to_integral_value() and "." not in n.this and "e" not in n.this.lower():
            kind, dom = "int", (int(v),)
            pg = "int4" if INT4[0] <= v <= INT4[1] else "int8"
            if not INT8_MIN <= v <= INT8_MAX:
                kind, pg, dom = "numeric", "numeric", (v,)
        else:
            kind, pg, dom = "numeric", "numeric", (v,)
        return Typed(exp.Literal.number(n.this), kind, v, v, dom, nullable=False, constant=True,
                     pg_type=pg)  # fmt: skip

    def _n_Null(self, n: exp.Null) -> Typed:
        return Typed(exp.Null(), "null", domain=(None,), constant=True)

    def _n_Boolean(self, n: exp.Boolean) -> Typed:
        v = bool(n.this)
        return Typed(exp.Boolean(this=v), "bool", domain=(v,), nullable=False, constant=True)

    def _n_Paren(self, n: exp.Paren) -> Typed:
        t = self.analyze(n.this)
        return replace(t, sql=exp.Paren(this=t.sql), value=exp.Paren(this=t.operand))

    def _n_Interval(self, n: exp.Interval) -> Typed:
        if not isinstance(n.this, exp.Literal):
            raise unsupported(f"INTERVAL with a computed value is not allowed in {self.context}")
        unit = n.args.get("unit")
        text = str(n.this.this) + (f" {unit.name}" if unit is not None else "")
        _check_literal_cast(text, "interval")
        return Typed(n.copy(), "interval", nullable=False, constant=True)

    # -- boolean logic ----------------------------------------------------------------

    def _bool(self, sql: exp.Expression, parts: list[Typed]) -> Typed:
        nullable = any(p.nullable for p in parts)
        dom: tuple[object, ...] = (True, False, None) if nullable else (True, False)
        return Typed(sql, "bool", domain=dom, nullable=nullable,
                     constant=all(p.constant for p in parts), columns=_cols(*parts))  # fmt: skip

    def _n_And(self, n: exp.Expression) -> Typed:
        a, b = self.predicate(n.this), self.predicate(n.expression)
        return self._bool(type(n)(this=a.sql, expression=b.sql), [a, b])

    _n_Or = _n_And

    def _n_Not(self, n: exp.Not) -> Typed:
        a = self.predicate(n.this)
        return self._bool(exp.Not(this=a.sql), [a])

    def _n_Is(self, n: exp.Is) -> Typed:
        a = self.analyze(n.this)
        target = n.expression
        if not isinstance(target, (exp.Null, exp.Boolean)):
            raise unsupported(f"IS must be followed by NULL, TRUE or FALSE in {self.context}")
        # sqlglot spells IS NOT as Is(negate=True): it must be carried over.
        t = Typed(exp.Is(this=a.sql, expression=target.copy(), negate=n.args.get("negate")), "bool",
                  domain=(True, False),
                  nullable=False, columns=a.columns)  # fmt: skip
        return t

    def comparable(self, a: Typed, b: Typed, what: str) -> None:
        """Refuse (42883, or 22P02 for a bad literal) two values PostgreSQL cannot compare."""
        ka, kb = a.kind, b.kind
        if "null" in (ka, kb) or ka == kb:
            return
        if ka in NUMERIC_KINDS and kb in NUMERIC_KINDS:
            return
        # A string literal is cast to the other side's type once, for every row alike;
        # check it here so a bad literal is refused before any budget is spent.
        for lit, other in ((a, b), (b, a)):
            if lit.kind == "text" and lit.constant and isinstance(lit.sql, exp.Literal):
                _check_literal_cast(str(lit.sql.this), other.kind)
                return
        if ka in TEMPORAL_KINDS and kb in TEMPORAL_KINDS:
            return
        raise RewriteError(
            "42883", f"cannot compare {a.type_name} with {b.type_name} in {what}",
            "compare values of the same type (cast literals, e.g. DATE '1995-01-01')",
        )

    def _n_EQ(self, n: exp.Expression) -> Typed:
        chain = expand_quantified(n)
        if chain is not None:
            return self.analyze(chain)
        a, b = self.analyze(n.this), self.analyze(n.expression)
        self.comparable(a, b, self.context)
        return self._bool(type(n)(this=a.sql, expression=b.sql), [a, b])

    _n_NEQ = _n_GT = _n_GTE = _n_LT = _n_LTE = _n_EQ

    def _n_NullSafeEQ(self, n: exp.Expression) -> Typed:
        """IS [NOT] DISTINCT FROM: a comparison that is never NULL."""
        a, b = self.analyze(n.this), self.analyze(n.expression)
        self.comparable(a, b, self.context)
        return replace(self._bool(type(n)(this=a.sql, expression=b.sql), [a, b]),
                       nullable=False, domain=(True, False))  # fmt: skip

    _n_NullSafeNEQ = _n_NullSafeEQ

    def _n_Between(self, n: exp.Between) -> Typed:
        a, lo, hi = (self.analyze(x) for x in (n.this, n.args["low"], n.args["high"]))
        self.comparable(a, lo, "BETWEEN")
        self.comparable(a, hi, "BETWEEN")
        return self._bool(exp.Between(this=a.sql, low=lo.sql, high=hi.sql,
                                      symmetric=n.args.get("symmetric")), [a, lo, hi])  # fmt: skip

    def _n_In(self, n: exp.In) -> Typed:
        if n.args.get("query") is not None or n.args.get("unnest") or n.args.get("field"):
            raise unsupported(f"IN (subquery) is not supported in {self.context}",
                              "list the values: col IN (1, 2, 3)")  # fmt: skip
        a = self.analyze(n.this)
        opts = [self.analyze(e) for e in n.expressions]
        for o in opts:
            self.comparable(a, o, "IN")
        return self._bool(exp.In(this=a.sql, expressions=[o.sql for o in opts]), [a, *opts])

    def _n_Like(self, n: exp.Expression) -> Typed:
        a, p = self.analyze(n.this), self.analyze(n.expression)
        if a.kind not in ("text", "null"):
            raise RewriteError("42883", f"LIKE needs a text value, not {a.type_name}")
        if p.kind == "null" and p.constant:
            # LIKE NULL is NULL for every row (also a `$n` pattern before its value is
            # bound: the bound pattern is checked below when the statement runs).
            return self._bool(type(n)(this=a.sql, expression=exp.Null(), negate=n.args.get("negate")), [a, p])
        if not (p.constant and isinstance(p.sql, exp.Literal)):
            # A pattern from a column can end in an escape character and fail on that row.
            raise unsupported(f"LIKE patterns must be string literals in {self.context}")
        if not p.sql.is_string:
            # (`LIKE 0`: PostgreSQL has no text ~~ integer, and would fail after the charge.)
            raise RewriteError("42883", f"operator does not exist: text ~~ {p.type_name}",
                               "write the pattern as a string literal: LIKE '0%'")  # fmt: skip
        pat = str(p.sql.this)
        trailing = len(pat) - len(pat.rstrip("\\"))
        if trailing % 2 == 1:
            raise RewriteError("22025", "LIKE pattern must not end with escape character")
        if n.args.get("escape") is not None:
            raise unsupported("LIKE ... ESCAPE is not supported")
        # NOT LIKE is Like(negate=True) in sqlglot: it must be carried over.
        return self._bool(type(n)(this=a.sql, expression=p.sql, negate=n.args.get("negate")), [a, p])

    _n_ILike = _n_Like

    # -- conditionals -----------------------------------------------------------------

    def _n_Case(self, n: exp.Case) -> Typed:
        if n.this is not None:
            subject = self.analyze(n.this)
            conds = []
            for c in n.args.get("ifs") or []:
                v = self.analyze(c.this)
                self.comparable(subject, v, "CASE")
                conds.append(exp.EQ(this=subject.sql.copy(), expression=v.sql))
        else:
            conds = [self.predicate(c.this).sql for c in n.args.get("ifs") or []]
        branches = [self.analyze(c.args["true"]) for c in n.args.get("ifs") or []]
        default = n.args.get("default")
        dflt = self.analyze(default) if default is not None else None
        every = branches + ([dflt] if dflt is not None else [])
        out = _union(every, "CASE")
        branches = _widened(branches, out)
        dflt = _widened([dflt], out)[0] if dflt is not None else None
        ifs = [exp.If(this=c, true=b.operand) for c, b in zip(conds, branches, strict=True)]
        sql = exp.Case(ifs=ifs, default=dflt.operand if dflt is not None else None)
        dom = out.domain
        if dflt is None and dom is not None:
            dom = _dedup((*dom, None))
        return replace(out, sql=sql, value=None, domain=dom,
                       nullable=out.nullable or dflt is None, constant=False)  # fmt: skip

    def _n_If(self, n: exp.If) -> Typed:
        return self._n_Case(exp.Case(ifs=[exp.If(this=n.this, true=n.args["true"])],
                                     default=n.args.get("false")))  # fmt: skip

    def _n_Coalesce(self, n: exp.Coalesce) -> Typed:
        parts = [self.analyze(e) for e in [n.this, *n.expressions]]
        out = _union(parts, "COALESCE")
        parts = _widened(parts, out)
        dom = out.domain
        if dom is not None and not all(p.nullable for p in parts):
            dom = tuple(v for v in dom if v is not None)
        sql = exp.Coalesce(this=parts[0].operand, expressions=[p.operand for p in parts[1:]])
        return replace(out, sql=sql, value=None, domain=dom,
                       nullable=all(p.nullable for p in parts))  # fmt: skip

    def _n_Nullif(self, n: exp.Nullif) -> Typed:
        a, b = self.analyze(n.this), self.analyze(n.expression)
        self.comparable(a, b, "NULLIF")
        sql = exp.Nullif(this=a.operand, expression=b.operand)
        if a.kind == "null":
            # NULLIF(NULL, x) takes x's type in PostgreSQL.
            a = replace(a, kind=b.kind if b.kind != "null" else "text", pg_type=None)
        dom = _dedup((*a.domain, None)) if a.domain is not None else None
        return replace(a, sql=sql, value=None, domain=dom, nullable=True, unit=False,
                       columns=_cols(a, b), constant=a.constant and b.constant)  # fmt: skip

    def _n_Greatest(self, n: exp.Expression) -> Typed:
        parts = [self.analyze(e) for e in [n.this, *n.expressions]]
        out = _union(parts, type(n).__name__.upper())
        parts = _widened(parts, out)
        if out.kind in NUMERIC_KINDS:
            # GREATEST ignores NULLs, so it is at least every non-NULL argument's lower
            # bound, and at most the largest upper bound if all are finite (LEAST mirrors
            # it). This makes LEAST(GREATEST(x, lo), hi) a clamp even for unbounded x.
            sure = [p for p in parts if not p.nullable]
            if isinstance(n, exp.Greatest):
                los = [p.lo for p in sure if p.lo is not None]
                lo = max(los) if los else None
                hi = max(p.hi for p in parts) if all(p.hi is not None for p in parts) else None  # type: ignore[type-var]
            else:
                his = [p.hi for p in sure if p.hi is not None]
                hi = min(his) if his else None
                lo = min(p.lo for p in parts) if all(p.lo is not None for p in parts) else None  # type: ignore[type-var]
            if lo is not None and hi is not None and lo > hi:
                lo = hi
            out = replace(out, lo=lo, hi=hi)
        sql = type(n)(this=parts[0].operand, expressions=[p.operand for p in parts[1:]])
        return replace(out, sql=sql, value=None, domain=None)

    _n_Least = _n_Greatest

    # -- arithmetic -------------------------------------------------------------------

    def _numeric_operand(self, t: Typed, op: str) -> Typed:
        if t.kind == "null":
            return replace(t, kind="int", lo=Decimal(0), hi=Decimal(0))
        if t.kind not in NUMERIC_KINDS:
            raise RewriteError("42883", f"operator {op} does not exist for type {t.type_name}",
                               "arithmetic is allowed on numeric values")  # fmt: skip
        if not t.bounded:
            raise unsupported(
                f"arithmetic ({op}) on a value without declared bounds is not allowed in "
                f"{self.context}: it could overflow for some rows only",
                "declare lower and upper bounds for the column in the metadata",
            )
        return t

    def _arith_result(
        self, sql: exp.Expression, parts: list[Typed], lo: Decimal, hi: Decimal, kind: str
    ) -> Typed:
        if kind == "int" and not (INT8_MIN <= lo and hi <= INT8_MAX):
            kind = "numeric"
        step = _finest([p.step for p in parts if p.step is not None])
        return Typed(sql, kind, lo, hi, None, nullable=any(p.nullable for p in parts),
                     constant=all(p.constant for p in parts), step=step,
                     columns=_cols(*parts))  # fmt: skip

    def _cast_for(self, t: Typed, kind: str) -> exp.Expression:
        if t.constant and isinstance(t.sql, exp.Literal):
            return t.sql.copy()
        return exp.cast(exp.Paren(this=t.operand), "bigint" if kind == "int" else "numeric")

    def _temporal_arith(self, n: exp.Expression, a: Typed, b: Typed) -> Typed:
        if isinstance(n, exp.Mul):
            # Only an interval times a number exists (`INTERVAL '1 day' * 30`); a date or
            # timestamp times anything would fail in PostgreSQL, after the charge.
            kinds = sorted([a.kind, b.kind], key=lambda k: k != "interval")
            if kinds[0] != "interval" or kinds[1] not in NUMERIC_KINDS:
                raise RewriteError("42883", f"operator does not exist: {a.type_name} * {b.type_name}",
                                   "dates and timestamps can be shifted by a constant interval (d + INTERVAL '1 day')")  # fmt: skip
            if not (a.constant and b.constant):
                raise unsupported(f"an interval times a column is not allowed in {self.context}: it can "
                                  "overflow for some rows", "multiply the interval by a constant")  # fmt: skip
            return Typed(exp.Mul(this=a.sql, expression=b.sql), "interval", nullable=False, constant=True)
        if isinstance(n, exp.Sub) and a.kind == b.kind == "date" and not (a.constant and b.constant):
            return _days_between(a, b)
        if not (a.constant and b.constant):
            shifted = _shifted(n, a, b)
            if shifted is not None:
                return shifted
            raise unsupported(
                f"this date arithmetic over columns is not allowed in {self.context}: it can "
                "fail on extreme dates",
                "a date or timestamp column plus or minus a constant interval of up to 1000 "
                "years, or a date plus or minus whole days, is allowed; or compare the column "
                "with a computed constant, e.g. d >= DATE '1995-01-01' + INTERVAL '1 month'",
            )
        # Constants: only the operators PostgreSQL has (an error would come for every
        # row, but after the charge).
        op = "+" if isinstance(n, exp.Add) else "-"
        kind = _CONSTANT_TEMPORAL.get((a.kind, op, b.kind))
        if kind is None:
            unknown = "text" in (a.kind, b.kind)
            raise RewriteError("42725" if unknown else "42883",
                               f"operator {'is not unique' if unknown else 'does not exist'}: "
                               f"{a.type_name if a.kind != 'text' else 'unknown'} {op} "
                               f"{b.type_name if b.kind != 'text' else 'unknown'}",
                               "cast the literal: DATE '1995-01-01', INTERVAL '1 day'")  # fmt: skip
        return Typed(type(n)(this=a.sql, expression=b.sql), kind, nullable=False, constant=True)

    def _n_Add(self, n: exp.Expression) -> Typed:
        a0, b0 = self.analyze(n.this), self.analyze(n.expression)
        if {a0.kind, b0.kind} & (TEMPORAL_KINDS | {"interval"}):
            return self._temporal_arith(n, a0, b0)
        sym = {exp.Add: "+", exp.Sub: "-", exp.Mul: "*"}[type(n)]  # type: ignore[index]
        a, b = self._numeric_operand(a0, sym), self._numeric_operand(b0, sym)
        assert a.lo is not None and a.hi is not None and b.lo is not None and b.hi is not None
        if isinstance(n, exp.Add):
            lo, hi = a.lo + b.lo, a.hi + b.hi
        elif isinstance(n, exp.Sub):
            lo, hi = a.lo - b.hi, a.hi - b.lo
        else:
            prods = [a.lo * b.lo, a.lo * b.hi, a.hi * b.lo, a.hi * b.hi]
            lo, hi = min(prods), max(prods)
        kind = "int" if a.kind == b.kind == "int" else "numeric"
        if kind == "int" and not (INT8_MIN <= lo and hi <= INT8_MAX):
            kind = "numeric"
        sql = type(n)(this=self._cast_for(a, kind), expression=self._cast_for(b, kind))
        out = self._arith_result(sql, [a, b], lo, hi, kind)
        if isinstance(n, exp.Mul) and out.step is not None:
            others = [p.step for p in (a, b) if p.step is not None]
            if len(others) == 2:
                out = replace(out, step=others[0] * others[1])
        return replace(out, domain=_mapped_domain(n, a, b))

    _n_Sub = _n_Mul = _n_Add

    def _n_Neg(self, n: exp.Neg) -> Typed:
        a = self._numeric_operand(self.analyze(n.this), "-")
        assert a.lo is not None and a.hi is not None
        sql = exp.Neg(this=self._cast_for(a, a.kind if a.kind == "int" else "numeric"))
        out = self._arith_result(sql, [a], -a.hi, -a.lo, a.kind)
        if a.domain is not None and all(v is None or type(v) in (int, Decimal) for v in a.domain):
            out = replace(out, domain=tuple(None if v is None else -v for v in a.domain))  # type: ignore[operator]
        return out

    def _divisor(self, d: Typed) -> tuple[exp.Expression, Decimal | None]:
        """The divisor's SQL (NULLIF-guarded unless a non-zero constant) and its value."""
        if d.constant and d.lo is not None and d.lo == d.hi:
            if d.lo == 0:
                raise RewriteError("22012", "division by zero")
            return self._cast_for(d, d.kind), d.lo
        return exp.Nullif(this=self._cast_for(d, d.kind), expression=exp.Literal.number(0)), None

    def _n_Div(self, n: exp.Div) -> Typed:
        a = self._numeric_operand(self.analyze(n.this), "/")
        d = self._numeric_operand(self.analyze(n.expression), "/")
        assert a.lo is not None and a.hi is not None and d.lo is not None and d.hi is not None
        dsql, dval = self._divisor(d)
        both_int = a.kind == d.kind == "int"
        num = self._cast_for(a, "numeric")
        if both_int:
            # PostgreSQL's integer division truncates toward zero; div() on numeric does too.
            sql: exp.Expression = exp.Anonymous(this="div", expressions=[num, exp.cast(dsql, "numeric")])
        else:
            # typed: PostgreSQL's own division of these (numeric) operands; untyped,
            # sqlglot would cast a constant numerator to double precision and compare in
            # floating point.
            sql = exp.Div(this=num, expression=exp.cast(dsql, "numeric") if dval is None else dsql,
                          typed=True)  # fmt: skip
        amax = max(abs(a.lo), abs(a.hi))
        if dval is not None:
            qs = [a.lo / dval, a.hi / dval]
            lo, hi = min(qs), max(qs)
        elif d.lo > 0 or d.hi < 0:
            qs = [x / y for x in (a.lo, a.hi) for y in (d.lo, d.hi)]
            lo, hi = min(qs), max(qs)
        elif d.kind == "int":
            # A non-zero integer has magnitude >= 1 (zero became NULL).
            lo, hi = -amax, amax
        else:
            t = Typed(sql, "numeric", None, None, nullable=True, columns=_cols(a, d))
            return t
        if both_int:
            lo = lo.to_integral_value(rounding=ROUND_CEILING if lo < 0 else ROUND_FLOOR)
            hi = hi.to_integral_value(rounding=ROUND_FLOOR if hi > 0 else ROUND_CEILING)
        out = self._arith_result(sql, [a, d], lo, hi, "int" if both_int else "numeric")
        return replace(out, nullable=out.nullable or dval is None, step=None if not both_int else None)

    def _n_Mod(self, n: exp.Mod) -> Typed:
        a = self._numeric_operand(self.analyze(n.this), "%")
        d = self._numeric_operand(self.analyze(n.expression), "%")
        assert a.lo is not None and a.hi is not None and d.lo is not None and d.hi is not None
        dsql, _ = self._divisor(d)
        kind = "int" if a.kind == d.kind == "int" else "numeric"
        sql = exp.Mod(this=self._cast_for(a, kind), expression=dsql)
        m = max(abs(d.lo), abs(d.hi))
        lo = Decimal(0) if a.lo >= 0 else -m
        hi = Decimal(0) if a.hi <= 0 else m
        out = self._arith_result(sql, [a, d], lo, hi, kind)
        dom = tuple(range(int(lo), int(hi) + 1)) if kind == "int" and hi - lo < 100 else None
        return replace(out, nullable=True, domain=_dedup((*dom, None)) if dom else None)

    def _n_Abs(self, n: exp.Abs) -> Typed:
        a = self._numeric_operand(self.analyze(n.this), "ABS")
        assert a.lo is not None and a.hi is not None
        lo = Decimal(0) if a.lo <= 0 <= a.hi else min(abs(a.lo), abs(a.hi))
        hi = max(abs(a.lo), abs(a.hi))
        return self._arith_result(exp.Abs(this=self._cast_for(a, a.kind if a.kind == "int" else "numeric")),
                                  [a], lo, hi, a.kind)  # fmt: skip

    def _n_Sign(self, n: exp.Sign) -> Typed:
        a = self.analyze(n.this)
        if a.kind not in NUMERIC_KINDS:
            raise RewriteError("42883", f"SIGN needs a number, not {a.type_name}")
        arg = exp.cast(exp.Paren(this=a.operand), "numeric")
        return Typed(exp.Sign(this=arg), "numeric", Decimal(-1), Decimal(1), (-1, 0, 1, None),
                     nullable=a.nullable, columns=a.columns)  # fmt: skip

    def _rounding(self, n: exp.Expression, name: str) -> Typed:
        a = self._numeric_operand(self.analyze(n.this), name)
        assert a.lo is not None and a.hi is not None
        places = n.args.get("decimals")
        arg = exp.cast(exp.Paren(this=a.operand), "numeric")
        if places is not None:
            p = self.analyze(places)
            if not (p.constant and p.kind == "int" and p.lo is not None and abs(p.lo) <= 1000):
                raise unsupported(f"{name} needs a small integer literal as its second argument")
            sql = type(n)(this=arg, decimals=p.sql)
            step = Decimal(1).scaleb(-int(p.lo))
        else:
            sql = type(n)(this=arg)
            step = Decimal(1)
        lo = (a.lo - step).to_integral_value(rounding=ROUND_FLOOR)
        hi = (a.hi + step).to_integral_value(rounding=ROUND_CEILING)
        out = self._arith_result(sql, [a], lo, hi, "numeric")
        if a.kind != "float":  # (a float's conversion to numeric could pass its bound)
            # Monotone: every value lies on the step's grid between those of the bounds,
            # a public domain when short (a histogram's `FLOOR(x / 100000)` buckets).
            mode = {"FLOOR": ROUND_FLOOR, "CEIL": ROUND_CEILING, "ROUND": ROUND_HALF_UP, "TRUNC": ROUND_DOWN}[name]
            first, last = (v.quantize(step, rounding=mode) for v in (a.lo, a.hi))
            count = (last - first) / step + 1
            if count <= MAX_DERIVED_DOMAIN:
                grid = [first + i * step for i in range(int(count))]
                dom = tuple(Decimal(int(v)) if step >= 1 else v for v in grid)
                out = replace(out, domain=(*dom, None) if a.nullable else dom)
        return out

    def _n_Round(self, n: exp.Round) -> Typed:
        return self._rounding(n, "ROUND")

    def _n_Floor(self, n: exp.Floor) -> Typed:
        return self._rounding(n, "FLOOR")

    def _n_Ceil(self, n: exp.Ceil) -> Typed:
        return self._rounding(n, "CEIL")

    def _n_Trunc(self, n: exp.Expression) -> Typed:
        return self._rounding(n, "TRUNC")

    # -- casts ------------------------------------------------------------------------

    def _n_Cast(self, n: exp.Cast) -> Typed:
        a = self.analyze(n.this)
        to = n.to.this.name if isinstance(n.to, exp.DataType) else ""
        sqlto = n.to.copy()
        if a.constant and isinstance(a.sql, exp.Literal) and a.kind == "text":
            target = _kind_of_type(to)
            if target is None:
                raise unsupported(f"a cast to {n.to.sql(dialect='postgres')} is not supported")
            _check_literal_cast(str(a.sql.this), target)
            typed = Typed(exp.Cast(this=a.sql, to=sqlto), target, nullable=False, constant=True)
            if target in NUMERIC_KINDS:
                v = Decimal(str(a.sql.this).strip())
                typed = replace(typed, lo=v, hi=v, domain=(v,))
            return typed
        if a.kind == "null":
            target = _kind_of_type(to) or "null"
            return Typed(exp.Cast(this=a.sql, to=sqlto), target, domain=(None,), constant=True)
        if to in _INT_TYPES:
            lo_t, hi_t = _INT_TYPES[to]
            if a.kind == "bool" and to == "INT":
                return Typed(exp.Cast(this=a.sql, to=sqlto), "int", Decimal(0), Decimal(1),
                             (0, 1, None) if a.nullable else (0, 1), a.nullable,
                             columns=a.columns, pg_type="int4")  # fmt: skip
            if not a.bounded and isinstance(n.this, exp.Extract):
                # EXTRACT(YEAR ...)::int fails only for infinite dates: those become NULL.
                a = self._n_Extract(n.this, finite=True)
            if a.kind not in NUMERIC_KINDS or not a.bounded:
                raise unsupported(
                    f"a cast of {a.type_name} to {to.lower()} can fail for some rows",
                    "cast only bounded numbers to integers, or compare with typed literals",
                )
            assert a.lo is not None and a.hi is not None
            lo = a.lo.to_integral_value(rounding=ROUND_FLOOR)
            hi = a.hi.to_integral_value(rounding=ROUND_CEILING)
            if lo < lo_t or hi > hi_t:
                raise unsupported(f"a cast to {to.lower()} can overflow for values in "
                                  f"[{a.lo}, {a.hi}]")  # fmt: skip
            pg = {"INT": "int4", "SMALLINT": "int2", "BIGINT": "int8"}[to]
            if a.value is None or a.span_key is not None:
                # Whole numbers (EXTRACT) keep their listed values. Of declared dates, the
                # raw value keys groups (values outside the dates fall outside the list);
                # the clamped one is aggregated.
                dom = a.domain if a.domain is not None and all(
                    v is None or type(v) is int for v in a.domain) else None  # fmt: skip
                raw = a.sql
                if a.span_key is not None:
                    # A raw value outside the declared dates' range (an infinite year,
                    # epoch seconds of a far date) must not reach the cast, which would raise.
                    raw = exp.Case(ifs=[exp.If(this=exp.Between(this=exp.Paren(this=a.sql.copy()), low=exp.Literal.number(str(a.lo)),
                                                                 high=exp.Literal.number(str(a.hi))), true=a.sql.copy())])  # fmt: skip
                return Typed(exp.Cast(this=exp.Paren(this=raw), to=sqlto.copy()), "int", lo, hi,
                             dom, a.nullable, columns=a.columns, pg_type=pg,
                             value=None if a.value is None else exp.Cast(this=exp.Paren(this=a.operand), to=sqlto))  # fmt: skip
            return Typed(exp.Cast(this=exp.Paren(this=a.operand), to=sqlto), "int", lo, hi,
                         None, a.nullable, columns=a.columns, pg_type=pg)  # fmt: skip
        if to in _NUMERIC_TYPES or to in _FLOAT_TYPES:
            if a.kind not in NUMERIC_KINDS:
                raise unsupported(f"a cast of {a.type_name} to {to.lower()} can fail for some rows")
            if to in _NUMERIC_TYPES and n.to.expressions:
                # numeric(p, s) raises when a value has too many digits.
                raise unsupported("casts to numeric(p, s) can fail; cast to plain numeric")
            kind = "float" if to in _FLOAT_TYPES else "numeric"
            if kind == "float" and a.bounded and max(abs(a.lo), abs(a.hi)) > Decimal("1e300"):  # type: ignore[arg-type]
                raise unsupported("a cast to double precision could overflow")
            return replace(a, sql=exp.Cast(this=exp.Paren(this=a.operand), to=sqlto), value=None,
                           kind=kind, unit=False, pg_type=None)  # fmt: skip
        if to in _TEXT_TYPES:
            if n.to.expressions:
                raise unsupported("casts to varchar(n)/char(n) are not supported; cast to text")
            return Typed(exp.Cast(this=a.sql, to=exp.DataType.build("text")), "text",
                         nullable=a.nullable, columns=a.columns)  # fmt: skip
        if to in _TEMPORAL_TYPES:
            target = _TEMPORAL_TYPES[to]
            if a.kind not in TEMPORAL_KINDS:
                raise unsupported(f"a cast of {a.type_name} to {to.lower()} can fail for some rows")
            if a.kind == "date" and target != "date" or a.kind != "date" and target == "date":
                day = a
                span = a.span if a.value is not None and target == "timestamp" else None
                value = exp.Cast(this=a.value.copy(), to=sqlto.copy()) if span and a.value else None
                a = _date_as_timestamp(a) if target != "date" else a
                # A listed timestamp (DATE_TRUNC of declared dates) keeps its list as dates.
                dom = None
                if target == "date" and a.domain is not None:
                    dom = _dedup(tuple(v.date() if isinstance(v, datetime) else v for v in a.domain))
                sql = exp.Cast(this=a.sql, to=sqlto)
                return Typed(sql, target, nullable=a.nullable, columns=a.columns, constant=a.constant,
                             domain=dom, span=span, value=value, by_day=_cast_by_day(sql, a, day, target))  # fmt: skip
            return replace(a, sql=exp.Cast(this=a.sql, to=sqlto), kind=target, unit=False)
        if to == "BOOLEAN" and a.kind == "bool":
            return a
        raise unsupported(f"a cast of {a.type_name} to {n.to.sql(dialect='postgres')} is not "
                          "allowed on private rows", ROW_HINT)  # fmt: skip

    # -- dates ------------------------------------------------------------------------

    def _n_Extract(self, n: exp.Extract, finite: bool = False) -> Typed:
        """EXTRACT(field FROM d); with `finite`, of finite values only (others give NULL),
        so year-like fields and epoch get bounds an integer cast can be checked against."""
        field = n.this.name.lower() if isinstance(n.this, (exp.Var, exp.Identifier, exp.Literal)) else ""
        field = {"dayofweek": "dow", "dayofyear": "doy", "days": "day", "months": "month",
                 "years": "year", "hours": "hour", "minutes": "minute"}.get(field, field)  # fmt: skip
        if field not in _EXTRACT_RANGES:
            raise unsupported(f"EXTRACT({field.upper()} ...) is not supported",
                              "extract one of: " + ", ".join(sorted(_EXTRACT_RANGES)))  # fmt: skip
        a = self.analyze(n.expression)
        if a.kind not in TEMPORAL_KINDS:
            raise RewriteError("42883", f"EXTRACT needs a date or timestamp, not {a.type_name}")
        if field in ("hour", "minute") and a.kind == "date":
            raise RewriteError("0A000", f"EXTRACT({field.upper()}) of a date is not supported")
        rng = _EXTRACT_RANGES[field]
        if a.span is not None and a.value is not None:
            spanned = _extract_spanned(field, a)
            if spanned is not None:
                return spanned
        if rng is None and finite:
            src = exp.Case(ifs=[exp.If(this=exp.Anonymous(this="isfinite", expressions=[a.sql.copy()]),
                                       true=a.sql.copy())])  # fmt: skip
            sql = exp.Extract(this=exp.var(field.upper()), expression=src)
            flo, fhi = _FINITE_RANGES[field]
            return Typed(sql, "numeric", Decimal(flo), Decimal(fhi), None, True, columns=a.columns,
                         step=None if field == "epoch" else Decimal(1))  # fmt: skip
        sql = exp.Extract(this=exp.var(field.upper()), expression=a.sql)
        if rng is None:
            return Typed(sql, "numeric", nullable=a.nullable, columns=a.columns)
        lo, hi = Decimal(rng[0]), Decimal(rng[1])
        dom = None
        if field in _SMALL_DOMAIN_FIELDS:
            # Infinite dates give NULL for these fields; as a group key, such rows are
            # left out like any value outside a domain, so NULL is listed only for NULLs.
            dom = (*range(rng[0], rng[1] + 1), *((None,) if a.nullable else ()))
        value = key = None
        if a.span is not None and a.value is not None:
            value, key = exp.Extract(this=exp.var(field.upper()), expression=a.value.copy()), field
        by_day = _by_day(sql, a, "extract", field) if dom else None
        return Typed(sql, "numeric", lo, hi, dom, True, columns=a.columns, step=Decimal(1),
                     value=value, span_key=key, by_day=by_day)  # fmt: skip

    def _n_TimestampTrunc(self, n: exp.Expression) -> Typed:
        unit = n.args.get("unit")
        uname = unit.name.lower() if unit is not None else ""
        if uname not in _TRUNC_UNITS:
            raise unsupported(f"DATE_TRUNC unit {uname!r} is not supported",
                              "use one of: " + ", ".join(sorted(_TRUNC_UNITS)))  # fmt: skip
        a = self.analyze(n.this)
        if a.kind not in TEMPORAL_KINDS:
            raise RewriteError("42883", f"DATE_TRUNC needs a date or timestamp, not {a.type_name}")
        kind = "timestamptz" if a.kind in ("date", "timestamptz") else "timestamp"
        span = a.span if a.value is not None else None
        day = a
        a = _date_as_timestamp(a)
        if a.kind in ("timestamp", "timestamptz") and not a.constant:
            # Truncating the first timestamps PostgreSQL holds (4714 BC) leaves its range.
            a = replace(a, sql=_saturated(a.sql, a.kind, late=False), value=None)
        args = [exp.Literal.string(uname), a.sql]
        zone = n.args.get("zone")
        if zone is not None:  # date_trunc(unit, timestamptz, 'time zone')
            if not (isinstance(zone, exp.Literal) and zone.is_string) or a.kind == "timestamp":
                raise unsupported("DATE_TRUNC with a time zone needs a timestamptz and a string literal zone")
            _check_time_zone(str(zone.this))
            args.append(zone.copy())
        sql = exp.Anonymous(this="date_trunc", expressions=args)
        dom = None
        if span is not None and zone is None:
            # Values outside the declared dates truncate outside this list, and are left
            # out where it is a group key's domain.
            dom = _trunc_values(uname, span, kind, a.nullable)
        by_day = _by_day(sql, day, "trunc", uname) if dom else None
        return Typed(sql, kind, nullable=a.nullable, columns=a.columns, constant=a.constant,
                     domain=dom, by_day=by_day)  # fmt: skip

    _n_DateTrunc = _n_TimestampTrunc

    # The statement's clock: one value for every row (PostgreSQL fixes it when the
    # transaction starts), public, and never failing. Plans reading it are not answered
    # from the answer cache (see `reads_clock`).

    def _n_CurrentDate(self, n: exp.Expression) -> Typed:
        return Typed(exp.CurrentDate(), "date", nullable=False, constant=True)

    def _n_CurrentTimestamp(self, n: exp.Expression) -> Typed:
        return Typed(exp.CurrentTimestamp(), "timestamptz", nullable=False, constant=True)

    def _n_Localtimestamp(self, n: exp.Expression) -> Typed:
        return Typed(exp.Localtimestamp(), "timestamp", nullable=False, constant=True)

    def _n_StrToTime(self, n: exp.Expression) -> Typed:
        """TO_TIMESTAMP('literal', 'format') (BI tools' time filters): a checked constant."""
        value, fmt = n.this, n.args.get("format")
        what = "TO_DATE" if isinstance(n, exp.StrToDate) else "TO_TIMESTAMP"
        if not all(isinstance(x, exp.Literal) and x.is_string for x in (value, fmt)):
            raise unsupported(f"{what} is supported on string literals only (a column could "
                              "fail to parse for some rows)", "compare with a typed literal, e.g. DATE '1995-01-01'")  # fmt: skip
        assert isinstance(value, exp.Literal) and isinstance(fmt, exp.Literal)
        _check_time_literal(str(value.this), str(fmt.this), what)
        kind = "date" if isinstance(n, exp.StrToDate) else "timestamptz"
        return Typed(n.copy(), kind, nullable=False, constant=True)

    _n_StrToDate = _n_StrToTime

    def _n_TimeToStr(self, n: exp.TimeToStr) -> Typed:
        """TO_CHAR(date or timestamp, 'format'): never fails once dates are guarded."""
        a = self.analyze(n.this)
        fmt = n.args.get("format")
        if a.kind not in TEMPORAL_KINDS:
            raise unsupported(f"TO_CHAR of {a.type_name} is not supported on private rows",
                              "TO_CHAR formats dates and timestamps; for numbers use ROUND or a cast to text")  # fmt: skip
        if not (isinstance(fmt, exp.Literal) and fmt.is_string):
            raise unsupported("TO_CHAR needs a string literal as its format")
        dom = _to_char_values(n, a)
        day = a
        a = _date_as_timestamp(a)
        # Infinite dates and timestamps give NULL.
        sql = exp.TimeToStr(this=a.sql, format=fmt.copy())
        by_day = _by_day(sql, day, "to_char", _to_char_format(n) or "") if dom else None
        return Typed(sql, "text", nullable=True, columns=a.columns, domain=dom, by_day=by_day)

    def _n_WidthBucket(self, n: exp.Expression) -> Typed:
        """WIDTH_BUCKET(x, low, high, count): the bucket index, a small public domain."""
        a = self.analyze(n.this)
        if a.kind not in NUMERIC_KINDS or not a.bounded:
            raise unsupported("WIDTH_BUCKET needs a number with declared bounds (NaN would make it fail)")
        low, high = (self.analyze(n.args[k]) for k in ("min_value", "max_value"))
        if not all(b.constant and b.kind in NUMERIC_KINDS and b.lo is not None for b in (low, high)):
            raise unsupported("WIDTH_BUCKET needs number literals as its bounds")
        if low.lo == high.lo:
            raise RewriteError("2201G", "lower bound cannot equal upper bound")
        count = self._const_int(n.args.get("num_buckets"), "WIDTH_BUCKET", 1)
        buckets = int(Decimal(str(count.this)))
        # The clamped operand: no NaN or infinity reaches it.
        sql = exp.Anonymous(this="width_bucket", expressions=[a.operand, low.sql, high.sql, count])
        dom = (*range(buckets + 2), *((None,) if a.nullable else ())) if buckets <= 1000 else None
        return Typed(sql, "int", Decimal(0), Decimal(buckets + 1), dom, a.nullable, columns=a.columns,
                     step=Decimal(1), pg_type="int4")  # fmt: skip

    # -- strings ----------------------------------------------------------------------

    def _text(self, node: exp.Expression, what: str) -> Typed:
        t = self.analyze(node)
        if t.kind not in ("text", "null"):
            raise RewriteError("42883", f"{what} needs a text value, not {t.type_name}",
                               "cast the value to text first")  # fmt: skip
        return t

    def _const_int(self, node: exp.Expression | None, what: str, minimum: int | None) -> exp.Expression:
        if node is None:
            raise unsupported(f"{what} needs its arguments")
        t = self.analyze(node)
        if not (t.constant and t.kind == "int" and t.lo is not None):
            raise unsupported(f"{what} needs integer literals as arguments (a computed value "
                              "could make it fail for some rows)")  # fmt: skip
        if minimum is not None and t.lo < minimum:
            raise RewriteError("22011", f"{what}: argument {t.lo} is out of range")
        return t.sql

    def _text_result(self, sql: exp.Expression, parts: list[Typed]) -> Typed:
        return Typed(sql, "text", nullable=any(p.nullable for p in parts), columns=_cols(*parts))

    def _n_Lower(self, n: exp.Expression) -> Typed:
        a = self._text(n.this, type(n).__name__.upper())
        return self._text_result(type(n)(this=a.sql), [a])

    _n_Upper = _n_Initcap = _n_Lower

    def _n_Length(self, n: exp.Expression) -> Typed:
        a = self._text(n.this, "LENGTH")
        return Typed(exp.Anonymous(this="char_length", expressions=[a.sql]), "int", Decimal(0),
                     MAX_TEXT_LENGTH, None, a.nullable, columns=a.columns, step=Decimal(1),
                     pg_type="int4")  # fmt: skip

    def _n_Trim(self, n: exp.Trim) -> Typed:
        a = self._text(n.this, "TRIM")
        chars = n.expression
        args = [a]
        out = exp.Trim(this=a.sql, position=n.args.get("position"))
        if chars is not None:
            c = self._text(chars, "TRIM")
            args.append(c)
            out.set("expression", c.sql)
        return self._text_result(out, args)

    def _n_Substring(self, n: exp.Substring) -> Typed:
        a = self._text(n.this, "SUBSTRING")
        start = self._const_int(n.args.get("start"), "SUBSTRING", None)
        length = n.args.get("length")
        out = exp.Substring(this=a.sql, start=start)
        if length is not None:
            # A negative length raises an error in PostgreSQL.
            out.set("length", self._const_int(length, "SUBSTRING", 0))
        return self._text_result(out, [a])

    def _n_Left(self, n: exp.Expression) -> Typed:
        a = self._text(n.this, type(n).__name__.upper())
        k = self._const_int(n.expression, type(n).__name__.upper(), None)
        return self._text_result(type(n)(this=a.sql, expression=k), [a])

    _n_Right = _n_Left

    def _n_DPipe(self, n: exp.DPipe) -> Typed:
        a, b = self.analyze(n.this), self.analyze(n.expression)
        for t in (a, b):
            if t.kind not in ("text", "null"):
                raise RewriteError("42883", f"|| needs text values, not {t.type_name}",
                                   "cast the value to text first")  # fmt: skip
        return self._text_result(exp.DPipe(this=a.sql, expression=b.sql), [a, b])

    def _n_Concat(self, n: exp.Concat) -> Typed:
        parts = [self.analyze(e) for e in n.expressions]
        for t in parts:
            if t.kind in ("interval",):
                raise unsupported("CONCAT of intervals is not supported")
        sql = exp.Anonymous(this="concat", expressions=[p.sql for p in parts])
        return Typed(sql, "text", nullable=False, columns=_cols(*parts))

    def _n_Replace(self, n: exp.Expression) -> Typed:
        args = (n.this, n.expression, n.args.get("replacement"))
        if any(a is None for a in args):
            raise RewriteError("42883", "REPLACE takes three arguments: REPLACE(text, from, to)")
        a = self._text(args[0], "REPLACE")
        f = self._text(args[1], "REPLACE")
        r = self._text(args[2], "REPLACE")
        return self._text_result(exp.Anonymous(this="replace", expressions=[a.sql, f.sql, r.sql]),
                                 [a, f, r])  # fmt: skip

    def _n_StrPosition(self, n: exp.StrPosition) -> Typed:
        if n.args.get("position") is not None or n.args.get("occurrence") is not None:
            raise unsupported("POSITION with a start position is not supported")
        a = self._text(n.this, "POSITION")
        s = self._text(n.args["substr"], "POSITION")
        return Typed(exp.Anonymous(this="strpos", expressions=[a.sql, s.sql]), "int", Decimal(0),
                     MAX_TEXT_LENGTH, None, a.nullable or s.nullable, columns=_cols(a, s),
                     step=Decimal(1), pg_type="int4")  # fmt: skip

    def _split_part(self, text: exp.Expression, delimiter: exp.Expression, field: exp.Expression) -> Typed:
        """SPLIT_PART(text, delimiter, n): fails only for n = 0, so n must be a literal."""
        a = self._text(text, "SPLIT_PART")
        d = self._text(delimiter, "SPLIT_PART")
        k = self.analyze(field)
        if not (k.constant and k.kind == "int" and k.lo is not None and k.lo != 0):
            raise unsupported("SPLIT_PART needs a non-zero integer literal as its field number")
        return self._text_result(exp.Anonymous(this="split_part",
                                               expressions=[a.sql, d.sql, k.sql]), [a, d])  # fmt: skip

    def _n_SplitPart(self, n: exp.Expression) -> Typed:
        """SPLIT_PART as sqlglot 30 parses it."""
        return self._split_part(n.this, n.args["delimiter"], n.args["part_index"])

    def _n_Anonymous(self, n: exp.Anonymous) -> Typed:
        name = str(n.this).lower()
        args = n.expressions
        if name in ("btrim", "ltrim", "rtrim", "reverse", "md5") and 1 <= len(args) <= 2:
            parts = [self._text(a, name.upper()) for a in args]
            return self._text_result(exp.Anonymous(this=name, expressions=[p.sql for p in parts]),
                                     parts)  # fmt: skip
        if name in ("char_length", "character_length", "octet_length") and len(args) == 1:
            return self._n_Length(exp.Length(this=args[0]))
        if name in _CLOCK_FUNCTIONS and not args:
            return Typed(exp.Anonymous(this=name, expressions=[]), "timestamptz", nullable=False,
                         constant=True)  # fmt: skip
        if name == "date_part" and len(args) == 2 and isinstance(args[0], exp.Literal):
            return self._n_Extract(exp.Extract(this=exp.var(args[0].this), expression=args[1]))
        if name == "split_part" and len(args) == 3:
            return self._split_part(*args)
        raise unsupported(f"the function {name.upper()}() is not allowed in {self.context}",
                          ROW_HINT)  # fmt: skip


# -- helpers -----------------------------------------------------------------------------


def describe(n: exp.Expression) -> str:
    """A human name for a refused node, as the analyst wrote it: `the function F()` for a
    call, else the expression itself (an operator such as `~`, a row constructor...)."""
    if isinstance(n, exp.Anonymous):
        return f"the function {str(n.this).upper()}()"
    name = written_name(n) if isinstance(n, exp.Func) else None
    if name is not None:
        return f"the function {name}()"
    return f"the expression {written_sql(n)}"


def written_sql(n: exp.Expression, limit: int = 60) -> str:
    """`n` in PostgreSQL syntax, shortened to `limit` characters, for refusal messages
    (the analyst's own text: no data of the database)."""
    try:
        text = " ".join(n.sql(dialect="postgres").split())
    except Exception:  # noqa: BLE001 - a node sqlglot cannot render
        return type(n).__name__.upper()
    return text if len(text) <= limit else text[: limit - 3] + "..."


# strftime directives (sqlglot's spelling of PostgreSQL's YYYY, MM, DD, HH24, MI, SS, US)
# that Python parses as PostgreSQL does; a format with any other is refused.
_TIME_DIRECTIVES = re.compile(r"%[YmdHMSf]")


def _check_time_literal(value: str, fmt: str, what: str) -> None:
    """Refuse, before anything is charged, a literal that TO_TIMESTAMP would reject."""
    if "%" in _TIME_DIRECTIVES.sub("", fmt):
        raise unsupported(f"{what} with this format is not supported",
                          "use the fields YYYY, MM, DD, HH24, MI, SS and US, or a typed literal")  # fmt: skip
    try:
        datetime.strptime(value, fmt)
    except ValueError:
        raise RewriteError("22007", f'invalid value "{value}" for {what} with this format') from None


# Clock functions with a value fixed for the statement (not clock_timestamp()).
_CLOCK_FUNCTIONS = frozenset({"transaction_timestamp", "statement_timestamp"})
_CLOCK_NODES = (exp.CurrentDate, exp.CurrentTimestamp, exp.Localtimestamp)


def reads_clock(tree: exp.Expression) -> bool:
    """True when the statement's answer depends on when it runs (CURRENT_DATE, now()...)."""
    return any(isinstance(n, _CLOCK_NODES)
               or isinstance(n, exp.Anonymous) and str(n.this).lower() in _CLOCK_FUNCTIONS
               for n in tree.walk())  # fmt: skip


# Days between PostgreSQL's first and last dates (4713 BC to 5874897 AD): date - date fits int4.
_MAX_DAYS = Decimal(2147483494)


@functools.cache
def _known_zones() -> frozenset[str]:
    return frozenset(z.lower() for z in zoneinfo.available_timezones()) | {"utc", "gmt"}


def _check_time_zone(name: str) -> None:
    """Refuse, before anything is charged, a zone PostgreSQL may not know: it raises on
    the first row it reads, so the error would tell whether any row passed the filter.
    Only IANA names (PostgreSQL matches them ignoring case) are accepted."""
    if name.lower() not in _known_zones():
        raise RewriteError("22023", f'time zone "{name}" not recognized',
                           "use an IANA time zone name such as 'America/New_York' or 'UTC'")  # fmt: skip


def _day_range(t: Typed) -> tuple[int, int] | None:
    """The days since 1970-01-01 a date can be: a declared range (of its clamped value)
    or a date literal's day; None when unknown."""
    if t.span is not None and t.value is not None:
        return t.span
    if t.constant and isinstance(t.sql, exp.Cast) and isinstance(t.sql.this, exp.Literal):
        try:
            day = epoch_days(date.fromisoformat(str(t.sql.this.this).strip()))
        except ValueError:
            return None
        return day, day
    return None


def _days_between(a: Typed, b: Typed) -> Typed:
    """date - date in days, NULL when either is infinite (PostgreSQL raises there: an
    error that would tell whether such a row exists; a constant is guarded too, since
    the error would then tell whether any row is read at all).

    Between dates with declared bounds (or literals), the clamped dates are subtracted:
    finite, and bounded by the declared ranges, so the difference can be aggregated."""
    ra, rb = _day_range(a), _day_range(b)
    if ra is not None and rb is not None:
        sql = exp.Paren(this=exp.Sub(this=a.operand.copy(), expression=b.operand.copy()))
        return Typed(sql, "int", Decimal(ra[0] - rb[1]), Decimal(ra[1] - rb[0]), None,
                     a.nullable or b.nullable, columns=_cols(a, b), step=Decimal(1),
                     pg_type="int4")  # fmt: skip
    finite = exp.and_(*(exp.Anonymous(this="isfinite", expressions=[t.sql.copy()]) for t in (a, b)))
    sql = exp.Case(ifs=[exp.If(this=finite, true=exp.Sub(this=a.sql.copy(), expression=b.sql.copy()))])
    return Typed(sql, "int", -_MAX_DAYS, _MAX_DAYS, None, True, columns=_cols(a, b), step=Decimal(1),
                 pg_type="int4")  # fmt: skip


def _extract_spanned(field: str, a: Typed) -> Typed | None:
    """EXTRACT of a year-like field or epoch from a date with declared bounds (see
    rewriter/dates.py): bounds (and for years a domain) from those dates. The raw value
    keys groups and filters; the clamped one (`value`) is aggregated."""
    assert a.span is not None and a.value is not None
    first, last = from_epoch_days(a.span[0]), from_epoch_days(a.span[1])
    rng = extract_range(field, first, last)
    if rng is None:
        return None
    dom: tuple[object, ...] | None = extract_domain(field, first, last, MAX_DERIVED_DOMAIN)
    if dom is not None and a.nullable:
        dom = (*dom, None)
    var = exp.var(field.upper())
    sql = exp.Extract(this=var, expression=a.sql)
    return Typed(sql, "numeric", Decimal(rng[0]), Decimal(rng[1]), dom, True, columns=a.columns,
                 step=Decimal(1), value=exp.Extract(this=var.copy(), expression=a.value.copy()),
                 span_key=field, by_day=_by_day(sql, a, "extract", field) if dom else None)  # fmt: skip


def _by_day(key: exp.Expression, a: Typed, function: str, argument: str) -> DayKey | None:
    """How `key`, computed from `a` by `function` (see `dates.day_renderer`), is read by
    the day: when `a` is a bare date column with declared bounds, or such a column cast
    to timestamp (Metabase's `date_trunc('month', CAST(d AS timestamp))`); else None."""
    if a.span is None:
        return None
    if a.kind == "date" and isinstance(a.sql, exp.Column):
        column = a.sql
    elif a.by_day is not None and a.by_day.key is a.sql and a.by_day.function == "timestamp":
        column, function = a.by_day.date_sql, "trunc_naive" if function == "trunc" else function
    else:
        return None
    return DayKey(key, column, from_epoch_days(a.span[0]), from_epoch_days(a.span[1]), function, argument)


def _cast_by_day(key: exp.Expression, a: Typed, before: Typed, target: str) -> DayKey | None:
    """The day map of a cast between dates and timestamps (`before`: the value cast,
    `a`: it as the cast reads it): a declared date as timestamp, or DATE_TRUNC of one
    back to date (`CAST(DATE_TRUNC('week', d) AS DATE)`)."""
    if target == "timestamp" and before.kind == "date" and isinstance(before.sql, exp.Column) and before.span:
        return DayKey(key, before.sql, from_epoch_days(before.span[0]), from_epoch_days(before.span[1]),
                      "timestamp")  # fmt: skip
    by_day = a.by_day
    if target == "date" and by_day is not None and by_day.key is a.sql and by_day.function in ("trunc", "trunc_naive"):
        return DayKey(key, by_day.date_sql, by_day.first, by_day.last, "trunc_date", by_day.argument)
    return None


def _to_char_values(n: exp.TimeToStr, a: Typed) -> tuple[object, ...] | None:
    """Every TO_CHAR(d, format) of a date with declared bounds, for the formats
    rewriter/dates.py renders exactly (years, months, days, quarters, English month
    names), NULL too when the date is nullable; None otherwise. (The key reads the raw
    date: rows outside the declared bounds fall outside the domain, as for EXTRACT.)"""
    if a.kind != "date" or a.span is None or a.value is None:
        return None
    fmt = _to_char_format(n)
    if fmt is None:
        return None
    values = to_char_domain(fmt, from_epoch_days(a.span[0]), from_epoch_days(a.span[1]), MAX_DATE_DOMAIN)
    if values is None:
        return None
    return (*values, None) if a.nullable else values


def _to_char_format(n: exp.TimeToStr) -> str | None:
    """TO_CHAR's format as PostgreSQL receives it: sqlglot's round trip of the analyst's
    (None when it is not a plain string)."""
    written = Postgres().generator().format_time(n)
    if written is None or not (written.startswith("'") and written.endswith("'")):
        return None
    return written[1:-1].replace("''", "'")


def _trunc_values(unit: str, span: tuple[int, int], kind: str, nullable: bool) -> tuple[object, ...] | None:
    """Every DATE_TRUNC(unit, d) of the declared dates (UTC midnights; naive ones for a
    timestamp), NULL too when the date is nullable; None when there are too many."""
    values = trunc_domain(unit, from_epoch_days(span[0]), from_epoch_days(span[1]), MAX_DATE_DOMAIN)
    if values is None:
        return None
    out: tuple[object, ...] = values if kind == "timestamptz" else tuple(v.replace(tzinfo=None) for v in values)
    return (*out, None) if nullable else out


# Dates and timestamps a constant shift of up to _MAX_SHIFT_DAYS moves without leaving
# the range PostgreSQL can hold (4714 BC .. 294276 AD for timestamps); a finite value
# outside it is shifted to NULL rather than risk the "out of range" error, which would
# tell whether such a row exists. Infinite values shift to themselves, as in PostgreSQL.
_SHIFT_WINDOW = {"date": ("3000-01-01 BC", "200000-12-31"),
                 "timestamp": ("3000-01-01 00:00:00 BC", "200000-12-31 00:00:00")}  # fmt: skip
_MAX_SHIFT_DAYS = Decimal(366_000)  # 1000 years: far inside either margin of the window
_UNIT_DAYS = {"microsecond": Decimal(1) / 86_400_000_000, "millisecond": Decimal(1) / 86_400_000,
              "second": Decimal(1) / 86_400, "sec": Decimal(1) / 86_400, "minute": Decimal(1) / 1440,
              "min": Decimal(1) / 1440, "hour": Decimal(1) / 24, "day": Decimal(1), "week": Decimal(7),
              "month": Decimal(31), "mon": Decimal(31), "year": Decimal(366), "decade": Decimal(3660),
              "centurie": Decimal(36_600), "century": Decimal(36_600), "millennium": Decimal(366_000),
              "millennia": Decimal(366_000)}  # fmt: skip
_INTERVAL_PART = re.compile(r"([-+]?\d+(?:\.\d+)?)\s*([a-z]+)", re.IGNORECASE)


def _interval_text(t: Typed) -> str | None:
    """The text of a constant interval literal (`'1 day'::interval`, `INTERVAL '1' DAY`),
    or None for an interval that is not a plain literal."""
    node = t.sql
    if isinstance(node, exp.Cast) and isinstance(node.this, exp.Literal):
        return str(node.this.this)
    if isinstance(node, exp.Interval) and isinstance(node.this, exp.Literal):
        unit = node.args.get("unit")
        return str(node.this.this) + (f" {unit.name}" if unit is not None else "")
    return None


def _interval_days(t: Typed) -> Decimal | None:
    """An upper bound on the days a constant interval literal spans (months as 31 days,
    years as 366), or None for an interval that is not a plain literal."""
    text = _interval_text(t)
    if text is None:
        return None
    total = Decimal(0)
    for number, unit in _INTERVAL_PART.findall(text):
        days = _UNIT_DAYS.get(unit.lower().removesuffix("s"), _UNIT_DAYS.get(unit.lower()))
        if days is None:
            return None
        total += abs(Decimal(number)) * days
    return total


def _shifted(n: exp.Expression, a: Typed, b: Typed) -> Typed | None:
    """`column ± constant interval` (a date or timestamp column) or `date column ± whole
    days`, made total (see _SHIFT_WINDOW); None for any other temporal arithmetic."""
    column, shift = (b, a) if isinstance(n, exp.Add) and a.constant else (a, b)
    if column.constant or not shift.constant or column.kind not in _SHIFT_WINDOW:
        return None
    if shift.kind == "interval":
        days = _interval_days(shift)
        kind = "timestamp"
    elif shift.kind == "int" and column.kind == "date" and shift.lo is not None and shift.lo == shift.hi:
        days, kind = abs(shift.lo), "date"
    else:
        return None
    if days is None or days > _MAX_SHIFT_DAYS:
        return None
    lo, hi = (exp.cast(exp.Literal.string(v), column.kind) for v in _SHIFT_WINDOW[column.kind])
    safe = exp.or_(exp.Between(this=column.sql.copy(), low=lo, high=hi),
                   exp.not_(exp.Anonymous(this="isfinite", expressions=[column.sql.copy()])))  # fmt: skip
    def move(c: exp.Expression) -> exp.Expression:
        if column is a:
            return type(n)(this=c.copy(), expression=shift.sql.copy())
        return exp.Add(this=shift.sql.copy(), expression=c.copy())

    out = Typed(exp.Case(ifs=[exp.If(this=safe, true=move(column.sql))]), kind, nullable=True,
                columns=_cols(a, b))  # fmt: skip
    calendar = _calendar_shift(shift)
    if calendar is None:
        return out
    # A shift by whole months and days keeps midnights midnights: declared dates stay
    # declared (shifted; months added first, as PostgreSQL does, so a fiscal year
    # EXTRACT(YEAR FROM d + INTERVAL '6 months') has its years listed too) and, by whole
    # days, listed values stay listed (Metabase's Sunday weeks:
    # date_trunc('week', d + INTERVAL '1 day') + INTERVAL '-1 day').
    sign = -1 if isinstance(n, exp.Sub) else 1
    months, whole = sign * calendar[0], sign * calendar[1]
    if column.span is not None and column.value is not None:
        span = shifted_span(column.span, months, whole)
        if span is not None:
            # The clamped date lies within the declared dates, far inside the window: it
            # is shifted with no guard (and is NULL only where the date is), as numbers
            # are clamped before arithmetic.
            moved = exp.Paren(this=move(column.value))
            out = replace(out, sql=moved, value=moved.copy(), span=span, nullable=column.nullable)
    if months == 0 and column.domain is not None and all(v is None or isinstance(v, date) for v in column.domain):
        step = timedelta(days=whole)
        out = replace(out, domain=tuple(
            None if v is None else (v if isinstance(v, datetime) or kind == "date" else datetime(v.year, v.month, v.day)) + step
            for v in column.domain))  # fmt: skip
    return out


_CALENDAR_UNITS = {"day": (0, 1), "days": (0, 1), "week": (0, 7), "weeks": (0, 7), "mon": (1, 0),
                   "mons": (1, 0), "month": (1, 0), "months": (1, 0), "year": (12, 0), "years": (12, 0)}  # fmt: skip


def _calendar_shift(shift: Typed) -> tuple[int, int] | None:
    """The signed whole (months, days) a constant shift moves by (an integer of days, or
    an interval of whole years, months, weeks and days); None for anything else (hours
    would move midnights)."""
    if shift.kind == "int":
        return (0, int(shift.lo)) if shift.lo is not None and shift.lo == shift.hi else None
    text = _interval_text(shift)
    if text is None:
        return None
    parts = _INTERVAL_PART.findall(text)
    if not parts or _INTERVAL_PART.sub("", text).strip():
        return None
    months = days = 0
    for number, unit in parts:
        per = _CALENDAR_UNITS.get(unit.lower())
        if per is None or not re.fullmatch(r"[-+]?\d+", number):
            return None
        months, days = months + int(number) * per[0], days + int(number) * per[1]
    return months, days



# The last day a timestamp can hold: a later date raises when cast to a timestamp.
_LAST_TIMESTAMP_DATE = "294276-12-31"


def _date_as_timestamp(a: Typed) -> Typed:
    """A date column about to be read as a timestamp, made total.

    PostgreSQL raises for dates after 294276 AD (which a date can hold), and DATE_TRUNC
    or a time zone can move the first dates PostgreSQL holds (4714 BC) out of range: an
    error that would tell whether such a row exists. Dates after 294276 AD become
    'infinity' and dates before 3000 BC '-infinity', which a timestamp holds and which
    sort where those dates do. (Comparisons of a date with a timestamp need no guard:
    PostgreSQL's cross-type operators saturate instead of raising.)
    """
    if a.kind != "date" or a.constant:
        return a
    return replace(a, sql=_saturated(a.sql, "date", late=True), value=None)


def _saturated(sql: exp.Expression, kind: str, late: bool) -> exp.Expression:
    """`sql` (a date or timestamp) with values before 3000 BC as '-infinity' and, with
    `late`, dates after 294276 AD as 'infinity'."""
    first = _SHIFT_WINDOW["date" if kind == "date" else "timestamp"][0]
    ifs = [exp.If(this=exp.LT(this=sql.copy(), expression=exp.cast(exp.Literal.string(first), kind)),
                  true=exp.cast(exp.Literal.string("-infinity"), kind))]  # fmt: skip
    if late:
        ifs.insert(0, exp.If(this=exp.GT(this=sql.copy(), expression=exp.cast(exp.Literal.string(_LAST_TIMESTAMP_DATE), kind)),
                             true=exp.cast(exp.Literal.string("infinity"), kind)))  # fmt: skip
    return exp.Case(ifs=ifs, default=sql.copy())


def _widened(parts: list[Typed], out: Typed) -> list[Typed]:
    """The parts of a CASE/COALESCE/GREATEST whose result is a timestamp, dates guarded."""
    if out.kind not in ("timestamp", "timestamptz"):
        return parts
    return [_date_as_timestamp(p) for p in parts]


def written_name(n: exp.Func) -> str | None:
    """The function's name as PostgreSQL spells it (`TO_CHAR` and `STRING_AGG`, not
    sqlglot's TIME_TO_STR and GROUP_CONCAT); None where PostgreSQL writes it as an
    operator (`~`) or sqlglot cannot render it."""
    try:
        rendered = n.sql(dialect="postgres")
    except Exception:  # noqa: BLE001 - a node sqlglot cannot render
        return None
    name = rendered.split("(", 1)[0].strip()
    if "(" not in rendered or not name.replace("_", "").isalnum():
        return None
    return name.upper()


def _cols(*parts: Typed) -> frozenset[tuple[str, str]]:
    out: frozenset[tuple[str, str]] = frozenset()
    for p in parts:
        out |= p.columns
    return out


def _mapped_domain(n: exp.Expression, a: Typed, b: Typed) -> tuple[object, ...] | None:
    """The domain of `a op b` (+, -, *) when one side is a number constant and the other
    has a domain of numbers. (Computed from a clamped operand, a value can fall outside
    the list, like any value outside a domain: its rows are left out of the groups.)"""
    for keyed, const, left in ((a, b, True), (b, a, False)):
        if keyed.constant or keyed.domain is None:
            continue
        if not (const.constant and const.lo is not None and const.lo == const.hi and const.kind in NUMERIC_KINDS):
            continue
        if not all(v is None or type(v) in (int, Decimal) for v in keyed.domain):
            continue
        c = const.lo if const.kind != "int" else int(const.lo)
        return _dedup(tuple(None if v is None else _apply(n, (v, c) if left else (c, v)) for v in keyed.domain))
    return None


def _apply(n: exp.Expression, operands: tuple[object, object]) -> object:
    x, y = operands
    if isinstance(n, exp.Add):
        return x + y  # type: ignore[operator]
    return x - y if isinstance(n, exp.Sub) else x * y  # type: ignore[operator]


def _dedup(values: tuple[object, ...]) -> tuple[object, ...]:
    seen: list[object] = []
    for v in values:
        if not any(type(v) is type(s) and v == s for s in seen):
            seen.append(v)
    return tuple(seen)


def _finest(steps: list[Decimal]) -> Decimal | None:
    return min(steps) if steps else None


def _union(parts: list[Typed], what: str) -> Typed:
    """The type, bounds and domain of a value that is one of `parts` (CASE, COALESCE)."""
    kinds = {p.kind for p in parts if p.kind != "null"}
    if not kinds:
        # PostgreSQL resolves a CASE/COALESCE/GREATEST of only NULLs to text.
        return Typed(exp.Null(), "text", domain=(None,), constant=all(p.constant for p in parts),
                     pg_type="text")  # fmt: skip
    if kinds <= NUMERIC_KINDS:
        kind = "float" if "float" in kinds else ("numeric" if "numeric" in kinds else "int")
    elif len(kinds) == 1:
        kind = next(iter(kinds))
    elif kinds <= TEMPORAL_KINDS:
        kind = "timestamptz" if "timestamptz" in kinds else "timestamp"
    else:
        raise RewriteError(DATATYPE_ERROR, f"{what} types {' and '.join(sorted(kinds))} "
                           "cannot be matched")  # fmt: skip
    lo = hi = None
    nums = [p for p in parts if p.kind != "null"]
    if kind in NUMERIC_KINDS and all(p.bounded for p in nums):
        lo = min(p.lo for p in nums)  # type: ignore[type-var]
        hi = max(p.hi for p in nums)  # type: ignore[type-var]
    dom: tuple[object, ...] | None = ()
    for p in parts:
        if p.domain is None or dom is None:
            dom = None
        else:
            dom = _dedup((*dom, *p.domain))
    pg = None
    pgs = {p.type_name for p in parts if p.kind != "null"}
    if len(pgs) == 1:
        pg = next(iter(pgs))
    step = _finest([p.step for p in parts if p.step is not None])
    return Typed(exp.Null(), kind, lo, hi, dom, any(p.nullable for p in parts),
                 all(p.constant for p in parts), step=step, pg_type=pg,
                 columns=_cols(*parts))  # fmt: skip


def _kind_of_type(to: str) -> str | None:
    if to in _INT_TYPES:
        return "int"
    if to in _NUMERIC_TYPES:
        return "numeric"
    if to in _FLOAT_TYPES:
        return "float"
    if to in _TEXT_TYPES:
        return "text"
    if to in _TEMPORAL_TYPES:
        return _TEMPORAL_TYPES[to]
    if to == "BOOLEAN":
        return "bool"
    if to == "INTERVAL":
        return "interval"
    return None


_DATE_RE = re.compile(r"^\d{4}-\d{1,2}-\d{1,2}$")
# A conservative subset of PostgreSQL's interval input: "<number> <unit>" parts.
_INTERVAL_RE = re.compile(
    r"^(\s*[-+]?\d+(\.\d+)?\s*(microseconds?|milliseconds?|seconds?|secs?|minutes?|mins?|"
    r"hours?|days?|weeks?|months?|mons?|years?|decades?|centuries|century|millenniums?|"
    r"millennia)\s*)+$",
    re.IGNORECASE,
)


def _check_literal_cast(text: str, kind: str) -> None:
    """Refuse (before any budget is spent) a literal PostgreSQL would fail to cast."""
    s = text.strip()
    try:
        if kind in NUMERIC_KINDS:
            Decimal(s)
            if kind == "int" and "." in s:
                raise ValueError(s)
        elif kind == "date":
            if s.lower() not in ("infinity", "-infinity"):
                date.fromisoformat(s) if _DATE_RE.match(s) else datetime.fromisoformat(s)
        elif kind in ("timestamp", "timestamptz"):
            if s.lower() not in ("infinity", "-infinity"):
                datetime.fromisoformat(s)
        elif kind == "interval":
            if not _INTERVAL_RE.match(s):
                raise ValueError(s)
        elif kind == "bool":
            if s.lower() not in ("t", "f", "true", "false", "yes", "no", "on", "off", "1", "0"):
                raise ValueError(s)
    except (ValueError, InvalidOperation) as e:
        raise RewriteError(
            INVALID_TEXT, f"invalid input syntax for type {PG_NAMES.get(kind, kind)}: {text!r}"
        ) from e


def check_row_expr(node: exp.Expression, resolve: Resolver, context: str) -> Typed:
    """Analyze a row expression (kept for callers of the skeleton's API)."""
    return Analyzer(resolve, context).analyze(node)
