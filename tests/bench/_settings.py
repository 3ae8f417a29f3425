"""The session settings dpproxy gives its bounded-SQL sessions, for direct comparisons."""

from __future__ import annotations

import psycopg
import psycopg.sql
from psycopg.rows import dict_row

from proxy.config import BackendConfig
from proxy.declared_keys import KEYS_SQL, declared_keys
from proxy.enforced_bounds import CHECKS_SQL, NUMERIC_TYPES_SQL, enforced_columns, numeric_columns
from rewriter.metadata import (
    Metadata,
    with_enforced_bounds,
    with_key_constraints,
    with_numeric_types,
)


def as_dpproxy_sessions(conn: psycopg.Connection, work_mem: str | None = None) -> None:
    """Apply the settings dpproxy gives its data sessions to a direct connection, so the
    plain and the rewritten SQL run as they would through the proxy (`work_mem`: another
    value of `backend.work_mem`, to compare)."""
    backend = BackendConfig(dsn="", ledger_dsn="", work_mem=work_mem or BackendConfig.model_fields["work_mem"].default)
    for name, value in backend.session_settings().items():
        conn.execute(psycopg.sql.SQL("SELECT set_config({}, {}, false)").format(
            psycopg.sql.Literal(name), psycopg.sql.Literal(value)))  # fmt: skip


def as_dpproxy_metadata(conn: psycopg.Connection, meta: Metadata) -> Metadata:
    """`meta` with what dpproxy reads from the catalog at start-up (bounds enforced by
    CHECK constraints, numeric(p, s) types), so a bench rewrites as dpproxy does."""
    with conn.cursor(row_factory=dict_row) as cur:
        enforced = enforced_columns(meta, cur.execute(CHECKS_SQL).fetchall())
        types = numeric_columns(meta, cur.execute(NUMERIC_TYPES_SQL).fetchall())
        keys, _ = declared_keys(meta, cur.execute(KEYS_SQL).fetchall())
    print(f"clamps left out (CHECK constraints): {sorted(enforced) or 'none'}; "
          f"clamped as integers (numeric(p, s)): {sorted(set(types) - set(enforced)) or 'none'}", flush=True)
    return with_key_constraints(with_numeric_types(with_enforced_bounds(meta, enforced), types), keys)
