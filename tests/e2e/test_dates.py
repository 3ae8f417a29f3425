"""Dates with declared bounds on the real TPC-H data (orders.o_orderdate and the line
item dates declare 1992-01-01 .. 1998-12-31): the values dpproxy lists for date keys
are the ones PostgreSQL computes, and MIN/MAX of dates come back as dates."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, timedelta

import psycopg
import pytest
from psycopg.abc import Buffer
from psycopg.adapt import Loader
from psycopg.types.datetime import DateLoader, TimestampLoader, TimestamptzLoader

from proxy.config import BackendConfig
from rewriter.metadata import Metadata, TableMeta
from rewriter.parse import parse_one
from rewriter.rewrite import rewrite
from tests.e2e.conftest import Env, refused_free, truth
from tests.e2e.test_engine import connect
from tests.support.proxy_process import ProxyProcess
from tests.unit.test_corpus import plan_of

KEYS = [
    "o_orderdate", "EXTRACT(YEAR FROM o_orderdate)", "EXTRACT(YEAR FROM o_orderdate)::int",
    "DATE_PART('year', o_orderdate)", "EXTRACT(QUARTER FROM o_orderdate)",
    "EXTRACT(MONTH FROM o_orderdate)::int", "EXTRACT(ISOYEAR FROM o_orderdate)",
    "EXTRACT(DECADE FROM o_orderdate)", "DATE_TRUNC('year', o_orderdate)",
    "DATE_TRUNC('quarter', o_orderdate)", "DATE_TRUNC('month', o_orderdate)",
    "DATE_TRUNC('week', o_orderdate)", "DATE_TRUNC('day', o_orderdate)",
    "DATE_TRUNC('month', o_orderdate)::date", "CAST(DATE_TRUNC('week', o_orderdate) AS DATE)",
    "DATE_TRUNC('month', CAST(o_orderdate AS timestamp))", "DATE_TRUNC('decade', o_orderdate)",
    # shifts by whole days keep the list (Metabase's weeks starting on Sunday)
    "date_trunc('week', (o_orderdate + INTERVAL '1 day')) + INTERVAL '-1 day'", "o_orderdate + 1",
    "o_orderdate - INTERVAL '2 weeks'", "EXTRACT(YEAR FROM o_orderdate - 100)",
    # and by whole months (a fiscal year; a month's last days clamp as PostgreSQL does)
    "EXTRACT(YEAR FROM o_orderdate + INTERVAL '6 months')::int",
    "DATE_TRUNC('month', o_orderdate - INTERVAL '1 year 1 day')", "DATE_TRUNC('day', o_orderdate + INTERVAL '1 month')",
    # TO_CHAR of the formats rewriter/dates.py renders
    "to_char(o_orderdate, 'YYYY')", "TO_CHAR(o_orderdate, 'YYYY-MM')", "to_char(o_orderdate, 'Mon YYYY')",
    "to_char(o_orderdate, 'YYYY\"Q\"Q')", "to_char(o_orderdate + 1, 'FMMonth')", "to_char(o_orderdate, 'DD/MM/YY')",
    "to_char(o_orderdate, 'IYYY-IW')", "to_char(o_orderdate, 'Dy')", "to_char(o_orderdate, 'D')",
]  # fmt: skip
TO_CHAR_FORMATS = ["YYYY", "YYYY-MM", "Mon YYYY", 'YYYY"Q"Q', "FMMonth", "Month", "MONTH", "mon", "MON-YY",
                   "DD.MM.YYYY", "FMDD/FMMM", "Q", "yyyy", "IYYY-IW", "Day", "DY", "FMday", "D", "ID", "DDD",
                   "WW", "W", "YYYY-MM-DD", "Dy, DD Mon YYYY"]  # fmt: skip


@pytest.mark.parametrize("zone", ["UTC", "Asia/Kolkata"])
def test_listed_date_keys_are_the_groups_postgresql_computes(env: Env, zone: str) -> None:
    # The rewritten SQL runs directly, in a session whose server default zone is `zone`
    # and which then takes dpproxy's session settings (TimeZone UTC among them): every
    # group PostgreSQL finds must be a listed value holding rows, and no listed value
    # may hold rows PostgreSQL does not group there. (With DATE_TRUNC computed at another
    # zone's midnight, every listed month would be empty.)
    wrong = []
    with psycopg.connect(env.tpch_dsn, autocommit=True, options=f"-c TimeZone={zone}") as conn:
        for name, value in BackendConfig(dsn="", ledger_dsn="").session_settings().items():
            conn.execute("SELECT set_config(%s, %s, false)", (name, value))
        for k in KEYS:
            q = f"SELECT {k} AS k, COUNT(*) FROM orders GROUP BY 1"
            p = plan_of(q)
            (key,) = p.keys
            assert not key.private and key.domain, k
            got = {key.domain[r[0]]: r[1] for r in conn.execute(p.sql).fetchall() if r[1]}  # type: ignore[arg-type]
            want = dict(conn.execute(q).fetchall())  # type: ignore[arg-type]
            if set(got) != set(want):
                wrong.append(f"{k}: listed groups with rows {sorted(set(got) ^ set(want), key=str)[:5]} differ")
            # Weighted counts (units of 1/S): at most PostgreSQL's count of each group.
            s = p.primitives[0].denominator
            wrong += [f"{k}: {v} has {n / s} > {want[v]}" for v, n in got.items() if n > want.get(v, 0) * s]
    assert not wrong, "\n".join(wrong)


def test_to_char_domains_are_postgresql_renderings_of_every_declared_day(env: Env) -> None:
    # Every day of the declared range, formatted by PostgreSQL, against the listed values
    # (a value listed wrongly would drop its rows: keys outside a domain are filtered).
    first, last = date(1992, 1, 1), date(1998, 12, 31)
    with psycopg.connect(env.tpch_dsn) as conn:
        for fmt in TO_CHAR_FORMATS:
            p = plan_of(f"SELECT to_char(o_orderdate, '{fmt}'), COUNT(*) FROM orders GROUP BY 1")
            (key,) = p.keys
            assert key.domain, fmt
            want = [r[0] for r in conn.execute(
                "SELECT to_char(d, %s) FROM generate_series(%s::date, %s::date, '1 day') AS d "
                "GROUP BY 1 ORDER BY min(d)", (fmt, first, last)).fetchall()]  # fmt: skip
            assert list(key.domain) == want, fmt
    # a pattern it does not render (hours, Julian days, centuries, localized names, digits) keeps partition selection
    for fmt in ("HH24", "J", "CC", "TMMonth", "YYYYMMDD1"):
        (key,) = plan_of(f"SELECT to_char(o_orderdate, '{fmt}'), COUNT(*) FROM orders GROUP BY 1").keys
        assert not key.domain, fmt


def test_min_max_median_of_dates_are_dates_near_the_truth(proxy: ProxyProcess, env: Env) -> None:
    # 8 of ~15 orders per customer are kept at random, so a released extreme is among
    # the extreme values, not always the true one: all 100 earliest (latest) orders are
    # dropped with probability far below 1e-20. At epsilon 9000 the rank target is 1.
    q = "SELECT MIN(o_orderdate), MAX(o_orderdate), MEDIAN(o_orderdate), MAX(o_orderdate) - MIN(o_orderdate) FROM orders"
    stride = timedelta(days=plan_of(q).aggregates[0].stride)
    with connect(proxy, "alice") as conn:
        conn.execute("SET dp.epsilon = 9000")
        cur = conn.execute(q)
        got_min, got_max, median, span = cur.fetchone()  # type: ignore[misc]
        oids = [c.type_code for c in cur.description or []]
        having = conn.execute("SELECT o_orderstatus FROM orders GROUP BY 1 "
                              "HAVING MAX(o_orderdate) >= '1992-01-01' ORDER BY 1").fetchall()  # fmt: skip
    assert oids == [1082, 1082, 1082, 23]  # date, date, date, and date - date: integer days
    ((true_min, min_100, true_max, max_100, true_median),) = truth(env.tpch_dsn, """
        SELECT min(d), min(d) FILTER (WHERE up = 100), max(d), max(d) FILTER (WHERE down = 100),
               percentile_disc(0.5) WITHIN GROUP (ORDER BY d)
        FROM (SELECT o_orderdate AS d, row_number() OVER (ORDER BY o_orderdate) AS up,
                     row_number() OVER (ORDER BY o_orderdate DESC) AS down FROM orders) o""")  # fmt: skip
    assert isinstance(got_min, date) and true_min - stride < got_min <= min_100  # type: ignore[operator]
    assert max_100 <= got_max < true_max + stride  # type: ignore[operator]
    assert abs((median - true_median).days) <= 31, (median, true_median)  # type: ignore[operator]
    assert span == (got_max - got_min).days
    assert having == [("F",), ("O",), ("P",)]


# Keys read by the day (rewriter/daykeys.py): every listed EXTRACT field, DATE_TRUNC
# unit and TO_CHAR format, the date itself, and pairs of them (the pivot's cells).
DAY_KEYS = [
    "d", *(f"EXTRACT({f} FROM d)" for f in ("YEAR", "ISOYEAR", "DECADE", "CENTURY", "MILLENNIUM", "MONTH",
                                           "QUARTER", "DAY", "DOW", "ISODOW", "WEEK")),
    *(f"DATE_TRUNC('{u}', d)" for u in ("day", "week", "month", "quarter", "year", "decade", "hour")),
    *(f"to_char(d, '{fmt}')" for fmt in TO_CHAR_FORMATS),
    # through casts: Metabase's date_trunc of the date as timestamp, and back to date
    "DATE_TRUNC('month', CAST(d AS timestamp))", "CAST(DATE_TRUNC('week', d) AS DATE)",
    "DATE_TRUNC('quarter', d)::date", "DATE_TRUNC('week', CAST(d AS timestamp))::date",
    "EXTRACT(YEAR FROM CAST(d AS timestamp))", "EXTRACT(DOW FROM d::timestamp)",
]  # fmt: skip
DAY_KEY_PAIRS = [("EXTRACT(YEAR FROM d)", "EXTRACT(MONTH FROM d)"), ("to_char(d, 'Dy')", "EXTRACT(QUARTER FROM d)"),
                 ("EXTRACT(ISODOW FROM d)", "d IS NULL"), ("DATE_TRUNC('year', d)", "to_char(d, 'IYYY-IW')")]  # fmt: skip


@pytest.fixture(scope="module")
def scratch_days(tpch_dsn: str) -> Iterator[Metadata]:
    """scratch_days.days: one row per unit, for every day from seven months before the
    declared 1992-01-01 .. 1998-12-31 to six months after, NULL, both infinities, and
    dates far before and after (inside the range where dpproxy reads a date as it is);
    its metadata declares those bounds."""
    with psycopg.connect(tpch_dsn, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS scratch_days CASCADE; CREATE SCHEMA scratch_days")
        conn.execute("CREATE TABLE scratch_days.days AS SELECT row_number() OVER ()::int AS uid, d::date AS d "
                     "FROM generate_series(DATE '1991-06-01', DATE '1999-06-30', '1 day') AS d")  # fmt: skip
        conn.execute("INSERT INTO scratch_days.days VALUES (-1, NULL), (-2, 'infinity'), (-3, '-infinity'), "
                     "(-4, '2999-06-01 BC'), (-5, '200000-06-15'), (-6, NULL)")  # fmt: skip
    yield Metadata(dataset="s", tables={"days": TableMeta.model_validate({
        "schema": "scratch_days", "privacy_unit": "uid", "max_rows": 1, "columns": {
            "uid": {"type": "integer", "nullable": False},
            "d": {"type": "date", "lower": "1992-01-01", "upper": "1998-12-31"}}})})  # fmt: skip
    with psycopg.connect(tpch_dsn, autocommit=True) as conn:
        conn.execute("DROP SCHEMA scratch_days CASCADE")


def _or_text(loader: type[Loader]) -> type[Loader]:
    """`loader`, giving the text of values Python's dates cannot hold (infinity)."""

    class OrText(loader):  # type: ignore[valid-type,misc]
        def load(self, data: Buffer) -> object:
            try:
                return super().load(data)
            except psycopg.DataError:
                return bytes(data).decode()

    return OrText


@pytest.mark.parametrize("key_list", [(k,) for k in DAY_KEYS] + DAY_KEY_PAIRS, ids=" / ".join)
def test_keys_read_by_the_day_are_the_groups_of_the_keys_themselves(
    tpch_dsn: str, scratch_days: Metadata, key_list: tuple[str, ...]
) -> None:
    # Days inside the declared bounds read their index from the per-day array; the
    # others (outside them, infinite, NULL) take the key's own value: every row must
    # land in the group PostgreSQL gives it, and only groups of listed values count.
    keys, n = ", ".join(key_list), len(key_list)
    cols = ", ".join(str(i + 1) for i in range(n))
    plan = rewrite(parse_one(f"SELECT {keys}, COUNT(*) FROM days GROUP BY {cols}"), scratch_days)
    assert "::int2[])[" in plan.sql, "the key is not read by the day"
    s = plan.primitives[0].denominator
    with psycopg.connect(tpch_dsn, autocommit=True) as conn:
        for name, value in BackendConfig(dsn="", ledger_dsn="").session_settings().items():
            conn.execute("SELECT set_config(%s, %s, false)", (name, value))
        for oid, loader in (("date", DateLoader), ("timestamp", TimestampLoader), ("timestamptz", TimestamptzLoader)):
            conn.adapters.register_loader(oid, _or_text(loader))
        got = {tuple(k.domain[j] for k, j in zip(plan.keys, r[:n], strict=True)): r[n]
               for r in conn.execute(plan.sql).fetchall() if r[n]}  # fmt: skip
        listed = [set(k.domain) for k in plan.keys]
        want = {r[:n]: r[n] * s for r in conn.execute(f"SELECT {keys}, COUNT(*) FROM scratch_days.days GROUP BY {cols}")
                if all(v in dom for v, dom in zip(r[:n], listed, strict=True))}  # fmt: skip
    assert got == want
    assert any(None in k for k in got)  # NULL dates: a listed group of their own


@pytest.mark.parametrize(("query", "sqlstate"), [
    ("SELECT ROUND(MIN(o_orderdate)::numeric, 1) FROM orders", "42846"),
    ("SELECT MAX(o_orderdate)::int FROM orders", "42846"),
    ("SELECT COUNT(*)::date FROM orders", "42846"),
    ("SELECT (COUNT(*) > 5)::bigint FROM orders", "42846"),
    ("SELECT MIN(o_orderdate)::timestamp FROM orders", "0A000"),
    ("SELECT SUM(o_totalprice)::interval FROM orders", "0A000"),
    ("SELECT ABS(MIN(o_orderdate)) FROM orders", "42883"),
    ("SELECT COALESCE(MIN(o_orderdate), 0) FROM orders", "42804"),
    ("SELECT o_orderstatus FROM orders GROUP BY 1 HAVING COUNT(*) AND TRUE", "42804"),
])  # fmt: skip
def test_what_fails_on_every_released_value_is_refused_before_the_charge(
    proxy: ProxyProcess, query: str, sqlstate: str
) -> None:
    # PostgreSQL has no cast between dates and numbers, nor abs() of a date: such
    # post-processing failed only once the query had run and been charged.
    with connect(proxy, "alice") as conn:
        assert refused_free(conn, query) == sqlstate
        conn.execute("SET dp.epsilon = 9000")
        row = conn.execute("SELECT MIN(o_orderdate)::text, (COUNT(*) > 5)::int, (COUNT(*) > 5)::text, "
                           "(COUNT(*) < 5)::char FROM orders").fetchone()  # fmt: skip
    assert row is not None and row[1:] == (1, "true", "f") and date.fromisoformat(row[0])
