"""What dpproxy's start-up reads from a data database's catalog, read from a test."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from accounting.pool import LeanPool, create_pool
from rewriter.metadata import Metadata

T = TypeVar("T")


def catalog_facts(dsn: str, meta: Metadata, finder: Callable[[LeanPool, Metadata], Awaitable[T]]) -> T:
    """`finder(pool, meta)` (e.g. `find_enforced_bounds`) on a one-connection pool to `dsn`."""

    async def go() -> T:
        pool = await create_pool(dsn, min_size=1, max_size=1)
        try:
            return await finder(pool, meta)
        finally:
            await pool.close()

    return asyncio.run(go())
