"""The noise primitive against its declared distribution (discrete Laplace).

Every assertion has a false-alarm rate of at most 1e-6: chi-square at the upper 1e-6
quantile, z-tests at |z| > 4.892 (two-sided 1e-6). Sample sizes are fixed; nothing is
retried. A deliberately broken sampler (wrong scale) must be rejected, which shows the
tests have power.
"""

from __future__ import annotations

import math
from collections import Counter
from decimal import Decimal

import pytest

from accounting.mechanisms import Mechanisms, discrete_laplace_quantile

pytestmark = pytest.mark.slow

N = 100_000
Z_TWO_SIDED_1E6 = 4.892
Z_ONE_SIDED_1E6 = 4.753


def pmf(k: int, scale: float) -> float:
    """P(X = k) for discrete Laplace(scale): (1-p)/(1+p) p^|k| with p = exp(-1/scale)."""
    p = math.exp(-1 / scale)
    return (1 - p) / (1 + p) * p ** abs(k)


def chi2_critical(df: int) -> float:
    """Upper 1e-6 quantile of chi-square(df) (Wilson-Hilferty; accurate for df >= 5)."""
    a = 2 / (9 * df)
    return df * (1 - a + Z_ONE_SIDED_1E6 * math.sqrt(a)) ** 3


def chi2_statistic(samples: list[int], scale: float) -> tuple[float, int]:
    """Pearson's statistic over bins with expected count >= 20, tails pooled."""
    counts = Counter(samples)
    k = 0
    while N * pmf(k + 1, scale) >= 20:
        k += 1
    stat = 0.0
    bins = 0
    inside = 0.0
    for v in range(-k, k + 1):
        e = N * pmf(v, scale)
        inside += pmf(v, scale)
        stat += (counts.get(v, 0) - e) ** 2 / e
        bins += 1
    tail_obs = sum(c for v, c in counts.items() if abs(v) > k)
    tail_exp = N * (1 - inside)
    stat += (tail_obs - tail_exp) ** 2 / tail_exp
    return stat, bins  # df = (bins + 1) - 1


def draw(mech: Mechanisms, scale: float) -> list[int]:
    return list(mech.laplace(scale)([0] * N))


@pytest.fixture(scope="module")
def mech() -> Mechanisms:
    return Mechanisms()


@pytest.mark.parametrize("scale", [0.7, 3.0, 25.0])
def test_discrete_laplace_matches_its_pmf(mech: Mechanisms, scale: float) -> None:
    samples = draw(mech, scale)
    stat, df = chi2_statistic(samples, scale)
    assert stat < chi2_critical(df), (stat, df)


@pytest.mark.parametrize("scale", [0.7, 3.0, 25.0])
def test_discrete_laplace_moments(mech: Mechanisms, scale: float) -> None:
    samples = draw(mech, scale)
    p = math.exp(-1 / scale)
    var = 2 * p / (1 - p) ** 2
    mean = sum(samples) / N
    assert abs(mean) / math.sqrt(var / N) < Z_TWO_SIDED_1E6
    # E[X^4] by summation over the support, for the standard error of the variance.
    m4 = sum(k**4 * pmf(k, scale) for k in range(-4000, 4001))
    sq = sum(x * x for x in samples) / N
    assert abs(sq - var) / math.sqrt((m4 - var**2) / N) < Z_TWO_SIDED_1E6


def test_error_bound_coverage(mech: Mechanisms) -> None:
    # The 95% bound printed in NOTICEs must cover at least 95% of draws: a one-sided
    # binomial z-test at 1e-6 against coverage 0.95.
    scale = 8.0
    k = discrete_laplace_quantile(scale, 0.95)
    covered = sum(1 for x in draw(mech, scale) if abs(x) <= k) / N
    assert (0.95 - covered) / math.sqrt(0.95 * 0.05 / N) < Z_ONE_SIDED_1E6


def test_power_a_sampler_with_half_the_scale_is_rejected(mech: Mechanisms) -> None:
    declared = 3.0
    broken = draw(mech, declared / 2)  # what a halved sensitivity would produce
    stat, df = chi2_statistic(broken, declared)
    assert stat > chi2_critical(df)


def test_calibrated_scale_matches_sensitivity_over_epsilon(mech: Mechanisms) -> None:
    from pathlib import Path

    from rewriter.metadata import load_metadata
    from rewriter.parse import parse_one
    from rewriter.rewrite import rewrite

    meta = load_metadata(Path(__file__).resolve().parents[2] / "proxy" / "examples" / "tpch.yaml")
    plan = rewrite(parse_one("SELECT COUNT(*) FROM orders"), meta)
    (spec,) = mech.plan_noise(plan, Decimal("0.5"))
    samples = mech.sample(spec, [0] * N)
    stat, df = chi2_statistic(samples, 8 / 0.5)
    assert stat < chi2_critical(df)
