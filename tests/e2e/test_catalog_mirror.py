"""The catalog mirror: what it holds (compared with the data database), its refresh, its
role's privileges, and the refusals of cluster-wide statistics, activity, size and files."""

from __future__ import annotations

import subprocess
import sys

import psycopg
import pytest

from proxy.catalog import prepare_catalog_sql
from proxy.config import load_config
from proxy.errors import ProxyError
from proxy.mirror import foreign_key_ddl, mirror_ddl, read_schema
from proxy.pgcluster import PgCluster
from tests.e2e.conftest import ANALYSTS, Env
from tests.support.proxy_process import REPO_ROOT, ProxyProcess

COLUMNS_SQL = """
SELECT c.relname, a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull,
       pg_catalog.col_description(c.oid, a.attnum)
FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relname = ANY(%s) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY 1, a.attnum
"""
CONSTRAINTS_SQL = """
SELECT c.relname, con.conname, con.contype, pg_catalog.pg_get_constraintdef(con.oid)
FROM pg_catalog.pg_constraint con JOIN pg_catalog.pg_class c ON c.oid = con.conrelid
WHERE c.relname = ANY(%s) AND con.contype IN ('p', 'u', 'f') ORDER BY 1, 2
"""


def _mirror_dsn(env: Env) -> str:
    dsn = load_config(env.config).backend.catalog_dsn
    assert dsn is not None
    return dsn


def _admin_mirror_dsn(env: Env, pg_cluster: PgCluster) -> str:
    dbname = psycopg.conninfo.conninfo_to_dict(_mirror_dsn(env))["dbname"]
    return pg_cluster.dsn(str(dbname))


def _declared(env: Env) -> dict[str, list[str]]:
    meta = load_config(env.config).metadata
    assert meta is not None
    return {t: list(tm.columns) for t, tm in meta.tables.items()}


def test_mirror_has_declared_columns_with_their_real_types_and_comments(
    proxy: ProxyProcess, env: Env, pg_cluster: PgCluster
) -> None:
    declared = _declared(env)
    with psycopg.connect(env.tpch_dsn) as data:
        real = data.execute(COLUMNS_SQL, (list(declared),)).fetchall()
    with psycopg.connect(_admin_mirror_dsn(env, pg_cluster)) as mirror:
        got = mirror.execute(COLUMNS_SQL, (list(declared),)).fetchall()
    expected = [r for r in real if r[1] in declared[r[0]]]
    assert got == expected
    assert any(r[2].startswith("character varying(") for r in got)
    assert any(r[2] == "numeric(15,2)" for r in got)


def test_undeclared_columns_and_their_keys_stay_out(env: Env) -> None:
    meta = load_config(env.config).metadata
    assert meta is not None
    # Declare orders without o_custkey: the column and its foreign key must disappear.
    orders = meta.tables["orders"]
    cols = {k: v for k, v in orders.columns.items() if k != "o_custkey"}
    narrowed = meta.model_copy(update={"tables": {**meta.tables, "orders": orders.model_copy(
        update={"columns": cols, "privacy_unit": None})}})  # fmt: skip
    with psycopg.connect(load_config(env.config).backend.dsn) as data:  # as the reader role
        schema = read_schema(data, narrowed)
    spec = next(t for t in schema.tables if t.name == "orders")
    assert [c.name for c in spec.columns] == list(cols)
    assert all("o_custkey" not in con.columns for con in spec.constraints)
    ddl = "\n".join(mirror_ddl(schema) + foreign_key_ddl(schema))
    assert "o_custkey" not in ddl and "o_orderkey" in ddl


def test_mirror_keeps_keys_among_declared_tables_only(
    proxy: ProxyProcess, env: Env, pg_cluster: PgCluster
) -> None:
    declared = _declared(env)
    with psycopg.connect(env.tpch_dsn) as data:
        every = [t for (t,) in data.execute(
            "SELECT relname FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace"
        ).fetchall()]  # fmt: skip
        real = data.execute(CONSTRAINTS_SQL, (every,)).fetchall()
    with psycopg.connect(_admin_mirror_dsn(env, pg_cluster)) as mirror:
        got = mirror.execute(CONSTRAINTS_SQL, (every,)).fetchall()
    # Keys of declared tables whose definition only names declared tables survive.
    expected = [
        r for r in real
        if r[0] in declared and (r[2] != "f" or r[3].split("REFERENCES ")[1].split("(")[0] in declared)
    ]  # fmt: skip
    assert [r[:3] for r in got] == [r[:3] for r in expected]
    assert {r[3].replace(" NOT VALID", "") for r in got} == {r[3] for r in expected}
    assert any(r[2] == "f" for r in got) and any(r[2] == "p" for r in got)
    assert not any(r[0] == "partsupp" for r in got)  # partsupp is not declared


def test_private_tables_are_empty_and_never_analyzed_public_tables_carry_rows(
    proxy: ProxyProcess, env: Env, pg_cluster: PgCluster
) -> None:
    meta = load_config(env.config).metadata
    assert meta is not None
    with (
        psycopg.connect(env.tpch_dsn) as data,
        psycopg.connect(_admin_mirror_dsn(env, pg_cluster)) as mirror,
    ):
        for name, table in meta.tables.items():
            n = mirror.execute(f'SELECT count(*) FROM "{name}"').fetchone()
            reltuples, options = mirror.execute(
                "SELECT reltuples, reloptions FROM pg_class WHERE oid = %s::regclass", (name,)
            ).fetchone()  # type: ignore[misc]
            assert "autovacuum_enabled=false" in options
            assert mirror.execute(
                "SELECT count(*) FROM pg_statistic WHERE starelid = %s::regclass", (name,)
            ).fetchone() == (0,)
            if table.public:
                assert n == data.execute(f'SELECT count(*) FROM "{name}"').fetchone()
            else:
                assert n == (0,)
                assert reltuples in (-1, 0)


def test_mirror_role_is_unprivileged_and_hardened(env: Env) -> None:
    with psycopg.connect(_mirror_dsn(env), autocommit=True) as conn:
        assert conn.execute(
            "SELECT rolsuper, rolcreaterole, rolreplication FROM pg_roles WHERE rolname = current_user"
        ).fetchone() == (False, False, False)
        for q in ("SELECT pg_sleep(0)", "SELECT * FROM pg_stat_activity", "SELECT pg_database_size(1)",
                  "SELECT * FROM pg_stats"):  # fmt: skip
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(q)
    tpch = psycopg.conninfo.conninfo_to_dict(env.tpch_dsn)["dbname"]
    other = psycopg.conninfo.make_conninfo(_mirror_dsn(env), dbname=str(tpch))
    with pytest.raises(psycopg.OperationalError, match="permission denied"):
        psycopg.connect(other).close()


def test_refresh_command_rebuilds_and_keeps_the_mirror_working(proxy: ProxyProcess, env: Env) -> None:
    with psycopg.connect(_mirror_dsn(env)) as conn:
        before = conn.execute("SELECT refreshed_at FROM dpproxy.mirror_state").fetchone()
    out = subprocess.run(
        [sys.executable, "-m", "proxy.cli", "mirror", "refresh", "--config", str(env.config)],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "catalog mirror rebuilt" in out.stdout
    with psycopg.connect(_mirror_dsn(env)) as conn:
        after = conn.execute("SELECT refreshed_at FROM dpproxy.mirror_state").fetchone()
    assert before is not None and after is not None and after[0] > before[0]
    with psycopg.connect(proxy.dsn("dave", ANALYSTS["dave"].password)) as c:
        assert c.execute("SELECT count(*) FROM information_schema.columns WHERE table_name = 'orders'"
                         ).fetchone() == (len(_declared(env)["orders"]),)  # fmt: skip


REFUSED = [
    ("SELECT * FROM pg_stat_activity", "pg_stat_activity"),
    ("SELECT datname, tup_returned FROM pg_catalog.pg_stat_database", "pg_stat_database"),
    ("SELECT * FROM pg_stats WHERE tablename = 'orders'", "pg_stats"),
    ("SELECT * FROM pg_statistic", "pg_statistic"),
    ("SELECT * FROM pg_statistic_ext_data", "pg_statistic_ext_data"),
    ("SELECT pg_stat_file('postgresql.conf')", "pg_stat_file"),
    ("SELECT pg_size_pretty(pg_tablespace_size('pg_default')), pg_stat_get_snapshot_timestamp()",
     "pg_stat_get_snapshot_timestamp"),
    ("SELECT pg_ls_dir('.')", "pg_ls_dir"),
    ("SELECT pg_read_file('postgresql.conf')", "pg_read_file"),
    ("SELECT lo_import('/etc/passwd')", "lo_import"),
    ("SELECT dblink('dbname=tpch', 'select 1')", "dblink"),
    ("SELECT pg_sleep(1)", "pg_sleep"),
    ('SELECT "pg_sleep"(1)', "pg_sleep"),
    ("SELECT pg_catalog.pg_sleep(1)", "pg_sleep"),
    ('SELECT U&"pg\\005fsleep"(1)', "U&"),
    ("SELECT 'x', pg_stat_get_activity(NULL)", "pg_stat_get_activity"),
    ("SELECT txid_current()", "txid_current"),
    ("SELECT pg_current_snapshot()", "pg_current_snapshot"),
    ("SELECT pg_advisory_lock(1)", "pg_advisory_lock"),
    ("SELECT * FROM pg_locks", "pg_locks"),
    ("SELECT query_to_xml('select 1', true, true, '')", "query_to_xml"),
    ("SELECT 'a\\', pg_sleep(1) --'", "pg_sleep"),
]


@pytest.mark.parametrize(("query", "named"), REFUSED)
def test_cluster_wide_functions_are_refused_on_the_mirror(
    proxy: ProxyProcess, query: str, named: str
) -> None:
    with psycopg.connect(proxy.dsn("dave", ANALYSTS["dave"].password), autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as info:
            conn.execute(query)
        assert info.value.sqlstate == "42501"
        assert named.lower() in (info.value.diag.message_primary or "").lower()
        assert info.value.diag.message_hint
        assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.parametrize(("query", "named"), REFUSED)
def test_refusal_check_is_pure(query: str, named: str) -> None:
    with pytest.raises(ProxyError) as info:
        prepare_catalog_sql(query)
    assert named.lower() in info.value.message.lower()


@pytest.mark.parametrize(
    "query",
    [
        "SELECT 'pg_sleep(1)' AS s, $$pg_stat_activity$$",
        "SELECT c.relname FROM pg_class c /* pg_sleep(1) */ WHERE c.relname = 'pg_stats'",
        "SELECT * FROM pg_statistic_ext",
        "SELECT reltuples FROM pg_class",
        "SELECT pg_stat_user_tables.relname FROM dpproxy.pg_stat_user_tables",
    ],
)
def test_names_in_strings_comments_and_allowed_catalogs_pass(query: str) -> None:
    assert prepare_catalog_sql(query) == query


def test_per_table_statistics_are_neutralized(proxy: ProxyProcess) -> None:
    with psycopg.connect(proxy.dsn("dave", ANALYSTS["dave"].password), autocommit=True) as conn:
        rows = conn.execute(
            'SELECT s.relname, s.n_live_tup, s.seq_scan, pg_catalog.pg_relation_size(s.relid), '
            'pg_total_relation_size(s.relid) FROM "pg_stat_user_tables" s ORDER BY 1'
        ).fetchall()  # fmt: skip
        assert {r[0] for r in rows} >= {"orders", "customer", "region"}
        assert all(r[1:] == (None, None, None, None) for r in rows)
        assert conn.execute("SELECT reltuples FROM pg_class WHERE relname = 'orders'").fetchone() in ((-1,), (0,))


def test_set_config_is_answered_by_dpproxy_not_the_mirror(proxy: ProxyProcess) -> None:
    # set_config changes only dpproxy's own session state (asyncpg's pool sends it); it
    # never reaches the mirror or the data database.
    with psycopg.connect(proxy.dsn("dave", ANALYSTS["dave"].password), autocommit=True) as conn:
        assert conn.execute("SELECT set_config('search_path', 'x', false)").fetchone() == ("x",)
        assert conn.execute("SHOW search_path").fetchone() == ("x",)
