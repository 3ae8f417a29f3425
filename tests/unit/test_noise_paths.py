"""The ways a release draws noise give one and the same distribution.

A short vector takes noise drawn ahead in blocks (accounting/reservoir.py); a longer
discrete Laplace vector is noised by accounting.sampler (vectorised); other vectors by
one OpenDP call on the whole vector or (large releases) by calls on chunks of it run on
worker threads. Every path, and OpenDP's
scalar measurement, must match the declared discrete Laplace (or discrete Gaussian)
exactly. Fixed sample sizes, no
retries; every assertion's false-alarm probability is at most 1e-6:

- DKW (Massart): P(sup_k |F_n(k) - F(k)| > t) <= 2 exp(-2 n t^2), for any distribution;
- variance: a z-test of the mean of X^2 at |z| > 4.892 (two-sided 1e-6, normal
  approximation with the exact fourth moment), as in tests/stats.

Each test also shows its power: the same draws are far from a 1.3x wider scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from decimal import Decimal

import opendp.prelude as dp
import pytest

from accounting.mechanisms import (
    CHUNK_MIN,
    PARALLEL_MIN_DRAWS,
    VECTOR_MIN_DRAWS,
    Mechanisms,
    NoiseSpec,
)
from accounting.release import _aggregate_column, _typed
from rewriter.plan import AggFunc, AggregateSpec, PrimitiveKind

FALSE_ALARM = 1e-6
Z_TWO_SIDED_1E6 = 4.892
N_VECTOR = 20_000
N_SCALAR = 2_000  # the scalar measurement costs ~0.3 ms per call


def dkw_threshold(n: int) -> float:
    """t with 2 exp(-2 n t^2) = FALSE_ALARM."""
    return math.sqrt(math.log(2 / FALSE_ALARM) / (2 * n))


def laplace_cdf(scale: float) -> Callable[[int], float]:
    """P(X <= k) for discrete Laplace(scale), p = exp(-1/scale)."""
    p = math.exp(-1 / scale)

    def cdf(k: int) -> float:
        return 1 - p ** (k + 1) / (1 + p) if k >= 0 else p ** (-k) / (1 + p)

    return cdf


def gaussian_cdf(scale: float) -> Callable[[int], float]:
    """P(X <= k) for the discrete Gaussian exp(-k^2 / (2 scale^2)) / Z (summed exactly)."""
    top = int(20 * scale) + 20
    weights = [math.exp(-(k * k) / (2 * scale * scale)) for k in range(-top, top + 1)]
    z = math.fsum(weights)
    cum, acc = {}, 0.0
    for k, w in zip(range(-top, top + 1), weights, strict=True):
        acc += w
        cum[k] = acc / z

    def cdf(k: int) -> float:
        return 0.0 if k < -top else 1.0 if k > top else cum[k]

    return cdf


def dkw_distance(draws: list[int], cdf: Callable[[int], float]) -> float:
    """sup_k |F_n(k) - F(k)| over the integers (exact: checked at both ends of each step)."""
    xs = sorted(draws)
    n = len(xs)
    worst = cdf(xs[0] - 1)  # below the smallest draw F_n is 0
    i = 0
    while i < n:
        j = i
        while j < n and xs[j] == xs[i]:
            j += 1
        below_next = xs[j] - 1 if j < n else xs[i]
        for k in (xs[i], below_next):  # F_n is j/n on [xs[i], xs[j] - 1]
            worst = max(worst, abs(j / n - cdf(k)))
        i = j
    return worst


def laplace_variance_z(draws: list[int], scale: float) -> float:
    """z of the mean of X^2 against E[X^2] = 2p/(1-p)^2, Var[X^2] from E[X^4]."""
    p = math.exp(-1 / scale)
    m2 = 2 * p / (1 - p) ** 2
    m4 = 2 * p * (1 + 10 * p + p * p) / (1 - p) ** 4
    n = len(draws)
    mean_sq = math.fsum(x * x for x in draws) / n
    return (mean_sq - m2) / math.sqrt((m4 - m2 * m2) / n)


def laplace_spec(scale: float) -> NoiseSpec:
    """A discrete Laplace spec of `scale` (only the sampler and scale matter here)."""
    return NoiseSpec(primitive="p0", label="t", sensitivity=1, scale=scale,
                     epsilon=Decimal(0), error95=0)  # fmt: skip


@pytest.fixture(scope="module")
def chunked() -> Mechanisms:
    return Mechanisms(workers=2)


@pytest.fixture(scope="module")
def single() -> Mechanisms:
    return Mechanisms(workers=1)


def gaussian_spec(scale: float) -> NoiseSpec:
    return NoiseSpec(primitive="p0", label="t", sensitivity=1, scale=scale, epsilon=Decimal(0),
                     error95=0, mechanism="discrete_gaussian")  # fmt: skip


def test_only_large_opendp_releases_use_worker_threads() -> None:
    assert N_VECTOR >= PARALLEL_MIN_DRAWS and N_VECTOR // 2 >= CHUNK_MIN
    mech = Mechanisms(workers=2)
    mech.sample_all([(laplace_spec(1.0), [0] * N_VECTOR)])
    assert mech._pool is None  # discrete Laplace: accounting.sampler, on the calling thread
    mech.sample_all([(gaussian_spec(1.0), [0] * (PARALLEL_MIN_DRAWS - 1))])
    assert mech._pool is None  # small: sampled on the calling thread
    mech.sample_all([(gaussian_spec(1.0), [0] * N_VECTOR)])
    assert mech._pool is not None


@pytest.mark.parametrize("mechanism", ["discrete_laplace", "discrete_gaussian"])
@pytest.mark.parametrize("scale", [0.7, 3.0])
def test_short_vectors_from_the_reservoir_match_too(single: Mechanisms, mechanism: str,
                                                     scale: float) -> None:  # fmt: skip
    # Below VECTOR_MIN_DRAWS a vector takes noise drawn ahead in blocks (Laplace: by
    # accounting.sampler; Gaussian: by OpenDP on zeros): many short vectors, pooled, so
    # the draws span several blocks and the values they were added to.
    spec = laplace_spec(scale) if mechanism == "discrete_laplace" else gaussian_spec(scale)
    cdf = laplace_cdf if mechanism == "discrete_laplace" else gaussian_cdf
    short = VECTOR_MIN_DRAWS - 1
    draws = [x - v for out in single.sample_all([(spec, list(range(short)))] * 300)
             for v, x in enumerate(out)]  # fmt: skip
    t = dkw_threshold(len(draws))
    assert dkw_distance(draws, cdf(scale)) <= t
    assert dkw_distance(draws, cdf(1.3 * scale)) > t


@pytest.mark.parametrize("scale", [0.7, 3.0, 40.0])
@pytest.mark.parametrize("path", ["chunked", "single"])
def test_vector_paths_match_discrete_laplace(
    path: str, scale: float, chunked: Mechanisms, single: Mechanisms
) -> None:
    mech = chunked if path == "chunked" else single
    # Two primitives in one release: the chunked path splits and interleaves both.
    a, b = mech.sample_all([(laplace_spec(scale), [0] * N_VECTOR),
                            (laplace_spec(scale), [0] * N_VECTOR)])  # fmt: skip
    t = dkw_threshold(N_VECTOR)
    for draws in (a, b):
        assert len(draws) == N_VECTOR
        assert dkw_distance(draws, laplace_cdf(scale)) <= t
        assert abs(laplace_variance_z(draws, scale)) < Z_TWO_SIDED_1E6
    # Power: a 1.3x wider scale is rejected by the same draws.
    assert dkw_distance(a, laplace_cdf(1.3 * scale)) > t
    assert abs(laplace_variance_z(a, 1.3 * scale)) >= Z_TWO_SIDED_1E6


def test_scalar_measurement_matches_the_same_distribution(chunked: Mechanisms) -> None:
    scale = 3.0
    scalar = dp.m.make_laplace(dp.atom_domain(T="i64"), dp.absolute_distance(T="i64"), scale=scale)
    one_by_one = [int(scalar(0)) for _ in range(N_SCALAR)]
    (vector,) = chunked.sample_all([(laplace_spec(scale), [0] * N_VECTOR)])
    t_scalar, t_vector = dkw_threshold(N_SCALAR), dkw_threshold(N_VECTOR)
    assert dkw_distance(one_by_one, laplace_cdf(scale)) <= t_scalar
    assert dkw_distance(vector, laplace_cdf(scale)) <= t_vector
    # Both within their bands of the same F: their empirical CDFs are within the sum.
    assert dkw_distance_two(one_by_one, vector) <= t_scalar + t_vector


def dkw_distance_two(a: list[int], b: list[int]) -> float:
    """sup_k |F_a(k) - F_b(k)| over the integers."""
    sa, sb = sorted(a), sorted(b)
    worst, i, j = 0.0, 0, 0
    for k in sorted(set(sa) | set(sb)):
        while i < len(sa) and sa[i] <= k:
            i += 1
        while j < len(sb) and sb[j] <= k:
            j += 1
        worst = max(worst, abs(i / len(sa) - j / len(sb)))
    return worst


def test_chunked_gaussian_matches_discrete_gaussian(chunked: Mechanisms) -> None:
    scale = 4.0
    (draws,) = chunked.sample_all([(gaussian_spec(scale), [0] * N_VECTOR)])
    t = dkw_threshold(N_VECTOR)
    assert dkw_distance(draws, gaussian_cdf(scale)) <= t
    assert dkw_distance(draws, gaussian_cdf(1.3 * scale)) > t


def test_chunks_are_reassembled_in_order(chunked: Mechanisms) -> None:
    # Exact values a million apart, noise of scale 1: |noise| > 500_000 has probability
    # below 1e-200, so each output sits next to its own input.
    values = [i * 1_000_000 for i in range(N_VECTOR)]
    out, rev = chunked.sample_all([(laplace_spec(1.0), values), (laplace_spec(1.0), values[::-1])])
    assert [round(v / 1_000_000) for v in out] == list(range(N_VECTOR))
    assert [round(v / 1_000_000) for v in rev] == list(range(N_VECTOR))[::-1]


def test_out_of_range_values_are_clamped_on_every_path(chunked: Mechanisms) -> None:
    for n in (1, VECTOR_MIN_DRAWS, N_VECTOR):
        (out,) = chunked.sample_all([(laplace_spec(1.0), [2**70] * n)])
        assert all(v <= 2**62 + 10_000 for v in out)


def test_threshold_specs_are_not_sampled_as_vectors(chunked: Mechanisms) -> None:
    spec = NoiseSpec(primitive="p0", label="t", sensitivity=1, scale=1.0, epsilon=Decimal(0),
                     error95=0, mechanism="laplace_threshold", threshold=5)  # fmt: skip
    with pytest.raises(ValueError):
        chunked.sample_all([(spec, [0])])


@pytest.mark.parametrize("rtype", ["int8", "numeric", "float8"])
@pytest.mark.parametrize("step", ["1", "10", "0.01"])
def test_aggregate_columns_equal_the_decimal_formula(rtype: str, step: str) -> None:
    # The column path skips Decimal for integer results of integer steps: it must give
    # what _typed(Decimal(total) * step) gives, also beyond Decimal's 28 digits.
    spec = AggregateSpec(AggFunc.SUM, "SUM(x)", count="p0", sum="p1", step=Decimal(step),
                         lower=-5, upper=5, midpoint=3, result_type=rtype)  # fmt: skip
    counts = [-4, 0, 7, 12, 2**62]
    sums = [-9, 0, 123, 10**19 + 7, 2**62]
    for kind in (PrimitiveKind.SUM, PrimitiveKind.NORMALIZED_SUM):
        got = _aggregate_column(spec, {"p0": counts, "p1": sums}, kind)
        for c, s, g in zip(counts, sums, got, strict=True):
            total = s + 3 * max(0, c) if kind == PrimitiveKind.NORMALIZED_SUM else s
            want = _typed(Decimal(total) * Decimal(step), rtype)
            assert type(g) is type(want) and g == want and str(g) == str(want)
    many = [10**30, 1]  # past the int fast path's bound: the Decimal formula is used
    got = _aggregate_column(spec, {"p0": [0, 0], "p1": many}, PrimitiveKind.SUM)
    assert got == [_typed(Decimal(v) * Decimal(step), rtype) for v in many]


@pytest.mark.parametrize("path", ["chunked", "single"])
def test_partition_selection_paths_match_the_threshold_rule(
    path: str, chunked: Mechanisms, single: Mechanisms
) -> None:
    # A group is kept iff count + noise >= threshold; kept values are count + noise.
    mech = chunked if path == "chunked" else single
    scale, threshold = 3.0, 100
    spec = NoiseSpec(primitive="p0", label="t", sensitivity=1, scale=scale, epsilon=Decimal(0),
                     error95=0, mechanism="laplace_threshold", threshold=threshold)  # fmt: skip
    at = dict.fromkeys(range(N_VECTOR), threshold)
    # 200 below or above the threshold: noise that large has probability < 1e-28.
    above = dict.fromkeys(range(N_VECTOR, N_VECTOR + 1000), threshold + 200)
    below = dict.fromkeys(range(N_VECTOR + 1000, N_VECTOR + 2000), threshold - 200)
    kept = mech.select(spec, at | above | below)
    assert set(above) <= set(kept) and not set(below) & set(kept)
    p = math.exp(-1 / scale)
    n_at = sum(1 for k in kept if k < N_VECTOR)
    assert abs(n_at / N_VECTOR - 1 / (1 + p)) <= dkw_threshold(N_VECTOR)  # Hoeffding
    # The kept noise follows discrete Laplace conditioned on noise >= 0 (DKW given n_at).
    cdf = laplace_cdf(scale)
    noise = [v - threshold for k, v in kept.items() if k < N_VECTOR]

    def conditional(k: int) -> float:
        return max(0.0, (cdf(k) - cdf(-1)) / (1 - cdf(-1)))

    assert dkw_distance(noise, conditional) <= dkw_threshold(n_at)


def test_chunked_quantile_picks_follow_the_exponential_mechanism() -> None:
    from tests.unit.test_rewriter_noise import exponential_rnm_win

    mech = Mechanisms(workers=2)
    scale, n = 2.0, 4_000  # one OpenDP call per list (~0.6 ms): a smaller sample
    spec = NoiseSpec(primitive="p0", label="t", sensitivity=1, scale=scale, epsilon=Decimal(0),
                     error95=0, mechanism="exponential_noisy_max")  # fmt: skip
    scores = [0, 2, 4]
    assert n * len(scores) >= PARALLEL_MIN_DRAWS  # the picks run on the worker threads
    picks = mech.pick_min_all(spec, [scores] * n)
    assert mech._pool is not None
    t = math.sqrt(math.log(2 / FALSE_ALARM) / (2 * n))
    for i in range(3):
        win = exponential_rnm_win(i, [x / scale for x in scores])
        assert abs(picks.count(i) / n - win) <= t, (i, picks.count(i) / n, win)
