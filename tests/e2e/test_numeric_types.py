"""Bounded numeric(p, s) columns clamped as integers: found in the catalog, answers equal
to the numeric clamp's (NaN, NULL and out-of-bounds rows included), and a query fails
(never overflows on a value or answers) once the column's type has changed.

Runs on a scratch copy of the session's TPC-H orders (o_totalprice is numeric(15,2)).
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from proxy.enforced_bounds import find_numeric_types
from rewriter.metadata import Metadata, TableMeta, with_numeric_types
from rewriter.parse import parse_one
from rewriter.rewrite import rewrite
from tests.support.catalog_facts import catalog_facts

QUERIES = [
    "SELECT o_orderpriority, COUNT(*), AVG(o_totalprice) FROM orders GROUP BY o_orderpriority",
    "SELECT SUM(o_totalprice) FROM orders WHERE o_orderstatus = 'F'",
    "SELECT o_orderstatus, SUM(o_totalprice), AVG(o_totalprice) FROM orders GROUP BY 1",
]


def found(dsn: str, meta: Metadata) -> dict[tuple[str, str], tuple[int, int, int, int]]:
    return catalog_facts(dsn, meta, find_numeric_types)


@pytest.fixture
def scratch(tpch_dsn: str, tpch_metadata: Metadata) -> Iterator[Metadata]:
    """The metadata, its orders read from scratch.orders: a copy with rows the clamp
    must handle (NaN, NULL, below and above the declared [0, 600000])."""
    with psycopg.connect(tpch_dsn, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS scratch CASCADE; CREATE SCHEMA scratch")
        conn.execute("CREATE TABLE scratch.orders AS SELECT * FROM public.orders")
        conn.execute("UPDATE scratch.orders SET o_totalprice = CASE o_orderkey % 97 "
                     "WHEN 1 THEN 'NaN' WHEN 2 THEN NULL WHEN 3 THEN -12.34 "
                     "WHEN 4 THEN 9999999999999.99 WHEN 5 THEN 600000.01 WHEN 6 THEN 600000 "
                     "ELSE o_totalprice END")  # fmt: skip
    orders = tpch_metadata.tables["orders"]
    yield tpch_metadata.model_copy(update={"tables": {
        "orders": TableMeta.model_validate({**orders.model_dump(by_alias=True), "schema": "scratch"}),
    }})  # fmt: skip
    with psycopg.connect(tpch_dsn, autocommit=True) as conn:
        conn.execute("DROP SCHEMA scratch CASCADE")


def test_integer_clamps_answer_as_the_numeric_clamp_does(tpch_dsn: str, scratch: Metadata) -> None:
    types = found(tpch_dsn, scratch)
    assert set(types) == {("orders", "o_totalprice")}
    assert types[("orders", "o_totalprice")][3] == 13  # numeric(15,2)
    typed = with_numeric_types(scratch, types)
    with psycopg.connect(tpch_dsn) as conn:
        for sql in QUERIES:
            plain, fast = rewrite(parse_one(sql), scratch).sql, rewrite(parse_one(sql), typed).sql
            assert "::int8, 0), 60000000)" in fast and "::int8, 0), 60000000)" not in plain
            assert "pg_attribute" in fast and "pg_attribute" not in plain
            assert conn.execute(fast).fetchall() == conn.execute(plain).fetchall(), sql


def test_a_changed_type_makes_the_query_fail_instead_of_overflowing(tpch_dsn: str, scratch: Metadata) -> None:
    sql = rewrite(parse_one(QUERIES[0]), with_numeric_types(scratch, found(tpch_dsn, scratch))).sql
    with psycopg.connect(tpch_dsn, autocommit=True) as conn:
        assert conn.execute(sql).fetchall()
        # Unconstrained, the column can hold a value whose steps overflow bigint: had the
        # query run, the cast would fail on that value (an error that depends on the data).
        conn.execute("ALTER TABLE scratch.orders ALTER COLUMN o_totalprice TYPE numeric")
        conn.execute("UPDATE scratch.orders SET o_totalprice = 1e30 WHERE o_orderkey % 97 = 7")
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute(sql).fetchall()
    assert found(tpch_dsn, scratch) == {}  # found again: plain numeric, the numeric clamp
