"""Mass properties and thruster geometry of a station + docked vehicle stack.

Plain numpy, evaluated once at the application edge (by ``thruster_hil.config``), never inside a
kernel. Frames follow docs/architecture.md:

* B -- stack body frame = ISS analysis frame (x forward, y starboard, z nadir, origin S0 centre).
* P -- docking-port frame: origin at the interface centre, +x_P outward normal, y_P from the
  station file, z_P = x_P x y_P.
* V -- vehicle frame: origin at the vehicle's interface centre, +x_V into the vehicle. Docked, V
  coincides with P rotated about x_P by the clock angle.
* H -- LVLH: x along-track, y = -orbit normal, z nadir.

DCM convention: ``dcm_AB`` maps B components to A components (``x_A = dcm_AB @ x_B``); its rows
are A's axes written in B.

Inertia matrices are the positive-definite tensor ``I = sum m (|r|^2 E - r r^T)`` (products of
inertia enter with a minus sign), about the stated point, in the stated frame.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "clock_dcm",
    "combine",
    "dcm_BH_from_ypr",
    "dcm_PB_from_axes",
    "direction_in_body",
    "dcm_BV",
    "gimbal_trim",
    "rotate_inertia",
    "vehicle_in_body",
]


def dcm_PB_from_axes(x_axis_B, y_axis_B) -> np.ndarray:
    """DCM from B to P given the port's x and y axes written in B.

    Rows are the P axes in B: ``[x_P; y_P; z_P]`` with ``z_P = x_P x y_P``. The axes must already
    be orthonormal (the config loader checks that); nothing is normalised here.
    """
    x = np.asarray(x_axis_B, dtype=np.float64)
    y = np.asarray(y_axis_B, dtype=np.float64)
    return np.vstack((x, y, np.cross(x, y)))


def clock_dcm(angle_rad: float) -> np.ndarray:
    """DCM from P to V for a vehicle clocked by ``angle_rad`` about x_P (= x_V).

    A positive clock angle turns the vehicle right-handedly about x_P, so ``y_V`` lies at +angle
    from ``y_P`` towards ``z_P``: ``x_V = clock_dcm(a) @ x_P`` (components), i.e. the classic
    frame rotation R1(a).
    """
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, s], [0.0, -s, c]])


def dcm_BV(dcm_PB: np.ndarray, clock_rad: float) -> np.ndarray:
    """DCM mapping V components to B components: ``dcm_BV = (clock_dcm @ dcm_PB).T``."""
    dcm_VB = clock_dcm(clock_rad) @ np.asarray(dcm_PB, dtype=np.float64)
    return dcm_VB.T


def vehicle_in_body(r_PB_B, dcm_PB, clock_rad: float, r_XV_V) -> np.ndarray:
    """Position in B of a point X given in V: ``r_XB_B = r_PB_B + dcm_BV @ r_XV_V``.

    ``r_PB_B`` is the port origin (interface centre) relative to the B origin, in B. V's origin
    coincides with P's. Works on one point (3,) or many (n, 3).
    """
    r_XV_V = np.asarray(r_XV_V, dtype=np.float64)
    R = dcm_BV(dcm_PB, clock_rad)
    return np.asarray(r_PB_B, dtype=np.float64) + r_XV_V @ R.T


def direction_in_body(dcm_PB, clock_rad: float, u_V) -> np.ndarray:
    """A free vector (direction, force) from V to B components: ``u_B = dcm_BV @ u_V``."""
    u_V = np.asarray(u_V, dtype=np.float64)
    return u_V @ dcm_BV(dcm_PB, clock_rad).T


def rotate_inertia(I_V, dcm_BV_: np.ndarray) -> np.ndarray:
    """Inertia about the same point re-expressed in B: ``dcm_BV @ I_V @ dcm_BV.T``."""
    R = np.asarray(dcm_BV_, dtype=np.float64)
    return R @ np.asarray(I_V, dtype=np.float64) @ R.T


def _parallel_axis(m: float, d) -> np.ndarray:
    d = np.asarray(d, dtype=np.float64)
    return m * (float(d @ d) * np.eye(3) - np.outer(d, d))


def combine(m_1: float, r_C1_B, I_1_B, m_2: float, r_C2_B, I_2_B):
    """Combine two rigid bodies into one.

    Inputs: each body's mass [kg], CoM in B [m] and inertia about its own CoM in B [kg m^2].
    Returns ``(m, r_C_B, I_C_B)``: total mass, combined CoM in B, and the inertia about the
    combined CoM by the parallel-axis theorem ``I_C = sum_k I_k + m_k (|d_k|^2 E - d_k d_k^T)``
    with ``d_k = r_Ck - r_C``. The result is symmetrised to remove round-off asymmetry.
    """
    r1 = np.asarray(r_C1_B, dtype=np.float64)
    r2 = np.asarray(r_C2_B, dtype=np.float64)
    m = float(m_1) + float(m_2)
    r_C = (m_1 * r1 + m_2 * r2) / m
    I_C = (
        np.asarray(I_1_B, dtype=np.float64)
        + _parallel_axis(m_1, r1 - r_C)
        + np.asarray(I_2_B, dtype=np.float64)
        + _parallel_axis(m_2, r2 - r_C)
    )
    return m, r_C, 0.5 * (I_C + I_C.T)


def dcm_BH_from_ypr(yaw_rad: float, pitch_rad: float, roll_rad: float) -> np.ndarray:
    """DCM from H (LVLH) to B for a 3-2-1 (yaw about z, pitch about y, roll about x) sequence.

    ``dcm_BH = R1(roll) @ R2(pitch) @ R3(yaw)``, with ``R_i`` the frame rotations, written out
    (Schaub & Junkins, 4th ed., eq. 3.33 pattern). ``x_B = dcm_BH @ x_H``.
    """
    c1, s1 = np.cos(yaw_rad), np.sin(yaw_rad)
    c2, s2 = np.cos(pitch_rad), np.sin(pitch_rad)
    c3, s3 = np.cos(roll_rad), np.sin(roll_rad)
    return np.array(
        [
            [c2 * c1, c2 * s1, -s2],
            [s3 * s2 * c1 - c3 * s1, s3 * s2 * s1 + c3 * c1, s3 * c2],
            [c3 * s2 * c1 + s3 * s1, c3 * s2 * s1 - s3 * c1, c3 * c2],
        ]
    )


def gimbal_trim(u0, e1, e2, r_TC_B, limit_rad: float) -> tuple[float, float]:
    """The gimbal angles [rad] that point an engine at ``r_TC_B`` (from the CoM) through the
    centre of mass, inverting :func:`thruster_hil.sims.thrusters.gimbal_direction`
    (``u = cos d2 (cos d1 u0 + sin d1 e1) + sin d2 e2``) for ``u = -r_TC_B / |r_TC_B|`` (or
    ``+``, whichever is nearer u0), each clipped to +-``limit_rad``. All vectors in one frame."""
    u0 = np.asarray(u0, dtype=np.float64)
    w = -np.asarray(r_TC_B, dtype=np.float64)
    w = w / np.linalg.norm(w)
    if float(w @ u0) < 0.0:
        w = -w
    d2 = float(np.arcsin(np.clip(w @ np.asarray(e2, dtype=np.float64), -1.0, 1.0)))
    d1 = float(np.arctan2(w @ np.asarray(e1, dtype=np.float64), w @ u0))
    lim = float(limit_rad)
    return (min(max(d1, -lim), lim), min(max(d2, -lim), lim))


def gimbaled_direction(u0, e1, e2, d1: float, d2: float) -> np.ndarray:
    """The direction of an engine gimbaled by (d1, d2) [rad], as
    :func:`thruster_hil.sims.thrusters.gimbal_direction` computes it in a kernel."""
    u0, e1, e2 = (np.asarray(v, dtype=np.float64) for v in (u0, e1, e2))
    return np.cos(d2) * (np.cos(d1) * u0 + np.sin(d1) * e1) + np.sin(d2) * e2
