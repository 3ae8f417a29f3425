"""List parameters and three-part names through dpproxy, as drivers send them: psycopg's
`col = ANY(%s)` (a text-format array), asyncpg's `= ANY($1)` (a binary array, typed from
ParameterDescription), array literals in simple queries; `current_database()` and
`FROM tpch.public.t` answered for the database the client connected to."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import psycopg

from tests.e2e.conftest import ANALYSTS, Env, truth
from tests.support.proxy_process import ProxyProcess

# Epsilon 400 over at most two primitives: each count's discrete Laplace noise has scale
# 8/200 and is non-zero with probability 2e^-25/(1+e^-25) < 3e-11 (< 1e-6 per assertion).
EXACT = "SET dp.epsilon = 400"
BOUNDED = """SELECT coalesce(sum(least(n, 8)), 0) FROM (SELECT count(*) AS n FROM orders
    WHERE {} GROUP BY o_custkey) c"""


def _dsn(proxy: ProxyProcess) -> str:
    return proxy.dsn("alice", ANALYSTS["alice"].password)


def test_psycopg_list_parameters_count_exactly_as_in_lists(proxy: ProxyProcess, env: Env) -> None:
    cases: list[tuple[str, list[Any], str]] = [
        ("o_orderstatus = ANY(%s)", [["F", "P"]], "o_orderstatus IN ('F', 'P')"),
        ("o_orderstatus = ANY(%s)", [["O"]], "o_orderstatus IN ('O')"),  # same shape, new list
        ("o_orderpriority <> ALL(%s)", [["1-URGENT", "5-LOW"]], "o_orderpriority NOT IN ('1-URGENT', '5-LOW')"),
        ("o_custkey = ANY(%s)", [[1, 4, 7, 10]], "o_custkey IN (1, 4, 7, 10)"),
        ("o_orderstatus = ANY(%s)", [[]], "false"),
    ]
    with psycopg.connect(_dsn(proxy), autocommit=True) as conn:
        conn.execute(EXACT)
        for where, params, plain in cases:
            for binary in (False, True):  # text and binary results; parameters in text
                got = conn.execute(f"SELECT COUNT(*) FROM orders WHERE {where}", params,
                                   binary=binary).fetchone()  # fmt: skip
                assert got == truth(env.tpch_dsn, BOUNDED.format(plain))[0], (where, params)
        # Client-side binding writes the list as ARRAY[...] in a simple query.
        with psycopg.ClientCursor(conn) as cur:
            cur.execute("SELECT COUNT(*) FROM orders WHERE o_orderstatus = ANY(%s)", [["P", "O"]])
            assert cur.fetchone() == truth(env.tpch_dsn, BOUNDED.format("o_orderstatus IN ('P', 'O')"))[0]
        # Array literals, as psql users and some tools write them: the same text shape
        # with lists of other lengths (the literal-shape learner must not reuse one
        # list's plan for another), in the simple and the extended protocol.
        for items in (["F", "O"], ["P"], ["O", "P", "F"], ["F", "O"], []):
            literal = "{" + ",".join(items) + "}"
            plain = "o_orderstatus IN (" + ", ".join(f"'{i}'" for i in items) + ")" if items else "false"
            want = truth(env.tpch_dsn, BOUNDED.format(plain))[0]
            with psycopg.ClientCursor(conn) as cur:
                cur.execute(f"SELECT COUNT(*) FROM orders WHERE o_orderstatus = ANY('{literal}')")
                assert cur.fetchone() == want, literal
            got = conn.execute(f"SELECT COUNT(*) FROM orders WHERE o_orderstatus = ANY('{literal}')").fetchone()
            assert got == want, literal


def test_asyncpg_binary_array_parameters(proxy: ProxyProcess, env: Env) -> None:
    async def go() -> list[Any]:
        conn = await asyncpg.connect(host="127.0.0.1", port=proxy.port, user="alice", database="tpch",
                                     password=ANALYSTS["alice"].password, ssl=False)  # fmt: skip
        try:
            await conn.execute(EXACT)
            return [
                await conn.fetchval("SELECT COUNT(*) FROM orders WHERE o_custkey = ANY($1)", [2, 5, 8]),
                await conn.fetchval("SELECT COUNT(*) FROM orders WHERE o_orderstatus = ANY($1::text[])", ["P"]),
                await conn.fetchval("SELECT COUNT(*) FROM orders WHERE o_orderstatus <> ALL($1)", ["F", None]),
                await conn.fetchval("SELECT COUNT(*) FROM orders WHERE o_totalprice > $1::integer", 250000),
            ]
        finally:
            await conn.close()

    got = asyncio.run(go())
    assert got[0] == truth(env.tpch_dsn, BOUNDED.format("o_custkey IN (2, 5, 8)"))[0][0]
    assert got[1] == truth(env.tpch_dsn, BOUNDED.format("o_orderstatus IN ('P')"))[0][0]
    assert got[2] == 0  # `<> NULL` is NULL for every row: nothing is counted
    assert got[3] == truth(env.tpch_dsn, BOUNDED.format("o_totalprice > 250000"))[0][0]


def test_three_part_names_and_current_database(proxy: ProxyProcess, env: Env) -> None:
    with psycopg.connect(_dsn(proxy), autocommit=True) as conn:
        conn.execute(EXACT)
        cur = conn.execute("SELECT current_database(), current_catalog")
        assert [d.name for d in cur.description or []] == ["current_database", "current_catalog"]
        assert cur.fetchone() == ("tpch", "tpch")
        got = conn.execute("SELECT COUNT(*) FROM tpch.public.orders o JOIN tpch.public.nation n "
                           "ON o.o_shippriority = n.n_nationkey").fetchone()  # fmt: skip
        assert got == truth(env.tpch_dsn, """SELECT sum(least(n, 8)) FROM (SELECT count(*) AS n
            FROM orders JOIN nation ON o_shippriority = n_nationkey GROUP BY o_custkey) c""")[0]
        names = conn.execute('SELECT n_name FROM "tpch".public.nation ORDER BY 1 LIMIT 3').fetchall()
        assert names == truth(env.tpch_dsn, "SELECT n_name FROM nation ORDER BY 1 LIMIT 3")
        try:
            conn.execute("SELECT COUNT(*) FROM elsewhere.public.orders")
            raise AssertionError("a three-part name of another database was answered")
        except psycopg.errors.FeatureNotSupported as e:
            assert "cross-database references are not implemented" in str(e)
