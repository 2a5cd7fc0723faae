"""Tests for sims.atmosphere: the NRLMSIS 2.1 density table and its log-linear lookup."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sims.atmosphere import ACTIVITY_LEVELS, TABLE_PATH, density_kg_m3, density_table


def test_table_header_states_source_and_inputs():
    """The CSV says where it came from (NRLMSIS 2.1, ECSS activity levels) and its units."""
    header = [ln for ln in TABLE_PATH.read_text().splitlines() if ln.startswith("#")]
    text = "\n".join(header)
    for needle in ("NRLMSIS 2.1", "Emmert", "ECSS-E-ST-10-04C", "F10.7=140", "Ap=15",
                   "cos(lat)", "kg/m^3"):
        assert needle in text


def test_table_shape_and_grid():
    for act in ACTIVITY_LEVELS:
        alt, log_rho = density_table(act)
        assert alt.dtype == np.float64 and log_rho.dtype == np.float64
        assert alt.shape == log_rho.shape == (91,)
        np.testing.assert_array_equal(alt, np.arange(100, 1001, 10) * 1000.0)
        assert np.all(np.isfinite(log_rho))


def test_unknown_activity_raises():
    with pytest.raises(ValueError):
        density_table("extreme")


def test_value_at_400_km_plausible():
    """NRLMSIS global-mean density at 400 km: moderate activity a few 1e-12 kg/m^3.

    Reference: NRLMSIS 2.1 (Emmert et al. 2021); typical ISS-altitude densities 1e-12..6e-12 for
    moderate activity (e.g. Vallado, 4th ed., Table 8-4 exponential model gives 3.7e-12 at 400 km).
    """
    alt, lr = density_table("moderate")
    rho = density_kg_m3(400e3, alt, lr)
    assert 1e-12 < rho < 6e-12
    alt, lr = density_table("low")
    assert 1e-13 < density_kg_m3(400e3, alt, lr) < 2e-12
    alt, lr = density_table("high")
    assert 5e-12 < density_kg_m3(400e3, alt, lr) < 5e-11


def test_ordering_low_moderate_high_300_to_500_km():
    tables = [density_table(a) for a in ACTIVITY_LEVELS]
    for h in np.arange(300e3, 500e3 + 1, 5e3):
        rl, rm, rh = (density_kg_m3(h, a, lr) for a, lr in tables)
        assert rl < rm < rh


def test_monotone_decreasing_with_altitude():
    hs = np.linspace(0.0, 1500e3, 3001)
    for act in ACTIVITY_LEVELS:
        alt, lr = density_table(act)
        assert np.all(np.diff(lr) < 0.0)
        rho = np.array([density_kg_m3(h, alt, lr) for h in hs])
        assert np.all(np.diff(rho) < 0.0)


def test_exact_at_nodes():
    for act in ACTIVITY_LEVELS:
        alt, lr = density_table(act)
        for h, log_rho in zip(alt, lr, strict=True):
            assert density_kg_m3(h, alt, lr) == pytest.approx(math.exp(log_rho), rel=1e-14)


@settings(max_examples=200, deadline=None)
@given(h=st.floats(100e3, 1000e3), act=st.sampled_from(ACTIVITY_LEVELS))
def test_continuous_between_nodes(h, act):
    """A 1 mm step never changes the density by more than the steepest local gradient allows."""
    alt, lr = density_table(act)
    r0 = density_kg_m3(h, alt, lr)
    r1 = density_kg_m3(h + 1e-3, alt, lr)
    max_slope = np.max(np.abs(np.diff(lr) / np.diff(alt)))  # [1/m] in log space
    assert abs(math.log(r1) - math.log(r0)) <= max_slope * 1e-3 + 1e-12  # + log rounding


@settings(max_examples=300, deadline=None)
@given(h=st.floats(-1e7, 1e8, allow_nan=False, allow_infinity=False),
       act=st.sampled_from(ACTIVITY_LEVELS))
def test_finite_everywhere(h, act):
    alt, lr = density_table(act)
    rho = density_kg_m3(h, alt, lr)
    assert math.isfinite(rho) and rho >= 0.0


def test_extrapolation_uses_edge_scale_heights():
    alt, lr = density_table("moderate")
    top = (lr[-1] - lr[-2]) / (alt[-1] - alt[-2])
    assert math.log(density_kg_m3(alt[-1] + 50e3, alt, lr)) == pytest.approx(
        lr[-1] + top * 50e3, rel=1e-12)
    bot = (lr[1] - lr[0]) / (alt[1] - alt[0])
    assert math.log(density_kg_m3(alt[0] - 5e3, alt, lr)) == pytest.approx(
        lr[0] - bot * 5e3, rel=1e-12)
