"""TPC-H sample data, the reader role, and the example metadata against the real schema."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import psycopg
import pytest
from psycopg import errors, sql

from proxy.pgcluster import PgCluster
from proxy.sampledata import TPCH_TABLE_NAMES, create_reader_role, load_tpch
from rewriter.metadata import ColumnType, Metadata

READER_PASSWORD = "reader-secret"


def test_all_tables_loaded(tpch_dsn: str) -> None:
    with psycopg.connect(tpch_dsn) as conn:
        counts = {
            t: conn.execute(sql.SQL("SELECT count(*) FROM public.{}").format(sql.Identifier(t))).fetchone()[0]  # type: ignore[index]
            for t in TPCH_TABLE_NAMES
        }
    assert counts["region"] == 5 and counts["nation"] == 25
    assert counts["customer"] == 1500 and counts["orders"] == 15000
    assert all(n > 0 for n in counts.values())


def test_keys_and_comments(tpch_dsn: str) -> None:
    with psycopg.connect(tpch_dsn) as conn:
        constraints = set(conn.execute(
            "SELECT conrelid::regclass::text, contype, confrelid::regclass::text "
            "FROM pg_constraint WHERE connamespace = 'public'::regnamespace"
        ).fetchall())
        comment = conn.execute(
            "SELECT col_description('public.orders'::regclass, 2), obj_description('public.customer'::regclass)"
        ).fetchone()
    primary = {rel for rel, kind, _ in constraints if kind == "p"}
    assert primary == set(TPCH_TABLE_NAMES)
    assert ("orders", "f", "customer") in constraints
    assert ("lineitem", "f", "orders") in constraints
    assert ("customer", "f", "nation") in constraints
    assert comment is not None and all(comment)


def test_unit_index_clustered_and_all_visible_pages(pg_cluster: PgCluster, unique_name: Callable[[str], str]) -> None:
    """orders' privacy-unit column has an index of its own, the rows are stored in its
    order, and every page is all-visible (index-only scans need no VACUUM first). A
    database of its own: other tests' rolled-back rows clear pages' all-visible bits in
    the shared one."""
    dbname = unique_name("tpch_frozen")
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    try:
        load_tpch(pg_cluster.dsn(dbname), 0.01, lambda _msg: None)
        with psycopg.connect(pg_cluster.dsn(dbname)) as conn:
            leading = {r[0] for r in conn.execute(
                "SELECT a.attname FROM pg_index i JOIN pg_attribute a "
                "ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
                "WHERE i.indrelid = 'public.orders'::regclass"
            ).fetchall()}  # fmt: skip
            pages = conn.execute(
                "SELECT relpages, relallvisible FROM pg_class WHERE oid = 'public.orders'::regclass"
            ).fetchone()
            (out_of_order,) = conn.execute(
                "SELECT count(*) FROM (SELECT o_custkey, lag(o_custkey) OVER (ORDER BY ctid) AS before "
                "FROM orders) AS o WHERE o_custkey < before"
            ).fetchone()  # fmt: skip
    finally:
        with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))
    assert leading == {"o_orderkey", "o_custkey"}
    assert pages is not None and pages[0] > 0 and pages[1] == pages[0]
    assert out_of_order == 0


@pytest.fixture()
def reader(pg_cluster: PgCluster, tpch_dsn: str, unique_name: Callable[[str], str]) -> Iterator[str]:
    """URI of a reader role granted SELECT on customer and orders only."""
    role = unique_name("tpch_reader")
    create_reader_role(tpch_dsn, role, READER_PASSWORD, ["customer", "public.orders"])
    dbname = psycopg.conninfo.conninfo_to_dict(tpch_dsn)["dbname"]
    yield pg_cluster.dsn(str(dbname), user=role, password=READER_PASSWORD)
    with psycopg.connect(tpch_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_reader_role_reads_only_what_was_granted(reader: str, tpch_dsn: str) -> None:
    with psycopg.connect(reader, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (15000,)
        assert conn.execute("SELECT count(*) FROM customer").fetchone() == (1500,)
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("SELECT count(*) FROM lineitem")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("INSERT INTO orders SELECT * FROM orders LIMIT 1")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("UPDATE customer SET c_acctbal = 0")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE public.mine (x int)")


def test_reader_role_is_idempotent(reader: str, tpch_dsn: str) -> None:
    role = psycopg.conninfo.conninfo_to_dict(reader)["user"]
    create_reader_role(tpch_dsn, str(role), READER_PASSWORD, ["customer", "orders"])
    # Narrowing the list takes the dropped table away again.
    create_reader_role(tpch_dsn, str(role), READER_PASSWORD, ["customer"])
    with psycopg.connect(reader, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM customer").fetchone() == (1500,)
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("SELECT count(*) FROM orders")


_PG_TYPES = {
    ColumnType.INTEGER: {"integer"},
    ColumnType.BIGINT: {"bigint"},
    ColumnType.NUMERIC: {"numeric"},
    ColumnType.DATE: {"date"},
    ColumnType.TEXT: {"character varying", "character", "text"},
}


def test_example_metadata_matches_schema(tpch_metadata: Metadata, tpch_dsn: str) -> None:
    assert set(tpch_metadata.private_tables()) == {"customer", "orders", "lineitem"}
    with psycopg.connect(tpch_dsn) as conn:
        actual = {
            (table, column): (dtype, nullable == "YES")
            for table, column, dtype, nullable in conn.execute(
                "SELECT table_name, column_name, data_type, is_nullable "
                "FROM information_schema.columns WHERE table_schema = 'public'"
            )
        }
    for tname, table in tpch_metadata.tables.items():
        for cname, column in table.columns.items():
            assert (tname, cname) in actual, f"{tname}.{cname} is declared but not in the database"
            dtype, nullable = actual[(tname, cname)]
            assert dtype in _PG_TYPES[column.type], f"{tname}.{cname}: {dtype} vs {column.type}"
            assert nullable == column.nullable


def test_declared_domains_cover_the_sample(tpch_metadata: Metadata, tpch_dsn: str) -> None:
    # A sanity check of the example file against the generator, not a source of bounds.
    with psycopg.connect(tpch_dsn) as conn:
        for tname, table in tpch_metadata.private_tables().items():
            for cname, column in table.columns.items():
                ident = sql.SQL("{}.{}").format(sql.Identifier(tname), sql.Identifier(cname))
                if column.domain is not None:
                    values = {r[0] for r in conn.execute(
                        sql.SQL("SELECT DISTINCT {} FROM {}").format(ident, sql.Identifier(tname)))}
                    assert values <= set(column.domain), f"{tname}.{cname}"
                if column.bounded or column.date_bounds:
                    lo, hi = conn.execute(sql.SQL("SELECT min({0}), max({0}) FROM {1}").format(
                        ident, sql.Identifier(tname))).fetchone()  # type: ignore[misc]
                    assert column.lower <= lo and hi <= column.upper, f"{tname}.{cname}"  # type: ignore[operator]
