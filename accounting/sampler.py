"""Exact discrete Laplace noise for whole vectors at once, from the operating system's CSPRNG.

OpenDP's sampler is exact but costs ~5-13 us of CPU per draw (big rationals and several
OpenSSL calls per draw), so a release of 10,000 groups spent most of its time in it.
This module runs the same exact algorithm -- Canonne, Kamath & Steinke (2020),
"The Discrete Gaussian for Differential Privacy", Algorithms 1 and 2 -- on numpy
vectors: every element is an independent run of the algorithm, the rejection loops
run for all pending elements at once, and every comparison is between integers, so the
output distribution is exactly discrete Laplace with the given scale, with no floating
point anywhere (Mironov's attack on floating-point Laplace has nothing to work on).

Random bits come from `os.urandom` (the kernel's CSPRNG), never from a seeded PRNG.

The scale is a float, i.e. exactly the rational t/s with s a power of two
(`float.as_integer_ratio`). The vector path needs t <= 2^57 (so t*k fits in 64 bits
for the k <= 64 rounds of the Bernoulli loop) and s <= 2^62; callers fall back to
OpenDP's own sampler outside that range (`supports`). An element whose loop runs past
the vector path's fixed number of rounds -- an event of probability below 1e-80 -- is
finished exactly with Python integers instead of being cut off, so the distribution is
exact, not merely close.
"""

from __future__ import annotations

import os
import secrets
from typing import Protocol

import numpy as np

# Rounds of Algorithm 1's loop done on vectors; P(K > 64) <= 1/64! for gamma <= 1.
VECTOR_ROUNDS = 64
# Bernoulli(exp(-1)) trials drawn per element at a time; all succeed with probability e^-2.
GEOMETRIC_BATCH = 2
_MAX_T = 1 << 57  # t * VECTOR_ROUNDS must stay below 2^63
_MAX_S = 1 << 62
_I64_MAX = (1 << 63) - 1
_ALL_ONES = {t: (1 << (np.dtype(t).itemsize * 8)) - 1 for t in (np.uint8, np.uint16, np.uint32, np.uint64)}


class RandomWords(Protocol):
    """A source of independent uniform unsigned words."""

    def words(self, n: int, dtype: type[np.unsignedinteger] = np.uint64) -> np.ndarray:
        """`n` uniform words of `dtype` (uint8, uint16, uint32 or uint64)."""
        ...


class UrandomWords:
    """Uniform words from the kernel's CSPRNG (`os.urandom`, i.e. getrandom(2))."""

    def words(self, n: int, dtype: type[np.unsignedinteger] = np.uint64) -> np.ndarray:
        """`n` uniform words of `dtype` (uint8, uint16, uint32 or uint64)."""
        return np.frombuffer(os.urandom(np.dtype(dtype).itemsize * n), dtype=dtype)


def _word_type(bits: int) -> type[np.unsignedinteger]:
    """The narrowest unsigned type holding `bits` bits (fewer random bytes per draw)."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if bits <= np.dtype(dtype).itemsize * 8:
            return dtype
    return np.uint64


def uniform_below(bound: int, size: int, rng: RandomWords) -> np.ndarray:
    """`size` independent draws, each uniform on {0, ..., bound-1} (1 <= bound <= 2^63).

    Rejection from the smallest all-ones mask covering bound-1: each try succeeds with
    probability above 1/2 and an accepted draw is exactly uniform. Tries are i.i.d., so
    the accepted ones are handed out in order; enough are drawn up front that one batch
    almost always suffices (a numpy call costs more than a few spare words).
    """
    if bound == 1:
        return np.zeros(size, dtype=np.uint64)
    bits = (bound - 1).bit_length()
    dtype = _word_type(bits)
    width = 1 << bits
    mask, limit = dtype((width - 1) & _ALL_ONES[dtype]), np.uint64(bound)
    parts: list[np.ndarray] = []
    have = 0
    while have < size:
        need = size - have
        draw = (rng.words(need * width // bound + need // 8 + 16, dtype) & mask).astype(np.uint64)
        ok = draw[draw < limit]
        parts.append(ok)
        have += len(ok)
    return (parts[0] if len(parts) == 1 else np.concatenate(parts))[:size]


def bernoulli_exp(numer: np.ndarray, denom: int, rng: RandomWords) -> np.ndarray:
    """Independent Bernoulli(exp(-numer[i] / denom)) draws, for 0 <= numer[i] <= denom.

    CKS Algorithm 1: K counts up while Bernoulli(gamma / K) succeeds; the result is
    whether the loop stopped at an odd K. Bernoulli(n / (d*K)) is "uniform below d*K is
    below n", all in exact integers.
    """
    size = len(numer)
    out = np.empty(size, dtype=bool)
    todo = np.arange(size)
    pending = numer
    k = 1
    while todo.size and k <= VECTOR_ROUNDS:
        go_on = uniform_below(denom * k, todo.size, rng) < pending
        stopped = ~go_on
        out[todo[stopped]] = k % 2 == 1
        todo, pending = todo[go_on], pending[go_on]
        k += 1
    for i, n in zip(todo.tolist(), pending.tolist(), strict=True):  # finished exactly
        out[i] = _bernoulli_exp_from(int(n), denom, k)
    return out


def _bernoulli_exp_from(numer: int, denom: int, k: int) -> bool:
    """Algorithm 1 continued from round `k`, in Python integers (no size limit)."""
    while secrets.randbelow(denom * k) < numer:
        k += 1
    return k % 2 == 1


def _geometric_exp1(size: int, rng: RandomWords) -> np.ndarray:
    """How many Bernoulli(exp(-1)) successes come before the first failure, per element.

    Drawn GEOMETRIC_BATCH trials at a time per element (one call instead of one per
    trial): the count is the run of leading successes, and the rare element whose whole
    batch succeeded goes on with another batch.
    """
    count = np.zeros(size, dtype=np.int64)
    todo = np.arange(size)
    while todo.size:
        trials = bernoulli_exp(np.ones(todo.size * GEOMETRIC_BATCH, dtype=np.uint64), 1, rng)
        trials = trials.reshape(todo.size, GEOMETRIC_BATCH)
        run = np.where(trials.all(axis=1), GEOMETRIC_BATCH, np.argmin(trials, axis=1))
        count[todo] += run
        todo = todo[run == GEOMETRIC_BATCH]
    return count


def supports(scale: float) -> bool:
    """Whether the vector path can sample this scale (else use OpenDP's sampler)."""
    if not (scale > 0 and np.isfinite(scale)):
        return False
    t, s = scale.as_integer_ratio()
    return t <= _MAX_T and s <= _MAX_S


def discrete_laplace(scale: float, size: int, rng: RandomWords) -> np.ndarray:
    """`size` independent draws of discrete Laplace: P(z) proportional to exp(-|z| / scale).

    CKS Algorithm 2 with scale = t/s: U uniform below t kept with probability
    exp(-U/t), plus t times a geometric count of exp(-1) successes, is geometric with
    ratio exp(-1/t); dividing by s (a shift: s is a power of two) makes it geometric
    with ratio exp(-s/t); a fair sign, with the negative zero rejected, makes it
    two-sided.
    """
    if not supports(scale):
        raise ValueError(f"scale {scale!r} is outside the vector sampler's range")
    t, s = scale.as_integer_ratio()
    shift = np.uint64(s.bit_length() - 1)
    t64 = np.uint64(t)
    parts: list[np.ndarray] = []
    have = 0
    while have < size:
        # A candidate survives both rejections with probability > 1/2 (for small
        # scales) and ~0.63 (large): candidates are i.i.d., so draw enough for one round.
        cand = 2 * (size - have) + 32
        u = uniform_below(t, cand, rng)
        u = u[bernoulli_exp(u, t, rng)]
        y = _scaled_geometric(u, _geometric_exp1(len(u), rng), t, t64, shift)
        negative = (rng.words(len(u), np.uint8) & np.uint8(1)).astype(bool)
        ok = ~(negative & (y == 0))
        y_ok = y[ok].astype(np.int64)
        parts.append(np.where(negative[ok], -y_ok, y_ok))
        have += len(parts[-1])
    return np.concatenate(parts)[:size] if parts else np.zeros(0, dtype=np.int64)


def _scaled_geometric(u: np.ndarray, v: np.ndarray, t: int, t64: np.uint64,
                      shift: np.uint64) -> np.ndarray:  # fmt: skip
    """floor((U + t*V) / s) per element, in uint64 where it fits, else in Python integers."""
    fits = v <= (_I64_MAX - t) // t  # then U + t*V < 2^63
    y = np.empty(len(u), dtype=np.uint64)
    y[fits] = (u[fits] + t64 * v[fits].astype(np.uint64)) >> shift
    for i in np.flatnonzero(~fits).tolist():  # V this large has probability < e^-60
        big = (int(u[i]) + t * int(v[i])) >> int(shift)
        if big > _I64_MAX:
            raise OverflowError("discrete Laplace draw beyond the 64-bit range")
        y[i] = big
    return y


def add_noise(values: np.ndarray, scale: float, rng: RandomWords) -> np.ndarray:
    """`values` (int64) plus independent discrete Laplace noise, saturating at the i64 range.

    Saturation, like OpenDP's, is post-processing of the exact noisy value.
    """
    noise = discrete_laplace(scale, len(values), rng)
    if not _may_overflow(values, noise):
        return values + noise
    low, high = -_I64_MAX - 1, _I64_MAX
    return np.array([min(max(int(v) + int(n), low), high) for v, n in zip(values, noise, strict=True)],
                    dtype=np.int64)  # fmt: skip


def _may_overflow(values: np.ndarray, noise: np.ndarray) -> bool:
    """Whether int64 addition could wrap (values are kept within +-2^62 by the caller)."""
    if not len(values):
        return False
    bound = 1 << 62
    return bool(np.abs(noise).max() >= bound or values.max() > bound or values.min() < -bound)
