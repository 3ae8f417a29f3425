"""asyncpg through dpproxy: all-binary parameters and results, Describe before Bind,
pools with their reset query, the unnamed-statement path and cursors."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import asyncpg

from tests.e2e.conftest import ANALYSTS, Env, truth
from tests.support.proxy_process import ProxyProcess

PRIORITIES = {"1-URGENT", "2-HIGH", "3-MEDIUM", "4-NOT SPECIFIED", "5-LOW"}
BOUNDED_ABOVE = """
    SELECT sum(least(n, 8)) FROM (SELECT count(*) AS n FROM orders WHERE o_totalprice > {}
    GROUP BY o_custkey) c"""


def _kw(proxy: ProxyProcess) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": proxy.port, "user": "alice",
            "password": ANALYSTS["alice"].password, "database": "tpch", "ssl": False}  # fmt: skip


def run(coro: Any) -> Any:
    """Run a coroutine on a fresh event loop."""
    return asyncio.run(coro)


def test_fetch_with_binary_params(proxy: ProxyProcess, env: Env) -> None:
    async def go() -> tuple[Any, ...]:
        conn = await asyncpg.connect(**_kw(proxy))
        try:
            await conn.execute("SET dp.epsilon = 400")
            exact = await conn.fetchval("SELECT COUNT(*) FROM orders WHERE o_totalprice > $1", Decimal(200000))
            rows = await conn.fetch(
                "SELECT o_orderpriority, COUNT(*), SUM(o_totalprice) FROM orders "
                "WHERE o_orderdate < $1 GROUP BY o_orderpriority", date(1996, 1, 1))
            avg = await conn.fetchval("SELECT AVG(o_totalprice) FROM orders WHERE o_orderdate < $1",
                                      date(1996, 1, 1))
            # A timestamptz parameter, sent and returned in binary (no private table:
            # answered on the catalog mirror).
            ts = datetime(2024, 2, 29, 12, 30, 15, 123456, tzinfo=UTC)
            back = await conn.fetchval("SELECT $1::timestamptz AS t", ts)
            assert back == ts
            return exact, rows, avg
        finally:
            await conn.close()

    exact, rows, avg = run(go())
    # Epsilon 400, split over at most two primitives: each count has discrete Laplace noise
    # of scale 8/200, which is non-zero with probability 2e^-25/(1+e^-25) < 3e-11 (< 1e-6).
    assert exact == truth(env.tpch_dsn, BOUNDED_ABOVE.format(200000))[0][0]
    assert {r[0] for r in rows} == PRIORITIES
    assert all(isinstance(r[1], int) and isinstance(r[2], Decimal) for r in rows)
    assert isinstance(avg, Decimal) and 50000 < avg < 300000


def test_statement_cache_off_and_cursor(proxy: ProxyProcess) -> None:
    async def go() -> tuple[Any, ...]:
        conn = await asyncpg.connect(**_kw(proxy), statement_cache_size=0)
        try:
            await conn.execute("SET dp.epsilon = 50")
            first = await conn.fetchval("SELECT COUNT(*) FROM orders WHERE o_orderpriority = $1", "2-HIGH")
            second = await conn.fetchval("SELECT COUNT(*) FROM orders WHERE o_orderpriority = $1", "2-HIGH")
            async with conn.transaction():
                got = [r async for r in conn.cursor(
                    "SELECT o_orderpriority, COUNT(*) FROM orders GROUP BY o_orderpriority", prefetch=2)]
                cur = await conn.cursor("SELECT o_orderpriority, COUNT(*) FROM orders GROUP BY o_orderpriority")
                two = await cur.fetch(2)
                await cur.forward(1)
                rest = await cur.fetch(10)
            return first, second, got, two, rest
        finally:
            await conn.close()

    first, second, got, two, rest = run(go())
    assert first > 100 and second > 100
    assert {r[0] for r in got} == PRIORITIES
    assert len(two) == 2 and len(rest) == 2


def test_pool_reset_on_release(proxy: ProxyProcess) -> None:
    async def go() -> list[Any]:
        pool = await asyncpg.create_pool(**_kw(proxy), min_size=1, max_size=1)
        assert pool is not None
        try:
            async with pool.acquire() as conn:
                await conn.execute("SET dp.epsilon = 3")
                await conn.execute("SET application_name = 'dirty'")
            # One connection: the same one comes back, after asyncpg's reset query ran.
            async with pool.acquire() as conn:
                eps = await conn.fetchval("SHOW dp.epsilon")
                app = await conn.fetchval("SHOW application_name")
                jit = await conn.fetchval("SELECT current_setting('jit')")
                n = await conn.fetchval("SELECT COUNT(*) FROM orders")
            return [eps, app, jit, n]
        finally:
            await pool.close()

    eps, app, jit, n = run(go())
    assert app == "" and jit == "off" and n > 100
    # RESET ALL in the reset query brings dp.epsilon back to the configured default too.
    assert Decimal(eps) == Decimal("1.0")  # privacy.default_epsilon of the test config


def test_parameters_in_like_limit_having_and_over_aggregates(proxy: ProxyProcess, env: Env) -> None:
    # asyncpg prepares (Describe before Bind: the plan is made with the parameters NULL)
    # and encodes each argument by the type ParameterDescription reports.
    async def go() -> list[Any]:
        conn = await asyncpg.connect(**_kw(proxy))
        try:
            await conn.execute("SET dp.epsilon = 400")
            out = [
                await conn.fetchval("SELECT COUNT(*) FROM orders WHERE o_comment LIKE $1", "%special%"),
                await conn.fetch("SELECT o_orderpriority, COUNT(*) FROM orders GROUP BY 1 "
                                 "HAVING COUNT(*) > $1 ORDER BY 1 LIMIT $2", 0, 2),  # fmt: skip
                await conn.fetchval("SELECT COUNT(*) * $1 FROM orders WHERE o_orderstatus = 'F'", 3),
                await conn.fetchval("SELECT COUNT(*) FROM orders WHERE o_totalprice > $1", Decimal("NaN")),
                # asyncpg sends date.max and date.min as PostgreSQL's infinities.
                await conn.fetchval("SELECT COUNT(*) FROM orders WHERE o_orderdate BETWEEN $1 AND $2",
                                    date.min, date.max),
            ]
            try:
                await conn.fetchval("SELECT COUNT(*) FROM orders WHERE o_comment LIKE $1", "ends\\")
                out.append(None)
            except asyncpg.PostgresError as e:
                out.append(e.sqlstate)
            return out
        finally:
            await conn.close()

    like, top, tripled, above_nan, every_date, escape = run(go())
    # Epsilon 400 over at most two primitives: each count's noise is zero but with
    # probability < 3e-11 (see test_fetch_with_binary_params).
    assert like == truth(env.tpch_dsn, BOUNDED_ABOVE.replace("o_totalprice > {}", "o_comment LIKE '%special%'"))[0][0]
    assert [r[0] for r in top] == sorted(PRIORITIES)[:2]
    assert tripled == 3 * truth(env.tpch_dsn, BOUNDED_ABOVE.replace("o_totalprice > {}", "o_orderstatus = 'F'"))[0][0]
    assert above_nan == 0  # NaN sorts above every number: no row is above it
    assert every_date == truth(env.tpch_dsn, BOUNDED_ABOVE.replace("o_totalprice > {}", "true"))[0][0]
    assert escape == "22025"  # the bound pattern is checked as a literal one is
