"""The session settings dpproxy gives its bounded-SQL sessions, for direct comparisons."""

from __future__ import annotations

import psycopg

from proxy.config import BackendConfig


def as_dpproxy_sessions(conn: psycopg.Connection) -> None:
    """Apply dpproxy's default backend session settings to a direct connection, so the
    plain and the rewritten SQL run under the same settings as through the proxy."""
    fields = BackendConfig.model_fields
    conn.execute(f"SET max_parallel_workers_per_gather = {fields['max_parallel_workers_per_gather'].default}")
    conn.execute(f"SET work_mem = '{fields['work_mem'].default}'")
