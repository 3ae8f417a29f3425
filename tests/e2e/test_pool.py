"""The lean connection pool of the data and ledger databases, on a real PostgreSQL:
reuse, the size limit and its waiters, and the connections it must not hand out again
(closed by the server, left in a transaction) or may (a cancelled statement)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
import pytest

from accounting.pool import LeanPool, PoolClosedError, create_pool

T = TypeVar("T")


def run(tpch_dsn: str, body: Callable[[LeanPool], Awaitable[T]], max_size: int = 2) -> T:
    """`body(pool)` on a fresh pool to the TPC-H database, closed afterwards."""

    async def main() -> T:
        pool = await create_pool(tpch_dsn, min_size=1, max_size=max_size)
        try:
            return await body(pool)
        finally:
            await pool.close()

    return asyncio.run(main())


def test_a_given_back_connection_is_reused(tpch_dsn: str) -> None:
    async def body(pool: LeanPool) -> tuple[int, int, int, int]:
        first = await pool.fetchval("SELECT pg_backend_pid()")
        second = await pool.fetchval("SELECT pg_backend_pid()")
        async with pool.acquire() as conn:
            third = await conn.fetchval("SELECT pg_backend_pid()")
            busy_idle = pool.get_idle_size()
        return first, second, third, busy_idle

    first, second, third, busy_idle = run(tpch_dsn, body)
    assert first == second == third
    assert busy_idle == 0


def test_the_size_limit_queues_takers_first_come_first_served(tpch_dsn: str) -> None:
    async def body(pool: LeanPool) -> tuple[list[str], int]:
        order: list[str] = []
        held = [await pool.take(), await pool.take()]
        assert pool.get_size() == 2

        async def user(name: str) -> None:
            async with pool.acquire() as conn:
                order.append(name)
                await conn.fetchval("SELECT 1")

        waiting = [asyncio.create_task(user(n)) for n in ("a", "b", "c")]
        await asyncio.sleep(0.05)
        assert order == []  # both connections are taken: everyone waits
        for conn in held:
            pool.give(conn)
        await asyncio.gather(*waiting)
        return order, pool.get_size()

    order, size = run(tpch_dsn, body)
    assert order == ["a", "b", "c"]
    assert size == 2


def test_a_cancelled_waiter_passes_its_connection_on(tpch_dsn: str) -> None:
    async def body(pool: LeanPool) -> int:
        held = await pool.take()
        first = asyncio.create_task(pool.take())
        second = asyncio.create_task(pool.take())
        await asyncio.sleep(0.01)
        pool.give(held)  # handed to `first`, which is cancelled before it runs
        first.cancel()
        conn = await asyncio.wait_for(second, 5)
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        pool.give(conn)
        return pid

    assert run(tpch_dsn, body, max_size=1) > 0


def test_a_connection_left_in_a_transaction_is_dropped(tpch_dsn: str) -> None:
    async def body(pool: LeanPool) -> tuple[int, int, bool, int]:
        conn = await pool.take()
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        await conn.execute("BEGIN")
        pool.give(conn)
        size_after = pool.get_size()
        fresh = await pool.take()
        in_tx = fresh.is_in_transaction()
        new_pid = await fresh.fetchval("SELECT pg_backend_pid()")
        pool.give(fresh)
        return pid, size_after, in_tx, new_pid

    pid, size_after, in_tx, new_pid = run(tpch_dsn, body)
    assert size_after == 0
    assert not in_tx
    assert new_pid != pid


def test_a_connection_the_server_ended_is_replaced(tpch_dsn: str) -> None:
    async def body(pool: LeanPool) -> tuple[int, int]:
        pid = await pool.fetchval("SELECT pg_backend_pid()")
        killer = await asyncpg.connect(tpch_dsn)
        try:
            assert await killer.fetchval("SELECT pg_terminate_backend($1)", pid)
        finally:
            await killer.close()
        for _ in range(100):  # until the client has seen the connection close
            if pool._idle[0].is_closed():
                break
            await asyncio.sleep(0.02)
        return pid, await pool.fetchval("SELECT pg_backend_pid()")

    pid, new_pid = run(tpch_dsn, body)
    assert new_pid != pid


def test_a_connection_whose_statement_was_cancelled_serves_the_next(tpch_dsn: str) -> None:
    async def body(pool: LeanPool) -> tuple[int, int, int]:
        pid = await pool.fetchval("SELECT pg_backend_pid()")
        slow = asyncio.create_task(pool.fetch("SELECT pg_sleep(30)"))
        await asyncio.sleep(0.2)
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        # The same connection, once the server has cancelled the sleep.
        started = asyncio.get_running_loop().time()
        pid_again = await pool.fetchval("SELECT pg_backend_pid()")
        took = asyncio.get_running_loop().time() - started
        assert took < 10
        return pid, pid_again, await pool.fetchval("SELECT 41 + 1")

    pid, pid_again, answer = run(tpch_dsn, body, max_size=1)
    assert pid_again == pid
    assert answer == 42


def test_a_closed_pool_refuses_takers_and_waiters(tpch_dsn: str) -> None:
    async def body(pool: LeanPool) -> None:
        held = await pool.take()
        waiter = asyncio.create_task(pool.take())
        await asyncio.sleep(0.01)
        await pool.close()
        with pytest.raises(PoolClosedError):
            await waiter
        with pytest.raises(PoolClosedError):
            await pool.take()
        pool.give(held)  # closed on the way back
        assert held.is_closed()
        assert pool.get_size() == 0

    run(tpch_dsn, body, max_size=1)


def test_sizes_are_checked() -> None:
    with pytest.raises(ValueError, match="pool sizes"):
        LeanPool("postgresql://unused", 3, 2, {})
