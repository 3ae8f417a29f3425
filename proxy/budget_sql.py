"""Budgets in SQL: `SHOW dp.budget`, `SELECT ... FROM dp.budget`, `SET dp.delta`.

An analyst sees only their own budget rows, read from the ledger at the moment of the
statement (so admin changes show at once). Connection code calls in here with one line
per statement kind.
"""

from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from sqlglot import exp

from accounting.budget import budget_rows
from proxy.commands import Result
from proxy.config import MIN_DELTA
from proxy.errors import FEATURE_NOT_SUPPORTED, INVALID_PARAMETER_VALUE, ProxyError

if TYPE_CHECKING:
    from proxy.dp import DPEngine

# The first four columns are those of the walking skeleton (kept in place for clients).
BUDGET_COLUMNS: list[tuple[str, str]] = [
    ("dataset", "text"),
    ("budget_epsilon", "numeric"),
    ("spent_epsilon", "numeric"),
    ("remaining_epsilon", "numeric"),
    ("accountant", "text"),
    ("budget_delta", "numeric"),
    ("spent_delta", "numeric"),
    ("max_epsilon_per_query", "numeric"),
    ("renewal_period", "text"),
    ("queries_charged", "int8"),
]


def _d(f: Fraction | None, places: int = 6) -> Decimal | None:
    if f is None:
        return None
    q = (Decimal(f.numerator) / Decimal(f.denominator)).quantize(Decimal(1).scaleb(-places))
    return q.normalize() if q else Decimal(0)


def _d_small(f: Fraction) -> Decimal:
    # Deltas are tiny: keep significant digits rather than a fixed number of places.
    return (Decimal(f.numerator) / Decimal(f.denominator)).normalize() if f else Decimal(0)


async def budget_result(engine: DPEngine, analyst: str, dataset: str, tag: str = "SHOW") -> Result:
    """The analyst's own budget rows (one per dataset they have a budget on)."""
    rows = await budget_rows(engine.ledger.pool, analyst, dataset)
    out = [
        (r.dataset, _d(r.budget_epsilon), _d(r.spent_epsilon), _d(r.remaining_epsilon),
         r.accountant, _d_small(r.budget_delta), _d_small(r.spent_delta),
         _d(r.max_epsilon_per_query), str(r.renewal_period) if r.renewal_period else None,
         r.queries)
        for r in rows
    ]  # fmt: skip
    return Result(tag if tag == "SHOW" else f"SELECT {len(out)}", list(BUDGET_COLUMNS), out)


def budget_select_columns(tree: exp.Expression | None) -> list[int] | None:
    """For `SELECT * | cols FROM dp.budget`, the chosen column indexes; None otherwise."""
    if not isinstance(tree, exp.Select):
        return None
    src = tree.args.get("from") or tree.args.get("from_")
    table = src.this if src is not None else None
    if not (isinstance(table, exp.Table) and table.name.lower() == "budget"
            and table.db.lower() == "dp"):  # fmt: skip
        return None
    extra = [k for k in ("joins", "where", "group", "having", "order", "limit", "offset", "with")
             if tree.args.get(k)]  # fmt: skip
    names = [c[0] for c in BUDGET_COLUMNS]
    picked: list[int] = []
    for e in tree.expressions:
        if isinstance(e, exp.Star):
            picked += list(range(len(names)))
        elif isinstance(e, exp.Column) and not e.table and e.name.lower() in names:
            picked.append(names.index(e.name.lower()))
        else:
            extra.append(e.sql())
    if extra:
        raise ProxyError(
            FEATURE_NOT_SUPPORTED,
            f"dp.budget supports only a plain column list, not {', '.join(extra)}",
            hint=f"SELECT * FROM dp.budget, or choose among: {', '.join(names)}",
        )
    return picked


async def select_budget(engine: DPEngine, analyst: str, dataset: str, picked: list[int]) -> Result:
    """`SELECT ... FROM dp.budget`: the chosen columns of the analyst's budget rows."""
    full = await budget_result(engine, analyst, dataset, tag="SELECT")
    return Result(
        full.tag,
        [full.columns[i] for i in picked] if full.columns else [],
        [tuple(r[i] for i in picked) for r in full.rows],
    )


def parse_delta(text: str) -> str:
    """Validate `SET dp.delta`: a finite number in [0, 1); returns its canonical text."""
    try:
        d = Decimal(text.strip())
    except InvalidOperation as e:
        raise ProxyError(INVALID_PARAMETER_VALUE, f'invalid value for dp.delta: "{text}"',
                         hint="dp.delta takes a number such as 1e-7") from e  # fmt: skip
    if not d.is_finite() or math.isnan(float(d)) or d < 0 or d >= 1:
        raise ProxyError(
            INVALID_PARAMETER_VALUE,
            f"dp.delta must be a number at least 0 and below 1, not {text}",
            hint="for example SET dp.delta = 1e-7",
        )
    if 0 < d < MIN_DELTA:
        raise ProxyError(
            INVALID_PARAMETER_VALUE,
            f"dp.delta {text.strip()} is below the smallest positive delta dpproxy accepts, {MIN_DELTA}",
            hint="use 0 (pure DP: no partition selection) or a delta of at least 1e-12",
        )
    return str(d)


def session_delta(value: Any) -> Decimal | None:
    """The session's dp.delta as a Decimal (None: the config's default)."""
    return Decimal(value) if value else None
