"""Dates with declared bounds: days since 1970-01-01 and the public values derived from
a declared range (the years, months or weeks it spans).

A date column may declare `lower`/`upper` dates. Those are public, so every value an
expression of the column can take inside them is public too: `EXTRACT(YEAR ...)` over
1992-01-01 .. 1998-12-31 is one of 1992..1998, `DATE_TRUNC('month', ...)` one of 84
month starts. Group keys with such a domain are released like declared domains (every
group, no partition selection), and MIN/MAX/quantiles of a date run over its days.
"""

from __future__ import annotations

from calendar import monthrange
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache

from sqlglot import exp

EPOCH = date(1970, 1, 1)


def epoch_days(d: date) -> int:
    """Days from 1970-01-01 to `d` (negative before it)."""
    return (d - EPOCH).days


def from_epoch_days(days: int) -> date:
    """The date `days` days after 1970-01-01."""
    return EPOCH + timedelta(days=days)


def date_literal(d: date) -> exp.Expression:
    """`d` as a typed SQL literal (DATE '1992-01-01')."""
    return exp.cast(exp.Literal.string(d.isoformat()), "date")


def days_sql(clamped: exp.Expression) -> exp.Expression:
    """The days since 1970-01-01 of a clamped (finite) date, as an integer."""
    return exp.Paren(this=exp.Sub(this=clamped.copy(), expression=date_literal(EPOCH)))


def _year_like(field: str, year: int) -> int:
    """EXTRACT(field) of a date in `year` (year >= 1, as declared bounds are)."""
    if field == "decade":
        return year // 10
    if field == "century":
        return (year + 99) // 100
    if field == "millennium":
        return (year + 999) // 1000
    return year


def extract_range(field: str, first: date, last: date) -> tuple[int, int] | None:
    """The least and greatest EXTRACT(field) over first..last, for the year-like fields
    and epoch (None for other fields: their ranges do not depend on the dates)."""
    if field == "epoch":
        return epoch_days(first) * 86_400, epoch_days(last) * 86_400
    if field == "isoyear":  # the ISO year of early January or late December differs by one
        return first.year - 1, last.year + 1
    if field in ("year", "decade", "century", "millennium"):
        return _year_like(field, first.year), _year_like(field, last.year)
    return None


def extract_domain(field: str, first: date, last: date, limit: int) -> tuple[int, ...] | None:
    """Every EXTRACT(field) value over first..last when a year-like field has at most
    `limit` of them (None otherwise)."""
    rng = extract_range(field, first, last)
    if rng is None or field == "epoch" or rng[1] - rng[0] + 1 > limit:
        return None
    return tuple(range(rng[0], rng[1] + 1))


def _truncated(unit: str, d: date) -> date:
    if unit == "week":  # ISO weeks start on Monday
        return d - timedelta(days=d.weekday())
    if unit == "month":
        return d.replace(day=1)
    if unit == "quarter":
        return d.replace(month=3 * ((d.month - 1) // 3) + 1, day=1)
    if unit == "year":
        return d.replace(month=1, day=1)
    if unit == "decade":
        return date(d.year - d.year % 10, 1, 1)
    return d  # day and finer units: a date is already midnight


def _next(unit: str, d: date) -> date:
    if unit == "week":
        return d + timedelta(days=7)
    if unit in ("month", "quarter"):
        months = d.month - 1 + (1 if unit == "month" else 3)
        return date(d.year + months // 12, months % 12 + 1, 1)
    if unit == "year":
        return date(d.year + 1, 1, 1)
    if unit == "decade":
        return date(d.year - d.year % 10 + 10, 1, 1)
    return d + timedelta(days=1)


# DATE_TRUNC units whose values over a date range are listed (century and millennium
# start at years ending in 01 and are too coarse to matter; they get no domain).
TRUNC_DOMAIN_UNITS = frozenset({"microseconds", "milliseconds", "second", "minute", "hour",
                                "day", "week", "month", "quarter", "year", "decade"})  # fmt: skip


# Few entries: a shifted date (d + 1, d + 2...) is a span of its own, and a list of
# 10,000 days holds about half a megabyte, so the caches stay bounded whatever is sent.
@lru_cache(maxsize=32)
def trunc_domain(unit: str, first: date, last: date, limit: int) -> tuple[datetime, ...] | None:
    """Every DATE_TRUNC(unit, d) for d in first..last, as the timestamptz values a UTC
    session computes (midnights UTC), when there are at most `limit` (None otherwise).
    (Cached: every reference to a declared date column lists its days.)"""
    if unit not in TRUNC_DOMAIN_UNITS or first.year < 10 or last.year >= 9990:
        return None
    out = []
    d = _truncated(unit, first)
    while d <= last:
        if len(out) == limit:
            return None
        out.append(datetime(d.year, d.month, d.day, tzinfo=UTC))
        d = _next(unit, d)
    return tuple(out)


def shifted_span(span: tuple[int, int], months: int, days: int) -> tuple[int, int] | None:
    """The days since 1970-01-01 of the first and last declared dates moved by months
    (the day of month clamped to the month's length, as PostgreSQL does), then days:
    monotone, so the ends move to the ends. None when they would leave years 1..9999."""
    out = []
    for day in span:
        d = from_epoch_days(day)
        year, month = divmod(d.month - 1 + months, 12)
        year += d.year
        if not 1 <= year <= 9999:
            return None
        moved = date(year, month + 1, min(d.day, monthrange(year, month + 1)[1]))
        try:
            out.append(epoch_days(moved + timedelta(days=days)))
        except OverflowError:
            return None
    return out[0], out[1]


# TO_CHAR patterns whose text dpproxy renders exactly as PostgreSQL does (English names,
# padded to 9 characters without FM; ISO years, weeks and days from the ISO calendar, as
# PostgreSQL's). Numeric patterns are accepted in upper case only, and a pattern with
# anything else gets no domain.
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")  # fmt: skip
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def _day(d: date) -> str:
    return _DAYS[d.weekday()]


# (pattern, renderer, reads the day): longest first where one pattern starts another.
_TO_CHAR_FIELDS: tuple[tuple[str, Callable[[date], str], bool], ...] = (
    ("FMMonth", lambda d: _MONTHS[d.month - 1], False),
    ("FMMONTH", lambda d: _MONTHS[d.month - 1].upper(), False),
    ("FMmonth", lambda d: _MONTHS[d.month - 1].lower(), False),
    ("FMDay", _day, True),
    ("FMDAY", lambda d: _day(d).upper(), True),
    ("FMday", lambda d: _day(d).lower(), True),
    ("FMMM", lambda d: str(d.month), False),
    ("FMDD", lambda d: str(d.day), True),
    ("Month", lambda d: _MONTHS[d.month - 1].ljust(9), False),
    ("MONTH", lambda d: _MONTHS[d.month - 1].upper().ljust(9), False),
    ("month", lambda d: _MONTHS[d.month - 1].lower().ljust(9), False),
    ("Mon", lambda d: _MONTHS[d.month - 1][:3], False),
    ("MON", lambda d: _MONTHS[d.month - 1][:3].upper(), False),
    ("mon", lambda d: _MONTHS[d.month - 1][:3].lower(), False),
    ("Day", lambda d: _day(d).ljust(9), True),
    ("DAY", lambda d: _day(d).upper().ljust(9), True),
    ("day", lambda d: _day(d).lower().ljust(9), True),
    ("Dy", lambda d: _day(d)[:3], True),
    ("DY", lambda d: _day(d)[:3].upper(), True),
    ("dy", lambda d: _day(d)[:3].lower(), True),
    ("YYYY", lambda d: f"{d.year:04d}", False),
    ("YY", lambda d: f"{d.year % 100:02d}", False),
    ("IYYY", lambda d: f"{d.isocalendar()[0]:04d}", True),
    ("IW", lambda d: f"{d.isocalendar()[1]:02d}", True),
    ("ID", lambda d: str(d.isoweekday()), True),
    ("MM", lambda d: f"{d.month:02d}", False),
    ("DDD", lambda d: f"{d.timetuple().tm_yday:03d}", True),
    ("DD", lambda d: f"{d.day:02d}", True),
    ("D", lambda d: str(d.isoweekday() % 7 + 1), True),  # Sunday is 1
    ("WW", lambda d: f"{(d.timetuple().tm_yday - 1) // 7 + 1:02d}", True),
    ("W", lambda d: str((d.day - 1) // 7 + 1), True),
    ("Q", lambda d: str((d.month - 1) // 3 + 1), False),
)
_TO_CHAR_SEPARATORS = frozenset(" -/.,:_")
# Days a domain is read from (about 270 years); wider ranges get no domain.
_TO_CHAR_MAX_DAYS = 100_000


def _to_char_parts(fmt: str) -> tuple[list[str | Callable[[date], str]], bool] | None:
    """A TO_CHAR format as literal text and field renderers, and whether a field reads
    the day; None when it holds a pattern this module does not render exactly."""
    parts: list[str | Callable[[date], str]] = []
    daily = False
    i = 0
    while i < len(fmt):
        ch = fmt[i]
        if ch == '"':  # quoted text is copied without its quotes
            end = fmt.find('"', i + 1)
            if end < 0 or "\\" in fmt[i:end]:
                return None
            parts.append(fmt[i + 1 : end])
            i = end + 1
            continue
        if ch in _TO_CHAR_SEPARATORS:
            parts.append(ch)
            i += 1
            continue
        field = next((f for f in _TO_CHAR_FIELDS if fmt.startswith(f[0], i)), None)
        if field is None:
            return None
        parts.append(field[1])
        daily = daily or field[2]
        i += len(field[0])
    return parts, daily


@lru_cache(maxsize=64)
def to_char_domain(fmt: str, first: date, last: date, limit: int) -> tuple[str, ...] | None:
    """Every TO_CHAR(d, fmt) for d in first..last, in the order of the first day giving
    each (years 1000..9998 only: YYYY is four digits, and the last day has a next); None for a format this
    module does not render, too many values, or too wide a range. (Cached: a column's
    declared dates are fixed, and a statement's rewrite should not redo it.)"""
    parsed = _to_char_parts(fmt)
    if parsed is None or first.year < 1000 or last.year >= 9999 or (last - first).days > _TO_CHAR_MAX_DAYS:
        return None
    parts, daily = parsed
    seen: dict[str, None] = {}
    # Without a day field, every day of a month renders alike: one day per month will do.
    d = first if daily else first.replace(day=1)
    while d <= last:
        seen["".join(p if isinstance(p, str) else p(d) for p in parts)] = None
        if len(seen) > limit:
            return None
        d = d + timedelta(days=1) if daily else _next("month", d)
    return tuple(seen)


def _to_char_renderer(fmt: str) -> Callable[[date], str] | None:
    parsed = _to_char_parts(fmt)
    if parsed is None:
        return None
    parts = parsed[0]
    return lambda d: "".join(p if isinstance(p, str) else p(d) for p in parts)


# EXTRACT(field FROM d) of a date (year >= 1), for the fields whose values are listed.
_EXTRACT_OF_DAY: dict[str, Callable[[date], int]] = {
    "year": lambda d: d.year,
    "isoyear": lambda d: d.isocalendar()[0],
    "decade": lambda d: _year_like("decade", d.year),
    "century": lambda d: _year_like("century", d.year),
    "millennium": lambda d: _year_like("millennium", d.year),
    "month": lambda d: d.month,
    "quarter": lambda d: (d.month - 1) // 3 + 1,
    "day": lambda d: d.day,
    "dow": lambda d: d.isoweekday() % 7,  # Sunday is 0
    "isodow": lambda d: d.isoweekday(),
    "week": lambda d: d.isocalendar()[1],
}


def _trunc_renderer(unit: str, function: str) -> Callable[[date], object] | None:
    if unit not in TRUNC_DOMAIN_UNITS:
        return None
    zone = UTC if function == "trunc" else None

    def render(d: date) -> object:
        t = _truncated(unit, d)
        return t if function == "trunc_date" else datetime(t.year, t.month, t.day, tzinfo=zone)

    return render


def day_renderer(function: str, argument: str) -> Callable[[date], object] | None:
    """The value of a key over one date, as PostgreSQL computes it in a UTC session:
    `function` "date" (the date itself), "timestamp" (the date cast to timestamp),
    "extract" (EXTRACT(argument FROM d)), "trunc" (DATE_TRUNC(argument, d): a UTC
    midnight, as `trunc_domain` lists them), "trunc_naive" (the same of the date cast
    to timestamp: a midnight without zone), "trunc_date" (either cast back to date) or
    "to_char" (TO_CHAR(d, argument)). None for the fields, units and formats whose
    values are not listed."""
    if function == "date":
        return lambda d: d
    if function == "timestamp":
        return lambda d: datetime(d.year, d.month, d.day)
    if function == "extract":
        return _EXTRACT_OF_DAY.get(argument)
    if function in ("trunc", "trunc_naive", "trunc_date"):
        return _trunc_renderer(argument, function)
    if function == "to_char":
        return _to_char_renderer(argument)
    return None
