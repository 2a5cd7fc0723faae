"""thruster_hil.core.massprops: parallel-axis theorem, port/clock rotations, combine's algebra."""

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from thruster_hil.core import massprops as mp

ZERO = np.zeros((3, 3))


def test_two_point_masses_symmetric():
    # 2 kg at (+1,0,0) and 2 kg at (-1,0,0): CoM at the origin, d = +-e_x, |d|^2 = 1.
    # Each adds m (|d|^2 E - d d^T) = 2 * diag(0, 1, 1) -> total diag(0, 4, 4).
    m, r, inertia = mp.combine(2.0, [1, 0, 0], ZERO, 2.0, [-1, 0, 0], ZERO)
    assert m == 4.0
    np.testing.assert_allclose(r, [0, 0, 0], atol=1e-15)
    np.testing.assert_allclose(inertia, np.diag([0.0, 4.0, 4.0]), atol=1e-12)


def test_two_point_masses_unequal():
    # 1 kg at the origin, 3 kg at (4,0,0): CoM x = 3*4/4 = 3. d1 = -3 e_x, d2 = +1 e_x.
    # I_yy = I_zz = 1*9 + 3*1 = 12, I_xx = 0.
    m, r, inertia = mp.combine(1.0, [0, 0, 0], ZERO, 3.0, [4, 0, 0], ZERO)
    assert m == 4.0
    np.testing.assert_allclose(r, [3, 0, 0])
    np.testing.assert_allclose(inertia, np.diag([0.0, 12.0, 12.0]), atol=1e-12)


def test_two_point_masses_off_axis_products():
    # 1 kg at (0,0,0), 1 kg at (2,2,0): CoM (1,1,0), d = +-(1,1,0), |d|^2 = 2.
    # Each: 2E - [[1,1,0],[1,1,0],[0,0,0]] = [[1,-1,0],[-1,1,0],[0,0,2]]; sum of both doubles it.
    _, r, inertia = mp.combine(1.0, [0, 0, 0], ZERO, 1.0, [2, 2, 0], ZERO)
    np.testing.assert_allclose(r, [1, 1, 0])
    np.testing.assert_allclose(inertia, [[2, -2, 0], [-2, 2, 0], [0, 0, 4]], atol=1e-12)


def test_rod_from_two_half_rods():
    # Uniform rod, 6 kg, 2 m along x, centred at 0: I = diag(0, m L^2/12, m L^2/12) = diag(0,2,2).
    # Built from two 3 kg, 1 m half-rods centred at x = +-0.5: own I = diag(0, 3*1/12, 3*1/12)
    # = diag(0, 0.25, 0.25); parallel axis 3 * 0.5^2 = 0.75 each -> 1.0 each -> diag(0, 2, 2).
    half = np.diag([0.0, 0.25, 0.25])
    m, r, inertia = mp.combine(3.0, [0.5, 0, 0], half, 3.0, [-0.5, 0, 0], half)
    assert m == 6.0
    np.testing.assert_allclose(r, 0.0, atol=1e-15)
    np.testing.assert_allclose(inertia, np.diag([0.0, 2.0, 2.0]), atol=1e-12)


def test_unity_nadir_port_thruster_by_hand():
    # Unity nadir: x_P = +z_B, y_P = +y_B, so z_P = x_P x y_P = -x_B. Port at (-7, 0, 6.5).
    dcm_PB = mp.dcm_PB_from_axes([0, 0, 1], [0, 1, 0])
    np.testing.assert_allclose(dcm_PB, [[0, 0, 1], [0, 1, 0], [-1, 0, 0]])
    r_PB_B = np.array([-7.0, 0.0, 6.5])
    # BT-4 at (6.4, 0, 0) in V pushing -x_V: 6.4 m along +z_B below the port, force along -z_B.
    np.testing.assert_allclose(mp.vehicle_in_body(r_PB_B, dcm_PB, 0.0, [6.4, 0, 0]), [-7, 0, 12.9])
    np.testing.assert_allclose(mp.direction_in_body(dcm_PB, 0.0, [-1, 0, 0]), [0, 0, -1])
    # A point at V (0, 1, 2): y_V = y_B, z_V = -x_B -> (-7 - 2, 1, 6.5).
    np.testing.assert_allclose(mp.vehicle_in_body(r_PB_B, dcm_PB, 0.0, [0, 1, 2]), [-9, 1, 6.5])
    # Clocked +90 deg about x_P: y_V = z_P = -x_B, z_V = -y_P = -y_B.
    a = math.pi / 2
    np.testing.assert_allclose(
        mp.vehicle_in_body(r_PB_B, dcm_PB, a, [0, 1, 0]), [-8, 0, 6.5], atol=1e-12
    )
    np.testing.assert_allclose(mp.direction_in_body(dcm_PB, a, [0, 0, 1]), [0, -1, 0], atol=1e-12)
    # Many points at once give the same answer as one at a time.
    pts = np.array([[6.4, 0, 0], [0, 1, 2]])
    np.testing.assert_allclose(
        mp.vehicle_in_body(r_PB_B, dcm_PB, 0.0, pts), [[-7, 0, 12.9], [-9, 1, 6.5]]
    )


def test_rotate_inertia_by_hand():
    # Rod along x_V (I = diag(0, 2, 2)) at Unity nadir: x_V = z_B, so I_B = diag(2, 2, 0).
    R = mp.dcm_BV(mp.dcm_PB_from_axes([0, 0, 1], [0, 1, 0]), 0.0)
    np.testing.assert_allclose(mp.rotate_inertia(np.diag([0.0, 2, 2]), R), np.diag([2.0, 2, 0]))


def test_clock_dcm_is_rotation():
    R = mp.clock_dcm(0.3)
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-15)
    assert math.isclose(np.linalg.det(R), 1.0)


def test_dcm_BH_by_hand():
    # Yaw 180: x_H (along-track) = -x_B.
    np.testing.assert_allclose(mp.dcm_BH_from_ypr(math.pi, 0, 0)[:, 0], [-1, 0, 0], atol=1e-15)
    # Pitch -90: x_H = -z_B, and x_B = +z_H (nadir).
    d = mp.dcm_BH_from_ypr(0, -math.pi / 2, 0)
    np.testing.assert_allclose(d[:, 0], [0, 0, -1], atol=1e-15)
    np.testing.assert_allclose(d[0, :], [0, 0, 1], atol=1e-15)
    # Roll only: R1 pattern.
    c, s = math.cos(0.2), math.sin(0.2)
    np.testing.assert_allclose(mp.dcm_BH_from_ypr(0, 0, 0.2), [[1, 0, 0], [0, c, s], [0, -s, c]])


# ---- property tests ----------------------------------------------------------------------


@st.composite
def bodies(draw):
    m = draw(st.floats(1.0, 1e6))
    r = np.array(draw(st.lists(st.floats(-50, 50), min_size=3, max_size=3)))
    a = draw(st.floats(1.0, 1e6))
    b = draw(st.floats(1.0, 1e6))
    t = draw(st.floats(0.01, 1.0))  # c between |a - b| and a + b: triangle inequality holds
    c = abs(a - b) + t * (a + b - abs(a - b))
    q = np.array(draw(st.lists(st.floats(-1, 1), min_size=4, max_size=4))) + [1e-3, 0, 0, 0]
    q0, q1, q2, q3 = q / np.linalg.norm(q)
    R = np.array(
        [
            [
                q0 * q0 + q1 * q1 - q2 * q2 - q3 * q3,
                2 * (q1 * q2 + q0 * q3),
                2 * (q1 * q3 - q0 * q2),
            ],
            [
                2 * (q1 * q2 - q0 * q3),
                q0 * q0 - q1 * q1 + q2 * q2 - q3 * q3,
                2 * (q2 * q3 + q0 * q1),
            ],
            [
                2 * (q1 * q3 + q0 * q2),
                2 * (q2 * q3 - q0 * q1),
                q0 * q0 - q1 * q1 - q2 * q2 + q3 * q3,
            ],
        ]
    )
    return m, r, mp.rotate_inertia(np.diag([a, b, c]), R)


def _close(x, y):
    x, y = np.asarray(x), np.asarray(y)
    scale = max(float(np.max(np.abs(x))), float(np.max(np.abs(y))), 1.0)
    np.testing.assert_allclose(x, y, rtol=0, atol=1e-9 * scale)


@settings(max_examples=60, deadline=None)
@given(bodies(), bodies())
def test_combine_symmetric_and_spd(b1, b2):
    m12, r12, i12 = mp.combine(*b1, *b2)
    m21, r21, i21 = mp.combine(*b2, *b1)
    assert math.isclose(m12, m21)
    _close(r12, r21)
    _close(i12, i21)
    np.testing.assert_array_equal(i12, i12.T)
    assert np.linalg.eigvalsh(i12)[0] > 0.0


@settings(max_examples=60, deadline=None)
@given(bodies(), bodies(), bodies())
def test_combine_associative(b1, b2, b3):
    left = mp.combine(*mp.combine(*b1, *b2), *b3)
    right = mp.combine(*b1, *mp.combine(*b2, *b3))
    assert math.isclose(left[0], right[0], rel_tol=1e-12)
    _close(left[1], right[1])
    _close(left[2], right[2])
