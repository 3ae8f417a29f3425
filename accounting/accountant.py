"""Accountants: how the costs of many releases compose into one spent budget (pure).

The ledger stores, per budget, a few running sums (`Spend`) in exact decimal
arithmetic; an accountant turns those sums into the (epsilon, delta) guarantee that
holds for everything released so far, and decides whether one more release fits.

- `pure`: sequential composition, epsilon adds up (Laplace-family releases).
- `approx`: (epsilon, delta) with the better of basic composition and the
  heterogeneous advanced composition of Kairouz, Oh & Viswanath (ICML 2015, Thm 3.5).
- `zcdp`: rho adds up (Gaussian-family releases; a pure-epsilon release counts as
  epsilon^2/2-zCDP), converted to (epsilon, delta) at the dataset's delta with the
  conversion of Canonne, Kamath & Steinke (NeurIPS 2020, Prop. 12), the one OpenDP's
  `make_zCDP_to_approxDP` uses.

Running sums are exact `Fraction`s (stored as exact `numeric` in PostgreSQL), so a
million tiny charges add up to exactly their sum. Only the non-linear conversions
(square roots, logarithms) use floats, and each is rounded up, never down.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from fractions import Fraction

# Irrational per-charge terms (epsilon * tanh(epsilon / 2)) are rounded UP to this
# many decimal places before they are added to the exact sums.
IRRATIONAL_PLACES = 30
_UP = Fraction(1, 10**IRRATIONAL_PLACES)


class AccountantKind(StrEnum):
    """The composition rule of a dataset (chosen in the config)."""

    PURE = "pure"
    APPROX = "approx"
    ZCDP = "zcdp"


@dataclass(frozen=True, slots=True)
class Cost:
    """What one query costs: its releases' total epsilon and delta, and zCDP rho.

    `epsilon_sq` and `epsilon_tanh` are the per-release sums that advanced
    composition needs (sum of epsilon_i^2 and of epsilon_i * tanh(epsilon_i / 2)).
    """

    epsilon: Fraction = Fraction(0)
    delta: Fraction = Fraction(0)
    rho: Fraction = Fraction(0)
    epsilon_sq: Fraction = Fraction(0)
    epsilon_tanh: Fraction = Fraction(0)
    releases: int = 0

    def __add__(self, other: Cost) -> Cost:
        return Cost(
            self.epsilon + other.epsilon,
            self.delta + other.delta,
            self.rho + other.rho,
            self.epsilon_sq + other.epsilon_sq,
            self.epsilon_tanh + other.epsilon_tanh,
            self.releases + other.releases,
        )

    @property
    def is_zero(self) -> bool:
        """True when the cost is nothing at all (e.g. an answer from the cache)."""
        return self.releases == 0


ZERO = Cost()
# What is spent so far is a sum of costs, with the same running sums.
Spend = Cost


def as_fraction(x: Decimal | Fraction | float | int | str) -> Fraction:
    """An exact Fraction (floats are taken at their exact binary value)."""
    if isinstance(x, Fraction):
        return x
    if isinstance(x, str):
        return Fraction(Decimal(x))
    return Fraction(x)


def _round_up(x: float | Fraction) -> Fraction:
    f = Fraction(x)
    return -((-f) // _UP) * _UP


def laplace_release(epsilon: Decimal | Fraction | float) -> Cost:
    """The cost of one pure epsilon-DP release (its epsilon read from a privacy map)."""
    e = as_fraction(epsilon)
    if e < 0:
        raise ValueError("a release cannot cost a negative epsilon")
    # epsilon * tanh(epsilon/2) = epsilon * (e^eps - 1) / (e^eps + 1), rounded up.
    tanh = _round_up(float(e) * math.tanh(float(e) / 2) * (1 + 1e-12)) if e else Fraction(0)
    return Cost(epsilon=e, rho=e * e / 2, epsilon_sq=e * e, epsilon_tanh=tanh, releases=1)


def gaussian_release(rho: Decimal | Fraction | float) -> Cost:
    """The cost of one rho-zCDP release (its rho read from a privacy map)."""
    r = as_fraction(rho)
    if r < 0:
        raise ValueError("a release cannot cost a negative rho")
    return Cost(rho=r, releases=1)


@dataclass(frozen=True, slots=True)
class Guarantee:
    """The (epsilon, delta)-DP guarantee that holds for a spend."""

    epsilon: Fraction
    delta: Fraction


@dataclass(frozen=True, slots=True)
class Limits:
    """A budget: at most `epsilon` (and `delta`) in total; None means no limit."""

    epsilon: Fraction | None
    delta: Fraction | None = None


def zcdp_to_epsilon(rho: Fraction | float, delta: Fraction | float) -> Fraction:
    """The epsilon of a rho-zCDP mechanism at `delta` (CKS 2020 Prop. 12), rounded up.

    For every alpha > 1 the mechanism is (eps(alpha), delta)-DP with
    eps(alpha) = alpha*rho + (ln(1/delta) + alpha*ln(1 - 1/alpha) - ln(alpha - 1)) / (alpha - 1),
    so any alpha gives a valid bound; we search for a small one and also keep the
    classic rho + 2*sqrt(rho*ln(1/delta)) (Bun & Steinke 2016), taking the smaller.
    """
    r, d = float(rho), float(delta)
    if r <= 0:
        return Fraction(0)
    if not 0 < d < 1:
        raise ValueError("delta must be in (0, 1) to convert zCDP to (epsilon, delta)")
    log_inv = math.log(1 / d)
    classic = r + 2 * math.sqrt(r * log_inv)

    def eps(alpha: float) -> float:
        return alpha * r + (log_inv + alpha * math.log1p(-1 / alpha) - math.log(alpha - 1)) / (
            alpha - 1
        )

    # eps(alpha) is convex in alpha; golden-section search over log(alpha - 1).
    lo, hi = math.log(1e-9), math.log(1e9)
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = eps(1 + math.exp(a)), eps(1 + math.exp(b))
    for _ in range(200):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = eps(1 + math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = eps(1 + math.exp(b))
    best = min(classic, fa, fb)
    # A relative margin covers float rounding in the formula; eps(alpha) is an upper
    # bound for any alpha, so the margin only ever errs on the safe side.
    return _round_up(max(0.0, best) * (1 + 1e-9) + 1e-15)


def epsilon_to_zcdp(epsilon: Fraction | float, delta: Fraction | float) -> Fraction:
    """The largest rho (rounded down) whose conversion at `delta` stays within `epsilon`.

    Used to calibrate a query asked for at (epsilon, delta) under the zCDP accountant.
    """
    e, d = float(epsilon), float(delta)
    if e <= 0:
        return Fraction(0)
    log_inv = math.log(1 / d)
    # Start from the classic inversion (a lower bound), then bisect on the exact check.
    lo = (math.sqrt(log_inv + e) - math.sqrt(log_inv)) ** 2
    hi = e  # rho <= epsilon always (eps(rho) >= rho)
    for _ in range(100):
        mid = (lo + hi) / 2
        if zcdp_to_epsilon(mid, d) <= Fraction(e):
            lo = mid
        else:
            hi = mid
    out = Fraction(lo).limit_denominator(10**15)
    while out > 0 and zcdp_to_epsilon(out, d) > as_fraction(e):
        out = out * Fraction(999_999, 1_000_000)
    return out


@dataclass(frozen=True, slots=True)
class Accountant:
    """A composition rule and the delta it works at; pure, no I/O."""

    kind: AccountantKind
    # zcdp: the delta of the (epsilon, delta) conversion; approx: the slack delta' of
    # advanced composition. Unused by pure.
    delta: Fraction = Fraction(1, 10**7)

    def guarantee(self, spend: Spend) -> Guarantee:
        """The (epsilon, delta) guarantee of everything in `spend`."""
        return self._candidates(spend, None)[0]

    def fits(self, spend: Spend, cost: Cost, limits: Limits) -> bool:
        """Would `spend + cost` stay within `limits`?"""
        return self.within(spend + cost, limits)

    def within(self, total: Spend, limits: Limits) -> bool:
        """Does `total` stay within `limits`?"""
        if self.kind != AccountantKind.ZCDP and total.rho > total.epsilon_sq / 2:
            # A Gaussian (zCDP-only) release has no pure epsilon: it must never be
            # composed as if it were free.
            raise ValueError(f"the {self.kind} accountant cannot compose Gaussian releases")
        g = self._candidates(total, limits.delta)[0]
        if limits.epsilon is not None and g.epsilon > limits.epsilon:
            return False
        return not (limits.delta is not None and g.delta > limits.delta)

    def remaining(self, spend: Spend, limits: Limits) -> Fraction | None:
        """Epsilon left under `limits` (None when unlimited), never negative."""
        if limits.epsilon is None:
            return None
        return max(Fraction(0), limits.epsilon - self._candidates(spend, limits.delta)[0].epsilon)

    def _candidates(self, s: Spend, delta_limit: Fraction | None) -> list[Guarantee]:
        if self.kind == AccountantKind.PURE:
            return [Guarantee(s.epsilon, s.delta)]
        if self.kind == AccountantKind.ZCDP:
            return [Guarantee(zcdp_to_epsilon(s.rho, self.delta), self.delta + s.delta)]
        basic = Guarantee(s.epsilon, s.delta)
        cands = [basic]
        if s.releases > 1 and s.epsilon > 0:
            cands.append(Guarantee(advanced_epsilon(s, self.delta), s.delta + self.delta))
        usable = [c for c in cands if delta_limit is None or c.delta <= delta_limit] or [basic]
        return sorted(usable, key=lambda c: (c.epsilon, c.delta))


def advanced_epsilon(s: Spend, slack: Fraction) -> Fraction:
    """Kairouz-Oh-Viswanath heterogeneous advanced composition, rounded up.

    With delta' = `slack`: epsilon = sum eps_i tanh(eps_i/2) + sqrt(2 sum eps_i^2 ln(1/delta'))
    (or ln(e + sqrt(sum eps_i^2)/delta'), whichever is smaller); total delta is
    delta' + sum delta_i.
    """
    s2 = float(s.epsilon_sq)
    log_a = math.log(1 / float(slack))
    log_b = math.log(math.e + math.sqrt(s2) / float(slack))
    root = math.sqrt(2 * s2 * min(log_a, log_b))
    return s.epsilon_tanh + _round_up(root * (1 + 1e-12))

