"""A lean pool of asyncpg connections for the data and ledger databases.

asyncpg's own pool costs every `pool.fetch` ~0.06 ms of CPU and ~0.1 ms of wall time
beyond the query itself (measured on the 2-core bench machine: `SELECT 1` 0.148 ms
through it against 0.049 ms on a bare connection): each release runs in a shielded task
of its own, resets the connection's listeners under a timeout, re-arms an inactivity
timer, and each acquired connection is wrapped in a proxy object. It also resets every
connection it takes back with a round trip (`RESET ALL; UNLISTEN *; ...`). A DP query
makes two or three pooled statements (the bounded SQL, the ledger charge, the answer
cache's store), so that was a fifth of the latency dpproxy adds.

dpproxy's pools never leave session state behind: the data pool runs only regenerated,
read-only SELECTs; the ledger pool runs dpproxy's own statements, whose advisory locks
are transaction-scoped; session settings come from the start-up packet
(`server_settings`), not from SET. So taking a connection is a list pop and giving it
back a list push. A connection given back closed or inside a transaction is dropped (a
new one is opened on demand); one whose statement was cancelled is kept, because
asyncpg makes the next statement on it wait until the cancellation has completed.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, TypeVar

import asyncpg

T = TypeVar("T")


class PoolClosedError(asyncpg.InterfaceError):
    """The pool was closed: no connection can be taken from it."""


class LeanPool:
    """Up to `max_size` asyncpg connections to one database, handed out in LIFO order."""

    def __init__(self, dsn: str, min_size: int, max_size: int, connect_kwargs: dict[str, Any]) -> None:
        if not 0 <= min_size <= max_size or max_size < 1:
            raise ValueError(f"pool sizes: need 0 <= min_size <= max_size >= 1, got {min_size}, {max_size}")
        self._dsn = dsn
        self._min_size = min_size
        self._max_size = max_size
        self._kwargs = connect_kwargs
        self._idle: list[asyncpg.Connection] = []
        self._open = 0  # connections open or being opened, idle or in use
        # Tasks waiting for a connection: each gets one handed over (or None: room to open one).
        self._waiters: deque[asyncio.Future[asyncpg.Connection | None]] = deque()
        self._closed = False

    async def fill(self) -> None:
        """Open `min_size` connections (the first failure propagates: start-up stops)."""
        while self._open < self._min_size:
            self._idle.append(await self._connect())

    # --- taking and giving back -------------------------------------------------------

    async def take(self) -> asyncpg.Connection:
        """A connection for the caller alone until `give` (waits while all are in use)."""
        while True:
            if self._closed:
                raise PoolClosedError("the connection pool is closed")
            while self._idle:
                conn = self._idle.pop()
                if not conn.is_closed():
                    return conn
                self._open -= 1  # the server ended it while idle
            if self._open < self._max_size:
                return await self._connect()
            waiter: asyncio.Future[asyncpg.Connection | None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                handed = await waiter
            except asyncio.CancelledError:
                # What was handed to a waiter cancelled meanwhile goes to the next one.
                if waiter.done() and not waiter.cancelled():
                    handed = waiter.result()
                    if handed is not None:
                        self.give(handed)
                    else:
                        self._wake()
                raise
            if handed is not None:
                return handed

    def give(self, conn: asyncpg.Connection) -> None:
        """Give back a connection from `take`; one closed or mid-transaction is dropped."""
        if self._closed or conn.is_closed() or conn.is_in_transaction():
            self._open -= 1
            conn.terminate()
            self._wake()  # room to open another
            return
        while self._waiters:  # handed over directly: first come, first served
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self._idle.append(conn)

    def acquire(self) -> _Lease:
        """`async with pool.acquire() as conn:` a connection, given back on exit."""
        return _Lease(self)

    async def _connect(self) -> asyncpg.Connection:
        self._open += 1
        try:
            return await asyncpg.connect(self._dsn, **self._kwargs)
        except BaseException:
            self._open -= 1
            self._wake()  # a waiter may open the connection this one could not
            raise

    def _wake(self) -> None:
        """Tell the first waiter that it may open a connection."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    # --- one statement on a pooled connection -----------------------------------------

    async def _on_one(self, op: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """`op` on a connection taken for it and given back after."""
        conn = await self.take()
        try:
            return await op(conn)
        finally:
            self.give(conn)

    async def fetch(self, query: str, *args: Any, timeout: float | None = None) -> list[asyncpg.Record]:
        """Rows of one statement."""
        return await self._on_one(lambda c: c.fetch(query, *args, timeout=timeout))

    async def fetchrow(self, query: str, *args: Any, timeout: float | None = None) -> asyncpg.Record | None:
        """The first row of one statement, or None."""
        return await self._on_one(lambda c: c.fetchrow(query, *args, timeout=timeout))

    async def fetchval(self, query: str, *args: Any, timeout: float | None = None) -> Any:
        """The first value of the first row of one statement."""
        return await self._on_one(lambda c: c.fetchval(query, *args, timeout=timeout))

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str:
        """Run one statement (or several, without arguments); its command tag."""
        return await self._on_one(lambda c: c.execute(query, *args, timeout=timeout))

    # --- sizes (for /metrics and /health) and closing ---------------------------------

    def get_size(self) -> int:
        """Connections open now, idle or in use."""
        return self._open

    def get_idle_size(self) -> int:
        """Connections open and not in use."""
        return len(self._idle)

    def get_max_size(self) -> int:
        """The most connections this pool opens."""
        return self._max_size

    def get_min_size(self) -> int:
        """The connections opened at start."""
        return self._min_size

    async def close(self) -> None:
        """Close the idle connections now and each one in use when it is given back."""
        self._closed = True
        idle, self._idle = self._idle, []
        self._open -= len(idle)
        await asyncio.gather(*(c.close() for c in idle), return_exceptions=True)
        for w in self._waiters:
            if not w.done():
                w.set_exception(PoolClosedError("the connection pool is closed"))
        self._waiters.clear()

    def terminate(self) -> None:
        """Close the idle connections at once, without waiting for the server."""
        self._closed = True
        for c in self._idle:
            c.terminate()
        self._open -= len(self._idle)
        self._idle = []


class _Lease:
    """The async context manager of `LeanPool.acquire`."""

    __slots__ = ("_pool", "_conn")

    def __init__(self, pool: LeanPool) -> None:
        self._pool = pool
        self._conn: asyncpg.Connection | None = None

    async def __aenter__(self) -> asyncpg.Connection:
        self._conn = await self._pool.take()
        return self._conn

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:  # fmt: skip
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.give(conn)


async def create_pool(dsn: str, min_size: int = 1, max_size: int = 10, **connect_kwargs: Any) -> LeanPool:
    """A `LeanPool` to `dsn` with `min_size` connections open (`connect_kwargs` go to
    `asyncpg.connect`, e.g. `server_settings`)."""
    pool = LeanPool(dsn, min_size, max_size, connect_kwargs)
    try:
        await pool.fill()
    except BaseException:
        await pool.close()
        raise
    return pool
