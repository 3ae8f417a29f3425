"""The catalog mirror: a schema-only copy of the declared tables, for introspection.

Statements that read no private table run here, so clients' catalog queries get real
PostgreSQL answers from a database that holds no rows and no statistics. Cluster-wide
views and functions that could describe the real data are refused even here.
"""

from __future__ import annotations

import re
from typing import Any

import asyncpg
from sqlglot import exp

from proxy.commands import Result
from proxy.errors import QUERY_FAILED, QUERY_NOT_ALLOWED, ProxyError
from proxy.results import TYPE_OIDS
from rewriter.metadata import Metadata
from rewriter.sqltypes import pg_type_name

# Cluster-wide state that describes real data or other sessions: refused on every path.
_FORBIDDEN_NAME = re.compile(
    r"^(pg_stat.*|pg_statio.*|pg_statistic.*|pg_stats.*|pg_.*size|pg_ls_.*|pg_read_.*|"
    r"pg_file.*|lo_.*|dblink.*|pg_sleep.*|pg_terminate_backend|pg_cancel_backend|"
    r"pg_reload_conf|pg_rotate_logfile|set_config|pg_advisory.*|pg_try_advisory.*|"
    r"pg_notify|nextval|setval|currval|lastval|query_to_xml.*|table_to_xml.*|"
    r"pg_current_logfile|pg_backend_pid|pg_blocking_pids|pg_locks|pg_prepared_xacts|"
    r"pg_shmem_allocations|pg_backend_memory_contexts|pg_replication.*|pg_hba_file_rules|"
    r"pg_file_settings|pg_ident_file_mappings|pg_logical.*|pg_import_system_collations|"
    r"pg_switch_wal|pg_create.*|pg_drop.*|pg_promote|pg_wal.*|pg_export_snapshot|"
    r"txid_current.*|pg_current_xact.*|pg_xact.*|setseed|random)$",
    re.IGNORECASE,
)
_OID_NAMES = {v: k for k, v in TYPE_OIDS.items()}


def check_catalog_query(tree: exp.Expression) -> None:
    """Refuse references to cluster-wide statistics, activity, size and file functions."""
    for node in tree.walk():
        name = None
        if isinstance(node, exp.Table):
            name = node.name
        elif isinstance(node, exp.Anonymous):
            name = str(node.this)
        elif isinstance(node, exp.Func):
            name = node.sql_name()
        if name and _FORBIDDEN_NAME.match(name):
            raise ProxyError(
                QUERY_NOT_ALLOWED,
                f'"{name}" is not available through dpproxy',
                hint="catalog queries may read pg_catalog and information_schema; statistics, "
                "activity, size and file functions are withheld because they describe real data",
            )


def mirror_ddl(meta: Metadata) -> list[str]:
    """CREATE statements for the declared tables: declared columns only, no rows."""
    out = []
    for tname, table in meta.tables.items():
        q = f'"{table.schema_}"."{tname}"'
        out.append(f'CREATE SCHEMA IF NOT EXISTS "{table.schema_}"')
        out.append(f"DROP TABLE IF EXISTS {q} CASCADE")
        cols = []
        for cname, c in table.columns.items():
            null = "" if c.nullable else " NOT NULL"
            cols.append(f'"{cname}" {pg_type_name(c.type)}{null}')
        out.append(f"CREATE TABLE {q} ({', '.join(cols)})")
        if table.comment:
            out.append(f"COMMENT ON TABLE {q} IS {_quote(table.comment)}")
        for cname, c in table.columns.items():
            if c.comment:
                out.append(f'COMMENT ON COLUMN {q}."{cname}" IS {_quote(c.comment)}')
    return out


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class Catalog:
    """Runs statements that read no private table on the catalog mirror database."""

    def __init__(self, pool: asyncpg.Pool | None, tables: list[str] | None = None) -> None:
        self.pool = pool
        self.tables = tables or []

    @classmethod
    async def open(cls, dsn: str | None, meta: Metadata) -> Catalog:
        """Connect to the mirror and (re)create the declared tables in it."""
        tables = sorted(meta.tables)
        if dsn is None:
            return cls(None, tables)
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
        assert pool is not None
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(724012)")
            for stmt in mirror_ddl(meta):
                await conn.execute(stmt)
        return cls(pool, tables)

    async def close(self) -> None:
        """Close the pool."""
        if self.pool is not None:
            await self.pool.close()

    def _require(self) -> asyncpg.Pool:
        if self.pool is None:
            raise ProxyError(
                "0A000",
                "queries that read no private table need the catalog mirror, which is not configured",
                hint="set backend.catalog_dsn in the configuration",
            )
        return self.pool

    async def describe(self, sql: str) -> list[tuple[str, str]] | None:
        """The result columns of a statement, without running it."""
        pool = self._require()
        try:
            async with pool.acquire() as conn:
                stmt = await conn.prepare(sql)
                attrs = stmt.get_attributes()
        except asyncpg.PostgresError as e:
            raise self._error(e) from e
        return [(a.name, _OID_NAMES.get(a.type.oid, "text")) for a in attrs] or None

    async def run(self, tree: exp.Expression) -> Result:
        """Run a statement on the mirror and return its rows."""
        check_catalog_query(tree)
        pool = self._require()
        sql = tree.sql(dialect="postgres", comments=False)
        try:
            async with pool.acquire() as conn, conn.transaction(readonly=True):
                stmt = await conn.prepare(sql)
                attrs = stmt.get_attributes()
                records = await stmt.fetch()
        except asyncpg.PostgresError as e:
            raise self._error(e) from e
        columns = [(a.name, _OID_NAMES.get(a.type.oid, "text")) for a in attrs]
        rows = [tuple(_plain(v, t) for v, (_, t) in zip(r, columns, strict=True)) for r in records]
        if not attrs:
            return Result(tag=stmt.get_statusmsg() or "SELECT 0")
        return Result(tag=f"SELECT {len(rows)}", columns=columns, rows=rows)


    def _error(self, e: asyncpg.PostgresError) -> ProxyError:
        # The mirror holds no private rows, so its messages are safe to pass on.
        state = getattr(e, "sqlstate", None) or QUERY_FAILED
        hint = "declared tables: " + ", ".join(self.tables) if state == "42P01" else None
        return ProxyError(state, str(e).splitlines()[0] if str(e) else "query failed", hint)


def _plain(v: Any, type_name: str) -> Any:
    if type_name != "text" or v is None or isinstance(v, str):
        return v
    if isinstance(v, list):
        return "{" + ",".join("NULL" if x is None else str(x) for x in v) + "}"
    if isinstance(v, bool):
        return "t" if v else "f"
    if isinstance(v, bytes):
        return v.decode("latin-1")  # the one-byte "char" type
    return str(v)
