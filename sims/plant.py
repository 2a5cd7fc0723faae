"""The stack as one rigid body in orbit: translation and rotation integrated together.

State vector (float64, shape (PLANT_STATE_LEN,))::

    y = [r_BN_N (3) [m], v_BN_N (3) [m/s], q_BN (4), omega_BN_B (3) [rad/s], mass_kg]

Forces and torques: two-body + J2 gravity and drag on the centre of mass
(:mod:`thruster_hil.sims.orbit`), gravity-gradient torque (:mod:`thruster_hil.sims.attitude`), and
the thrusters: over each sub-step of a control cycle every thruster delivers the impulse
:func:`thruster_hil.sims.thrusters.cycle_impulses` computed for it, as a constant force along its
body-fixed direction ``u_T_B`` acting at ``r_TC_B`` (so a torque ``r_TC_B x F``), with propellant
flow ``impulse / (Isp g0)``. An external body torque (the station's CMGs, modelled as a torque
source within their budget; their stored momentum is not tracked) is held over the cycle.

The stack's inertia and centre of mass are those of the loaded stack and are held fixed during a
burn (a reboost uses tens to hundreds of kg of 4.3e5 kg, < 0.1 %); only the mass decreases.

Everything is integrated in one classical RK4 per sub-step, so the orbit feels the thrust in the
attitude the stack actually has at each stage, and the attitude feels the gravity gradient at the
position it actually has.

The integrator also accumulates the delta-v an ideal body-fixed accelerometer senses from the
thrusters, in B and in N: that is what a reboost cut-off uses. Drag (~1e-6 m/s^2 at 415 km) is
deliberately not in that sensed value, as flight software subtracts its own drag model.
"""

from __future__ import annotations

import math

import numpy as np
from thruster_hil.sims.attitude import _gg_from_r_B, rotate_by_q
from thruster_hil.sims.orbit import _gravity_drag_xyz

from thruster_hil.core.constants import G0, MU_EARTH
from thruster_hil.core.jit import inline_kernel, kernel
from thruster_hil.core.layout import Layout

#: The plant state y (PLANT_STATE_LEN).
PLANT_STATE = Layout(
    "plant state",
    [
        ("R", 3),  # r_BN_N [m]
        ("V", 3),  # v_BN_N [m/s]
        ("Q", 4),  # q_BN, scalar first
        ("W", 3),  # omega_BN_B [rad/s]
        ("M", 1),  # mass [kg]
    ],
)
R, V, Q, W, M = PLANT_STATE.offsets
PLANT_STATE_LEN = PLANT_STATE.length
#: Sensed delta-v accumulator (SENSED_LEN) [m/s].
SENSED = Layout(
    "sensed delta-v",
    [
        ("SD_B", 3),  # in B
        ("SD_N", 3),  # in N
    ],
)
SD_B, SD_N = SENSED.offsets
SENSED_LEN = SENSED.length

STATUS_OK = 0
STATUS_BAD_SHAPE = 1
STATUS_NONFINITE = 2


@kernel
def _rotate_B_to_N(q, vx, vy, vz):
    """``dcm_BN(q)^T v / |q|^2``: a B-component vector in N components (3 floats)."""
    return rotate_by_q(q[0], -q[1], -q[2], -q[3], vx, vy, vz)


# The plant state travels through the RK4 stages as a tuple of 14 floats (the order of y), not
# through 14-element scratch arrays and their 3- and 4-element views: with the views a control
# cycle spent more time on array bookkeeping than on the physics. The scalar kernels perform the
# same floating-point operations in the same order as the array code they replaced (commit
# 71e0969), so every state is bit for bit what it was (tests/test_speed_golden.py).


@inline_kernel
def _derivs(
    s, fx, fy, fz, tx, ty, tz, mdot_kg_s, I_B, I_inv_B, cd_area_m2, j2_on, gg_on, tab_h, tab_lr
):
    """dy/dt (a 14-tuple) of the plant state tuple ``s`` for a body-fixed force [N] and torque
    [N m] held over the step, and the mass flow [kg/s]."""
    rx, ry, rz, vx, vy, vz, q0, q1, q2, q3, w1, w2, w3, m = s
    ax, ay, az = _gravity_drag_xyz(rx, ry, rz, vx, vy, vz, m, cd_area_m2, j2_on, tab_h, tab_lr)
    if m > 0.0:
        gx, gy, gz = rotate_by_q(q0, -q1, -q2, -q3, fx, fy, fz)  # B -> N
        ax += gx / m
        ay += gy / m
        az += gz / m
    lx = tx
    ly = ty
    lz = tz
    if gg_on:
        bx, by, bz = rotate_by_q(q0, q1, q2, q3, rx, ry, rz)  # N -> B
        gx, gy, gz = _gg_from_r_B(bx, by, bz, I_B, MU_EARTH)
        lx += gx
        ly += gy
        lz += gz
    # Euler-parameter kinematics and Euler's equations (sims/attitude.py q_dot, omega_dot)
    dq0 = 0.5 * (-q1 * w1 - q2 * w2 - q3 * w3)
    dq1 = 0.5 * (q0 * w1 - q3 * w2 + q2 * w3)
    dq2 = 0.5 * (q3 * w1 + q0 * w2 - q1 * w3)
    dq3 = 0.5 * (-q2 * w1 + q1 * w2 + q0 * w3)
    h1 = I_B[0, 0] * w1 + I_B[0, 1] * w2 + I_B[0, 2] * w3
    h2 = I_B[1, 0] * w1 + I_B[1, 1] * w2 + I_B[1, 2] * w3
    h3 = I_B[2, 0] * w1 + I_B[2, 1] * w2 + I_B[2, 2] * w3
    g1 = lx - (w2 * h3 - w3 * h2)
    g2 = ly - (w3 * h1 - w1 * h3)
    g3 = lz - (w1 * h2 - w2 * h1)
    dw1 = I_inv_B[0, 0] * g1 + I_inv_B[0, 1] * g2 + I_inv_B[0, 2] * g3
    dw2 = I_inv_B[1, 0] * g1 + I_inv_B[1, 1] * g2 + I_inv_B[1, 2] * g3
    dw3 = I_inv_B[2, 0] * g1 + I_inv_B[2, 1] * g2 + I_inv_B[2, 2] * g3
    return (vx, vy, vz, ax, ay, az, dq0, dq1, dq2, dq3, dw1, dw2, dw3, -mdot_kg_s)


@inline_kernel
def _stage(y, a, k):
    """The RK4 stage state ``y + a k`` (14-tuples)."""
    return (
        y[0] + a * k[0],
        y[1] + a * k[1],
        y[2] + a * k[2],
        y[3] + a * k[3],
        y[4] + a * k[4],
        y[5] + a * k[5],
        y[6] + a * k[6],
        y[7] + a * k[7],
        y[8] + a * k[8],
        y[9] + a * k[9],
        y[10] + a * k[10],
        y[11] + a * k[11],
        y[12] + a * k[12],
        y[13] + a * k[13],
    )


@inline_kernel
def _combine(y, h6, k1, k2, k3, k4):
    """``y + h/6 (k1 + 2 k2 + 2 k3 + k4)`` (14-tuples)."""
    return (
        y[0] + h6 * (k1[0] + 2.0 * k2[0] + 2.0 * k3[0] + k4[0]),
        y[1] + h6 * (k1[1] + 2.0 * k2[1] + 2.0 * k3[1] + k4[1]),
        y[2] + h6 * (k1[2] + 2.0 * k2[2] + 2.0 * k3[2] + k4[2]),
        y[3] + h6 * (k1[3] + 2.0 * k2[3] + 2.0 * k3[3] + k4[3]),
        y[4] + h6 * (k1[4] + 2.0 * k2[4] + 2.0 * k3[4] + k4[4]),
        y[5] + h6 * (k1[5] + 2.0 * k2[5] + 2.0 * k3[5] + k4[5]),
        y[6] + h6 * (k1[6] + 2.0 * k2[6] + 2.0 * k3[6] + k4[6]),
        y[7] + h6 * (k1[7] + 2.0 * k2[7] + 2.0 * k3[7] + k4[7]),
        y[8] + h6 * (k1[8] + 2.0 * k2[8] + 2.0 * k3[8] + k4[8]),
        y[9] + h6 * (k1[9] + 2.0 * k2[9] + 2.0 * k3[9] + k4[9]),
        y[10] + h6 * (k1[10] + 2.0 * k2[10] + 2.0 * k3[10] + k4[10]),
        y[11] + h6 * (k1[11] + 2.0 * k2[11] + 2.0 * k3[11] + k4[11]),
        y[12] + h6 * (k1[12] + 2.0 * k2[12] + 2.0 * k3[12] + k4[12]),
        y[13] + h6 * (k1[13] + 2.0 * k2[13] + 2.0 * k3[13] + k4[13]),
    )


@inline_kernel
def _load(y):
    return (
        y[0],
        y[1],
        y[2],
        y[3],
        y[4],
        y[5],
        y[6],
        y[7],
        y[8],
        y[9],
        y[10],
        y[11],
        y[12],
        y[13],
    )


@inline_kernel
def _rk4(y, h_s, fx, fy, fz, tx, ty, tz, mdot, I_B, I_inv_B, cd, j2_on, gg_on, tab_h, tab_lr):
    """One RK4 step of the state tuple (force, torque and mass flow held): the new tuple, its
    attitude not yet renormalised."""
    k1 = _derivs(y, fx, fy, fz, tx, ty, tz, mdot, I_B, I_inv_B, cd, j2_on, gg_on, tab_h, tab_lr)
    ys = _stage(y, 0.5 * h_s, k1)
    k2 = _derivs(ys, fx, fy, fz, tx, ty, tz, mdot, I_B, I_inv_B, cd, j2_on, gg_on, tab_h, tab_lr)
    ys = _stage(y, 0.5 * h_s, k2)
    k3 = _derivs(ys, fx, fy, fz, tx, ty, tz, mdot, I_B, I_inv_B, cd, j2_on, gg_on, tab_h, tab_lr)
    ys = _stage(y, h_s, k3)
    k4 = _derivs(ys, fx, fy, fz, tx, ty, tz, mdot, I_B, I_inv_B, cd, j2_on, gg_on, tab_h, tab_lr)
    return _combine(y, h_s / 6.0, k1, k2, k3, k4)


@kernel
def _step_into(
    y, h_s, fx, fy, fz, tx, ty, tz, mdot, I_B, I_inv_B, cd, j2_on, gg_on, tab_h, tab_lr, out_y
):
    """RK4 from ``y`` (array) into ``out_y`` (may alias) and renormalise q; the status."""
    o = _rk4(
        _load(y), h_s, fx, fy, fz, tx, ty, tz, mdot, I_B, I_inv_B, cd, j2_on, gg_on, tab_h, tab_lr
    )
    for i in range(PLANT_STATE_LEN):
        out_y[i] = o[i]
    qn = math.sqrt(out_y[Q] ** 2 + out_y[Q + 1] ** 2 + out_y[Q + 2] ** 2 + out_y[Q + 3] ** 2)
    if not (qn > 0.0) or not math.isfinite(qn):
        return STATUS_NONFINITE
    for i in range(4):
        out_y[Q + i] /= qn
    return STATUS_OK


@kernel
def plant_derivs(
    y,
    force_B,
    torque_B,
    mdot_kg_s,
    I_B,
    I_inv_B,
    cd_area_m2,
    j2_on,
    gg_on,
    table_alt_m,
    table_log_rho,
    dy,
):
    """dy/dt of the plant state for a body-fixed force [N] and torque [N m] (no allocation)."""
    d = _derivs(
        _load(y),
        force_B[0],
        force_B[1],
        force_B[2],
        torque_B[0],
        torque_B[1],
        torque_B[2],
        mdot_kg_s,
        I_B,
        I_inv_B,
        cd_area_m2,
        j2_on,
        gg_on,
        table_alt_m,
        table_log_rho,
    )
    for i in range(PLANT_STATE_LEN):
        dy[i] = d[i]


@kernel
def plant_step(
    y,
    h_s,
    force_B,
    torque_B,
    mdot_kg_s,
    I_B,
    I_inv_B,
    cd_area_m2,
    j2_on,
    gg_on,
    table_alt_m,
    table_log_rho,
    out_y,
):
    """One RK4 step of ``h_s`` [s] with force and torque held constant; renormalises q.
    ``out_y`` may alias ``y``."""
    return _step_into(
        y,
        h_s,
        force_B[0],
        force_B[1],
        force_B[2],
        torque_B[0],
        torque_B[1],
        torque_B[2],
        mdot_kg_s,
        I_B,
        I_inv_B,
        cd_area_m2,
        j2_on,
        gg_on,
        table_alt_m,
        table_log_rho,
        out_y,
    )


@kernel
def plant_cycle(
    y,
    period_s,
    impulse_Ns,
    u_T_B,
    r_TC_B,
    isp_s,
    ext_torque_B,
    I_B,
    I_inv_B,
    cd_area_m2,
    j2_on,
    gg_on,
    table_alt_m,
    table_log_rho,
    out_y,
    sensed_dv,
):
    """Advance the plant over one control cycle of ``period_s`` [s].

    impulse_Ns (n_sub, n): impulse [N s] of each thruster in each of n_sub equal sub-steps (from
    :func:`thruster_hil.sims.thrusters.cycle_impulses`); u_T_B (n, 3) unit force directions and
    r_TC_B (n, 3) positions relative to the stack CoM, in B [m]; isp_s (n,) [s]; ext_torque_B (3,)
    [N m]. ``sensed_dv`` (SENSED_LEN,) is *added to*: [dv_B, dv_N] from the thrusters [m/s].
    ``out_y`` may alias ``y``. Returns STATUS_OK, STATUS_BAD_SHAPE or STATUS_NONFINITE.
    """
    n_sub = impulse_Ns.shape[0]
    n = impulse_Ns.shape[1]
    if (
        u_T_B.shape[0] != n
        or r_TC_B.shape[0] != n
        or isp_s.shape[0] != n
        or n_sub < 1
        or not period_s > 0.0
    ):
        return STATUS_BAD_SHAPE
    h = period_s / n_sub
    if out_y is not y:
        for i in range(PLANT_STATE_LEN):
            out_y[i] = y[i]
    status = STATUS_OK
    for k in range(n_sub):
        fx = 0.0
        fy = 0.0
        fz = 0.0
        tx = ext_torque_B[0]
        ty = ext_torque_B[1]
        tz = ext_torque_B[2]
        mdot = 0.0
        for j in range(n):
            # A closed thruster's zero impulse gives f == 0.0 without the division (most
            # thrusters, most sub-steps); a non-zero one is divided as before.
            imp = impulse_Ns[k, j]
            if imp == 0.0:
                continue
            f = imp / h
            if f == 0.0:
                continue
            ux = f * u_T_B[j, 0]
            uy = f * u_T_B[j, 1]
            uz = f * u_T_B[j, 2]
            fx += ux
            fy += uy
            fz += uz
            tx += r_TC_B[j, 1] * uz - r_TC_B[j, 2] * uy
            ty += r_TC_B[j, 2] * ux - r_TC_B[j, 0] * uz
            tz += r_TC_B[j, 0] * uy - r_TC_B[j, 1] * ux
            mdot += f / (isp_s[j] * G0)
        m0 = out_y[M]
        # Sensed delta-v over the sub-step: the thrust impulse over the mid-step mass, along the
        # body axes and (at the mid-step attitude, to second order) in N.
        m_mid = m0 - 0.5 * mdot * h
        if fx != 0.0 or fy != 0.0 or fz != 0.0:
            sensed_dv[SD_B] += fx * h / m_mid
            sensed_dv[SD_B + 1] += fy * h / m_mid
            sensed_dv[SD_B + 2] += fz * h / m_mid
        q0x = out_y[Q]
        q0y = out_y[Q + 1]
        q0z = out_y[Q + 2]
        q0w = out_y[Q + 3]
        status = _step_into(
            out_y,
            h,
            fx,
            fy,
            fz,
            tx,
            ty,
            tz,
            mdot,
            I_B,
            I_inv_B,
            cd_area_m2,
            j2_on,
            gg_on,
            table_alt_m,
            table_log_rho,
            out_y,
        )
        if status != STATUS_OK:
            return status
        if fx != 0.0 or fy != 0.0 or fz != 0.0:
            # Mid-step attitude: the normalised mean of the start and end quaternions.
            qm0 = 0.5 * (q0x + out_y[Q])
            qm1 = 0.5 * (q0y + out_y[Q + 1])
            qm2 = 0.5 * (q0z + out_y[Q + 2])
            qm3 = 0.5 * (q0w + out_y[Q + 3])
            nx, ny, nz = rotate_by_q(qm0, -qm1, -qm2, -qm3, fx, fy, fz)  # B -> N
            sensed_dv[SD_N] += nx * h / m_mid
            sensed_dv[SD_N + 1] += ny * h / m_mid
            sensed_dv[SD_N + 2] += nz * h / m_mid
    for i in range(PLANT_STATE_LEN):
        if not math.isfinite(out_y[i]):
            return STATUS_NONFINITE
    return status


def initial_state(
    r_BN_N: np.ndarray, v_BN_N: np.ndarray, q_BN: np.ndarray, omega_BN_B: np.ndarray, mass_kg: float
) -> np.ndarray:
    """Pack a plant state vector (float64, PLANT_STATE_LEN)."""
    y = np.empty(PLANT_STATE_LEN)
    y[R : R + 3] = r_BN_N
    y[V : V + 3] = v_BN_N
    y[Q : Q + 4] = q_BN
    y[W : W + 3] = omega_BN_B
    y[M] = mass_kg
    return y
