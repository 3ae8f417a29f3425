"""Noise mechanisms: OpenDP measurements, their privacy maps, and their error bounds.

Only OpenDP's `contrib` feature is enabled; `floating-point`, `honest-but-curious` and
`idealized-numerics` are refused at start-up. Every noisy primitive is an exact integer
vector noised with discrete Laplace, and the epsilon it costs is read from the
measurement's own privacy map, never recomputed by hand.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np
import opendp.prelude as dp

from accounting import sampler
from accounting.ffi import invoker
from accounting.reservoir import NoiseReservoir
from rewriter.plan import DPPlan, PrimitiveKind

FORBIDDEN_FEATURES = frozenset({"floating-point", "honest-but-curious", "idealized-numerics"})
# Exact per-group values are clamped into this range before sampling: clamping is
# 1-Lipschitz, so it keeps the sensitivity, and it keeps i64 arithmetic from overflowing.
I64_SAFE = 1 << 62
# Discrete Laplace vectors of at least this many draws are noised by accounting.sampler
# (the same exact algorithm as OpenDP's, vectorised: ~0.3 us a draw plus ~120 us a call);
# shorter ones by OpenDP (~5 us a draw plus ~20 us a call), which is then quicker.
VECTOR_MIN_DRAWS = 32
# OpenDP's exact samplers cost ~13 us of CPU per draw (a few OpenSSL RNG calls each) and
# ~50 us per call through accounting.ffi. Releases with at least this many draws are split into chunks of at
# least CHUNK_MIN draws that run on worker threads: the call releases the GIL, so the
# chunks sample on every core at once. Smaller releases stay on the calling thread.
PARALLEL_MIN_DRAWS = 1024
CHUNK_MIN = 512
CHUNKS_PER_WORKER = 4


def enable_safe_features() -> None:
    """Enable OpenDP's `contrib` feature and assert no unsafe feature is on."""
    dp.enable_features("contrib")
    unsafe = FORBIDDEN_FEATURES & set(dp.GLOBAL_FEATURES)
    if unsafe:
        raise RuntimeError(f"unsafe OpenDP features are enabled: {sorted(unsafe)}")


class DeltaRequired(ValueError):
    """The plan needs a positive delta (partition selection) and none was given."""


@dataclass(frozen=True, slots=True)
class NoiseSpec:
    """How one primitive is noised: its share of epsilon, scale, cost and error bound."""

    primitive: str
    label: str
    sensitivity: int
    scale: float
    epsilon: Decimal  # read from the measurement's privacy map
    error95: int  # |noise| <= error95 with probability >= 95%, in integer units
    delta: Decimal = Decimal(0)  # read from the measurement's privacy map
    threshold: int | None = None  # partition selection: groups below it are dropped
    groups_per_unit: int = 1  # partition selection: the l0 sensitivity
    # Which sampler, and (issue #5, zCDP) the rho a Gaussian release costs; its
    # `epsilon` is then 0: a discrete Gaussian has no pure-epsilon guarantee.
    mechanism: str = "discrete_laplace"
    rho: Decimal = Decimal(0)


class Mechanisms:
    """Builds and caches OpenDP measurements (building one costs ~0.3 ms) and runs them.

    `workers` bounds how many threads sample one large release at once (default: the
    CPUs this process may run on); 1 samples everything on the calling thread.
    """

    def __init__(self, workers: int | None = None) -> None:
        enable_safe_features()
        self._cache: dict[tuple[Any, ...], Any] = {}
        self._workers = max(1, workers if workers is not None else len(os.sched_getaffinity(0)))
        self._pool: ThreadPoolExecutor | None = None  # started on the first large release
        self._pool_lock = threading.Lock()
        # Calibrations by (sampler, sensitivity, share): each is a pure function of
        # those (it reads the privacy maps of deterministic measurements), and a map
        # call costs ~0.2 ms, paid by every query at a repeated epsilon otherwise.
        self._fits: dict[tuple[Any, ...], tuple[float, Decimal]] = {}
        # Domains and metrics are immutable descriptors; building them through the FFI
        # costs more than building the measurement on them, so they are made once.
        self._i64_vectors = dp.vector_domain(dp.atom_domain(T="i64"))
        self._l1 = dp.l1_distance(T="i64")
        self._l2 = dp.l2_distance(T="i64")
        self._i64_maps = dp.map_domain(dp.atom_domain(T="i64"), dp.atom_domain(T="i64"))
        self._l01inf = dp.l01inf_distance(dp.absolute_distance(T="i64"))
        self._thresholds: dict[tuple[Any, ...], NoiseSpec] = {}
        self._invoke = invoker()  # OpenDP's samplers without its binding's per-call cost
        self._words = sampler.UrandomWords()
        self._reservoir = NoiseReservoir(self._noise_block)

    def _fit(self, kind: str, make: Callable[[float], Any], sensitivity: int, share: Decimal,
             scale: float) -> tuple[float, Decimal]:  # fmt: skip
        """`_fit_scale`, remembered per (kind, sensitivity, share); the cache is bounded."""
        key = (kind, sensitivity, share)
        fit = self._fits.get(key)
        if fit is None:
            fit = _fit_scale(make, sensitivity, share, scale)
            if len(self._fits) > 4096:
                self._fits.clear()
            self._fits[key] = fit
        return fit

    def _measurement(self, key: tuple[Any, ...], make: Callable[[], Any]) -> Any:
        """A cached measurement (building one costs ~0.3 ms); the cache is bounded."""
        meas = self._cache.get(key)
        if meas is None:
            meas = make()
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[key] = meas
        return meas

    def laplace(self, scale: float) -> Any:
        """A discrete Laplace measurement on i64 vectors under the L1 distance."""
        return self._measurement(("laplace", scale), lambda: dp.m.make_laplace(
            self._i64_vectors, self._l1, scale=scale))  # fmt: skip

    def threshold(self, scale: float, threshold: int) -> Any:
        """A discrete-Laplace threshold measurement on {group index: unit count} maps."""
        return self._measurement(("threshold", scale, threshold), lambda: dp.m.make_laplace_threshold(
            self._i64_maps,
            self._l01inf,
            scale=scale,
            threshold=threshold,
        ))  # fmt: skip

    def plan_noise(
        self, plan: DPPlan, epsilon: Decimal, delta: Decimal = Decimal(0)
    ) -> list[NoiseSpec]:
        """Split `epsilon` over the plan's primitives and calibrate each one's noise.

        Every primitive gets an equal share: with the sensitivities the rewriter derives,
        each aggregate's error is dominated by one primitive of comparable relative
        scale (see the README), and an equal split is the minimax choice. Partition
        selection (if any) spends all of `delta`.
        """
        if not plan.primitives:
            return []
        share = epsilon / len(plan.primitives)
        out = []
        for p in plan.primitives:
            if p.kind == PrimitiveKind.QUANTILE:
                out.append(self._calibrate_noisy_max(p.name, p.label, p.sensitivity, share))
            elif p.kind == PrimitiveKind.UNIT_COUNT:
                if not delta > 0:
                    raise DeltaRequired("grouping by a key without a public domain needs delta > 0")
                out.append(self._calibrate_threshold(p.name, p.label, p.sensitivity,
                                                     p.groups_per_unit, share, delta))  # fmt: skip
            else:
                out.append(self._calibrate(p.name, p.label, p.sensitivity, share))
        return out

    def noisy_max(self, scale: float) -> Any:
        """Report-noisy-min over i64 score vectors (exponential mechanism, OpenDP)."""
        return self._noisy_max(scale, zcdp=False)

    def _noisy_max(self, scale: float, *, zcdp: bool) -> Any:
        """Report-noisy-min, priced under max divergence (pure DP) or under zCDP."""
        return self._measurement(("max_zcdp" if zcdp else "max", scale), lambda: dp.m.make_noisy_max(
            self._i64_vectors,
            # One unit raises some scores and lowers others: not monotonic.
            dp.linf_distance(T="i64", monotonic=False),
            dp.zero_concentrated_divergence() if zcdp else dp.max_divergence(),
            scale=scale,
            negate=True,
        ))  # fmt: skip

    def _calibrate_noisy_max(
        self, name: str, label: str, sensitivity: int, share: Decimal
    ) -> NoiseSpec:
        scale, cost = self._fit(
            "max", self.noisy_max, sensitivity, share, float(2 * Decimal(sensitivity) / share)
        )
        return NoiseSpec(primitive=name, label=label, sensitivity=sensitivity, scale=scale,
                         epsilon=cost, error95=0,
                         mechanism="exponential_noisy_max")  # fmt: skip

    def pick_min(self, spec: NoiseSpec, scores: Sequence[int]) -> int:
        """The index of a noisily smallest score (with the sampler the spec was priced for)."""
        return self.pick_min_all(spec, [scores])[0]

    def pick_min_all(self, spec: NoiseSpec, score_lists: Sequence[Sequence[int]]) -> list[int]:
        """The index of a noisily smallest score in each list: one OpenDP call per list.

        The calls are independent releases (one per group), so a large batch runs on
        the worker threads; each list's result is the same as on the calling thread.
        """
        if spec.mechanism == "gumbel_noisy_max":
            meas = self.noisy_max_zcdp(spec.scale)
        else:
            meas = self.noisy_max(spec.scale)
        arrays = [_i64_vector(s, lower=0) for s in score_lists]
        return self._map(lambda a: self._invoke.index(meas, a), arrays, sum(len(a) for a in arrays))

    def _calibrate_threshold(
        self, name: str, label: str, l1: int, l0: int, share: Decimal, delta: Decimal
    ) -> NoiseSpec:
        # The threshold search reads dozens of privacy maps: remember its outcome.
        key = (name, label, l1, l0, share, delta)
        spec = self._thresholds.get(key)
        if spec is None:
            spec = self._search_threshold(name, label, l1, l0, share, delta)
            if len(self._thresholds) > 4096:
                self._thresholds.clear()
            self._thresholds[key] = spec
        return spec

    def _search_threshold(
        self, name: str, label: str, l1: int, l0: int, share: Decimal, delta: Decimal
    ) -> NoiseSpec:
        scale = float(Decimal(l1) / share)
        d_in = (l0, l1, 1)
        # Smallest threshold whose delta (from the privacy map) is within the target.
        guess = max(2, math.ceil(1 + scale * math.log(max(l0, 1) / (2 * float(delta)))))
        lo, hi = 1, max(2, guess * 2)
        while True:
            eps_, d_ = self.threshold(scale, hi).map(d_in)
            if Decimal(d_) <= delta:
                break
            hi *= 2
        while lo < hi:
            mid = (lo + hi) // 2
            if Decimal(self.threshold(scale, mid).map(d_in)[1]) <= delta:
                hi = mid
            else:
                lo = mid + 1
        meas = self.threshold(scale, hi)
        eps_, d_ = meas.map(d_in)
        while Decimal(eps_) > share:
            scale = math.nextafter(scale, math.inf)
            meas = self.threshold(scale, hi)
            eps_, d_ = meas.map(d_in)
        return NoiseSpec(
            primitive=name, label=label, sensitivity=l1, scale=scale, epsilon=Decimal(eps_),
            error95=discrete_laplace_quantile(scale, 0.95), delta=Decimal(d_), threshold=hi,
            groups_per_unit=l0, mechanism="laplace_threshold",
        )  # fmt: skip

    def select(self, spec: NoiseSpec, counts: dict[int, int]) -> dict[int, int]:
        """Partition selection: the groups whose noisy unit count passes the threshold.

        The measurement noises each group's count independently and keeps it if it
        passes, so a large map is split into disjoint chunks (run on the worker threads)
        whose union is distributed exactly as the whole map's output.
        """
        assert spec.threshold is not None
        meas = self.threshold(spec.scale, spec.threshold)
        items = [(k, min(max(int(v), 0), I64_SAFE)) for k, v in counts.items()]
        size = self._chunk_size(len(items))
        chunks = [dict(items[a : a + size]) for a in range(0, len(items), size)] or [{}]
        kept: dict[int, int] = {}
        for part in self._map(meas, chunks, len(items)):
            kept.update(part)
        return kept

    def _calibrate(self, name: str, label: str, sensitivity: int, share: Decimal) -> NoiseSpec:
        scale, cost = self._fit("laplace", self.laplace, sensitivity, share,
                                float(Decimal(sensitivity) / share))  # fmt: skip
        return NoiseSpec(
            primitive=name,
            label=label,
            sensitivity=sensitivity,
            scale=scale,
            epsilon=cost,
            error95=discrete_laplace_quantile(scale, 0.95),
        )

    def sample(self, spec: NoiseSpec, values: Sequence[int]) -> list[int]:
        """Noise an exact integer vector (values are clamped into the i64-safe range)."""
        return self.sample_all([(spec, values)])[0]

    def sample_all(self, jobs: Sequence[tuple[NoiseSpec, Sequence[int]]]) -> list[list[int]]:
        """Noise several exact integer vectors, each with its spec's distribution.

        A discrete Laplace vector of VECTOR_MIN_DRAWS draws or more is noised by
        accounting.sampler (the same exact distribution, vectorised). Any other vector
        is one OpenDP call on the whole vector (the Rust side draws every
        element), or, in a large release, a few calls on consecutive chunks of it run on
        worker threads. The measurement adds independent noise of the same scale to every
        element, so a chunk's output is distributed exactly as that slice of the whole
        vector's output: chunking changes the speed, not the distribution or the privacy
        map's charge (which is read from the whole-vector measurement at calibration).
        """
        out: list[list[int]] = [[] for _ in jobs]
        vectors: dict[int, np.ndarray] = {}
        opendp_jobs = []
        for i, (spec, values) in enumerate(jobs):
            if len(values) < VECTOR_MIN_DRAWS:
                # A short vector (the usual answer's few groups): noise drawn ahead in
                # blocks (accounting/reservoir.py), each draw used once.
                noise = self._reservoir.take(_vector_key(spec), len(values))
                out[i] = [_saturating_i64(min(max(int(v), -I64_SAFE), I64_SAFE) + z)
                          for v, z in zip(values, noise, strict=True)]  # fmt: skip
                continue
            v = vectors[i] = _i64_vector(values)
            if self._vectorised(spec, len(v)):
                out[i] = sampler.add_noise(v, spec.scale, self._words).tolist()
            else:
                opendp_jobs.append(i)
        meas = {i: self._vector_measurement(jobs[i][0]) for i in opendp_jobs}
        size = self._chunk_size(sum(len(vectors[i]) for i in opendp_jobs))
        tasks = [(i, meas[i], vectors[i][a : a + size])
                 for i in opendp_jobs for a in range(0, len(vectors[i]), size)]  # fmt: skip
        chunks = self._map(lambda t: self._invoke(t[1], t[2]).tolist(), tasks, sum(len(t[2]) for t in tasks))
        for (i, _, _), chunk in zip(tasks, chunks, strict=True):
            out[i].extend(chunk)
        return out

    @staticmethod
    def _vectorised(spec: NoiseSpec, draws: int) -> bool:
        """Whether accounting.sampler noises this vector (else OpenDP's sampler does).

        Both draw exactly discrete Laplace(spec.scale); the privacy map that priced the
        release is the OpenDP measurement's either way (`_calibrate`).
        """
        return (spec.mechanism == "discrete_laplace" and draws >= VECTOR_MIN_DRAWS
                and sampler.supports(spec.scale))  # fmt: skip

    def _chunk_size(self, draws: int) -> int:
        """How many draws one OpenDP call takes in a release of `draws` draws.

        A few chunks per worker, not one: a worker whose core is busy with other work
        then takes fewer chunks instead of holding up the whole release.
        """
        if self._workers == 1 or draws < PARALLEL_MIN_DRAWS:
            return max(draws, 1)  # one call per vector (or map)
        return max(CHUNK_MIN, -(-draws // (CHUNKS_PER_WORKER * self._workers)))

    def _map(self, fn: Callable[[Any], Any], items: Sequence[Any], draws: int) -> list[Any]:
        """`fn` over `items`: on the worker threads when the release is large."""
        if self._workers == 1 or draws < PARALLEL_MIN_DRAWS or len(items) < 2:
            return [fn(x) for x in items]
        with self._pool_lock:  # releases may run on several threads: start one pool
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="dpproxy-noise")
            pool = self._pool
        return list(pool.map(fn, items))

    def _noise_block(self, key: Any, n: int) -> list[int]:
        """`n` fresh draws of the noise alone for a `_vector_key`: the vectorised exact
        sampler where it supports the scale, else OpenDP's measurement on zeros."""
        mechanism, scale = key
        if mechanism == "discrete_laplace" and sampler.supports(scale):
            return sampler.discrete_laplace(scale, n, self._words).tolist()
        return self._invoke.small(self._measurement_of(key), [0] * n)

    def _vector_measurement(self, spec: NoiseSpec) -> Any:
        return self._measurement_of(_vector_key(spec))

    def _measurement_of(self, key: tuple[str, float]) -> Any:
        """The vector measurement of a `_vector_key`."""
        mechanism, scale = key
        # issue #5: discrete Gaussian for zCDP releases
        return self.gaussian(scale) if mechanism == "discrete_gaussian" else self.laplace(scale)

    # --- discrete Gaussian (zCDP), added for issue #5 --------------------------------

    def gaussian(self, scale: float) -> Any:
        """A discrete Gaussian measurement on i64 vectors under the L2 distance (zCDP)."""
        return self._measurement(("gaussian", scale), lambda: dp.m.make_gaussian(
            self._i64_vectors, self._l2, scale=scale))  # fmt: skip

    def plan_noise_gaussian(self, plan: DPPlan, rho: Decimal) -> list[NoiseSpec]:
        """Split `rho` over the plan's primitives and calibrate discrete Gaussian noise.

        The L2 sensitivity of a primitive is at most its L1 sensitivity, so the L1 value
        is a valid (conservative) d_in for the L2 privacy map.
        """
        if not plan.primitives:
            return []
        share = rho / len(plan.primitives)
        return [self._calibrate_noisy_max_zcdp(p.name, p.label, p.sensitivity, share)
                if p.kind == PrimitiveKind.QUANTILE
                else self._calibrate_gaussian(p.label, p.name, p.sensitivity, share)
                for p in plan.primitives]  # fmt: skip

    def noisy_max_zcdp(self, scale: float) -> Any:
        """Report-noisy-min under zCDP (Gumbel noise: the exponential mechanism, OpenDP)."""
        return self._noisy_max(scale, zcdp=True)

    def _calibrate_noisy_max_zcdp(
        self, name: str, label: str, sensitivity: int, share: Decimal
    ) -> NoiseSpec:
        # A selection priced in rho must use the zCDP measurement: the pure-DP one at the
        # same scale is only (2 sens / scale)-DP, i.e. up to 4x the rho as zCDP.
        # rho = (2 sens / scale)^2 / 8  =>  scale = 2 sens / sqrt(8 rho)
        scale, cost = _fit_scale(self.noisy_max_zcdp, sensitivity, share,
                                 float(2 * Decimal(sensitivity) / (8 * share).sqrt()))  # fmt: skip
        return NoiseSpec(primitive=name, label=label, sensitivity=sensitivity, scale=scale,
                         epsilon=Decimal(0), error95=0, mechanism="gumbel_noisy_max",
                         rho=cost)  # fmt: skip

    def _calibrate_gaussian(self, label: str, name: str, sensitivity: int, share: Decimal) -> NoiseSpec:
        # rho = d_in^2 / (2 scale^2)  =>  scale = d_in / sqrt(2 rho)
        scale, cost = self._fit(
            "gaussian", self.gaussian, sensitivity, share,
            float(Decimal(sensitivity) / (2 * share).sqrt()),
        )  # fmt: skip
        return NoiseSpec(
            primitive=name,
            label=label,
            sensitivity=sensitivity,
            scale=scale,
            epsilon=Decimal(0),
            error95=discrete_gaussian_bound(scale, 0.95),
            mechanism="discrete_gaussian",
            rho=cost,
        )


def _vector_key(spec: NoiseSpec) -> tuple[str, float]:
    """What a vector's noise depends on (its sampler and scale); refuses any other kind."""
    if spec.mechanism not in ("discrete_laplace", "discrete_gaussian"):
        raise ValueError(f"{spec.primitive} is not noised by a vector measurement")
    return (spec.mechanism, spec.scale)


def _saturating_i64(x: int) -> int:
    """`x` saturated to the i64 range, as OpenDP and accounting.sampler saturate."""
    return min(max(x, -(1 << 63)), (1 << 63) - 1)


def _i64_vector(values: Sequence[int], lower: int = -I64_SAFE) -> np.ndarray:
    """`values` as an i64 array clamped into [lower, I64_SAFE].

    An i64 array crosses into OpenDP as one buffer (a list is checked element by element
    in Python); integers beyond i64 are clamped in Python first.
    """
    try:
        arr = np.fromiter(values, dtype=np.int64, count=len(values))
    except OverflowError:
        arr = np.fromiter((min(max(int(v), lower), I64_SAFE) for v in values),
                          dtype=np.int64, count=len(values))  # fmt: skip
    return np.clip(arr, lower, I64_SAFE)


def _fit_scale(
    make: Callable[[float], Any], sensitivity: int, share: Decimal, scale: float
) -> tuple[float, Decimal]:
    """The scale whose measurement's own privacy map charges at most `share`, and that charge.

    Float rounding can make the map exceed the share by an ulp; the scale is widened one
    ulp at a time until the charge is within what the analyst asked for.
    """
    cost = make(scale).map(sensitivity)
    while Decimal(cost) > share:
        scale = math.nextafter(scale, math.inf)
        cost = make(scale).map(sensitivity)
    return scale, Decimal(cost)


# Releases priced in rho (zCDP) rather than epsilon.
ZCDP_MECHANISMS = frozenset({"discrete_gaussian", "gumbel_noisy_max"})


def discrete_laplace_quantile(scale: float, coverage: float) -> int:
    """Smallest k with P(|X| <= k) >= coverage for discrete Laplace(scale).

    P(|X| > k) = 2 p^(k+1) / (1 + p) with p = exp(-1/scale).
    """
    if scale <= 0:
        return 0
    p = math.exp(-1.0 / scale)
    if p <= 0.0:
        return 0
    tail = 1.0 - coverage
    # log(p) is exactly -1/scale; computing it from p loses everything for large scales.
    k = -math.log(tail * (1 + p) / 2) * scale - 1
    return max(0, math.ceil(k))


def discrete_gaussian_bound(scale: float, coverage: float) -> int:
    """A k with P(|X| <= k) >= coverage for the discrete Gaussian of parameter `scale`.

    The discrete Gaussian is sub-Gaussian with variance proxy scale^2 (Canonne, Kamath &
    Steinke 2020), so P(|X| > t) <= 2 exp(-t^2 / (2 scale^2)).
    """
    if scale <= 0:
        return 0
    return math.ceil(scale * math.sqrt(2 * math.log(2 / (1 - coverage))))


def total_epsilon(specs: list[NoiseSpec]) -> Decimal:
    """Sequential composition: the sum of the primitives' epsilons, exactly."""
    return sum((s.epsilon for s in specs), Decimal(0))


def total_delta(specs: list[NoiseSpec]) -> Decimal:
    """Sequential composition: the sum of the primitives' deltas, exactly."""
    return sum((s.delta for s in specs), Decimal(0))
