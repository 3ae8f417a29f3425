"""The answer cache's batched statements on a real ledger database (accounting/cache.py):
concurrent lookups and stores share statements and keep the cache's rules; and the
lookup that rides in a ledger charge."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

from accounting.accountant import laplace_release
from accounting.budget import AnalystBudget, sync_config
from accounting.cache import AnswerCache, CachedAnswer
from accounting.ledger import AlreadyAnswered, Charge, Ledger
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


VERIFIER = "SCRAM-SHA-256$4096:c2FsdA==$a2V5:a2V5"


def test_a_probing_charge_is_not_made_where_a_valid_answer_is_stored(ledger_dsn: str) -> None:
    # The lookup that rides in a charge (`unless_answered`): a valid stored answer stops
    # the charge (AlreadyAnswered, nothing written); an absent, expired or cleared one
    # does not. Charges in the same batch as an answered probe are never lost: the
    # unprobed ones are charged, the probed ones are told to look up.
    async def main() -> tuple[list[Any], list[Any], int, Decimal]:
        ledger = await Ledger.connect(ledger_dsn)
        cache = AnswerCache(ledger.pool, None)
        expiring = AnswerCache(ledger.pool, 0.05)
        try:
            async with ledger.pool.acquire() as conn:
                await sync_config(conn, "d", [AnalystBudget("a", VERIFIER, Decimal(1))])
            await cache.put("stored", "d", None, "fp", answer(1))
            await expiring.put("old", "d", None, "fp", answer(2))
            await cache.put("cleared", "d", None, "fp", answer(3))
            cost = laplace_release(Fraction(1, 10))
            together = await asyncio.gather(
                ledger.charge("a", "d", "fp", cost, unless_answered=cache.probe("stored")),
                ledger.charge("a", "d", "fp", cost, unless_answered=cache.probe("new")),
                ledger.charge("a", "d", "fp", cost),
                return_exceptions=True,
            )  # fmt: skip
            await asyncio.sleep(0.1)  # "old" is past its TTL
            await cache.clear("d")  # and "cleared" (every answer) is of an older epoch
            alone = [await _outcome(ledger.charge("a", "d", "fp", cost, unless_answered=probe))
                     for probe in (cache.probe("new"), expiring.probe("old"), cache.probe("cleared"))]  # fmt: skip
            async with ledger.pool.acquire() as conn:
                charges = await conn.fetchval("SELECT count(*) FROM dpproxy.charges")
                spent = await conn.fetchval("SELECT epsilon FROM dpproxy.budget_spent")
            return together, alone, charges, spent
        finally:
            await ledger.close()

    together, alone, charges, spent = asyncio.run(main())
    assert isinstance(together[0], AlreadyAnswered)
    assert isinstance(together[1], (Charge, AlreadyAnswered))  # answered with its batch, or not
    assert isinstance(together[2], Charge)
    assert all(isinstance(o, Charge) for o in alone)
    made = sum(isinstance(o, Charge) for o in together) + len(alone)
    assert charges == made and spent == Decimal(made) / 10


async def _outcome(charge: Awaitable[Charge]) -> Charge | Exception:
    try:
        return await charge
    except Exception as e:  # noqa: BLE001 - the test inspects it
        return e
