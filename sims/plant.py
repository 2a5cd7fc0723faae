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
from thruster_hil.sims.attitude import attitude_derivs_gg, rotate_by_q
from thruster_hil.sims.orbit import orbit_accel

from thruster_hil.core.constants import G0, MU_EARTH
from thruster_hil.core.jit import kernel
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
#: Scratch of :func:`plant_step` / :func:`plant_cycle` (PLANT_WORK_LEN).
PLANT_WORK = Layout(
    "plant work",
    [
        ("PW_K1", PLANT_STATE_LEN),  # RK4 stage derivatives
        ("PW_K2", PLANT_STATE_LEN),
        ("PW_K3", PLANT_STATE_LEN),
        ("PW_K4", PLANT_STATE_LEN),
        ("PW_YS", PLANT_STATE_LEN),  # RK4 stage state
        ("PW_FORCE", 3),  # thrust force of the sub-step in B [N]
        ("PW_TORQUE", 3),  # torque of the sub-step in B [N m]
        ("PW_Q_MID", 4),  # mid-step attitude for the sensed delta-v in N
    ],
)
PW_K1, PW_K2, PW_K3, PW_K4, PW_YS, PW_FORCE, PW_TORQUE, PW_Q_MID = PLANT_WORK.offsets
PLANT_WORK_LEN = PLANT_WORK.length
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
    m = y[M]
    orbit_accel(
        y[R : R + 3], y[V : V + 3], m, cd_area_m2, j2_on, table_alt_m, table_log_rho, dy[V : V + 3]
    )
    if m > 0.0:
        fx, fy, fz = _rotate_B_to_N(y[Q : Q + 4], force_B[0], force_B[1], force_B[2])
        dy[V] += fx / m
        dy[V + 1] += fy / m
        dy[V + 2] += fz / m
    dy[R] = y[V]
    dy[R + 1] = y[V + 1]
    dy[R + 2] = y[V + 2]
    attitude_derivs_gg(
        y[Q : Q + 4],
        y[W : W + 3],
        I_B,
        I_inv_B,
        torque_B,
        y[R : R + 3],
        MU_EARTH,
        gg_on,
        dy[Q : Q + 4],
        dy[W : W + 3],
    )
    dy[M] = -mdot_kg_s


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
    work,
    out_y,
):
    """One RK4 step of ``h_s`` [s] with force and torque held constant; renormalises q.

    ``work`` holds at least PLANT_WORK_LEN floats; ``out_y`` may alias ``y``.
    """
    n = PLANT_STATE_LEN
    k1 = work[PW_K1 : PW_K1 + n]
    k2 = work[PW_K2 : PW_K2 + n]
    k3 = work[PW_K3 : PW_K3 + n]
    k4 = work[PW_K4 : PW_K4 + n]
    ys = work[PW_YS : PW_YS + n]
    plant_derivs(
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
        k1,
    )
    for i in range(n):
        ys[i] = y[i] + 0.5 * h_s * k1[i]
    plant_derivs(
        ys,
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
        k2,
    )
    for i in range(n):
        ys[i] = y[i] + 0.5 * h_s * k2[i]
    plant_derivs(
        ys,
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
        k3,
    )
    for i in range(n):
        ys[i] = y[i] + h_s * k3[i]
    plant_derivs(
        ys,
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
        k4,
    )
    h6 = h_s / 6.0
    for i in range(n):
        out_y[i] = y[i] + h6 * (k1[i] + 2.0 * k2[i] + 2.0 * k3[i] + k4[i])
    qn = math.sqrt(out_y[Q] ** 2 + out_y[Q + 1] ** 2 + out_y[Q + 2] ** 2 + out_y[Q + 3] ** 2)
    if not (qn > 0.0) or not math.isfinite(qn):
        return STATUS_NONFINITE
    for i in range(4):
        out_y[Q + i] /= qn
    return STATUS_OK


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
    work,
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
        or work.shape[0] < PLANT_WORK_LEN
        or not period_s > 0.0
    ):
        return STATUS_BAD_SHAPE
    h = period_s / n_sub
    force_B = work[PW_FORCE : PW_FORCE + 3]
    torque_B = work[PW_TORQUE : PW_TORQUE + 3]
    q_mid = work[PW_Q_MID : PW_Q_MID + 4]
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
            f = impulse_Ns[k, j] / h
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
        force_B[0] = fx
        force_B[1] = fy
        force_B[2] = fz
        torque_B[0] = tx
        torque_B[1] = ty
        torque_B[2] = tz
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
        status = plant_step(
            out_y,
            h,
            force_B,
            torque_B,
            mdot,
            I_B,
            I_inv_B,
            cd_area_m2,
            j2_on,
            gg_on,
            table_alt_m,
            table_log_rho,
            work,
            out_y,
        )
        if status != STATUS_OK:
            return status
        if fx != 0.0 or fy != 0.0 or fz != 0.0:
            # Mid-step attitude: the normalised mean of the start and end quaternions.
            q_mid[0] = 0.5 * (q0x + out_y[Q])
            q_mid[1] = 0.5 * (q0y + out_y[Q + 1])
            q_mid[2] = 0.5 * (q0z + out_y[Q + 2])
            q_mid[3] = 0.5 * (q0w + out_y[Q + 3])
            nx, ny, nz = _rotate_B_to_N(q_mid, fx, fy, fz)
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
