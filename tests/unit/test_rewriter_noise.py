"""Statistical tests: each released aggregate's error has the declared scale and bounds.

Fixed sample sizes; every assertion's false-alarm probability is at most 1e-6 (Hoeffding:
P(|empirical - p| > t) <= 2 exp(-2 n t^2)), no retries.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from pathlib import Path

import pytest

from accounting.mechanisms import Mechanisms, discrete_laplace_quantile
from accounting.release import error_bounds, release
from rewriter.metadata import load_metadata
from rewriter.parse import parse_one
from rewriter.rewrite import rewrite

META = load_metadata(Path(__file__).resolve().parents[2] / "proxy" / "examples" / "tpch.yaml")
FALSE_ALARM = 1e-6
N = 20_000
T_TWO_SIDED = math.sqrt(math.log(2 / FALSE_ALARM) / (2 * N))
T_ONE_SIDED = math.sqrt(math.log(1 / FALSE_ALARM) / (2 * N))


def dlap_within(scale: float, k: int) -> float:
    """P(|X| <= k) for discrete Laplace(scale)."""
    p = math.exp(-1 / scale)
    return 1 - 2 * p ** (k + 1) / (1 + p)


@pytest.fixture(scope="module")
def mech() -> Mechanisms:
    return Mechanisms()


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT COUNT(*) FROM orders",
        "SELECT SUM(l_quantity) FROM lineitem",
        "SELECT COUNT(*), AVG(c_acctbal) FROM customer",
        "SELECT COUNT(DISTINCT o_custkey), VAR_POP(o_totalprice) FROM orders",
    ],
)
def test_every_primitive_has_its_declared_scale(sql: str, mech: Mechanisms) -> None:
    plan = rewrite(parse_one(sql), META)
    for spec in mech.plan_noise(plan, Decimal("0.5")):
        draws = mech.sample(spec, [0] * N)
        for k in (discrete_laplace_median(spec.scale), spec.error95):
            frac = sum(abs(x) <= k for x in draws) / N
            assert abs(frac - dlap_within(spec.scale, k)) <= T_TWO_SIDED, (spec.label, k)


def discrete_laplace_median(scale: float) -> int:
    """The smallest k with P(|X| <= k) >= 1/2."""
    return discrete_laplace_quantile(scale, 0.5)


def test_declared_95_percent_bounds_hold_for_each_aggregate(mech: Mechanisms) -> None:
    # 25 groups x 800 releases = 20 000 errors per aggregate.
    plan = rewrite(parse_one(
        "SELECT c_nationkey, COUNT(*), SUM(c_acctbal), AVG(c_acctbal), "
        "SUM(CASE WHEN c_acctbal > 0 THEN 1 ELSE 0 END) FROM customer GROUP BY 1"), META)  # fmt: skip
    noise = mech.plan_noise(plan, Decimal(1))
    bounds = error_bounds(plan, noise)
    names = [p.name for p in plan.primitives]
    # Exact primitives per group: 400 rows, normalized sum and plain sum chosen freely.
    exact = {"count": 400, "sum_steps": 400 * 250_000, "cases": 300}
    rows = []
    for g in range(25):
        row: list[int] = [g]
        for p in plan.primitives:
            if p.kind.value == "count":
                row.append(exact["count"])
            else:
                agg = next(a for a in plan.aggregates if a.sum == p.name)
                total = exact["cases"] if "CASE" in agg.label else exact["sum_steps"]
                shift = agg.midpoint * exact["count"] if p.kind.value == "normalized_sum" else 0
                row.append(total - shift)
        rows.append(tuple(row))
    assert len(names) == 3
    truth = [400, Decimal(1_000_000), Decimal(2500), 300]
    inside = [0, 0, 0, 0]
    for _ in range(N // 25):
        ans = release(plan, rows, noise, mech)
        for r in ans.rows:
            for i in range(4):
                bound = _bound_value(bounds[i].text, 400)
                if abs(Decimal(r[i + 1]) - truth[i]) <= bound:
                    inside[i] += 1
    for i in range(4):
        assert inside[i] / N >= 0.95 - T_ONE_SIDED, (bounds[i].label, inside[i] / N)


def _bound_value(text: str, n: int) -> Decimal:
    """The numeric value of a NOTICE bound such as '±24', '±(1.5 + 2)/n'."""
    nums = [Decimal(x) for x in re.findall(r"[0-9]+(?:\.[0-9]+)?", text)]
    if "/n" in text:
        return sum(nums, Decimal(0)) / n
    return nums[0]
