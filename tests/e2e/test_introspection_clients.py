"""Real clients introspecting through dpproxy: psql, pgjdbc, SQLAlchemy, pandas, asyncpg,
psycopg. Answers are compared with the same client talking to the mirror directly (as
the mirror role), so every difference is dpproxy's."""

from __future__ import annotations

import asyncio
import glob
import shutil
import subprocess
from pathlib import Path

import asyncpg
import psycopg
import pytest
from psycopg.types import TypeInfo
from psycopg.types.composite import CompositeInfo

from proxy.config import load_config
from tests.e2e.conftest import ANALYSTS, Env
from tests.support.proxy_process import ProxyProcess

PSQL = shutil.which("psql")
USER = "carol"


def _mirror_dsn(env: Env) -> str:
    dsn = load_config(env.config).backend.catalog_dsn
    assert dsn is not None
    return dsn


def _proxy_dsn(proxy: ProxyProcess) -> str:
    return proxy.dsn(USER, ANALYSTS[USER].password)


def _psql(dsn: str, command: str) -> subprocess.CompletedProcess[str]:
    assert PSQL is not None
    return subprocess.run([PSQL, dsn, "-X", "-c", command], capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(PSQL is None, reason="psql is not installed")
@pytest.mark.parametrize("command", [r"\d", r"\dt", r"\d orders", r"\d+ customer", r"\dn", r"\l", r"\df", r"\dT"])
def test_psql_meta_commands_match_the_mirror(proxy: ProxyProcess, env: Env, command: str) -> None:
    through = _psql(_proxy_dsn(proxy), command)
    direct = _psql(_mirror_dsn(env), command)
    assert through.returncode == 0, through.stderr
    assert direct.returncode == 0, direct.stderr
    assert through.stdout == direct.stdout
    if command == r"\d orders":
        assert "Foreign-key constraints" in through.stdout and "PRIMARY KEY" in through.stdout


# --- pgjdbc ------------------------------------------------------------------------------------

JAVA = """
import java.sql.*;
public class Probe {
  static void dump(String what, ResultSet rs, String... cols) throws SQLException {
    while (rs.next()) {
      StringBuilder b = new StringBuilder(what);
      for (String c : cols) b.append('|').append(rs.getString(c));
      System.out.println(b);
    }
  }
  public static void main(String[] a) throws Exception {
    try (Connection c = DriverManager.getConnection(a[0], a[1], a[2])) {
      DatabaseMetaData md = c.getMetaData();
      dump("schema", md.getSchemas(), "TABLE_SCHEM");
      dump("table", md.getTables(null, "public", "%", new String[]{"TABLE"}), "TABLE_NAME", "REMARKS");
      dump("column", md.getColumns(null, "public", "orders", "%"), "COLUMN_NAME", "TYPE_NAME", "COLUMN_SIZE", "DECIMAL_DIGITS", "NULLABLE", "REMARKS");
      dump("pk", md.getPrimaryKeys(null, "public", "orders"), "COLUMN_NAME", "PK_NAME");
      dump("fk", md.getImportedKeys(null, "public", "orders"), "FKCOLUMN_NAME", "PKTABLE_NAME", "PKCOLUMN_NAME", "FK_NAME");
      int types = 0; ResultSet ti = md.getTypeInfo(); while (ti.next()) types++;
      System.out.println("typeinfo|" + (types > 10));
      try (PreparedStatement ps = c.prepareStatement("SELECT relname FROM pg_class WHERE relname = ? AND relkind = 'r'")) {
        for (int i = 0; i < 6; i++) { ps.setString(1, "orders"); dump("prepared", ps.executeQuery(), "relname"); }
      }
    }
  }
}
"""


def _pgjdbc_jar() -> str | None:
    jars = sorted(glob.glob(str(Path.home() / ".m2/repository/org/postgresql/postgresql/42.7*/postgresql-42.7*.jar")))
    jars += sorted(glob.glob("/usr/share/java/postgresql*.jar"))
    return jars[-1] if jars else None


def _jdbc_url(dsn: str) -> tuple[str, str, str]:
    d = psycopg.conninfo.conninfo_to_dict(dsn)
    return (f"jdbc:postgresql://{d['host']}:{d['port']}/{d['dbname']}?sslmode=disable",
            str(d["user"]), str(d["password"]))  # fmt: skip


def test_pgjdbc_database_metadata_matches_the_mirror(
    proxy: ProxyProcess, env: Env, tmp_path: Path
) -> None:
    jar = _pgjdbc_jar()
    if shutil.which("javac") is None or shutil.which("java") is None or jar is None:
        pytest.skip("needs javac/java and the pgjdbc 42.7 jar (~/.m2 or libpostgresql-jdbc-java)")
    (tmp_path / "Probe.java").write_text(JAVA)
    subprocess.run(["javac", "-cp", jar, "-d", str(tmp_path), str(tmp_path / "Probe.java")],
                   check=True, timeout=120)  # fmt: skip

    def run(dsn: str) -> list[str]:
        out = subprocess.run(["java", "-cp", f"{jar}:{tmp_path}", "Probe", *_jdbc_url(dsn)],
                             capture_output=True, text=True, timeout=120)  # fmt: skip
        assert out.returncode == 0, out.stderr
        return out.stdout.splitlines()

    through = run(_proxy_dsn(proxy))
    direct = run(_mirror_dsn(env))
    assert through == direct
    assert "column|o_totalprice|numeric|15|2|0|Total price." in through
    assert any(line.startswith("fk|o_custkey|customer|c_custkey|") for line in through)
    assert through.count("prepared|orders") == 6
    assert "typeinfo|true" in through


# --- SQLAlchemy and pandas ---------------------------------------------------------------------


def _sa_url(dsn: str, driver: str) -> str:
    d = psycopg.conninfo.conninfo_to_dict(dsn)
    return f"postgresql+{driver}://{d['user']}:{d['password']}@{d['host']}:{d['port']}/{d['dbname']}"


def _inspect(url: str, is_async: bool) -> dict[str, object]:
    import sqlalchemy as sa

    def collect(conn: sa.Connection) -> dict[str, object]:
        insp = sa.inspect(conn)
        return {
            "schemas": insp.get_schema_names(),
            "tables": insp.get_table_names(),
            "columns": [(c["name"], str(c["type"]), c["nullable"], c.get("comment"))
                        for c in insp.get_columns("orders")],  # fmt: skip
            "pk": insp.get_pk_constraint("orders"),
            "fks": insp.get_foreign_keys("orders"),
            "has": (insp.has_table("orders"), insp.has_table("partsupp")),
        }

    if not is_async:
        engine = sa.create_engine(url)
        try:
            with engine.connect() as conn:
                return collect(conn)
        finally:
            engine.dispose()

    from sqlalchemy.ext.asyncio import create_async_engine

    async def go() -> dict[str, object]:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(collect)
        finally:
            await engine.dispose()

    return asyncio.run(go())


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
def test_sqlalchemy_inspector_matches_the_mirror(proxy: ProxyProcess, env: Env, driver: str) -> None:
    pytest.importorskip("sqlalchemy")
    through = _inspect(_sa_url(_proxy_dsn(proxy), driver), driver == "asyncpg")
    direct = _inspect(_sa_url(_mirror_dsn(env), driver), driver == "asyncpg")
    assert through == direct
    assert through["has"] == (True, False)
    assert through["pk"]["constrained_columns"] == ["o_orderkey"]  # type: ignore[index]
    assert [fk["referred_table"] for fk in through["fks"]] == ["customer"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
def test_sqlalchemy_text_dp_query(proxy: ProxyProcess, driver: str) -> None:
    sa = pytest.importorskip("sqlalchemy")
    url = _sa_url(_proxy_dsn(proxy), driver)
    query = sa.text("SELECT o_orderstatus, COUNT(*) AS n FROM orders GROUP BY o_orderstatus")
    if driver == "psycopg":
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            rows = conn.execute(query).all()
        engine.dispose()
    else:
        from sqlalchemy.ext.asyncio import create_async_engine

        async def go() -> list[object]:
            engine = create_async_engine(url)
            async with engine.connect() as conn:
                result = (await conn.execute(query)).all()
            await engine.dispose()
            return list(result)

        rows = asyncio.run(go())  # type: ignore[assignment]
    assert sorted(r[0] for r in rows) == ["F", "O", "P"]


def test_pandas_read_sql_and_read_sql_table(proxy: ProxyProcess) -> None:
    pd = pytest.importorskip("pandas")
    sa = pytest.importorskip("sqlalchemy")
    engine = sa.create_engine(_sa_url(_proxy_dsn(proxy), "psycopg"))
    try:
        df = pd.read_sql("SELECT o_orderpriority, COUNT(*) AS n FROM orders GROUP BY o_orderpriority", engine)
        assert len(df) == 5 and list(df.columns) == ["o_orderpriority", "n"]
        # read_sql_table reflects the table (through the mirror), then selects raw rows:
        # that gets the normal refusal of private columns outside an aggregate.
        with pytest.raises(Exception) as info:
            pd.read_sql_table("orders", engine)
        cause = info.value.__cause__
        assert isinstance(cause, sa.exc.DBAPIError)
        assert cause.orig.sqlstate in ("42501", "42803")  # type: ignore[union-attr]
        assert cause.orig.diag.message_hint  # type: ignore[union-attr]
    finally:
        engine.dispose()


# --- asyncpg and psycopg type introspection ------------------------------------------------------


def test_asyncpg_type_introspection_through_the_mirror(proxy: ProxyProcess, env: Env) -> None:
    # A composite (the row type of the public table region, whose rows the mirror holds)
    # is not built into asyncpg: it introspects it with its WITH RECURSIVE query over
    # pg_type ($1::oid[] binary parameter, SQL that sqlglot cannot parse), then decodes the
    # binary records. Catalog-typed columns (name, "char", oidvector, oid[]) come too, all
    # in binary, which the mirror answers itself.
    query = ("SELECT r, t.typtype, t.typname, p.proargtypes, ARRAY[t.oid, t.typelem] "
             "FROM region r JOIN pg_type t ON t.typname = 'int4' "
             "JOIN pg_proc p ON p.proname = 'lower' AND p.proargtypes[0] = 'text'::regtype "
             "ORDER BY r.r_regionkey")  # fmt: skip

    async def fetch(dsn: str, **kw: object) -> list[tuple[object, ...]]:
        conn = await asyncpg.connect(dsn, **kw)
        try:
            rows = await conn.fetch(query)
            val = await conn.fetchval("SELECT typname FROM pg_type WHERE oid = $1", 23)
            return [tuple(r) for r in rows] + [(val,)]
        finally:
            await conn.close()

    d = psycopg.conninfo.conninfo_to_dict(_proxy_dsn(proxy))
    through = asyncio.run(fetch(f"postgresql://{d['user']}:{d['password']}@{d['host']}:{d['port']}/{d['dbname']}", ssl=False))
    direct = asyncio.run(fetch(_mirror_dsn(env)))
    assert through == direct
    assert through[-1] == ("int4",)
    assert len(through) == 6 and through[0][1:3] == (b"b", "int4")  # "char" is bytes in asyncpg
    assert [r[0]["r_regionkey"] for r in through[:5]] == [0, 1, 2, 3, 4]  # type: ignore[index]


def test_psycopg_typeinfo_fetch(proxy: ProxyProcess, env: Env) -> None:
    with (
        psycopg.connect(_proxy_dsn(proxy)) as through,
        psycopg.connect(_mirror_dsn(env)) as direct,
    ):
        for name in ("numeric", "int4[]", "varchar"):
            a, b = TypeInfo.fetch(through, name), TypeInfo.fetch(direct, name)
            assert a is not None and b is not None
            assert (a.name, a.oid, a.array_oid) == (b.name, b.oid, b.array_oid)
        comp = CompositeInfo.fetch(through, "orders")
        assert comp is not None
        assert list(comp.field_names) == list(load_config(proxy.config).metadata.tables["orders"].columns)  # type: ignore[union-attr]


def test_binary_results_of_catalog_queries(proxy: ProxyProcess, env: Env) -> None:
    query = "SELECT oid, relname, relnatts, relkind, reltuples, relacl FROM pg_class WHERE relname = %s"
    with (
        psycopg.connect(_proxy_dsn(proxy)) as through,
        psycopg.connect(_mirror_dsn(env)) as direct,
    ):
        for binary in (False, True):
            a = through.cursor(binary=binary).execute(query, ("orders",)).fetchall()
            b = direct.cursor(binary=binary).execute(query, ("orders",)).fetchall()
            assert a == b and len(a) == 1
