"""Statistical tests: each released aggregate's error has the declared scale and bounds.

Fixed sample sizes; every assertion's false-alarm probability is at most 1e-6 (Hoeffding:
P(|empirical - p| > t) <= 2 exp(-2 n t^2)), no retries.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from accounting.extremes import candidate_steps, extreme_scores, rank_target
from accounting.mechanisms import Mechanisms, discrete_laplace_quantile
from accounting.release import candidate_scores, error_bounds, quantile_scores, release
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
                row.append((total - shift) * p.denominator)
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


def test_quantile_choice_follows_the_exponential_mechanism(mech: Mechanisms) -> None:
    # OpenDP's report-noisy-max under max-divergence adds exponential noise of the given
    # scale to every (negated) score: check three candidates' frequencies against the
    # exact winning probabilities (numerical integration).
    plan = rewrite(parse_one("SELECT MEDIAN(c_acctbal) FROM customer"), META)
    (spec,) = mech.plan_noise(plan, Decimal(1))
    scale = spec.scale
    k = int(round(scale))
    scores = [0, k, 2 * k]
    probs = [exponential_rnm_win(i, [x / scale for x in scores]) for i in range(3)]
    assert abs(sum(probs) - 1) < 1e-3
    picks = [mech.pick_min(spec, scores) for _ in range(N)]
    for i in range(3):
        frac = picks.count(i) / N
        assert abs(frac - probs[i]) <= T_TWO_SIDED, (i, frac, probs[i])


def exponential_rnm_win(i: int, scores: list[float]) -> float:
    """P(candidate i has the largest -score + Exp(1)) for unit-scale scores."""

    def cdf(x: float, s: float) -> float:
        return 0.0 if x + s <= 0 else 1 - math.exp(-(x + s))

    # Midpoint rule: error ~1e-7, negligible next to the 0.019 tolerance.
    total, dx, x = 0.0, 1e-3, -scores[i] + 5e-4
    while x < 40:
        p = math.exp(-(x + scores[i]))
        for j, s in enumerate(scores):
            if j != i:
                p *= cdf(x, s)
        total += p * dx
        x += dx
    return total


def test_quantile_scores_count_values_below_and_above() -> None:
    plan = rewrite(parse_one("SELECT MEDIAN(l_linenumber) FROM lineitem"), META)
    (agg,) = plan.aggregates
    assert (agg.lower, agg.upper, agg.stride, agg.candidates) == (1, 7, 1, 7)
    # values 1, 1, 3, 7: cells 2j hold value j + 1
    scores = quantile_scores(agg, {0: 2, 4: 1, 12: 1})
    # candidate 2: 2 below, 2 above -> |2 - 2| = 0; candidate 1: 0 below, 2 above -> 2
    assert scores[1] == 0 and scores[0] == 2 and scores[6] == 3


def test_extreme_scores_measure_the_distance_to_the_rank_target() -> None:
    plan = rewrite(parse_one("SELECT MIN(l_linenumber), MAX(l_linenumber) FROM lineitem"), META)
    lo, hi = plan.aggregates
    assert (lo.func.value, hi.func.value, lo.candidates, hi.candidates) == ("min", "max", 7, 7)
    # Values 3, 3, 4, 7, 7, 7 (MIN's cells 2j hold value j + 1; MAX's hold value 7 - j).
    min_hist = {4: 2, 6: 1, 12: 3}
    max_hist = {0: 3, 6: 1, 8: 2}
    # Target t = 2: the 2nd smallest is 3 (candidate 2), the 2nd largest is 7 (candidate 0).
    assert extreme_scores(lo, min_hist, 2) == [2, 2, 0, 1, 2, 2, 2]
    assert extreme_scores(hi, max_hist, 2) == [0, 2, 2, 2, 3, 5, 5]
    assert [candidate_steps(lo, j) for j in (0, 2, 6)] == [1, 3, 7]
    assert [candidate_steps(hi, j) for j in (0, 2, 6)] == [7, 5, 1]
    # No rows: every candidate scores t, so the answer is uniform within the bounds.
    assert extreme_scores(lo, {}, 5) == [5] * 7


def test_rank_target_is_data_independent_and_grows_with_the_noise() -> None:
    assert rank_target(1000, 2.0) == math.ceil(2.0 * math.log(1000 / 0.05))
    assert rank_target(7, 1e-6) == 1
    assert rank_target(1000, 4.0) > rank_target(1000, 2.0) > rank_target(10, 2.0)


def exponential_rnm_group_wins(groups: list[tuple[float, int]]) -> list[float]:
    """P(some candidate of each group wins) for unit-scale (score, multiplicity) groups.

    Report-noisy-max adds Exp(1) to every negated score: candidate i's value is
    -s_i + E_i. With the best score 0, the winning value is >= 0, so P(group g wins) =
    m_g * integral over x >= 0 of e^-(x + s_g) * prod_j F_j(x)^m_j / F_g(x), with
    F_j(x) = 1 - e^-(x + s_j) (candidates of one group are exchangeable). Midpoint rule
    on a 1e-3 grid up to 40: error ~1e-7, negligible next to the tolerances.
    """
    x = np.arange(0.0, 40.0, 1e-3) + 5e-4
    log_f = {s: np.log1p(-np.exp(-(x + s))) for s, _ in groups}
    log_all = sum(m * log_f[s] for s, m in groups)
    return [float(m * np.sum(np.exp(-(x + s) + log_all - log_f[s])) * 1e-3) for s, m in groups]


def test_min_choice_follows_the_rank_targeted_mechanism(mech: Mechanisms) -> None:
    # 500 values far from the lower bound: candidates 0-24 lie below the minimum (a naive
    # quantile 0 would pick among them half the time). The exact winning probability of
    # each score level is computed by integration and the frequencies of N releases must
    # match it; the probability of landing below the minimum is below the declared 5%.
    # The grid is cut to 50 candidates (OpenDP's noisy max draws ~5 us per candidate);
    # MAX scores its mirrored histogram with the same function.
    plan = rewrite(parse_one("SELECT MIN(o_totalprice) FROM orders"), META)
    agg = replace(plan.aggregates[0], candidates=50)
    (spec,) = mech.plan_noise(plan, Decimal(1))
    t = rank_target(agg.candidates, spec.scale)
    hist = {2 * j + 1: 20 for j in range(25, 50)}  # 20 values inside each cell 25-49
    scores = candidate_scores(agg, hist, spec)
    assert scores[:25] == [t] * 25 and min(scores) == 0 and 2 * t < 500
    levels = sorted(set(scores))
    probs = exponential_rnm_group_wins([(s / spec.scale, scores.count(s)) for s in levels])
    assert abs(sum(probs) - 1) < 1e-3
    picks = [mech.pick_min(spec, scores) for _ in range(N)]
    # Cells with 2t values or more below them score t too: the 25 below the minimum
    # have their share of that level's probability (candidates of a level are alike).
    p_below = probs[levels.index(t)] * 25 / scores.count(t)
    assert p_below <= 0.05
    below = sum(j < 25 for j in picks) / N
    assert abs(below - p_below) <= T_TWO_SIDED, (below, p_below)
    # The best level (the cell holding the t-th value) and the three next ones.
    for g in range(4):
        frac = sum(scores[j] == levels[g] for j in picks) / N
        assert abs(frac - probs[g]) <= T_TWO_SIDED, (levels[g], frac, probs[g])


def test_selections_under_zcdp_use_the_zcdp_noisy_max_and_are_priced_in_rho(
    mech: Mechanisms,
) -> None:
    # A quantile/MIN/MAX charged rho must be drawn by OpenDP's zCDP noisy max (Gumbel
    # noise, the exponential mechanism): its choice probabilities are exp(-score / scale)
    # normalized. The pure-DP sampler at the same scale would cost up to 4x that rho.
    from proxy.dp import price

    plan = rewrite(parse_one("SELECT COUNT(*), MIN(c_acctbal) FROM customer"), META)
    noise = mech.plan_noise_gaussian(plan, Decimal("0.02"))
    count, pick = noise
    assert count.mechanism == "discrete_gaussian" and pick.mechanism == "gumbel_noisy_max"
    assert pick.epsilon == 0 and 0 < pick.rho <= Decimal("0.01")
    assert Decimal(mech.noisy_max_zcdp(pick.scale).map(pick.sensitivity)) == pick.rho
    assert price(noise).rho <= Decimal("0.02") and price(noise).epsilon == 0
    k = int(round(pick.scale))
    scores = [0, k, 2 * k]
    weights = [math.exp(-s / pick.scale) for s in scores]
    probs = [w / sum(weights) for w in weights]
    picks = [mech.pick_min(pick, scores) for _ in range(N)]
    for i in range(3):
        assert abs(picks.count(i) / N - probs[i]) <= T_TWO_SIDED, (i, picks.count(i) / N, probs[i])
