"""Declared bounds enforced by CHECK constraints: found in the catalog, clamp left out,
and a query fails (never answers unclamped) once such a constraint is gone.

Runs against the session's TPC-H database, whose loader declares the specification's
value ranges as CHECK constraints (proxy/sampledata.py, SPEC_RANGES); the constraint
that is dropped belongs to a scratch copy of customer.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import psycopg
import pytest

from proxy.enforced_bounds import find_enforced_bounds
from proxy.sampledata import SPEC_RANGES
from rewriter.metadata import Metadata, TableMeta, with_enforced_bounds
from rewriter.parse import parse_one
from rewriter.rewrite import rewrite
from tests.support.catalog_facts import catalog_facts


def found(dsn: str, meta: Metadata) -> dict[tuple[str, str], int]:
    return catalog_facts(dsn, meta, find_enforced_bounds)


def test_the_loaders_spec_ranges_are_found_for_declared_private_columns(
    tpch_dsn: str, tpch_metadata: Metadata
) -> None:
    checks = found(tpch_dsn, tpch_metadata)
    expected = {(t, c) for t, cols in SPEC_RANGES.items() for c in cols
                if t in tpch_metadata.private_tables()
                and tpch_metadata.tables[t].columns.get(c) is not None
                and tpch_metadata.tables[t].columns[c].bounded}  # fmt: skip
    assert ("customer", "c_acctbal") in expected
    assert set(checks) == expected


def test_rewritten_sql_answers_the_same_without_the_clamp(tpch_dsn: str, tpch_metadata: Metadata) -> None:
    meta = with_enforced_bounds(tpch_metadata, found(tpch_dsn, tpch_metadata))
    for sql, col in (("SELECT c_mktsegment, SUM(c_acctbal), AVG(c_acctbal) FROM customer GROUP BY 1",
                      "c_acctbal"),
                     ("SELECT l_returnflag, SUM(l_quantity), AVG(l_discount) FROM lineitem GROUP BY 1",
                      "l_quantity")):  # fmt: skip
        plain, skipped = rewrite(parse_one(sql), tpch_metadata).sql, rewrite(parse_one(sql), meta).sql
        assert "pg_constraint" not in plain and "pg_constraint" in skipped
        clamp = f'WHEN "t0"."{col}" < '
        assert clamp in plain and clamp not in skipped
        with psycopg.connect(tpch_dsn) as conn:
            assert conn.execute(skipped).fetchall() == conn.execute(plain).fetchall()


@pytest.fixture
def scratch_customer(tpch_dsn: str) -> Iterator[str]:
    """A copy of customer, with its own c_acctbal CHECK constraint, in schema scratch."""
    with psycopg.connect(tpch_dsn, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS scratch CASCADE; CREATE SCHEMA scratch")
        conn.execute("CREATE TABLE scratch.customer AS SELECT * FROM public.customer")
        conn.execute("ALTER TABLE scratch.customer ADD CONSTRAINT acctbal_range "
                     "CHECK (c_acctbal BETWEEN -999.99 AND 9999.99)")  # fmt: skip
    yield "scratch"
    with psycopg.connect(tpch_dsn, autocommit=True) as conn:
        conn.execute("DROP SCHEMA scratch CASCADE")


def test_a_dropped_constraint_makes_the_query_fail_instead_of_answering_unclamped(
    tpch_dsn: str, tpch_metadata: Metadata, scratch_customer: str
) -> None:
    table = tpch_metadata.tables["customer"]
    meta = tpch_metadata.model_copy(update={"tables": {
        "customer": TableMeta.model_validate({**table.model_dump(by_alias=True), "schema": scratch_customer}),
    }})  # fmt: skip
    checks = found(tpch_dsn, meta)
    assert set(checks) == {("customer", "c_acctbal")}
    sql = rewrite(parse_one("SELECT SUM(c_acctbal) FROM customer"), with_enforced_bounds(meta, checks)).sql
    with psycopg.connect(tpch_dsn, autocommit=True) as conn:
        (row,) = conn.execute(sql).fetchall()
        assert row[0] is not None
        # Out-of-bounds rows could only arrive without the constraint: drop it, plant one.
        conn.execute("ALTER TABLE scratch.customer DROP CONSTRAINT acctbal_range")
        conn.execute("UPDATE scratch.customer SET c_acctbal = 1e9 WHERE c_custkey = 1")
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute(sql).fetchall()
    # Found again from the catalog, the column is clamped once more.
    assert found(tpch_dsn, meta) == {}


@pytest.mark.parametrize(("declared", "check", "enforced"), [
    ((Decimal(-1000), Decimal(10000)), "c_acctbal >= -999.99 AND c_acctbal <= 9999.99", True),
    ((Decimal(-1000), Decimal(10000)), "c_acctbal > -1000 AND c_acctbal < 10000", True),
    ((Decimal(-1000), Decimal(10000)), "c_acctbal >= -2000 AND c_acctbal <= 9999.99", False),
    ((Decimal(-1000), Decimal(10000)), "c_acctbal >= -999.99", False),
    ((Decimal(-1000), Decimal(10000)), "c_acctbal >= 0 OR c_acctbal <= 10", False),
])  # fmt: skip
def test_only_checks_inside_the_declared_bounds_count(
    tpch_dsn: str, tpch_metadata: Metadata, scratch_customer: str,
    declared: tuple[Decimal, Decimal], check: str, enforced: bool,
) -> None:  # fmt: skip
    table = tpch_metadata.tables["customer"]
    col = table.columns["c_acctbal"].model_copy(update={"lower": declared[0], "upper": declared[1]})
    scratch = table.model_copy(update={"schema_": scratch_customer,
                                       "columns": {**table.columns, "c_acctbal": col}})  # fmt: skip
    meta = tpch_metadata.model_copy(update={"tables": {"customer": scratch}})
    with psycopg.connect(tpch_dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE scratch.customer DROP CONSTRAINT acctbal_range")
        conn.execute(f"ALTER TABLE scratch.customer ADD CHECK ({check})")
    assert (("customer", "c_acctbal") in found(tpch_dsn, meta)) is enforced
