"""The durable privacy ledger, in PostgreSQL (a database analysts cannot reach).

A charge is one committed transaction that both checks and debits the budget, so any
number of proxy replicas sharing the ledger can never overspend: the conditional UPDATE
takes the row lock, and a concurrent charge waits for it and re-checks the condition.
Nothing is ever deleted; the charge log is append-only and never holds results.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg

SCHEMA_SQL = """
CREATE SCHEMA IF NOT EXISTS dpproxy;
CREATE TABLE IF NOT EXISTS dpproxy.budget_spent (
    analyst text NOT NULL,
    dataset text NOT NULL,
    epsilon numeric NOT NULL DEFAULT 0 CHECK (epsilon >= 0),
    delta numeric NOT NULL DEFAULT 0 CHECK (delta >= 0),
    PRIMARY KEY (analyst, dataset)
);
CREATE TABLE IF NOT EXISTS dpproxy.charges (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    analyst text NOT NULL,
    dataset text NOT NULL,
    fingerprint text NOT NULL,
    epsilon numeric NOT NULL,
    delta numeric NOT NULL,
    mechanisms jsonb NOT NULL
);
CREATE INDEX IF NOT EXISTS charges_analyst_at ON dpproxy.charges (analyst, at);
"""

_CHARGE_SQL = """
UPDATE dpproxy.budget_spent
   SET epsilon = epsilon + $3, delta = delta + $4
 WHERE analyst = $1 AND dataset = $2 AND epsilon + $3 <= $5 AND delta + $4 <= $6
RETURNING epsilon, delta
"""


class BudgetExhausted(Exception):
    """The charge would exceed the analyst's budget; nothing was charged."""

    def __init__(self, spent: Decimal, limit: Decimal, cost: Decimal) -> None:
        super().__init__(f"cost {cost} exceeds remaining {limit - spent}")
        self.spent = spent
        self.limit = limit
        self.cost = cost

    @property
    def remaining(self) -> Decimal:
        """What is left of the budget."""
        return max(Decimal(0), self.limit - self.spent)


@dataclass(frozen=True, slots=True)
class Charge:
    """One committed charge and what remains after it."""

    epsilon: Decimal
    delta: Decimal
    spent_epsilon: Decimal
    remaining_epsilon: Decimal


class Ledger:
    """Budget checks and charges against the ledger database."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    async def connect(cls, dsn: str, size: int = 4) -> Ledger:
        """Open a pool to the ledger database and create its schema if missing."""
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=size)
        assert pool is not None
        ledger = cls(pool)
        await ledger.ensure_schema()
        return ledger

    async def ensure_schema(self) -> None:
        """Create the ledger's tables (idempotent; serialized across replicas)."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(724011)")
            await conn.execute(SCHEMA_SQL)

    async def close(self) -> None:
        """Close the pool."""
        await self._pool.close()

    async def spent(self, analyst: str, dataset: str) -> Decimal:
        """Epsilon spent so far by an analyst on a dataset."""
        v = await self._pool.fetchval(
            "SELECT epsilon FROM dpproxy.budget_spent WHERE analyst = $1 AND dataset = $2",
            analyst,
            dataset,
        )
        return Decimal(v) if v is not None else Decimal(0)

    async def charge(
        self,
        analyst: str,
        dataset: str,
        fingerprint: str,
        epsilon: Decimal,
        delta: Decimal,
        limit: Decimal,
        delta_limit: Decimal = Decimal(1),
        mechanisms: list[dict[str, Any]] | None = None,
    ) -> Charge:
        """Debit the budget and log the charge in one committed transaction.

        Raises BudgetExhausted (and charges nothing) if the budget does not cover it.
        """
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO dpproxy.budget_spent (analyst, dataset) VALUES ($1, $2) "
                "ON CONFLICT DO NOTHING",
                analyst,
                dataset,
            )
            row = await conn.fetchrow(
                _CHARGE_SQL, analyst, dataset, epsilon, delta, limit, delta_limit
            )
            if row is None:
                spent = await conn.fetchval(
                    "SELECT epsilon FROM dpproxy.budget_spent WHERE analyst = $1 AND dataset = $2",
                    analyst,
                    dataset,
                )
                raise BudgetExhausted(Decimal(spent), limit, epsilon)
            await conn.execute(
                "INSERT INTO dpproxy.charges (analyst, dataset, fingerprint, epsilon, delta, "
                "mechanisms) VALUES ($1, $2, $3, $4, $5, $6::jsonb)",
                analyst,
                dataset,
                fingerprint,
                epsilon,
                delta,
                json.dumps(mechanisms or []),
            )
        spent_eps = Decimal(row["epsilon"])
        return Charge(
            epsilon=epsilon,
            delta=delta,
            spent_epsilon=spent_eps,
            remaining_epsilon=max(Decimal(0), limit - spent_eps),
        )
