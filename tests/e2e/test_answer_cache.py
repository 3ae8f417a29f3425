"""The answer cache's batched statements on a real ledger database (accounting/cache.py):
concurrent lookups and stores share statements and keep the cache's rules."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest

from accounting.cache import AnswerCache, CachedAnswer
from accounting.ledger import Ledger
from proxy.pgcluster import PgCluster
from tests.support.ledgers import ledger_database


@pytest.fixture()
def ledger_dsn(pg_cluster: PgCluster, unique_name: Callable[[str], str]) -> Iterator[str]:
    """A fresh ledger database holding dataset "d" and the answers table."""

    async def answers_table(ledger: Ledger) -> None:
        await AnswerCache(ledger.pool, None).ensure_schema()

    with ledger_database(pg_cluster, unique_name("answer_cache"), answers_table) as dsn:
        yield dsn


def answer(n: int) -> CachedAnswer:
    """A distinguishable answer."""
    return CachedAnswer([("count", "int8")], [(n,)], f"count ±{n}")


def test_concurrent_stores_keep_the_first_answer_per_key_and_lookups_find_them(ledger_dsn: str) -> None:
    async def main() -> tuple[list[bool], list[CachedAnswer | None], int]:
        ledger = await Ledger.connect(ledger_dsn)
        cache = AnswerCache(ledger.pool, None)
        try:
            # Twenty stores at once: most share statements; keys k0..k4 each stored 4 times.
            stored = await asyncio.gather(*(cache.put(f"k{i % 5}", "d", None, "fp", answer(i))
                                            for i in range(20)))  # fmt: skip
            found = await asyncio.gather(*(cache.get(f"k{i}") for i in range(6)))
            async with ledger.pool.acquire() as conn:
                rows = await conn.fetchval("SELECT count(*) FROM dpproxy.answers")
            return stored, found, rows
        finally:
            await ledger.close()

    stored, found, rows = asyncio.run(main())
    assert rows == 5 and stored.count(True) == 5
    for key in range(5):
        winner = next(i for i in range(20) if i % 5 == key and stored[i])
        assert winner == key  # the first store of each key is the one kept
        assert not any(stored[i] for i in range(20) if i % 5 == key and i != winner)
        got = found[key]
        assert got is not None and got.rows == [(winner,)] and got.bounds == f"count ±{winner}"
    assert found[5] is None
