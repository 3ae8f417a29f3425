"""Group keys of one declared-bounds date, turned into their domain index by the day.

A date column with declared bounds lists the values of its days and of EXTRACT,
DATE_TRUNC and TO_CHAR over them (rewriter/dates.py), and the bounded SQL turns each
row's key into its index in that list. Computing the key and matching it against the
list costs PostgreSQL a numeric EXTRACT or a formatted TO_CHAR per row and then a CASE
or a hash join (366 ISO weeks over TPC-H SF 1 orders: 1.8 s against 0.56 s for the
plain query). The index of the key is a function of the day, so dpproxy lists it once
per declared day and the row reads it from that array by its date: a subtraction and a
subscript. Days outside the declared bounds and NULL dates compute the key and look it
up in the list as before, so every row lands in exactly the group its key gives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from functools import lru_cache

from sqlglot import exp

from rewriter.dates import day_renderer

# Longer spans keep the CASE or join: one array entry per day is that many bytes of SQL.
MAX_INDEXED_DAYS = 20_000


@dataclass(frozen=True, slots=True)
class DayKey:
    """A key computed from one date column with declared bounds.

    `key` is the key expression it describes: a key whose SQL is another object (any
    later rewrite of the expression) does not use the map. `function` and `argument`
    name how the key is computed from the day (see `dates.day_renderer`).
    """

    key: exp.Expression
    date_sql: exp.Expression
    first: date
    last: date
    function: str
    argument: str = ""


def day_index_sql(day_key: DayKey, domain: Sequence[object], literals: Sequence[str], key_sql: str) -> str | None:
    """The SQL of a row's index in `domain` (NULL when its key is not listed), read by
    the day of its date; None when the declared span is too long to list.

    `literals` are the domain's values as typed SQL literals and `key_sql` the key's
    rendering: the path of dates outside the span (and of NULL dates) matches the key
    against them, without error for any date (`array_position` compares, never casts).
    """
    array = _day_array(day_key.function, day_key.argument, day_key.first, day_key.last, tuple(domain))
    if array is None:
        return None
    where = {v: j for j, v in enumerate(domain)}
    col = day_key.date_sql.sql(dialect="postgres")
    first = f"DATE '{day_key.first.isoformat()}'"
    last = f"DATE '{day_key.last.isoformat()}'"
    null_index = str(where[None]) if None in where else "NULL::int"
    return (f"CASE WHEN {col} IS NULL THEN {null_index} "
            f"WHEN {col} >= {first} AND {col} <= {last} THEN ({array})[{col} - {first} + 1] "
            f"ELSE {_outside_lookup(day_key, domain, literals, key_sql)} END")  # fmt: skip


# Keys that never decrease as the date grows (the date, its truncations, its years).
_MONOTONE = {("date", ""), ("timestamp", ""),
             *(("extract", f) for f in ("year", "isoyear", "decade", "century", "millennium"))}


def _outside_lookup(day_key: DayKey, domain: Sequence[object], literals: Sequence[str], key_sql: str) -> str:
    """The index of the key of a date outside the span: its key computed and matched.

    A key that never decreases with the date reaches, outside the span, only the listed
    values up to the first day's and from the last day's (the period a span starts or
    ends inside; ISO years listed beyond the span): a CASE over those few. Other keys
    (months, weekdays, most formats) may take any listed value again."""
    monotone = (day_key.function, day_key.argument) in _MONOTONE or day_key.function.startswith("trunc")
    if not monotone:
        return f"array_position(ARRAY[{', '.join(literals)}], {key_sql}) - 1"
    render = day_renderer(day_key.function, day_key.argument)
    assert render is not None
    low, high = render(day_key.first), render(day_key.last)
    whens = " ".join(f"WHEN {lit} THEN {j}" for j, (v, lit) in enumerate(zip(domain, literals, strict=True))
                     if v is not None and (v <= low or v >= high))  # type: ignore[operator]
    return f"CASE {key_sql} {whens} END" if whens else "NULL::int"


@lru_cache(maxsize=32)
def _day_array(function: str, argument: str, first: date, last: date, domain: tuple[object, ...]) -> str | None:
    """The SQL array of each declared day's index in `domain` (NULL where its key is
    not listed). Cached: rendering thousands of days costs milliseconds, and a column's
    declared dates are fixed."""
    days = (last - first).days + 1
    render = day_renderer(function, argument)
    if render is None or not 1 <= days <= MAX_INDEXED_DAYS:
        return None
    where = {v: j for j, v in enumerate(domain)}
    entries = []
    d = first
    for _ in range(days):
        j = where.get(render(d))
        entries.append("NULL" if j is None else str(j))
        d += timedelta(days=1)
    return "'{" + ",".join(entries) + "}'::" + ("int2" if len(domain) <= 32767 else "int4") + "[]"
