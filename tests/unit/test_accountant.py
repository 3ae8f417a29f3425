"""Accountants against closed forms, OpenDP's own conversions and Google's dp-accounting."""

from __future__ import annotations

import math
from fractions import Fraction

import opendp.prelude as dp
import pytest

from accounting.accountant import (
    ZERO,
    Accountant,
    AccountantKind,
    Limits,
    advanced_epsilon,
    epsilon_to_zcdp,
    gaussian_release,
    laplace_release,
    zcdp_to_epsilon,
)
from accounting.ledger import to_decimal

PURE = Accountant(AccountantKind.PURE)


def test_a_million_tiny_charges_add_up_exactly() -> None:
    tiny = laplace_release(Fraction(1, 10**6))
    # The running epsilon sum is a Fraction sum (as in Cost.__add__), a million times...
    total = Fraction(0)
    for _ in range(1_000_000):
        total += tiny.epsilon
    assert total == 1
    # ...and whole costs compose the same way (fewer times: Cost carries six sums).
    spend = ZERO
    for _ in range(1000):
        spend = spend + tiny
    assert spend.epsilon == Fraction(1, 1000) and spend.releases == 1000
    spend = type(spend)(epsilon=total, releases=1_000_000)
    assert PURE.guarantee(spend).epsilon == 1
    # Exactly at the budget: one more charge of any size is refused, the last one fits.
    assert not PURE.fits(spend, tiny, Limits(Fraction(1)))
    assert PURE.remaining(spend, Limits(Fraction(1))) == 0
    # Float accumulation would not be exact (this is what the ledger avoids).
    assert sum([1e-6] * 1_000_000) != 1.0


def test_costs_from_float_privacy_maps_store_exactly() -> None:
    # A privacy map returns a float; its exact binary value is kept and stored as an
    # exact decimal, and round-trips through the decimal text unchanged.
    eps = 0.1 + 0.2
    c = laplace_release(eps)
    assert c.epsilon == Fraction(eps)
    assert Fraction(to_decimal(c.epsilon)) == c.epsilon
    assert Fraction(to_decimal(c.epsilon_tanh)) == c.epsilon_tanh


def test_pure_sequential_composition() -> None:
    spend = ZERO
    for e in (Fraction(1, 2), Fraction(1, 3), Fraction(1, 6)):
        spend = spend + laplace_release(e)
    assert PURE.guarantee(spend).epsilon == 1
    assert PURE.guarantee(spend).delta == 0
    assert PURE.fits(ZERO, laplace_release(1), Limits(Fraction(1)))
    assert not PURE.fits(laplace_release(Fraction(1, 2)), laplace_release(Fraction(51, 100)),
                         Limits(Fraction(1)))  # fmt: skip


def test_pure_accountant_refuses_gaussian_releases() -> None:
    with pytest.raises(ValueError, match="cannot compose Gaussian"):
        PURE.fits(ZERO, gaussian_release(Fraction(1, 10)), Limits(Fraction(10)))
    with pytest.raises(ValueError):
        Accountant(AccountantKind.APPROX).fits(ZERO, gaussian_release(1), Limits(None))


@pytest.mark.parametrize("k,eps,slack", [(100, 0.1, 1e-6), (1000, 0.01, 1e-7), (10, 0.5, 1e-5)])
def test_advanced_composition_matches_kov_closed_form(k: int, eps: float, slack: float) -> None:
    """Homogeneous case of Kairouz-Oh-Viswanath Thm 3.5 (ln(1/delta') branch or the other)."""
    spend = ZERO
    for _ in range(k):
        spend = spend + laplace_release(eps)
    got = float(advanced_epsilon(spend, Fraction(slack)))
    s2 = k * eps * eps
    expected = k * eps * (math.exp(eps) - 1) / (math.exp(eps) + 1) + math.sqrt(
        2 * s2 * min(math.log(1 / slack), math.log(math.e + math.sqrt(s2) / slack))
    )
    assert got >= expected  # rounded up, never down
    assert got == pytest.approx(expected, rel=1e-9)
    acc = Accountant(AccountantKind.APPROX, Fraction(slack))
    g = acc.guarantee(spend)
    assert g.epsilon == min(advanced_epsilon(spend, Fraction(slack)), spend.epsilon)
    # Advanced composition wins for many small releases and costs the slack delta.
    if k * eps > expected:
        assert g.delta == Fraction(slack)


def test_approx_falls_back_to_basic_when_delta_budget_is_too_small() -> None:
    acc = Accountant(AccountantKind.APPROX, Fraction(1, 10**6))
    spend = ZERO
    for _ in range(1000):
        spend = spend + laplace_release(Fraction(1, 100))
    # 1000 x 0.01: basic says 10; advanced ~1.7 at delta 1e-6.
    assert acc.fits(spend, ZERO, Limits(Fraction(2), Fraction(1, 10**5)))
    assert not acc.fits(spend, ZERO, Limits(Fraction(2), Fraction(0)))
    assert acc.fits(spend, ZERO, Limits(Fraction(10), Fraction(0)))


@pytest.mark.parametrize("rho,delta", [(0.125, 1e-6), (0.01, 1e-7), (1.0, 1e-9), (3e-5, 1e-6)])
def test_zcdp_conversion_matches_opendp(rho: float, delta: float) -> None:
    dp.enable_features("contrib")
    # A Gaussian with d_in = 1 and rho = 1 / (2 scale^2): OpenDP's own conversion.
    scale = 1 / math.sqrt(2 * rho)
    meas = dp.m.make_gaussian(dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float),
                              scale=scale)  # fmt: skip
    rho_map = meas.map(1.0)
    theirs = dp.c.make_zCDP_to_approxDP(meas).map(1.0).epsilon(delta)
    ours = float(zcdp_to_epsilon(rho_map, delta))
    assert ours >= theirs * (1 - 1e-9)
    assert ours == pytest.approx(theirs, rel=1e-6)
    classic = rho_map + 2 * math.sqrt(rho_map * math.log(1 / delta))
    assert ours <= classic * (1 + 1e-9)


def test_zcdp_conversion_matches_dp_accounting() -> None:
    dpa = pytest.importorskip("dp_accounting")
    from dp_accounting.rdp import rdp_privacy_accountant

    for rho, delta in [(0.125, 1e-6), (0.5, 1e-8), (0.02, 1e-5)]:
        acct = rdp_privacy_accountant.RdpAccountant()
        acct.compose(dpa.ZCDpEvent(rho))
        theirs = acct.get_epsilon(delta)
        ours = float(zcdp_to_epsilon(rho, delta))
        # dp-accounting searches a fixed grid of orders, so it is at most slightly looser.
        assert ours <= theirs * (1 + 1e-9)
        assert ours == pytest.approx(theirs, rel=1e-3)


def test_zcdp_accountant_composes_rho_and_counts_laplace_as_eps_squared_over_two() -> None:
    acc = Accountant(AccountantKind.ZCDP, Fraction(1, 10**7))
    spend = gaussian_release(Fraction(1, 100)) + laplace_release(Fraction(1, 10))
    assert spend.rho == Fraction(1, 100) + Fraction(1, 200)
    assert acc.guarantee(spend).epsilon == zcdp_to_epsilon(spend.rho, Fraction(1, 10**7))
    # 100 queries at rho 0.001 compose to rho 0.1, far below 100x their single epsilon.
    one = gaussian_release(Fraction(1, 1000))
    total = ZERO
    for _ in range(100):
        total = total + one
    assert total.rho == Fraction(1, 10)
    assert acc.guarantee(total).epsilon < 100 * acc.guarantee(one).epsilon / 5


@pytest.mark.parametrize("eps,delta", [(1.0, 1e-7), (0.1, 1e-6), (5.0, 1e-9)])
def test_epsilon_to_zcdp_is_the_largest_rho_within_epsilon(eps: float, delta: float) -> None:
    rho = epsilon_to_zcdp(Fraction(eps), Fraction(delta))
    assert zcdp_to_epsilon(rho, delta) <= Fraction(eps)
    assert zcdp_to_epsilon(rho * Fraction(1001, 1000), delta) > Fraction(eps)


def test_negative_costs_are_refused() -> None:
    with pytest.raises(ValueError):
        laplace_release(-0.1)
    with pytest.raises(ValueError):
        gaussian_release(-0.1)
