"""Analysts, their budgets and the datasets' global budgets, as rows in the ledger.

The config file seeds the ledger at start (`sync_config`); the admin CLI changes rows
at run time; every proxy replica reads them on each login and each charge, so changes
apply without a restart. A row the admin CLI has changed is marked `managed_by =
'admin'` and the config no longer overwrites it. Nothing here deletes anything: a
removed analyst is disabled, and every change is appended to `dpproxy.admin_log`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

import asyncpg

from accounting.accountant import Accountant, AccountantKind, Limits
from accounting.ledger import spend_of
from accounting.pool import LeanPool


@dataclass(frozen=True, slots=True)
class AnalystBudget:
    """One analyst's budget on one dataset (what the config or the admin CLI sets)."""

    name: str
    password: str
    budget_epsilon: Decimal
    budget_delta: Decimal = Decimal(0)
    max_epsilon_per_query: Decimal | None = None
    renewal_period: timedelta | None = None
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class DatasetPolicy:
    """A dataset's accountant and global budget (across all analysts)."""

    dataset: str
    accountant: AccountantKind
    accounting_delta: Decimal
    budget_epsilon: Decimal | None = None
    budget_delta: Decimal | None = None


class LedgerConflict(Exception):
    """The config contradicts what the ledger already holds (e.g. another accountant)."""


async def sync_dataset(conn: asyncpg.Connection, policy: DatasetPolicy) -> None:
    """Create or update the dataset's row; refuse to switch accountants after spending."""
    async with conn.transaction():
        row = await conn.fetchrow(
            "SELECT * FROM dpproxy.datasets WHERE dataset = $1 FOR UPDATE", policy.dataset
        )
        if row is None:
            await conn.execute(
                "INSERT INTO dpproxy.datasets (dataset, accountant, accounting_delta, "
                "budget_epsilon, budget_delta) VALUES ($1, $2, $3, $4, $5) "
                "ON CONFLICT (dataset) DO NOTHING",
                policy.dataset, policy.accountant.value, policy.accounting_delta,
                policy.budget_epsilon, policy.budget_delta,
            )  # fmt: skip
            return
        changes = row["accountant"] != policy.accountant.value or Decimal(
            row["accounting_delta"]
        ) != policy.accounting_delta
        spent = await conn.fetchval(
            "SELECT count(*) FROM dpproxy.charges WHERE dataset = $1", policy.dataset
        )
        if changes and spent:
            raise LedgerConflict(
                f'dataset "{policy.dataset}" was charged under the {row["accountant"]} '
                f"accountant at delta {row['accounting_delta']}; the ledger cannot switch to "
                f"{policy.accountant.value} at delta {policy.accounting_delta} (use a new "
                "ledger database, or keep the old setting)"
            )
        await conn.execute(
            "UPDATE dpproxy.datasets SET accountant = $2, accounting_delta = $3, "
            "budget_epsilon = $4, budget_delta = $5 WHERE dataset = $1",
            policy.dataset, policy.accountant.value, policy.accounting_delta,
            policy.budget_epsilon, policy.budget_delta,
        )  # fmt: skip


async def sync_config(
    conn: asyncpg.Connection, dataset: str, analysts: list[AnalystBudget]
) -> None:
    """Seed the config's analysts; update rows the admin CLI has not taken over."""
    async with conn.transaction():
        # One replica at a time, so two starting proxies do not interleave their syncs.
        await conn.execute("SELECT pg_advisory_xact_lock(724012)")
        for a in analysts:
            existing = await conn.fetchrow(
                "SELECT managed_by FROM dpproxy.analysts WHERE name = $1", a.name
            )
            if existing is not None and existing["managed_by"] == "admin":
                continue
            await conn.execute(
                "INSERT INTO dpproxy.analysts (name, password, enabled) VALUES ($1, $2, $3) "
                "ON CONFLICT (name) DO UPDATE SET password = EXCLUDED.password, "
                "enabled = EXCLUDED.enabled, updated_at = now() "
                "WHERE (dpproxy.analysts.password, dpproxy.analysts.enabled) "
                "IS DISTINCT FROM (EXCLUDED.password, EXCLUDED.enabled)",
                a.name, a.password, a.enabled,
            )  # fmt: skip
            await _upsert_budget(conn, dataset, a)


async def _upsert_budget(conn: asyncpg.Connection, dataset: str, a: AnalystBudget) -> None:
    await conn.execute(
        "INSERT INTO dpproxy.budget_spent (analyst, dataset, budget_epsilon, budget_delta, "
        "max_epsilon_per_query, renewal_period) VALUES ($1, $2, $3, $4, $5, $6) "
        "ON CONFLICT (analyst, dataset) DO UPDATE SET budget_epsilon = EXCLUDED.budget_epsilon, "
        "budget_delta = EXCLUDED.budget_delta, "
        "max_epsilon_per_query = EXCLUDED.max_epsilon_per_query, "
        "renewal_period = EXCLUDED.renewal_period",
        a.name, dataset, a.budget_epsilon, a.budget_delta, a.max_epsilon_per_query,
        a.renewal_period,
    )  # fmt: skip


async def load_analyst(pool: LeanPool, name: str, dataset: str) -> AnalystBudget | None:
    """An analyst and their budget on `dataset`, as the ledger holds them now."""
    row = await pool.fetchrow(
        "SELECT a.name, a.password, a.enabled, b.budget_epsilon, b.budget_delta, "
        "b.max_epsilon_per_query, b.renewal_period FROM dpproxy.analysts a "
        "JOIN dpproxy.budget_spent b ON b.analyst = a.name AND b.dataset = $2 "
        "WHERE a.name = $1",
        name,
        dataset,
    )
    if row is None:
        return None
    return AnalystBudget(
        name=row["name"], password=row["password"], budget_epsilon=Decimal(row["budget_epsilon"]),
        budget_delta=Decimal(row["budget_delta"]), max_epsilon_per_query=row["max_epsilon_per_query"],
        renewal_period=row["renewal_period"], enabled=row["enabled"],
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class BudgetRow:
    """What `SHOW dp.budget` and the admin CLI report for one analyst on one dataset."""

    analyst: str
    dataset: str
    accountant: str
    enabled: bool
    budget_epsilon: Fraction
    spent_epsilon: Fraction
    remaining_epsilon: Fraction
    budget_delta: Fraction
    spent_delta: Fraction
    spent_rho: Fraction
    max_epsilon_per_query: Fraction | None
    renewal_period: timedelta | None
    queries: int


async def budget_rows(
    conn: asyncpg.Connection | LeanPool, analyst: str | None = None,
    dataset: str | None = None, count_queries: bool = True,
) -> list[BudgetRow]:  # fmt: skip
    """Budgets and spend, per (analyst, dataset), under each dataset's own accountant.

    A renewal period that has ended shows as a fresh budget (the next charge resets it).
    Without `count_queries`, `queries` is 0: counting reads every charge of the analyst,
    which a cache hit's NOTICE (remaining budget only) need not pay for.
    """
    queries = ("(SELECT count(*) FROM dpproxy.charges c WHERE c.analyst = b.analyst "
               " AND c.dataset = b.dataset)" if count_queries else "0")  # fmt: skip
    rows = await conn.fetch(
        "SELECT b.*, a.enabled, d.accountant, d.accounting_delta, now() AS now, "
        f"{queries} AS queries "
        "FROM dpproxy.budget_spent b JOIN dpproxy.analysts a ON a.name = b.analyst "
        "JOIN dpproxy.datasets d ON d.dataset = b.dataset "
        "WHERE ($1::text IS NULL OR b.analyst = $1) AND ($2::text IS NULL OR b.dataset = $2) "
        "ORDER BY b.analyst, b.dataset",
        analyst,
        dataset,
    )
    out = []
    for r in rows:
        acc = Accountant(AccountantKind(r["accountant"]), Fraction(Decimal(r["accounting_delta"])))
        spend = spend_of(r)
        period = r["renewal_period"]
        if period is not None and period.total_seconds() > 0 and r["now"] >= r["period_start"] + period:
            spend = spend_of({**{c: 0 for c in ("epsilon", "delta", "rho", "epsilon_sq",
                                                "epsilon_tanh")}, "releases": 0})  # fmt: skip
        g = acc.guarantee(spend)
        limits = Limits(Fraction(Decimal(r["budget_epsilon"])))
        cap = r["max_epsilon_per_query"]
        out.append(
            BudgetRow(
                analyst=r["analyst"], dataset=r["dataset"], accountant=r["accountant"],
                enabled=r["enabled"], budget_epsilon=limits.epsilon or Fraction(0),
                spent_epsilon=g.epsilon, remaining_epsilon=acc.remaining(spend, limits) or Fraction(0),
                budget_delta=Fraction(Decimal(r["budget_delta"])), spent_delta=g.delta,
                spent_rho=spend.rho, max_epsilon_per_query=Fraction(Decimal(cap)) if cap is not None else None,
                renewal_period=period, queries=int(r["queries"]),
            )  # fmt: skip
        )
    return out


async def log_admin(conn: asyncpg.Connection, action: str, analyst: str | None, detail: dict[str, Any]) -> None:
    """Append one admin action to the audit log (never secrets: no passwords/verifiers)."""
    await conn.execute(
        "INSERT INTO dpproxy.admin_log (action, analyst, detail) VALUES ($1, $2, $3::jsonb)",
        action, analyst, json.dumps(detail, default=str),
    )  # fmt: skip
