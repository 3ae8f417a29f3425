"""Building the catalog mirror: a schema-only copy of the declared tables.

The mirror is read from the data database's own catalog (as the reader role): the real
column types (varchar(n), numeric(p,s), char(n), enums), NOT NULL, primary keys, unique
constraints and foreign keys among declared tables and columns, and comments. Only
declared columns are copied. Private tables get no rows and are never analyzed (their
`pg_class.reltuples` stays -1); public tables (`public: true`) carry their rows, so
lookups and joins of public tables work on the mirror.

The build runs in one transaction under an advisory lock, so several proxy replicas
starting at once serialize, and clients never see a half-built mirror.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from rewriter.metadata import Metadata
from rewriter.sqltypes import pg_type_name

log = logging.getLogger("dpproxy.mirror")

# Any fixed number works; it only has to differ from other advisory locks on the mirror.
MIRROR_LOCK_KEY = 724012
# Schema (in the mirror database only) holding dpproxy's state and the neutralized
# statistics views and functions that catalog queries are redirected to.
STUB_SCHEMA = "dpproxy"
# Storage parameters that keep autovacuum/autoanalyze away: the mirror never gets statistics.
_NO_AUTOVACUUM = "autovacuum_enabled = false, toast.autovacuum_enabled = false"

# Per-database statistics views that BI tools join (Metabase's table list reads
# pg_stat_user_tables.n_live_tup). In the mirror they would only describe the mirror, but
# dpproxy answers them from views that keep the identifying columns and NULL every counter.
STUB_VIEWS = (
    "pg_stat_user_tables", "pg_stat_all_tables", "pg_stat_sys_tables",
    "pg_statio_user_tables", "pg_statio_all_tables",
    "pg_stat_user_indexes", "pg_stat_all_indexes",
    "pg_statio_user_indexes", "pg_statio_all_indexes",
)  # fmt: skip
_STUB_VIEW_KEEP = ("relid", "indexrelid", "schemaname", "relname", "indexrelname")
# Size and per-relation counter functions DBeaver calls: answered NULL ("unknown").
STUB_FUNCTIONS: dict[str, tuple[str, ...]] = {
    "pg_relation_size": ("regclass", "regclass, text"),
    "pg_total_relation_size": ("regclass",),
    "pg_table_size": ("regclass",),
    "pg_indexes_size": ("regclass",),
    "pg_stat_get_numscans": ("oid",),
    "pg_stat_get_tuples_returned": ("oid",),
    "pg_stat_get_tuples_fetched": ("oid",),
    "pg_stat_get_live_tuples": ("oid",),
    "pg_stat_get_dead_tuples": ("oid",),
    # psql's \l+ (database sizes), \db and \db+ (tablespace locations and sizes).
    "pg_database_size": ("name", "oid"),
    "pg_tablespace_size": ("name", "oid"),
    "pg_tablespace_location": ("oid",),
}
# The stubs' result types where not bigint.
_STUB_RESULT_TYPES = {"pg_tablespace_location": "text"}

# Functions and views revoked from PUBLIC inside the mirror database (a second layer
# behind the proxy's own refusal): they reach other databases, other sessions or files.
_HARDEN_FUNCTION_PATTERN = (
    r"^(pg_stat_get_(activity|backend|db|bgwriter|checkpointer|wal|archiver|slru|replication|subscription|"
    r"snapshot_timestamp|xact).*|pg_database_size|pg_tablespace_size|pg_sleep.*|pg_ls_.*|"
    r"pg_read_.*|pg_stat_file|lo_.*|pg_terminate_backend|pg_cancel_backend|pg_signal_backend|"
    r"pg_current_logfile|pg_stat_reset.*|pg_control_.*|pg_current_snapshot|txid_current.*|"
    r"pg_current_xact_id.*|pg_blocking_pids|pg_safe_snapshot_blocking_pids|"
    r"pg_backend_memory_contexts|pg_get_backend_memory_contexts|pg_log_backend_memory_contexts|"
    r"pg_notify)$"
)
_HARDEN_VIEWS = (
    "pg_stat_activity", "pg_stat_database", "pg_stat_database_conflicts", "pg_stats",
    "pg_stats_ext", "pg_stats_ext_exprs", "pg_locks", "pg_stat_replication",
    "pg_stat_wal_receiver", "pg_stat_subscription", "pg_stat_ssl", "pg_stat_gssapi",
    "pg_stat_bgwriter", "pg_stat_wal", "pg_stat_archiver", "pg_stat_slru",
    "pg_stat_progress_vacuum", "pg_stat_progress_analyze", "pg_stat_progress_create_index",
    "pg_stat_progress_cluster", "pg_stat_progress_basebackup", "pg_stat_progress_copy",
    "pg_prepared_xacts", "pg_backend_memory_contexts", "pg_stat_replication_slots",
)  # fmt: skip
# Predefined roles that would let the mirror role see beyond its own database.
_PRIVILEGED_ROLES = (
    "pg_read_server_files", "pg_write_server_files", "pg_execute_server_program",
    "pg_read_all_stats", "pg_monitor", "pg_read_all_data", "pg_signal_backend",
)  # fmt: skip


class MirrorError(Exception):
    """The mirror cannot be built; the message names what is wrong and where."""


@dataclass(frozen=True)
class ColumnSpec:
    """One declared column as the data database defines it."""

    name: str
    type_sql: str  # a type expression valid in the mirror (format_type output)
    not_null: bool
    comment: str | None


@dataclass(frozen=True)
class ConstraintSpec:
    """A primary key, unique constraint or foreign key among declared columns."""

    name: str
    kind: str  # 'p', 'u' or 'f'
    columns: tuple[str, ...]
    ref_table: tuple[str, str] | None = None  # (schema, table) of a foreign key
    ref_columns: tuple[str, ...] = ()


@dataclass(frozen=True)
class TableSpec:
    """One declared table as the data database defines it (declared columns only)."""

    schema: str
    name: str
    public: bool
    comment: str | None
    columns: tuple[ColumnSpec, ...]
    constraints: tuple[ConstraintSpec, ...]


@dataclass(frozen=True)
class EnumSpec:
    """An enum type a declared column uses (recreated in the mirror)."""

    schema: str
    name: str
    labels: tuple[str, ...]


@dataclass
class MirrorSchema:
    """Everything the mirror holds, read from the data database."""

    tables: list[TableSpec] = field(default_factory=list)
    enums: list[EnumSpec] = field(default_factory=list)

    def fingerprint(self) -> str:
        """A digest of the schema: an unchanged schema is not rebuilt at start-up."""
        # The stubs are part of what a mirror holds: a release that adds one rebuilds it.
        return hashlib.sha256(repr((self.tables, self.enums, STUB_VIEWS, STUB_FUNCTIONS)).encode()).hexdigest()


# --- reading the real schema ---------------------------------------------------------------

_TABLE_SQL = """
SELECT c.oid, pg_catalog.obj_description(c.oid, 'pg_class')
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
"""
_COLUMNS_SQL = """
SELECT a.attnum, a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull,
       pg_catalog.col_description(a.attrelid, a.attnum), t.typtype, tn.nspname, t.typname, t.oid,
       pg_catalog.format_type(t.typbasetype, t.typtypmod)
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
JOIN pg_catalog.pg_namespace tn ON tn.oid = t.typnamespace
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""
_CONSTRAINTS_SQL = """
SELECT con.conname, con.contype, con.conkey, con.confrelid, con.confkey
FROM pg_catalog.pg_constraint con
WHERE con.conrelid = %s AND con.contype IN ('p', 'u', 'f')
ORDER BY con.contype, con.conname
"""


def read_schema(conn: psycopg.Connection, meta: Metadata) -> MirrorSchema:
    """Read the declared tables' real definitions from the data database's catalog."""
    found: dict[int, tuple[str, str, dict[int, str]]] = {}  # oid -> (schema, name, attnum->col)
    pending: list[tuple[int, str, str, bool, str | None, list[ColumnSpec]]] = []
    enums: dict[int, EnumSpec] = {}
    for tname, table in meta.tables.items():
        row = conn.execute(_TABLE_SQL, (table.schema_, tname)).fetchone()
        if row is None:
            raise MirrorError(
                f'declared table "{table.schema_}.{tname}" does not exist in the data database '
                "(or the backend.dsn role cannot see it)"
            )
        oid, table_comment = row
        declared = {c.lower(): c for c in table.columns}
        columns: list[ColumnSpec] = []
        attnames: dict[int, str] = {}
        for attnum, attname, type_sql, not_null, comment, typtype, tns, typname, toid, base in conn.execute(
            _COLUMNS_SQL, (oid,)
        ).fetchall():
            if attname.lower() not in declared:
                continue  # undeclared columns stay out of the mirror
            cmeta = table.columns[declared[attname.lower()]]
            if typtype == "e":
                if toid not in enums:
                    labels = conn.execute(
                        "SELECT enumlabel FROM pg_catalog.pg_enum WHERE enumtypid = %s "
                        "ORDER BY enumsortorder", (toid,)
                    ).fetchall()  # fmt: skip
                    enums[toid] = EnumSpec(tns, typname, tuple(r[0] for r in labels))
                type_sql = sql.Identifier(tns, typname).as_string(conn)
            elif typtype == "d":
                type_sql = base  # domains are flattened to their base type
            elif tns != "pg_catalog":
                log.warning("column %s.%s: type of schema %s is mirrored as its declared type",
                            tname, attname, tns)  # fmt: skip
                type_sql = pg_type_name(cmeta.type)
            attnames[attnum] = attname
            columns.append(ColumnSpec(attname, type_sql, bool(not_null) or not cmeta.nullable,
                                      comment if comment is not None else cmeta.comment))  # fmt: skip
        missing = sorted(set(declared) - {c.name.lower() for c in columns})
        if missing:
            raise MirrorError(
                f'declared column(s) {", ".join(missing)} of table "{table.schema_}.{tname}" '
                "do not exist in the data database"
            )
        found[oid] = (table.schema_, tname, attnames)
        comment = table_comment if table_comment is not None else table.comment
        pending.append((oid, table.schema_, tname, table.public, comment, columns))

    tables = []
    for oid, schema, tname, public, comment, columns in pending:
        constraints = []
        attnames = found[oid][2]
        for conname, contype, conkey, confrelid, confkey in conn.execute(
            _CONSTRAINTS_SQL, (oid,)
        ).fetchall():
            cols = tuple(attnames.get(k, "") for k in conkey)
            if not all(cols):
                continue  # involves an undeclared column
            if contype == "f":
                target = found.get(confrelid)
                if target is None:
                    continue  # references an undeclared table
                ref_cols = tuple(target[2].get(k, "") for k in confkey)
                if not all(ref_cols):
                    continue
                constraints.append(
                    ConstraintSpec(conname, "f", cols, (target[0], target[1]), ref_cols)
                )
            else:
                constraints.append(ConstraintSpec(conname, contype, cols))
        tables.append(TableSpec(schema, tname, public, comment, tuple(columns), tuple(constraints)))
    return MirrorSchema(tables, sorted(enums.values(), key=lambda e: (e.schema, e.name)))


# --- the DDL ---------------------------------------------------------------------------------


def _ident(*parts: str) -> str:
    return ".".join('"' + p.replace('"', '""') + '"' for p in parts)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _cols(cols: tuple[str, ...]) -> str:
    return ", ".join(_ident(c) for c in cols)


def mirror_ddl(schema: MirrorSchema) -> list[str]:
    """CREATE statements for the mirror: schemas, enums, tables, keys, comments.

    Foreign keys come last (`foreign_key_ddl`) so that public rows can be loaded first.
    """
    out: list[str] = []
    for s in sorted({t.schema for t in schema.tables} | {e.schema for e in schema.enums}):
        out.append(f"CREATE SCHEMA IF NOT EXISTS {_ident(s)}")
    for e in schema.enums:
        out.append(f"CREATE TYPE {_ident(e.schema, e.name)} AS ENUM "
                   f"({', '.join(_literal(v) for v in e.labels)})")  # fmt: skip
    for t in schema.tables:
        q = _ident(t.schema, t.name)
        parts = [
            f"{_ident(c.name)} {c.type_sql}{' NOT NULL' if c.not_null else ''}" for c in t.columns
        ]
        for con in t.constraints:
            if con.kind == "p":
                parts.append(f"CONSTRAINT {_ident(con.name)} PRIMARY KEY ({_cols(con.columns)})")
            elif con.kind == "u":
                parts.append(f"CONSTRAINT {_ident(con.name)} UNIQUE ({_cols(con.columns)})")
        out.append(f"CREATE TABLE {q} ({', '.join(parts)}) WITH ({_NO_AUTOVACUUM})")
        if t.comment is not None:
            out.append(f"COMMENT ON TABLE {q} IS {_literal(t.comment)}")
        for c in t.columns:
            if c.comment is not None:
                out.append(f"COMMENT ON COLUMN {q}.{_ident(c.name)} IS {_literal(c.comment)}")
    return out


def foreign_key_ddl(schema: MirrorSchema) -> list[str]:
    """ALTER TABLE statements adding the foreign keys among declared tables."""
    public = {(t.schema, t.name) for t in schema.tables if t.public}
    out = []
    for t in schema.tables:
        for con in t.constraints:
            if con.kind != "f" or con.ref_table is None:
                continue
            # A public table's rows may reference a private table, which is empty in the
            # mirror: such keys are declared NOT VALID (not checked against existing rows).
            not_valid = t.public and con.ref_table not in public
            out.append(
                f"ALTER TABLE {_ident(t.schema, t.name)} ADD CONSTRAINT {_ident(con.name)} "
                f"FOREIGN KEY ({_cols(con.columns)}) REFERENCES {_ident(*con.ref_table)} "
                f"({_cols(con.ref_columns)}){' NOT VALID' if not_valid else ''}"
            )
    return out


def _stub_ddl(conn: psycopg.Connection) -> list[str]:
    out = [f"CREATE SCHEMA {_ident(STUB_SCHEMA)}",
           f"COMMENT ON SCHEMA {_ident(STUB_SCHEMA)} IS 'dpproxy: mirror state and "
           "neutralized statistics (every counter is NULL)'",
           f"CREATE TABLE {_ident(STUB_SCHEMA, 'mirror_state')} (fingerprint text NOT NULL, "
           f"refreshed_at timestamptz NOT NULL) WITH ({_NO_AUTOVACUUM})"]  # fmt: skip
    for view in STUB_VIEWS:
        cols = conn.execute(
            "SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod) "
            "FROM pg_catalog.pg_attribute a WHERE a.attrelid = %s::regclass AND a.attnum > 0 "
            "ORDER BY a.attnum", (f"pg_catalog.{view}",)
        ).fetchall()  # fmt: skip
        exprs = [
            _ident(n) if n in _STUB_VIEW_KEEP else f"NULL::{t} AS {_ident(n)}" for n, t in cols
        ]
        out.append(f"CREATE VIEW {_ident(STUB_SCHEMA, view)} AS SELECT {', '.join(exprs)} "
                   f"FROM pg_catalog.{_ident(view)}")  # fmt: skip
    for fn, signatures in STUB_FUNCTIONS.items():
        for sig in signatures:
            result = _STUB_RESULT_TYPES.get(fn, "bigint")
            out.append(f"CREATE FUNCTION {_ident(STUB_SCHEMA, fn)}({sig}) RETURNS {result} "
                       f"LANGUAGE sql IMMUTABLE AS 'SELECT NULL::{result}'")  # fmt: skip
    out.append(f"GRANT USAGE ON SCHEMA {_ident(STUB_SCHEMA)} TO PUBLIC")
    return out


# --- building ----------------------------------------------------------------------------


def check_unprivileged(conn: psycopg.Connection) -> None:
    """Refuse a mirror role that is a superuser or may read beyond its own database."""
    row = conn.execute(
        "SELECT rolsuper, rolcreaterole, rolreplication, rolbypassrls FROM pg_catalog.pg_roles "
        "WHERE rolname = current_user"
    ).fetchone()
    if row is None or any(row):
        raise MirrorError(
            "backend.catalog_dsn must use an unprivileged role (NOSUPERUSER NOCREATEROLE "
            "NOREPLICATION NOBYPASSRLS), such as the dpproxy_catalog role provisioning creates"
        )
    for role in _PRIVILEGED_ROLES:
        member = conn.execute(
            "SELECT pg_catalog.pg_has_role(current_user, %s, 'USAGE')", (role,)
        ).fetchone()
        if member and member[0]:
            raise MirrorError(f"the backend.catalog_dsn role must not be a member of {role}")


def _drop_previous(conn: psycopg.Connection) -> None:
    """Drop what an earlier build left: schemas the mirror role owns, and its objects in
    schemas it does not own (such as public)."""
    owned = conn.execute(
        "SELECT n.nspname, n.nspowner = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user) "
        "FROM pg_catalog.pg_namespace n WHERE n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'"
    ).fetchall()  # fmt: skip
    for nspname, mine in owned:
        if mine and nspname != "public":
            conn.execute(f"DROP SCHEMA {_ident(nspname)} CASCADE")
            continue
        for (relname,) in conn.execute(
            "SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind IN ('r','p','v','m','f') "
            "AND pg_catalog.pg_get_userbyid(c.relowner) = current_user", (nspname,)
        ).fetchall():  # fmt: skip
            conn.execute(f"DROP TABLE IF EXISTS {_ident(nspname, relname)} CASCADE")
        for (typname,) in conn.execute(
            "SELECT t.typname FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n "
            "ON n.oid = t.typnamespace WHERE n.nspname = %s AND t.typtype = 'e' "
            "AND pg_catalog.pg_get_userbyid(t.typowner) = current_user", (nspname,)
        ).fetchall():  # fmt: skip
            conn.execute(f"DROP TYPE IF EXISTS {_ident(nspname, typname)} CASCADE")


def _current_fingerprint(conn: psycopg.Connection) -> str | None:
    exists = conn.execute(
        "SELECT pg_catalog.to_regclass(%s)", (f"{STUB_SCHEMA}.mirror_state",)
    ).fetchone()
    if not exists or exists[0] is None:
        return None
    row = conn.execute(f"SELECT fingerprint FROM {_ident(STUB_SCHEMA, 'mirror_state')}").fetchone()
    return row[0] if row else None


def _copy_public_rows(data: psycopg.Connection, mirror: psycopg.Connection, t: TableSpec) -> int:
    cols = _cols(tuple(c.name for c in t.columns))
    q = _ident(t.schema, t.name)
    n = 0
    with (
        data.cursor().copy(f"COPY (SELECT {cols} FROM {q}) TO STDOUT") as src,  # type: ignore[arg-type]
        mirror.cursor().copy(f"COPY {q} ({cols}) FROM STDIN") as dst,  # type: ignore[arg-type]
    ):
        for chunk in src:
            dst.write(chunk)
            n += 1
    return n


@dataclass(frozen=True)
class RefreshReport:
    """What a refresh did."""

    rebuilt: bool
    tables: int
    public_tables: int
    fingerprint: str


def refresh_mirror(
    data_dsn: str, mirror_dsn: str, meta: Metadata, force: bool = True,
    progress: Callable[[str], None] = lambda _m: None,
) -> RefreshReport:  # fmt: skip
    """Rebuild the mirror from the data database's schema (and copy public tables' rows).

    With `force=False` (start-up), a mirror whose schema fingerprint is unchanged is kept
    as it is, so replicas starting together do not rebuild it (and change its OIDs) in turn.
    """
    with psycopg.connect(data_dsn, autocommit=False) as data:
        data.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        schema = read_schema(data, meta)
        fp = schema.fingerprint()
        with psycopg.connect(mirror_dsn, autocommit=False) as mirror:
            check_unprivileged(mirror)
            mirror.execute("SELECT pg_catalog.pg_advisory_xact_lock(%s)", (MIRROR_LOCK_KEY,))
            if not force and _current_fingerprint(mirror) == fp:
                mirror.rollback()
                progress("catalog mirror is up to date")
                return RefreshReport(False, len(schema.tables), 0, fp)
            _drop_previous(mirror)
            for stmt in _stub_ddl(mirror) + mirror_ddl(schema):
                mirror.execute(stmt)  # type: ignore[arg-type]
            public = [t for t in schema.tables if t.public]
            for t in public:
                _copy_public_rows(data, mirror, t)
            for stmt in foreign_key_ddl(schema):
                mirror.execute(stmt)  # type: ignore[arg-type]
            mirror.execute(
                f"INSERT INTO {_ident(STUB_SCHEMA, 'mirror_state')} VALUES (%s, now())", (fp,)
            )
            mirror.commit()
    progress(f"catalog mirror rebuilt: {len(schema.tables)} tables, {len(public)} with public rows")
    return RefreshReport(True, len(schema.tables), len(public), fp)


def harden_mirror_database(admin_dsn: str, other_databases: list[str]) -> None:
    """As a superuser: revoke from PUBLIC, inside the mirror database, the functions and
    views that reach other sessions, databases or files, and revoke CONNECT on the other
    dpproxy databases from PUBLIC (the roles that need them are granted CONNECT by name)."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        for (sig,) in conn.execute(
            "SELECT p.oid::regprocedure::text FROM pg_catalog.pg_proc p "
            "WHERE p.pronamespace = 'pg_catalog'::regnamespace AND p.proname ~ %s",
            (_HARDEN_FUNCTION_PATTERN,),
        ).fetchall():
            conn.execute(f"REVOKE EXECUTE ON FUNCTION {sig} FROM PUBLIC")  # type: ignore[arg-type]
        for view in _HARDEN_VIEWS:
            if conn.execute("SELECT pg_catalog.to_regclass(%s)", (f"pg_catalog.{view}",)).fetchone()[0]:  # type: ignore[index]
                conn.execute(f"REVOKE SELECT ON pg_catalog.{_ident(view)} FROM PUBLIC")  # type: ignore[arg-type]
        for db in other_databases:
            conn.execute(f"REVOKE CONNECT ON DATABASE {_ident(db)} FROM PUBLIC")  # type: ignore[arg-type]
