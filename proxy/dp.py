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
from accounting.mechanisms import DeltaRequired, Mechanisms, NoiseSpec, total_delta, total_epsilon
from accounting.release import error_bounds, release
from proxy.commands import Result
from proxy.config import AnalystConfig
from proxy.errors import BUDGET_EXHAUSTED, QUERY_FAILED, ProxyError
from proxy.router import refusal_from
from rewriter.errors import INVALID_PARAMETER, RewriteError
from rewriter.metadata import Metadata
from rewriter.parse import parse_one
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
        self,
        meta: Metadata,
        mechanisms: Mechanisms,
        ledger: Ledger,
        data: asyncpg.Pool,
        default_delta: Decimal = Decimal("1e-7"),
    ) -> None:
        self.meta = meta
        self.mechanisms = mechanisms
        self.ledger = ledger
        self.data = data
        self.default_delta = default_delta
        self._plans: OrderedDict[str, DPPlan] = OrderedDict()

    def noise(self, plan: DPPlan, epsilon: Decimal, delta: Decimal | None) -> list[NoiseSpec]:
        """Calibrate the plan's noise; delta is spent only by plans that need it."""
        d = self.default_delta if delta is None else delta
        try:
            return self.mechanisms.plan_noise(plan, epsilon, d if plan.needs_delta else Decimal(0))
        except DeltaRequired as e:
            raise ProxyError(
                INVALID_PARAMETER,
                f"{e}: delta is {d}",
                hint="group by columns with a declared public domain, or SET dp.delta to a "
                "small positive number",
            ) from e

    def explain(self, text: str, epsilon: Decimal, delta: Decimal | None = None) -> Result:
        """EXPLAIN <query>: the plan, mechanisms and error bounds; runs and charges nothing."""
        body = _strip_explain(text)
        plan = self.plan(body, parse_one(body))
        noise = self.noise(plan, epsilon, delta)
        lines = [
            f'DP query on dataset "{plan.dataset}": would cost epsilon '
            f"{fmt_decimal(total_epsilon(noise))}, delta {_fmt_delta(total_delta(noise))} "
            "(EXPLAIN runs nothing and spends nothing)",
            f"Contribution bounding: each privacy unit keeps at most {plan.max_rows} rows "
            f"(after joins), in at most {plan.max_groups} groups",
        ]
        if plan.selection is not None:
            sel = next(n for n in noise if n.primitive == plan.selection)
            lines.append(
                f"Partition selection: a group is released only if its noisy count of units "
                f"reaches {sel.threshold} (discrete Laplace, scale {sel.scale:g}, epsilon "
                f"{fmt_decimal(sel.epsilon)}, delta {_fmt_delta(sel.delta)})"
            )
        for n in noise:
            if n.primitive == plan.selection:
                continue
            lines.append(
                f"Primitive {n.primitive} {n.label}: {n.mechanism.replace('_', ' ')}, "
                f"sensitivity {n.sensitivity}, scale {n.scale:g}, epsilon "
                f"{fmt_decimal(n.epsilon)}, 95% error ±{n.error95} (integer units)"
            )
        for b in error_bounds(plan, noise):
            lines.append(f"Output {b.label}: 95% error {b.text}")
        lines.append(f"Rewritten SQL: {plan.sql}")
        return Result(tag="EXPLAIN", columns=[("QUERY PLAN", "text")], rows=[(ln,) for ln in lines])

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
        self,
        sql: str,
        tree: exp.Expression,
        analyst: AnalystConfig,
        epsilon: Decimal,
        delta: Decimal | None = None,
    ) -> Result:
        """Charge, run and release one DP query."""
        plan = self.plan(sql, tree)
        noise = self.noise(plan, epsilon, delta)
        cost = total_epsilon(noise)
        try:
            charge = await self.ledger.charge(
                analyst.name,
                plan.dataset,
                plan.fingerprint,
                cost,
                total_delta(noise),
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


def _strip_explain(text: str) -> str:
    """The query of an EXPLAIN statement (options such as ANALYZE or (...) dropped)."""
    rest = text.strip()
    rest = rest[len("explain"):].lstrip() if rest.lower().startswith("explain") else rest
    if rest.startswith("("):
        depth = 0
        for i, ch in enumerate(rest):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0:
                rest = rest[i + 1 :].lstrip()
                break
    words = ("analyze", "analyse", "verbose", "costs", "buffers", "timing", "summary")
    while rest.split(None, 1) and rest.split(None, 1)[0].lower() in words:
        rest = rest.split(None, 1)[1] if len(rest.split(None, 1)) > 1 else ""
    return rest


def _fmt_delta(d: Decimal) -> str:
    return "0" if d == 0 else f"{float(d):.3g}"


def _mech_record(n: NoiseSpec) -> dict[str, object]:
    return {
        "primitive": n.label,
        "mechanism": n.mechanism,
        "sensitivity": n.sensitivity,
        "scale": n.scale,
        "epsilon": str(n.epsilon),
        "delta": str(n.delta),
    }


def _notice(
    noise: list[NoiseSpec], cost: Decimal, remaining: Decimal, budget: Decimal, plan: DPPlan
) -> str:
    bars = [f"{b.label} {b.text}" for b in error_bounds(plan, noise)]
    if plan.selection is not None:
        sel = next(n for n in noise if n.primitive == plan.selection)
        bars.append(f"groups with fewer than about {sel.threshold} units are not shown")
    return (
        f"dpproxy: epsilon {fmt_decimal(cost)} spent on dataset \"{plan.dataset}\", "
        f"{fmt_decimal(remaining)} of {fmt_decimal(budget)} remaining. "
        f"95% noise bounds: {'; '.join(bars)}"
    )
