"""The session settings dpproxy gives its bounded-SQL sessions, for direct comparisons."""

from __future__ import annotations

import psycopg
import psycopg.sql

from proxy.config import BackendConfig


def as_dpproxy_sessions(conn: psycopg.Connection, work_mem: str | None = None) -> None:
    """Apply the settings dpproxy gives its data sessions to a direct connection, so the
    plain and the rewritten SQL run as they would through the proxy (`work_mem`: another
    value of `backend.work_mem`, to compare)."""
    backend = BackendConfig(dsn="", ledger_dsn="", work_mem=work_mem or BackendConfig.model_fields["work_mem"].default)
    for name, value in backend.session_settings().items():
        conn.execute(psycopg.sql.SQL("SELECT set_config({}, {}, false)").format(
            psycopg.sql.Literal(name), psycopg.sql.Literal(value)))  # fmt: skip
