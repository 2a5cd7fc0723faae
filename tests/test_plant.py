"""The combined plant: translation and rotation of the stack under thruster pulses."""

import math

import numpy as np
import pytest
from thruster_hil.sims import atmosphere, plant
from thruster_hil.sims.attitude import (
    dcm_from_q,
    lvlh_attitude_q,
    lvlh_rate_B,
    q_error_angle,
    q_mult,
)
from thruster_hil.sims.orbit import rv_from_elements

from thruster_hil.core.constants import G0, MU_EARTH, R_EARTH

TABLE = atmosphere.density_table("moderate")
I_DIAG = np.diag([1.28e8, 1.07e8, 2.00e8])
A_ISS = R_EARTH + 418e3


def _orbit_state():
    r = np.empty(3)
    v = np.empty(3)
    rv_from_elements(A_ISS, 0.0, math.radians(51.64), 0.3, 0.0, 0.2, MU_EARTH, r, v)
    return r, v


def _cycle(
    y, impulse, u, r_tc, isp, inertia=I_DIAG, period=1.0, ext=None, j2=0.0, gg=0.0, cd_area=0.0
):
    out = np.empty_like(y)
    sensed = np.zeros(plant.SENSED_LEN)
    ext = np.zeros(3) if ext is None else ext
    status = plant.plant_cycle(
        y,
        period,
        impulse,
        u,
        r_tc,
        isp,
        ext,
        inertia,
        np.linalg.inv(inertia),
        cd_area,
        j2,
        gg,
        TABLE[0],
        TABLE[1],
        out,
        sensed,
    )
    assert status == plant.STATUS_OK
    return out, sensed


def test_impulse_through_the_com_changes_velocity_by_impulse_over_mass():
    """Rocket equation: the sensed delta-v equals Isp g0 ln(m0/m1) to 1e-12 relative.

    Burn and coast propagations from the same state are differenced so gravity cancels, up to
    the gravity gradient across the ~0.5 mm the burn displaces the stack in 1 s (2 mu/r^3 * 0.5
    mm * 1 s ~ 1e-9 m/s, i.e. ~1e-6 of the delta-v): the inertial check uses 1e-5 relative. One
    thruster at the CoM gives no torque, so the attitude stays put.
    """
    r, v = _orbit_state()
    q = np.array([1.0, 0.0, 0.0, 0.0])
    y0 = plant.initial_state(r, v, q, np.zeros(3), 4.3e5)
    u = np.array([[0.0, 1.0, 0.0]])
    r_tc = np.zeros((1, 3))
    isp = np.array([300.0])
    impulse = np.full((10, 1), 40.0)  # 400 N for 1 s in 10 sub-steps
    burned, sensed = _cycle(y0, impulse, u, r_tc, isp)
    coast, _ = _cycle(y0, np.zeros((10, 1)), u, r_tc, isp)
    m_used = 400.0 / (300.0 * G0)
    assert burned[plant.M] == pytest.approx(4.3e5 - m_used, rel=1e-12)
    dv_expected = -300.0 * G0 * math.log1p(-m_used / 4.3e5)  # rocket equation, no cancellation
    dv = burned[plant.V : plant.V + 3] - coast[plant.V : plant.V + 3]
    # q = identity: B = N, so the thrust is along y_N.
    assert dv[1] == pytest.approx(dv_expected, rel=1e-5)
    assert abs(dv[0]) < 1e-8 and abs(dv[2]) < 1e-8
    np.testing.assert_allclose(sensed[0:3], [0.0, dv_expected, 0.0], rtol=1e-12, atol=1e-18)
    np.testing.assert_allclose(sensed[3:6], [0.0, dv_expected, 0.0], rtol=1e-12, atol=1e-18)
    assert np.allclose(burned[plant.W : plant.W + 3], 0.0)


def test_couple_spins_the_stack_by_torque_over_inertia():
    """A pure couple about z_B: Delta omega_z = L t / Izz (Euler's equations from rest, principal
    axis, no gravity gradient); no translation. Tolerance 1e-12 relative."""
    r, v = _orbit_state()
    y0 = plant.initial_state(r, v, np.array([1.0, 0.0, 0.0, 0.0]), np.zeros(3), 4.3e5)
    d = 20.0
    u = np.array([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]])
    r_tc = np.array([[0.0, -d, 0.0], [0.0, d, 0.0]])  # (r x F)_z = +F d for both
    isp = np.array([300.0, 300.0])
    impulse = np.full((4, 2), 100.0)  # 400 N each, 1 s
    out, sensed = _cycle(y0, impulse, u, r_tc, isp)
    coast, _ = _cycle(y0, np.zeros((4, 2)), u, r_tc, isp)
    assert out[plant.W + 2] == pytest.approx(2 * 400.0 * d * 1.0 / 2.00e8, rel=1e-12)
    assert abs(out[plant.W]) < 1e-15 and abs(out[plant.W + 1]) < 1e-15
    np.testing.assert_allclose(out[plant.V : plant.V + 3], coast[plant.V : plant.V + 3], atol=1e-7)
    np.testing.assert_allclose(sensed, 0.0, atol=1e-15)


def test_torque_free_tumble_conserves_momentum_and_energy_in_orbit():
    """Schaub & Junkins sec. 4.4: with no external torque the inertial angular momentum and the
    rotational kinetic energy are integrals; checked to 1e-9 relative over 600 s (RK4, 0.1 s)."""
    inertia = np.array(
        [[1.279e8, 3.08e6, 3.15e6], [3.08e6, 1.074e8, 1.38e6], [3.15e6, 1.38e6, 2.004e8]]
    )
    r, v = _orbit_state()
    y = plant.initial_state(
        r, v, np.array([1.0, 0.0, 0.0, 0.0]), np.array([0.01, -0.02, 0.015]), 4.3e5
    )
    dcm = np.empty((3, 3))

    def integrals(state):
        w = state[plant.W : plant.W + 3]
        dcm_from_q(state[plant.Q : plant.Q + 4], dcm)
        return dcm.T @ (inertia @ w), 0.5 * w @ inertia @ w

    h0, t0 = integrals(y)
    empty = np.zeros((10, 0))
    for _ in range(600):
        y, _ = _cycle(y, empty, np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), inertia)
    h1, t1 = integrals(y)
    assert np.linalg.norm(h1 - h0) / np.linalg.norm(h0) < 1e-9
    assert abs(t1 - t0) / t0 < 1e-9


def test_lvlh_hold_is_a_free_motion_for_a_principal_axis_along_the_orbit_normal():
    """A body spinning at orbit rate about a principal axis on the orbit normal stays fixed in
    LVLH on a circular orbit (no gravity gradient, no J2): error < 1e-6 rad over one hour."""
    r, v = _orbit_state()
    dcm_BH = np.eye(3)
    q = np.empty(4)
    lvlh_attitude_q(r, v, dcm_BH, q)
    dcm_BN = np.empty((3, 3))
    dcm_from_q(q, dcm_BN)
    w = np.empty(3)
    lvlh_rate_B(r, v, dcm_BN, w)
    y = plant.initial_state(r, v, q, w, 4.3e5)
    empty = np.zeros((1, 0))
    for _ in range(3600):
        y, _ = _cycle(y, empty, np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0))
    q_ref = np.empty(4)
    lvlh_attitude_q(y[0:3], y[3:6], dcm_BH, q_ref)
    q_ref_conj = q_ref * np.array([1.0, -1.0, -1.0, -1.0])
    q_err = np.empty(4)
    q_mult(y[plant.Q : plant.Q + 4], q_ref_conj, q_err)
    assert q_error_angle(q_err) < 1e-6


def test_bad_shapes_are_a_status_not_an_exception():
    r, v = _orbit_state()
    y0 = plant.initial_state(r, v, np.array([1.0, 0.0, 0.0, 0.0]), np.zeros(3), 4.3e5)
    out = np.empty_like(y0)
    status = plant.plant_cycle(
        y0,
        1.0,
        np.zeros((2, 3)),
        np.zeros((2, 3)),
        np.zeros((3, 3)),
        np.ones(3),
        np.zeros(3),
        I_DIAG,
        np.linalg.inv(I_DIAG),
        0.0,
        0.0,
        0.0,
        TABLE[0],
        TABLE[1],
        out,
        np.zeros(6),
    )
    assert status == plant.STATUS_BAD_SHAPE
