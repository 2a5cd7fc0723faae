"""Tests for thruster_hil.sims.atmosphere: the NRLMSIS 2.1 density grid over (height, F10.7, Ap),
its presets
and its log-density interpolation."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from thruster_hil.sims.atmosphere import (
    ACTIVITY_LEVELS,
    AP_MAX,
    F107_MAX_SFU,
    F107_MIN_SFU,
    PRESETS,
    TABLE_PATH,
    activity,
    density_grid,
    density_kg_m3,
    density_table,
    density_table_for,
    log_density_profile,
    plan_activity,
)


def test_table_header_states_source_and_inputs():
    """The CSV says where it came from (NRLMSIS 2.1, its inputs), its interpolation error and
    its units."""
    header = [ln for ln in TABLE_PATH.read_text().splitlines() if ln.startswith("#")]
    text = "\n".join(header)
    for needle in (
        "NRLMSIS 2.1",
        "Emmert",
        "ECSS-E-ST-10-04C",
        "F10.7 nodes",
        "Ap nodes",
        "cos(lat)",
        "kg/m^3",
        "Interpolation check",
        "ellipsoid",
    ):
        assert needle in text


def test_grid_shape_and_axes():
    f107, ap, alt, log_rho = density_grid()
    assert log_rho.shape == (f107.size, ap.size, alt.size) == (20, 14, 91)
    np.testing.assert_array_equal(alt, np.arange(100, 1001, 10) * 1000.0)
    assert f107[0] == F107_MIN_SFU and f107[-1] == F107_MAX_SFU
    assert ap[0] == 0.0 and ap[-1] == AP_MAX
    assert np.all(np.isfinite(log_rho))
    for a in (f107, ap, alt, log_rho):
        assert not a.flags.writeable


def test_presets_are_nodes_and_read_exactly():
    """Each preset is a node of the grid, so its profile is the table's column, not a blend."""
    f107, ap, alt, log_rho = density_grid()
    for name in ACTIVITY_LEVELS:
        p = PRESETS[name]
        i = int(np.flatnonzero(f107 == p.f107_sfu)[0])
        j = int(np.flatnonzero(ap == p.ap)[0])
        a, lr = density_table(name)
        np.testing.assert_array_equal(a, alt)
        np.testing.assert_allclose(lr, log_rho[i, j], rtol=0, atol=1e-13)


def test_preset_values_as_documented():
    """ECSS-E-ST-10-04C long-term low (65/0) and moderate (140/15); high a typical solar maximum
    (170/15), not ECSS's high long-term envelope (250/45)."""
    assert (PRESETS["low"].f107_sfu, PRESETS["low"].ap) == (65.0, 0.0)
    assert (PRESETS["moderate"].f107_sfu, PRESETS["moderate"].ap) == (140.0, 15.0)
    assert (PRESETS["high"].f107_sfu, PRESETS["high"].ap) == (170.0, 15.0)
    for p in PRESETS.values():
        assert p.source


def test_activity_overrides_and_names():
    assert activity() is PRESETS["moderate"]
    assert activity("high") is PRESETS["high"]
    assert activity("moderate", 140.0, 15.0) is PRESETS["moderate"]
    custom = activity("low", ap=30.0)
    assert (custom.name, custom.f107_sfu, custom.ap) == ("custom", 65.0, 30.0)
    assert plan_activity({"solar_activity": "high"}) is PRESETS["high"]
    assert plan_activity({"solar_activity": "high", "f107_sfu": 200.0, "ap": 7.0}).f107_sfu == 200


@pytest.mark.parametrize(
    "kw",
    [
        {"f107_sfu": -5.0},
        {"f107_sfu": math.nan},
        {"ap": 1000.0},
        {"ap": -1.0},
        {"f107_sfu": 300.0001},
        {"ap": math.inf},
    ],
)
def test_activity_refuses_values_outside_the_table(kw):
    with pytest.raises(ValueError):
        activity("moderate", **kw)


def test_unknown_activity_raises():
    with pytest.raises(ValueError):
        density_table("extreme")


def test_value_at_400_km_plausible():
    """NRLMSIS global-mean density at 400 km: moderate activity a few 1e-12 kg/m^3.

    Reference: NRLMSIS 2.1 (Emmert et al. 2021); typical ISS-altitude densities 1e-12..6e-12 for
    moderate activity (e.g. Vallado, 4th ed., Table 8-4 exponential model gives 3.7e-12 at 400 km).
    """
    alt, lr = density_table("moderate")
    assert 1e-12 < density_kg_m3(400e3, alt, lr) < 6e-12
    alt, lr = density_table("low")
    assert 1e-13 < density_kg_m3(400e3, alt, lr) < 2e-12
    alt, lr = density_table("high")
    assert 3e-12 < density_kg_m3(400e3, alt, lr) < 2e-11


def test_ordering_low_moderate_high_300_to_500_km():
    tables = [density_table(a) for a in ACTIVITY_LEVELS]
    for h in np.arange(300e3, 500e3 + 1, 5e3):
        rl, rm, rh = (density_kg_m3(h, a, lr) for a, lr in tables)
        assert rl < rm < rh


@settings(max_examples=100, deadline=None)
@given(
    f=st.floats(F107_MIN_SFU, F107_MAX_SFU - 1.0),
    ap=st.floats(0.0, AP_MAX - 1.0),
    df=st.floats(0.5, 50.0),
    dap=st.floats(0.5, 50.0),
)
def test_density_grows_with_f107_and_ap_at_iss_altitude(f, ap, df, dap):
    """More EUV (F10.7) or more geomagnetic heating (Ap) never thins the air at 300-500 km
    (NRLMSIS: exospheric temperature rises with both; Emmert et al. 2021)."""
    for h in (300e3, 415e3, 500e3):
        base = density_kg_m3(h, *density_table_for(f, ap))
        assert density_kg_m3(h, *density_table_for(min(f + df, F107_MAX_SFU), ap)) >= base
        assert density_kg_m3(h, *density_table_for(f, min(ap + dap, AP_MAX))) >= base


@settings(max_examples=100, deadline=None)
@given(f=st.floats(F107_MIN_SFU, F107_MAX_SFU), ap=st.floats(0.0, AP_MAX))
def test_profile_is_bounded_by_its_cell_corners(f, ap):
    """Bilinear in log-density: every height lies between the min and max of its 4 corners."""
    f107, aps, _, log_rho = density_grid()
    out = np.empty(log_rho.shape[2])
    log_density_profile(f, ap, f107, aps, log_rho, out)
    i = min(max(int(np.searchsorted(f107, f, side="right")) - 1, 0), f107.size - 2)
    j = min(max(int(np.searchsorted(aps, ap, side="right")) - 1, 0), aps.size - 2)
    corners = log_rho[i : i + 2, j : j + 2].reshape(4, -1)
    assert np.all(out >= corners.min(axis=0) - 1e-12)
    assert np.all(out <= corners.max(axis=0) + 1e-12)


@settings(max_examples=100, deadline=None)
@given(f=st.floats(F107_MIN_SFU, F107_MAX_SFU - 1e-3), ap=st.floats(0.0, AP_MAX - 1e-3))
def test_profile_continuous_in_f107_and_ap(f, ap):
    """A step of 1e-3 in F10.7 or Ap moves log-density by no more than the steepest cell
    gradient allows (continuity across cell edges)."""
    f107, aps, _, log_rho = density_grid()
    g_f = np.max(np.abs(np.diff(log_rho, axis=0)) / np.diff(f107)[:, None, None])
    g_a = np.max(np.abs(np.diff(log_rho, axis=1)) / np.diff(aps)[None, :, None])
    _, p0 = density_table_for(f, ap)
    _, p1 = density_table_for(f + 1e-3, ap)
    _, p2 = density_table_for(f, ap + 1e-3)
    assert np.max(np.abs(p1 - p0)) <= g_f * 1e-3 + 1e-12
    assert np.max(np.abs(p2 - p0)) <= g_a * 1e-3 + 1e-12


def test_profile_clamps_outside_the_grid_and_nan():
    """The kernel never raises: outside the grid it holds the edge, NaN reads the first node."""
    f107, aps, _, log_rho = density_grid()
    out = np.empty(log_rho.shape[2])
    log_density_profile(1e9, 1e9, f107, aps, log_rho, out)
    np.testing.assert_array_equal(out, log_rho[-1, -1])
    log_density_profile(math.nan, -5.0, f107, aps, log_rho, out)
    np.testing.assert_array_equal(out, log_rho[0, 0])


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
@given(
    h=st.floats(-1e7, 1e8, allow_nan=False, allow_infinity=False),
    act=st.sampled_from(ACTIVITY_LEVELS),
)
def test_finite_everywhere(h, act):
    alt, lr = density_table(act)
    rho = density_kg_m3(h, alt, lr)
    assert math.isfinite(rho) and rho >= 0.0


def test_extrapolation_uses_edge_scale_heights():
    alt, lr = density_table("moderate")
    top = (lr[-1] - lr[-2]) / (alt[-1] - alt[-2])
    assert math.log(density_kg_m3(alt[-1] + 50e3, alt, lr)) == pytest.approx(
        lr[-1] + top * 50e3, rel=1e-12
    )
    bot = (lr[1] - lr[0]) / (alt[1] - alt[0])
    assert math.log(density_kg_m3(alt[0] - 5e3, alt, lr)) == pytest.approx(
        lr[0] - bot * 5e3, rel=1e-12
    )


@settings(max_examples=300, deadline=None)
@given(
    x=st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.floats(50e3, 1100e3),
        st.integers(10, 100).map(lambda k: k * 10e3),  # on the nodes
    ),
    uneven=st.booleans(),
)
def test_segment_near_finds_the_binary_searchs_segment(x, uneven):
    """Issue 18: the density lookup's guessed-then-walked segment is the binary search's."""
    from thruster_hil.sims.atmosphere import _segment, _segment_near

    nodes = np.arange(100e3, 1000e3 + 1.0, 10e3)
    if uneven:
        nodes = nodes + 4e3 * np.sin(np.arange(nodes.size)) ** 2
    assert _segment_near(x, nodes) == _segment(x, nodes)


@settings(max_examples=200, deadline=None)
@given(
    alt_m=st.one_of(
        st.floats(-1e5, 2e6, allow_nan=False),
        st.sampled_from([100e3, 110e3, 400e3, 1000e3, math.nan]),
    ),
    act=st.sampled_from(["low", "moderate", "high"]),
)
def test_density_with_precomputed_slopes_is_the_same_number(alt_m, act):
    """The orbit's coast kernels look the density up with each segment's slope made once
    (log_density_slopes): bit for bit density_kg_m3, below, inside, on and above the table."""
    from thruster_hil.sims.atmosphere import density_sloped_kg_m3, log_density_slopes

    alt, lr = density_table(act)
    slope = log_density_slopes(alt, lr)
    assert slope.shape == (alt.size - 1,)
    got = density_sloped_kg_m3(alt_m, alt, lr, slope)
    ref = density_kg_m3(alt_m, alt, lr)
    assert np.float64(got).tobytes() == np.float64(ref).tobytes()
