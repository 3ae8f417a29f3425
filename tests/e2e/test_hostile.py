"""Hostile analysts: statement smuggling, side effects, error oracles, catalog leaks.

Every case must be refused with the expected SQLSTATE class, cost nothing, leave the
database unchanged, and never echo a backend error text.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from tests.e2e.conftest import ANALYSTS, Env
from tests.support.proxy_process import ProxyProcess

USER = "mallory"

# (query, acceptable SQLSTATEs). 42501: may not run; 0A000: not supported; 42601: syntax.
# An empty set means "accepted or refused, but harmless".
REFUSED = [
    # Statement smuggling: the DP path takes exactly one statement, whatever the quoting.
    ("SELECT COUNT(*) FROM orders; DROP TABLE orders", {"42501"}),
    ("SELECT COUNT(*) FROM orders /* ; */; DELETE FROM orders", {"42501"}),
    ("SELECT COUNT(*) FROM orders -- \n; DELETE FROM orders", {"42501"}),
    ("SELECT COUNT(*) FROM orders WHERE o_comment = $$x$$; DELETE FROM orders", {"42501"}),
    ("SELECT COUNT(*) FROM orders WHERE o_comment = 'a\\'; DELETE FROM orders; --'", {"42501", "42601"}),
    # PostgreSQL nests block comments: all of this after FROM orders is one comment, so
    # accepting it as a plain COUNT is right (the DELETE never runs: checked below).
    ("SELECT COUNT(*) FROM orders /* /* nested */ ; DELETE FROM orders */", set()),
    # Side effects anywhere in the tree.
    ("WITH d AS (DELETE FROM orders RETURNING 1) SELECT COUNT(*) FROM orders", {"42501", "0A000"}),
    ("SELECT COUNT(*) INTO newtable FROM orders", {"42501", "0A000"}),
    ("SELECT COUNT(*) FROM orders FOR UPDATE", {"42501", "0A000"}),
    ("SELECT COUNT(*) FROM orders WHERE set_config('work_mem', '1MB', false) IS NOT NULL", {"42501", "0A000"}),
    ("SELECT COUNT(*) FROM orders WHERE nextval('s') > 0", {"42501", "0A000"}),
    ("SELECT COUNT(*) FROM orders WHERE pg_notify('c', o_comment) IS NULL", {"42501", "0A000"}),
    ("SELECT COUNT(*) FROM orders WHERE random() < 0.5", {"42501", "0A000"}),
    ("SELECT COUNT(*) FROM orders WHERE setseed(0.5) IS NULL", {"42501", "0A000"}),
    ("SELECT COUNT(*) FROM generate_series(1, 10), orders", {"42501", "0A000"}),
    ("SELECT COUNT(*) FROM orders WHERE pg_sleep(0.01) IS NULL", {"42501", "0A000"}),
    ("SELECT COUNT(*) FROM orders WHERE pg_read_file('/etc/passwd') <> ''", {"42501", "0A000"}),
    ("PREPARE p AS SELECT COUNT(*) FROM orders", {"42501"}),
    ("EXECUTE p", {"42501"}),
    ("DO $$BEGIN DELETE FROM orders; END$$", {"42501"}),
    ("CALL p()", {"42501"}),
    ("COPY orders FROM STDIN", {"42501", "0A000"}),
    ("COPY orders TO STDOUT", {"42501", "0A000"}),
    ("TABLE orders", {"42501", "0A000"}),
    ("SELECT o_totalprice FROM orders LIMIT 1", {"42803", "42501"}),
    ("SELECT MIN(o_comment) FROM orders", {"42501", "0A000", "42883"}),
    ("SELECT string_agg(o_comment, ',') FROM orders", {"42501", "0A000"}),
    ("SELECT array_agg(o_custkey) FROM orders", {"42501", "0A000"}),
    # Keys without a public domain: refused, or released through partition selection
    # (only groups with enough units survive the noisy threshold; costs delta).
    ("SELECT o_comment, COUNT(*) FROM orders GROUP BY o_comment", set()),
    ("SELECT o_orderkey, COUNT(*) FROM orders GROUP BY o_orderkey", set()),
    ("SELECT COUNT(*) FROM orders UNION SELECT o_custkey FROM orders", {"42501", "0A000"}),
    # Error oracles: constructs that can fail for some rows only.
    # Refused, or made total (x / NULLIF(y, 0): NULL instead of an error for one row).
    ("SELECT COUNT(*) FROM orders WHERE 1 / (o_custkey - 42) > 0", set()),
    ("SELECT COUNT(*) FROM orders WHERE o_comment::int > 0", {"42501", "0A000"}),
    ("SELECT COUNT(*) FROM orders WHERE CAST(o_comment AS date) IS NULL", {"42501", "0A000"}),
    ("SELECT COUNT(*) FROM orders WHERE sqrt(o_totalprice - 1000) > 1", {"42501", "0A000"}),
    ("SELECT COUNT(*) FROM orders WHERE ln(o_totalprice - 1000) > 1", {"42501", "0A000"}),
    ("SELECT COUNT(*) FROM orders WHERE o_comment ~ '(a+)+$'", {"42501", "0A000"}),
    ("SELECT COUNT(*) FROM orders WHERE o_custkey * 2147483647 * 2147483647 > 0", set()),
    # Catalog statistics that describe the real data.
    ("SELECT * FROM pg_stats", {"42501"}),
    ("SELECT * FROM pg_statistic", {"42501"}),
    # Per-table statistics and sizes are answered by NULL stand-ins (BI tools read them
    # at sync): see test_table_statistics_are_null below.
    ("SELECT * FROM pg_stat_user_tables", set()),
    ("SELECT pg_relation_size('orders')", set()),
    ("SELECT pg_database_size(current_database())", set()),  # NULL, as sizes are
    ("SELECT * FROM pg_stat_activity", {"42501"}),
    ("SELECT pg_ls_dir('.')", {"42501"}),
    ("SELECT lo_import('/etc/passwd')", {"42501"}),
    ("SELECT * FROM dblink('host=x', 'select 1') AS t(a int)", {"42501", "0A000"}),
]


@pytest.fixture
def conn(proxy: ProxyProcess) -> Iterator[psycopg.Connection]:
    with psycopg.connect(proxy.dsn(USER, ANALYSTS[USER].password), autocommit=True) as c:
        yield c


def spent(conn: psycopg.Connection) -> object:
    row = conn.execute("SHOW dp.budget").fetchone()
    assert row is not None
    return row[2]


@pytest.mark.parametrize(("query", "states"), REFUSED, ids=[q[:60] for q, _ in REFUSED])
def test_hostile_query_refused_free_and_harmless(
    conn: psycopg.Connection, env: Env, query: str, states: set[str]
) -> None:
    before = spent(conn)
    with psycopg.connect(env.tpch_dsn) as direct:
        n_orders = direct.execute("SELECT count(*) FROM orders").fetchone()
    try:
        conn.execute(query)
        refused = None
    except psycopg.Error as e:
        refused = e
    if states:
        assert refused is not None, f"accepted: {query}"
        assert refused.sqlstate in states, (refused.sqlstate, refused.diag.message_primary)
        assert spent(conn) == before, "a refusal must cost nothing"
    elif refused is not None:
        # Accepted-or-refused cases (e.g. overflow-prone arithmetic, promoted to
        # numeric) must never end in a data-dependent backend error.
        assert refused.sqlstate in {"42501", "0A000"}, refused.sqlstate
    with psycopg.connect(env.tpch_dsn) as direct:
        assert direct.execute("SELECT count(*) FROM orders").fetchone() == n_orders
    # The connection is still usable.
    assert conn.execute("SELECT 1").fetchone() == (1,)


def test_table_statistics_are_null(conn: psycopg.Connection) -> None:
    row = conn.execute(
        "SELECT n_live_tup, seq_scan, n_tup_ins FROM pg_stat_user_tables WHERE relname = 'orders'"
    ).fetchone()
    assert row is None or all(v is None for v in row)
    assert conn.execute("SELECT pg_relation_size('orders')").fetchone() == (None,)
    assert conn.execute("SELECT pg_total_relation_size('customer')").fetchone() == (None,)
    # psql's \l+ and \db+ read database and tablespace sizes and locations: NULL too.
    assert conn.execute("SELECT pg_size_pretty(pg_database_size(current_database())), "
                        "pg_tablespace_size('pg_default'), pg_tablespace_location(0)").fetchone() == (None, None, None)


def test_mirror_has_no_rows_or_statistics(conn: psycopg.Connection) -> None:
    rows = conn.execute(
        "SELECT c.relname, c.reltuples, c.relpages FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relname IN ('orders', 'customer')"
    ).fetchall()
    assert len(rows) == 2
    for _name, reltuples, relpages in rows:
        assert reltuples <= 0 and relpages == 0


def test_bad_literal_refused_before_touching_data(conn: psycopg.Connection) -> None:
    # The rewriter checks the analyst's own literal; nothing runs and nothing is charged.
    before = spent(conn)
    with pytest.raises(psycopg.Error) as info:
        conn.execute("SELECT COUNT(*) FROM orders WHERE o_orderdate > 'not-a-date'")
    assert info.value.sqlstate in {"22007", "22P02", "22008"}
    assert spent(conn) == before
