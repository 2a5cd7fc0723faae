"""Rigid-body rotation of the stack: Euler parameters, kinematics, Euler's equations, gravity
gradient torque.

Conventions (docs/architecture.md):

* ``q_BN = [q0, q1, q2, q3]`` are Euler parameters, scalar first (Schaub & Junkins, *Analytical
  Mechanics of Space Systems*, 4th ed., sec. 3.5). ``dcm_BN = dcm_from_q(q_BN)`` maps N components
  to B components: ``x_B = dcm_BN @ x_N``. The principal rotation of angle ``phi`` about the unit
  axis ``e`` is ``q = [cos(phi/2), e sin(phi/2)]``.
* Composition: ``q_mult(a, b, out)`` returns the Euler parameters of ``dcm(a) @ dcm(b)``. So
  ``q_CN = q_mult(q_CB, q_BN)`` — the same order as ``dcm_CN = dcm_CB @ dcm_BN`` (S&J sec. 3.5,
  successive rotations, with ``beta'' = q_CB`` as the left factor). In Hamilton-product terms
  this is ``b (x) a``.
* Kinematics ``dq/dt = 0.5 B(q) omega_BN_B`` (S&J sec. 3.5).
* Euler's equations ``I wdot = -w x (I w) + L`` with the full (non-diagonal) body inertia about
  the centre of mass, in B components.

All functions are numba kernels (``thruster_hil.core.jit.kernel``): pure, on floats and float64
arrays, outputs preallocated by the caller, no exceptions (integer status codes instead),
deterministic.
"""

import math

import numpy as np

from thruster_hil.core.frames import (  # noqa: F401  (re-exported: the attitude API)
    STATUS_DEGENERATE,
    STATUS_OK,
    dcm_from_q,
    dcm_from_ypr,
    q_conj,
    q_error_angle,
    q_from_axis_angle,
    q_from_dcm,
    q_mult,
    q_normalize,
    rotate_by_q,
)
from thruster_hil.core.frames import dcm_HN as _dcm_HN
from thruster_hil.core.jit import inline_kernel, kernel
from thruster_hil.core.layout import Layout

# Status codes returned by kernels (OK and DEGENERATE are the frames' own).
STATUS_BAD_WORK = 2  # scratch array too small

# The 1-D float64 scratch array ``work`` that ``rk4_attitude_step`` needs (ATTITUDE_WORK_LEN).
ATTITUDE_WORK = Layout(
    "attitude RK4 work",
    [
        ("_KQ", 4 * 4),  # 4 stages x 4 quaternion derivatives
        ("_KW", 4 * 3),  # 4 stages x 3 rate derivatives
        ("_QT", 4),  # stage quaternion
        ("_WT", 3),  # stage rate
    ],
)
_KQ, _KW, _QT, _WT = ATTITUDE_WORK.offsets
ATTITUDE_WORK_LEN = ATTITUDE_WORK.length


# --------------------------------------------------------------------------------------------
# Euler parameters and direction cosine matrices
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# Kinematics and dynamics
# --------------------------------------------------------------------------------------------


@kernel
def q_dot(q, omega_BN_B, out):
    """Euler-parameter kinematics ``dq/dt = 0.5 B(q) omega_BN_B`` (S&J sec. 3.5) into ``out``."""
    q0 = q[0]
    q1 = q[1]
    q2 = q[2]
    q3 = q[3]
    w1 = omega_BN_B[0]
    w2 = omega_BN_B[1]
    w3 = omega_BN_B[2]
    out[0] = 0.5 * (-q1 * w1 - q2 * w2 - q3 * w3)
    out[1] = 0.5 * (q0 * w1 - q3 * w2 + q2 * w3)
    out[2] = 0.5 * (q3 * w1 + q0 * w2 - q1 * w3)
    out[3] = 0.5 * (-q2 * w1 + q1 * w2 + q0 * w3)


@kernel
def omega_dot(I_B, I_inv_B, omega_BN_B, torque_B, out):
    """Euler's equations ``I wdot = -w x (I w) + L`` (S&J ch. 4), full inertia, into ``out`` (3).

    ``I_B`` [kg m^2] about the centre of mass in B, ``I_inv_B`` its inverse, ``torque_B`` [N m].
    """
    w1 = omega_BN_B[0]
    w2 = omega_BN_B[1]
    w3 = omega_BN_B[2]
    h1 = I_B[0, 0] * w1 + I_B[0, 1] * w2 + I_B[0, 2] * w3
    h2 = I_B[1, 0] * w1 + I_B[1, 1] * w2 + I_B[1, 2] * w3
    h3 = I_B[2, 0] * w1 + I_B[2, 1] * w2 + I_B[2, 2] * w3
    g1 = torque_B[0] - (w2 * h3 - w3 * h2)
    g2 = torque_B[1] - (w3 * h1 - w1 * h3)
    g3 = torque_B[2] - (w1 * h2 - w2 * h1)
    out[0] = I_inv_B[0, 0] * g1 + I_inv_B[0, 1] * g2 + I_inv_B[0, 2] * g3
    out[1] = I_inv_B[1, 0] * g1 + I_inv_B[1, 1] * g2 + I_inv_B[1, 2] * g3
    out[2] = I_inv_B[2, 0] * g1 + I_inv_B[2, 1] * g2 + I_inv_B[2, 2] * g3


@inline_kernel
def _gg_from_r_B(rx, ry, rz, I_B, mu):
    """Gravity-gradient torque (3 floats) for the position ``r_B`` in body components."""
    r2 = rx * rx + ry * ry + rz * rz
    if not (r2 > 0.0) or not math.isfinite(r2):
        return 0.0, 0.0, 0.0
    k = 3.0 * mu / (r2 * r2 * math.sqrt(r2))
    ix = I_B[0, 0] * rx + I_B[0, 1] * ry + I_B[0, 2] * rz
    iy = I_B[1, 0] * rx + I_B[1, 1] * ry + I_B[1, 2] * rz
    iz = I_B[2, 0] * rx + I_B[2, 1] * ry + I_B[2, 2] * rz
    return k * (ry * iz - rz * iy), k * (rz * ix - rx * iz), k * (rx * iy - ry * ix)


@kernel
def gravity_gradient_torque_B(r_BN_N, dcm_BN, I_B, mu, out):
    """Gravity-gradient torque [N m] in B: ``L = 3 mu/|r|^5 (r_B x (I r_B))``, ``r_B = dcm_BN r_N``.

    Schaub & Junkins ch. 4, "Gravity Gradient Torques" (eq. 4.33 as numbered in the project brief;
    numbering differs between editions); the same first-order expansion of gravity over the body
    is derived in Wie, *Space Vehicle Dynamics and Control* (gravity-gradient torque chapter).
    ``r_BN_N`` is the centre-of-mass position [m] from Earth's centre, ``mu`` [m^3/s^2].
    Returns STATUS_OK, or STATUS_DEGENERATE (zero torque) if r is zero or not finite.
    """
    rx = dcm_BN[0, 0] * r_BN_N[0] + dcm_BN[0, 1] * r_BN_N[1] + dcm_BN[0, 2] * r_BN_N[2]
    ry = dcm_BN[1, 0] * r_BN_N[0] + dcm_BN[1, 1] * r_BN_N[1] + dcm_BN[1, 2] * r_BN_N[2]
    rz = dcm_BN[2, 0] * r_BN_N[0] + dcm_BN[2, 1] * r_BN_N[1] + dcm_BN[2, 2] * r_BN_N[2]
    r2 = rx * rx + ry * ry + rz * rz
    lx, ly, lz = _gg_from_r_B(rx, ry, rz, I_B, mu)
    out[0] = lx
    out[1] = ly
    out[2] = lz
    if not (r2 > 0.0) or not math.isfinite(r2):
        return STATUS_DEGENERATE
    return STATUS_OK


@kernel
def _rotate_N_to_B(q, vx, vy, vz):
    """``dcm(q) v / |q|^2`` as 3 floats (exact rotation even for a slightly non-unit stage q)."""
    return rotate_by_q(q[0], q[1], q[2], q[3], vx, vy, vz)


@kernel
def attitude_derivs(q, omega_BN_B, I_B, I_inv_B, torque_B, dq_out, dw_out):
    """Attitude state derivative for a given total external torque ``torque_B`` [N m].

    ``dq_out`` (4) = dq/dt, ``dw_out`` (3) = d omega_BN_B/dt. For a combined orbit+attitude RK4
    that evaluates the torque itself at each stage.
    """
    q_dot(q, omega_BN_B, dq_out)
    omega_dot(I_B, I_inv_B, omega_BN_B, torque_B, dw_out)


@kernel
def attitude_derivs_gg(q, omega_BN_B, I_B, I_inv_B, torque_B, r_BN_N, mu, gg_on, dq_out, dw_out):
    """Attitude state derivative with ``torque_B`` plus (if ``gg_on``) the gravity-gradient torque.

    The gravity-gradient torque is evaluated at this stage's attitude ``q`` and position
    ``r_BN_N`` [m], so a combined orbit+attitude RK4 passes each stage's position. No allocation.
    """
    lx = torque_B[0]
    ly = torque_B[1]
    lz = torque_B[2]
    if gg_on:
        rx, ry, rz = _rotate_N_to_B(q, r_BN_N[0], r_BN_N[1], r_BN_N[2])
        gx, gy, gz = _gg_from_r_B(rx, ry, rz, I_B, mu)
        lx += gx
        ly += gy
        lz += gz
    q_dot(q, omega_BN_B, dq_out)
    w1 = omega_BN_B[0]
    w2 = omega_BN_B[1]
    w3 = omega_BN_B[2]
    h1 = I_B[0, 0] * w1 + I_B[0, 1] * w2 + I_B[0, 2] * w3
    h2 = I_B[1, 0] * w1 + I_B[1, 1] * w2 + I_B[1, 2] * w3
    h3 = I_B[2, 0] * w1 + I_B[2, 1] * w2 + I_B[2, 2] * w3
    g1 = lx - (w2 * h3 - w3 * h2)
    g2 = ly - (w3 * h1 - w1 * h3)
    g3 = lz - (w1 * h2 - w2 * h1)
    dw_out[0] = I_inv_B[0, 0] * g1 + I_inv_B[0, 1] * g2 + I_inv_B[0, 2] * g3
    dw_out[1] = I_inv_B[1, 0] * g1 + I_inv_B[1, 1] * g2 + I_inv_B[1, 2] * g3
    dw_out[2] = I_inv_B[2, 0] * g1 + I_inv_B[2, 1] * g2 + I_inv_B[2, 2] * g3


@kernel
def rk4_attitude_step(
    q, omega, I_B, I_inv_B, torque_B, r_BN_N, mu, gg_on, h_s, work, out_q, out_omega
):
    """One classical RK4 step of length ``h_s`` [s] of kinematics + Euler's equations.

    ``q`` = q_BN (4), ``omega`` = omega_BN_B [rad/s] (3). ``torque_B`` [N m] is held constant over
    the step; ``r_BN_N`` [m] is held constant for the gravity-gradient torque (added when
    ``gg_on``), which is re-evaluated at each stage's attitude. ``work`` is a float64 scratch
    array of length >= ATTITUDE_WORK_LEN. ``out_q`` is renormalised; ``out_q``/``out_omega`` may
    alias ``q``/``omega``.

    Returns STATUS_OK; STATUS_BAD_WORK if ``work`` is too short (outputs = inputs); or
    STATUS_DEGENERATE if the new q has zero / non-finite norm (``out_q`` = identity).
    """
    if work.shape[0] < ATTITUDE_WORK_LEN:
        for i in range(4):
            out_q[i] = q[i]
        for i in range(3):
            out_omega[i] = omega[i]
        return STATUS_BAD_WORK
    qt = work[_QT : _QT + 4]
    wt = work[_WT : _WT + 3]
    for s in range(4):
        kq = work[_KQ + 4 * s : _KQ + 4 * s + 4]
        kw = work[_KW + 3 * s : _KW + 3 * s + 3]
        if s == 0:
            attitude_derivs_gg(q, omega, I_B, I_inv_B, torque_B, r_BN_N, mu, gg_on, kq, kw)
        else:
            c = 0.5 * h_s if s < 3 else h_s
            pq = work[_KQ + 4 * (s - 1) : _KQ + 4 * s]
            pw = work[_KW + 3 * (s - 1) : _KW + 3 * s]
            for i in range(4):
                qt[i] = q[i] + c * pq[i]
            for i in range(3):
                wt[i] = omega[i] + c * pw[i]
            attitude_derivs_gg(qt, wt, I_B, I_inv_B, torque_B, r_BN_N, mu, gg_on, kq, kw)
    h6 = h_s / 6.0
    for i in range(4):
        out_q[i] = q[i] + h6 * (
            work[_KQ + i] + 2.0 * work[_KQ + 4 + i] + 2.0 * work[_KQ + 8 + i] + work[_KQ + 12 + i]
        )
    for i in range(3):
        out_omega[i] = omega[i] + h6 * (
            work[_KW + i] + 2.0 * work[_KW + 3 + i] + 2.0 * work[_KW + 6 + i] + work[_KW + 9 + i]
        )
    return q_normalize(out_q)


# --------------------------------------------------------------------------------------------
# LVLH-referenced attitude
# --------------------------------------------------------------------------------------------


@kernel
def lvlh_attitude_q(r_BN_N, v_BN_N, dcm_BH, out_q_BN):
    """``q_BN`` that holds the fixed attitude ``dcm_BH`` relative to LVLH (H) at state (r, v).

    ``dcm_BN = dcm_BH @ dcm_HN(r, v)`` with ``dcm_HN`` from ``thruster_hil.sims.orbit`` (z_H nadir,
    y_H = -h/|h|, x_H = y_H x z_H). Allocates two 3x3 temporaries. Returns the status of
    ``q_from_dcm``.
    """
    hn = np.empty((3, 3))
    _dcm_HN(r_BN_N, v_BN_N, hn)
    bn = np.empty((3, 3))
    for i in range(3):
        for j in range(3):
            bn[i, j] = dcm_BH[i, 0] * hn[0, j] + dcm_BH[i, 1] * hn[1, j] + dcm_BH[i, 2] * hn[2, j]
    return q_from_dcm(bn, out_q_BN)


@kernel
def lvlh_rate_B(r_BN_N, v_BN_N, dcm_BN, out):
    """Angular velocity of LVLH relative to N, ``omega_HN``, in B components [rad/s] into ``out``.

    ``omega_HN_N = (r x v)/|r|^2``: the rate of the radial direction, exact for any orbit. It is
    along the orbit normal, i.e. ``[0, -|h|/r^2, 0]`` in H (= ``[0, -n, 0]`` on a circular orbit).
    A component about the radius vector, ``r (a . h_hat)/|h|``, appears only under out-of-plane
    perturbing acceleration (J2, tiny) and is neglected. Holding a fixed attitude relative to
    LVLH means ``omega_BN_B = out``. Returns STATUS_DEGENERATE (zero written) if r = 0.
    """
    r2 = r_BN_N[0] * r_BN_N[0] + r_BN_N[1] * r_BN_N[1] + r_BN_N[2] * r_BN_N[2]
    if not (r2 > 0.0) or not math.isfinite(r2):
        out[0] = 0.0
        out[1] = 0.0
        out[2] = 0.0
        return STATUS_DEGENERATE
    wx = (r_BN_N[1] * v_BN_N[2] - r_BN_N[2] * v_BN_N[1]) / r2
    wy = (r_BN_N[2] * v_BN_N[0] - r_BN_N[0] * v_BN_N[2]) / r2
    wz = (r_BN_N[0] * v_BN_N[1] - r_BN_N[1] * v_BN_N[0]) / r2
    out[0] = dcm_BN[0, 0] * wx + dcm_BN[0, 1] * wy + dcm_BN[0, 2] * wz
    out[1] = dcm_BN[1, 0] * wx + dcm_BN[1, 1] * wy + dcm_BN[1, 2] * wz
    out[2] = dcm_BN[2, 0] * wx + dcm_BN[2, 1] * wy + dcm_BN[2, 2] * wz
    return STATUS_OK
