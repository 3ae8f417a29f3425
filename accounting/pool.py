"""asyncpg pools without the per-release reset round trip.

asyncpg's pool resets every connection it takes back (`pg_advisory_unlock_all(); CLOSE
ALL; UNLISTEN *; RESET ALL`): one more round trip paid by every `pool.fetch`, which
doubled the cost of each ledger and answer-cache statement. dpproxy's pools never leave
session state behind: the data pool runs only regenerated, read-only SELECTs; the ledger
pool runs dpproxy's own statements, whose advisory locks are transaction-scoped; session
settings come from the start-up packet (`server_settings`), not from SET. An open
transaction is still rolled back on release by asyncpg itself.
"""

from __future__ import annotations

from typing import Any

import asyncpg


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release hook: nothing to reset (see the module docstring)."""


async def create_pool(dsn: str, **kwargs: Any) -> asyncpg.Pool:
    """`asyncpg.create_pool` with the per-release reset query turned off."""
    pool = await asyncpg.create_pool(dsn, reset=_keep_session, **kwargs)
    assert pool is not None
    return pool
