"""The lean OpenDP call path: same measurement, same sampler, only marshalling is ours."""

from __future__ import annotations

import numpy as np
import opendp.prelude as dp
import pytest
from opendp.mod import OpenDPException

from accounting.ffi import BindingInvoker, VectorInvoker
from accounting.mechanisms import Mechanisms


@pytest.fixture(scope="module")
def mech() -> Mechanisms:
    return Mechanisms(workers=1)


def test_output_has_the_input_shape_and_is_an_integer_perturbation(mech: Mechanisms) -> None:
    invoke = VectorInvoker()
    values = np.arange(-5, 1000, dtype=np.int64)
    out = invoke(mech.laplace(0.5), values)
    assert out.dtype == np.int64 and out.shape == values.shape
    # Scale 0.5: |noise| > 30 has probability ~e^-60 per draw.
    assert np.all(np.abs(out - values) <= 30)
    assert len(invoke(mech.laplace(0.5), np.zeros(0, dtype=np.int64))) == 0


def test_a_large_vector_is_noised_at_the_measurements_scale(mech: Mechanisms) -> None:
    # 200,000 draws of discrete Laplace(100): variance 2 * 100^2 (to 1e-4); the sample
    # variance's relative error has sd ~0.0067, so a 0.05 band is > 7 sd (false alarm
    # below 1e-12).
    values = np.full(200_000, 10**9, dtype=np.int64)
    noise = VectorInvoker()(mech.laplace(100.0), values) - values
    assert abs(noise.var() / (2 * 100.0**2) - 1) < 0.05
    assert abs(noise.mean()) < 2.0  # sd of the mean ~0.32: over 6 sd


def test_selection_returns_an_index_into_the_scores(mech: Mechanisms) -> None:
    scores = np.array([50, 0, 50, 50], dtype=np.int64)
    picks = {VectorInvoker().index(mech.noisy_max(0.1), scores) for _ in range(20)}
    # Scale 0.1 against a gap of 50: the minimum (index 1) wins every time.
    assert picks == {1}


def test_library_errors_surface_as_opendp_exceptions() -> None:
    dp.enable_features("contrib")
    # A measurement on f64 vectors given the i64 buffer: OpenDP refuses the type.
    floats = dp.m.make_laplace(dp.vector_domain(dp.atom_domain(T=float, nan=False)),
                               dp.l1_distance(T=float), scale=1.0)  # fmt: skip
    with pytest.raises(OpenDPException):
        VectorInvoker()(floats, np.zeros(3, dtype=np.int64))


def test_the_binding_fallback_gives_the_same_shapes(mech: Mechanisms) -> None:
    values = np.arange(10, dtype=np.int64)
    out = BindingInvoker()(mech.laplace(0.5), values)
    assert out.dtype == np.int64 and np.all(np.abs(out - values) <= 30)
    assert BindingInvoker().index(mech.noisy_max(0.1), np.array([50, 0, 50], dtype=np.int64)) == 1
