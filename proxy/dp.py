"""The DP path: rewrite, charge, run the bounded SQL, noise, post-process.

The order matters: the charge is committed in the ledger before the bounded SQL runs,
so no answer can leave without being paid for, and a query that fails after reaching
the database keeps its charge.
"""

from __future__ import annotations

from collections import OrderedDict
from decimal import Decimal

import asyncpg
from sqlglot import exp

from accounting.ledger import BudgetExhausted, Ledger
from accounting.mechanisms import Mechanisms, NoiseSpec, total_epsilon
from accounting.release import release
from proxy.commands import Result
from proxy.config import AnalystConfig
from proxy.errors import BUDGET_EXHAUSTED, QUERY_FAILED, ProxyError
from proxy.router import refusal_from
from rewriter.errors import RewriteError
from rewriter.metadata import Metadata
from rewriter.plan import DPPlan
from rewriter.rewrite import rewrite

PLAN_CACHE_SIZE = 1024


def fmt_decimal(d: Decimal, places: int = 6) -> str:
    """A short human rendering of an exact epsilon (trailing zeros dropped)."""
    q = d.quantize(Decimal(1).scaleb(-places)).normalize()
    return format(q, "f")


class DPEngine:
    """Answers DP queries for every session of one proxy process."""

    def __init__(
        self, meta: Metadata, mechanisms: Mechanisms, ledger: Ledger, data: asyncpg.Pool
    ) -> None:
        self.meta = meta
        self.mechanisms = mechanisms
        self.ledger = ledger
        self.data = data
        self._plans: OrderedDict[str, DPPlan] = OrderedDict()

    def plan(self, sql: str, tree: exp.Expression) -> DPPlan:
        """The DP plan of a statement (cached by its text: rewriting is pure)."""
        cached = self._plans.get(sql)
        if cached is not None:
            self._plans.move_to_end(sql)
            return cached
        try:
            plan = rewrite(tree, self.meta)
        except RewriteError as e:
            raise refusal_from(e) from e
        self._plans[sql] = plan
        if len(self._plans) > PLAN_CACHE_SIZE:
            self._plans.popitem(last=False)
        return plan

    async def answer(
        self, sql: str, tree: exp.Expression, analyst: AnalystConfig, epsilon: Decimal
    ) -> Result:
        """Charge, run and release one DP query."""
        plan = self.plan(sql, tree)
        noise = self.mechanisms.plan_noise(plan, epsilon)
        cost = total_epsilon(noise)
        try:
            charge = await self.ledger.charge(
                analyst.name,
                plan.dataset,
                plan.fingerprint,
                cost,
                Decimal(0),
                analyst.budget_epsilon,
                mechanisms=[_mech_record(n) for n in noise],
            )
        except BudgetExhausted as e:
            raise ProxyError(
                BUDGET_EXHAUSTED,
                f"privacy budget exhausted: this query costs epsilon {fmt_decimal(cost)} but "
                f"{fmt_decimal(e.remaining)} of {fmt_decimal(e.limit)} remains on dataset "
                f'"{plan.dataset}"',
                hint="lower dp.epsilon (SET dp.epsilon = ...) or ask an admin for more budget",
            ) from e
        try:
            rows = await self.data.fetch(plan.sql)
        except (asyncpg.PostgresError, OSError) as e:
            # The backend's text may quote private values: never forward it.
            raise ProxyError(
                QUERY_FAILED,
                "the query failed in the database (details are withheld because they could "
                "reveal private data); its privacy cost has been charged",
            ) from e
        answer = release(plan, rows, noise, self.mechanisms)
        notice = _notice(noise, cost, charge.remaining_epsilon, analyst.budget_epsilon, plan)
        return Result(
            tag=f"SELECT {len(answer.rows)}",
            columns=answer.columns,
            rows=answer.rows,
            notices=[notice],
        )


def _mech_record(n: NoiseSpec) -> dict[str, object]:
    return {
        "primitive": n.label,
        "mechanism": "discrete_laplace",
        "sensitivity": n.sensitivity,
        "scale": n.scale,
        "epsilon": str(n.epsilon),
    }


def _notice(
    noise: list[NoiseSpec], cost: Decimal, remaining: Decimal, budget: Decimal, plan: DPPlan
) -> str:
    bars = []
    steps = {a.sum: a.step for a in plan.aggregates if a.sum}
    for n in noise:
        step = steps.get(n.primitive, Decimal(1))
        bars.append(f"{n.label} ±{fmt_decimal(n.error95 * step, 2)}")
    return (
        f"dpproxy: epsilon {fmt_decimal(cost)} spent on dataset \"{plan.dataset}\", "
        f"{fmt_decimal(remaining)} of {fmt_decimal(budget)} remaining. "
        f"95% noise bounds: {'; '.join(bars)}"
    )
