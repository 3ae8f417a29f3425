"""accounting.sampler: each building block and the whole draw against its exact law.

Fixed sample sizes, no retries; every assertion's false-alarm probability is at most
1e-6 (DKW bands and z-tests as in test_noise_paths, chi-square at its upper 1e-6
quantile). Each distribution test is paired with a power check that the same draws
reject a slightly different law.
"""

from __future__ import annotations

import math

import numpy as np
import opendp.prelude as dp
import pytest

from accounting import sampler
from accounting.mechanisms import enable_safe_features
from tests.unit.test_noise_paths import (
    Z_TWO_SIDED_1E6,
    dkw_distance,
    dkw_distance_two,
    dkw_threshold,
    laplace_cdf,
    laplace_variance_z,
)

N = 20_000
Z_ONE_SIDED_1E6 = 4.753


@pytest.fixture(scope="module")
def rng() -> sampler.UrandomWords:
    return sampler.UrandomWords()


def chi2_critical(df: int) -> float:
    """Upper 1e-6 quantile of chi-square(df) (Wilson-Hilferty; accurate for df >= 5)."""
    a = 2 / (9 * df)
    return df * (1 - a + Z_ONE_SIDED_1E6 * math.sqrt(a)) ** 3


def binomial_z(hits: int, n: int, p: float) -> float:
    return (hits - n * p) / math.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("bound", [2, 7, 200, 1000, 65_537, (1 << 40) + 3, 1 << 63])
def test_uniform_below_is_uniform(rng: sampler.UrandomWords, bound: int) -> None:
    draws = sampler.uniform_below(bound, N, rng)
    assert len(draws) == N and draws.dtype == np.uint64
    assert int(draws.max()) < bound
    # 8 equal-probability cells when bound is a multiple of 8, else bins of bound // 8.
    bins = min(bound, 8)
    cells = np.array([int(x) * bins // bound for x in draws.tolist()])
    counts = np.bincount(cells, minlength=bins)
    expected = np.array([(((c + 1) * bound + bins - 1) // bins - (c * bound + bins - 1) // bins)
                         / bound * N for c in range(bins)])  # fmt: skip
    stat = float(((counts - expected) ** 2 / expected).sum())
    assert stat < chi2_critical(max(bins - 1, 5))


def test_uniform_below_one_is_zero(rng: sampler.UrandomWords) -> None:
    assert not sampler.uniform_below(1, 10, rng).any()


@pytest.mark.parametrize(("numer", "denom"), [(0, 5), (1, 3), (2, 3), (1, 1), (10**15, 3 * 10**15)])
def test_bernoulli_exp_frequency(rng: sampler.UrandomWords, numer: int, denom: int) -> None:
    hits = int(sampler.bernoulli_exp(np.full(N, numer, dtype=np.uint64), denom, rng).sum())
    p = math.exp(-numer / denom)
    if p == 1.0:
        assert hits == N
        return
    assert abs(binomial_z(hits, N, p)) < Z_TWO_SIDED_1E6
    # Power: a law 20-25% off sits 26-41 standard errors away, so even the worst draw
    # the first check allows is rejected (p = e^(-2/3) against 5% off was 7 standard
    # errors: it failed about once in a hundred runs).
    assert abs(binomial_z(hits, N, p * 0.8 if p > 0.5 else p * 1.25)) >= Z_TWO_SIDED_1E6


@pytest.mark.parametrize("scale", [0.7, 3.0, 3.3359375, 40.0, 12_345.678])
def test_discrete_laplace_matches_its_law(rng: sampler.UrandomWords, scale: float) -> None:
    draws = sampler.discrete_laplace(scale, N, rng).tolist()
    t = dkw_threshold(N)
    assert len(draws) == N
    assert dkw_distance(draws, laplace_cdf(scale)) <= t
    assert abs(laplace_variance_z(draws, scale)) < Z_TWO_SIDED_1E6
    assert dkw_distance(draws, laplace_cdf(1.3 * scale)) > t


@pytest.mark.parametrize("scale", [1e9, 2.0**56])
def test_large_scales_have_the_right_spread(rng: sampler.UrandomWords, scale: float) -> None:
    # Beyond float precision for the CDF: test |X| / scale against Exp(1) quantiles
    # (discrete Laplace of a large scale is continuous Laplace up to 1/scale).
    draws = np.abs(sampler.discrete_laplace(scale, N, rng).astype(np.float64)) / scale
    for q in (0.5, 0.9, 0.99):
        below = int((draws <= -math.log(1 - q)).sum())
        assert abs(binomial_z(below, N, q)) < Z_TWO_SIDED_1E6
    # (the median moved by 20%: 18 standard errors off, beyond twice the threshold)
    assert abs(binomial_z(int((draws <= math.log(2) * 1.2).sum()), N, 0.5)) >= Z_TWO_SIDED_1E6


def test_the_exact_continuation_gives_the_same_law(rng: sampler.UrandomWords,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    # With one vector round, almost every Bernoulli loop is finished in Python
    # integers: the law must not change.
    monkeypatch.setattr(sampler, "VECTOR_ROUNDS", 1)
    scale = 3.0
    draws = sampler.discrete_laplace(scale, 5_000, rng).tolist()
    t = dkw_threshold(len(draws))
    assert dkw_distance(draws, laplace_cdf(scale)) <= t
    # (twice the scale: the laws are 0.125 apart, more than the 2t both bands allow)
    assert dkw_distance(draws, laplace_cdf(2 * scale)) > t


def test_huge_geometric_counts_are_computed_exactly() -> None:
    t, s = (3).as_integer_ratio()
    u = np.array([2, 1], dtype=np.uint64)
    v = np.array([1, (1 << 63) // 3 + 5], dtype=np.int64)  # 3 * v[1] is past i64
    with pytest.raises(OverflowError):
        sampler._scaled_geometric(u, v, t, np.uint64(t), np.uint64(s.bit_length() - 1))
    t, s = (0.75).as_integer_ratio()  # 3/4: floor(X / 4)
    v = np.array([1, (1 << 63) // 3 + 5], dtype=np.int64)  # U + t*V past i64, Y within
    y = sampler._scaled_geometric(u, v, t, np.uint64(t), np.uint64(s.bit_length() - 1))
    assert y.tolist() == [(2 + 3) >> 2, (1 + 3 * int(v[1])) >> 2]


def test_agrees_with_opendps_sampler(rng: sampler.UrandomWords) -> None:
    enable_safe_features()
    scale = 3.3359375
    meas = dp.m.make_laplace(dp.vector_domain(dp.atom_domain(T="i64")), dp.l1_distance(T="i64"),
                             scale=scale)  # fmt: skip
    theirs = [int(x) for x in meas([0] * N)]
    ours = sampler.discrete_laplace(scale, N, rng).tolist()
    assert dkw_distance_two(theirs, ours) <= 2 * dkw_threshold(N)


@pytest.mark.parametrize(("scale", "ok"), [
    (1.0, True), (0.001, True), (2.0**57, True), (2.0**58, False), (1e-30, False),
    (0.0, False), (-1.0, False), (math.inf, False), (math.nan, False),
])  # fmt: skip
def test_supports(scale: float, ok: bool) -> None:
    assert sampler.supports(scale) is ok
    if not ok:
        with pytest.raises(ValueError):
            sampler.discrete_laplace(scale, 1, sampler.UrandomWords())


def test_add_noise_saturates_at_the_i64_range(rng: sampler.UrandomWords) -> None:
    top = (1 << 63) - 1
    out = sampler.add_noise(np.array([top, -top - 1, 5], dtype=np.int64), 1e6, rng)
    assert out.dtype == np.int64
    assert out[0] >= top - 10**9 and out[1] <= -top - 1 + 10**9
    assert abs(int(out[2]) - 5) < 10**9


def test_empty_vectors(rng: sampler.UrandomWords) -> None:
    assert sampler.add_noise(np.zeros(0, dtype=np.int64), 2.0, rng).tolist() == []
