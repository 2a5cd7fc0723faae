"""controller.step: one control cycle, guidance -> attitude hold -> allocation -> modulation.

A pure numba kernel on preallocated arrays: no allocation, no Python objects, no I/O, no exceptions.
The array layouts are fixed here; :mod:`thruster_hil.controller.build` fills them once from a
validated stack.

Guidance. The burn pushes along the velocity: the wanted force is along x_H (LVLH along-track)
expressed in B. The achieved delta-v is the along-track projection of the accelerometer's
delta-v increments (sensed, not predicted), plus the impulse the valves have been commanded but
not yet delivered (close delay and tail-off running into this cycle, from the pulse model). The
last cycle asks for just the remaining delta-v, so the modulator shortens its pulses and the burn
ends on target, not one cycle late. The burn is complete once the remainder is below one minimum
impulse bit of the largest translation thruster.

Attitude hold. The reference R is the stack's reboost attitude held in LVLH
(``dcm_RN = dcm_BH @ dcm_HN``). A PD law on the error q_BR (vector part, doubled) and on the rate
relative to R, with a rate limit (the proportional term asks for at most ``max_rate``) and a
per-axis torque limit, plus the gyroscopic term ``omega x I omega``. If the attitude error
exceeds the stack's limit the translation force is inhibited (attitude first) until the error is
back below 80 % of the limit.

Allocation and modulation: :mod:`thruster_hil.controller.allocation` turns the wanted wrench
(impulse over the cycle) into per-thruster impulses, gimbal moves and CMG torque at the least
propellant, within the thrusters' roles and each tank's budget above its reserve;
:mod:`thruster_hil.controller.modulation` turns impulses into on-times in whole ticks, reported in
ms (uint16).

Roles. Translation thrusters push. Attitude thrusters give no net push along the velocity (one
"<=" row of the LP: their summed along-track force is at most zero) and cost
``ATTITUDE_COST_FACTOR`` times their propellant, so they fire only where the torque needs them.

Tanks. The controller books the propellant of every impulse it commands (``I / (Isp g0)`` at
the nominal Isp) against the thruster's tank. Each tank's LP row keeps a cycle's draw within
what is left above its reserve (less a guard of two minimum impulse bits per thruster). A tank
with a reserve that would reach it (its budget is gone, or its recent draw rate, projected over
the rest of the burn, would take it there) stops the burn: every valve closed, status
``reserve``, ``ctrl[C_STOP] = 1 + tank``. The reserve is never spent on a reboost.

Gimbals. A gimbaled engine's two angles are a state carried between cycles (``qp[Q_ANGLE]`` at the
gimbal's columns); each cycle the LP moves them by increments bounded by the rate limit and the
angle limit, on columns linearised about the present angles (second-order error: the rate limit per
cycle squared). :func:`thruster_hil.sims.thrusters.gimbal_direction` is the kinematics both the
controller and the plant use.
"""

from __future__ import annotations

import math

from thruster_hil.controller.allocation import LP_OK, LP_WORK_ROWS, allocate_filled
from thruster_hil.controller.modulation import (
    M_LAST_ON,
    M_REMAINDER,
    T_CLOSE_DELAY,
    T_FULL_SPILL,
    T_KG_PER_NS,
    T_MAX_IMPULSE,
    T_OPEN_DELAY,
    T_TANK,
    T_TAU_RISE,
    T_TAU_TAIL,
    T_THRUST,
    T_TRANSLATION,
    modulate_one,
    reset_one,
)
from thruster_hil.controller.views import borrowed

from thruster_hil.core.frames import dcm_entries, lvlh_axes, q_from_dcm
from thruster_hil.core.health import HEALTH_NOMINAL, HEALTH_STUCK_OPEN
from thruster_hil.core.jit import kernel
from thruster_hil.core.layout import Layout
from thruster_hil.core.pulses import gimbal_direction, pulse_impulse

# ---- sensor vector: sens (SENS_LEN) -------------------------------------------------------
SENSORS = Layout(
    "controller sensor vector",
    [
        ("S_R", 3),  # r_BN_N [m]
        ("S_V", 3),  # v_BN_N [m/s]
        ("S_Q", 4),  # q_BN, scalar first
        ("S_W", 3),  # omega_BN_B [rad/s]
        ("S_MASS", 1),  # stack mass estimate [kg]
        ("S_DV", 3),  # accelerometer delta-v over the last cycle, in B [m/s]
    ],
)
S_R, S_V, S_Q, S_W, S_MASS, S_DV = SENSORS.offsets
SENS_LEN = SENSORS.length

# ---- parameters: params (PARAM_LEN) ----------------------------------------------------------
MAX_TANKS = 8
MAX_GIMBALS = 2
#: One gimbaled engine's record in params (G_STRIDE floats from P_GIMBAL + g * G_STRIDE).
GIMBAL_RECORD = Layout(
    "controller gimbal record",
    [
        ("G_THRUSTER", 1),  # thruster index
        ("G_COL", 1),  # first of its two increment columns
        ("G_LIMIT", 1),  # angle limit per axis [rad]
        ("G_RATE", 1),  # rate limit per axis [rad/s]
        ("G_U0", 3),  # undeflected direction in B
        ("G_E1", 3),  # first gimbal axis direction in B
        ("G_E2", 3),  # second
        ("G_R", 3),  # engine position from the CoM in B [m]
    ],
)
G_THRUSTER, G_COL, G_LIMIT, G_RATE, G_U0, G_E1, G_E2, G_R = GIMBAL_RECORD.offsets
G_STRIDE = GIMBAL_RECORD.length
PARAMS = Layout(
    "controller parameters",
    [
        ("P_PERIOD", 1),  # control period [s]
        ("P_TICK", 1),  # unit tick [s]
        ("P_TARGET_DV", 1),  # target along-track delta-v [m/s]
        ("P_KP", 3),  # proportional gains per body axis [N m / rad]
        ("P_KD", 3),  # derivative gains per body axis [N m s / rad]
        ("P_MAX_RATE", 1),  # rate limit [rad/s]
        ("P_TORQUE_LIMIT", 3),  # per-axis torque limit [N m]
        ("P_ATT_LIMIT", 1),  # attitude error limit [rad]
        ("P_DV_TOL", 1),  # burn complete below this remainder [m/s]
        ("P_DCM_BH", 9),  # reboost attitude relative to LVLH (row-major)
        ("P_INERTIA", 9),  # stack inertia about the CoM in B [kg m^2] (row-major)
        ("P_ROW_WEIGHT", 6),  # weights of the residual's rows: 1/F_ref^2, priority/(F_ref 10 m)^2
        ("P_MAX_ITER", 1),  # LP iteration cap
        ("P_ROW_SCALE", 6),  # the LP's wrench rows are divided by these [N s, N m s]
        ("P_ERR_COST", 6),  # LP cost of one unit of scaled error per wrench row
        (
            "P_N_ACT",
            1,
        ),  # actuator columns: thrusters, CMG (+/- per axis), gimbal increments (2 each)
        ("P_N_TANKS", 1),
        ("P_N_GIMBALS", 1),
        ("P_STOP_CYCLES", 1),  # the projected-reserve stop is armed after this many cycles
        ("P_RATE_TAU", 1),  # time constant of each tank's draw-rate filter [s]
        ("P_TANK_ALLOW", MAX_TANKS),  # per tank: propellant above its reserve [kg]
        ("P_TANK_RESERVED", MAX_TANKS),  # per tank: 1.0 when it has a reserve
        ("P_TANK_GUARD", MAX_TANKS),  # per tank: kept back from the budget [kg]
        ("P_GIMBAL", MAX_GIMBALS * G_STRIDE),  # gimbal records (GIMBAL_RECORD each)
        ("P_CMG_BUDGET", 1),  # CMG torque budget per axis [N m] (0: no CMG columns)
    ],
)
(
    P_PERIOD,
    P_TICK,
    P_TARGET_DV,
    P_KP,
    P_KD,
    P_MAX_RATE,
    P_TORQUE_LIMIT,
    P_ATT_LIMIT,
    P_DV_TOL,
    P_DCM_BH,
    P_INERTIA,
    P_ROW_WEIGHT,
    P_MAX_ITER,
    P_ROW_SCALE,
    P_ERR_COST,
    P_N_ACT,
    P_N_TANKS,
    P_N_GIMBALS,
    P_STOP_CYCLES,
    P_RATE_TAU,
    P_TANK_ALLOW,
    P_TANK_RESERVED,
    P_TANK_GUARD,
    P_GIMBAL,
    P_CMG_BUDGET,
) = PARAMS.offsets
PARAM_LEN = PARAMS.length

# ---- controller state, diagnostics and outputs: ctrl (CTRL_LEN) ------------------------------
CTRL = Layout(
    "controller state",
    [
        ("C_DV_ALONG", 1),  # sensed along-track delta-v so far [m/s]
        ("C_COMPLETE", 1),  # 1.0 once the burn is complete
        ("C_INHIBIT", 1),  # 1.0 while translation is inhibited by the attitude limit
        ("C_CYCLE", 1),  # cycles stepped
        ("C_ATT_ERR", 1),  # attitude error this cycle [rad]
        ("C_REMAINING", 1),  # remaining delta-v this cycle (in-flight impulse counted) [m/s]
        ("C_RESIDUAL", 1),  # allocation's relative weighted residual
        ("C_ITER", 1),  # allocation iterations: simplex pivots, dual and primal
        ("C_FORCE", 1),  # along-track force requested [N]
        ("C_INFLIGHT", 1),  # delta-v commanded but not yet delivered [m/s]
        ("C_WANT", 6),  # wanted wrench over the cycle [N s, N m s]
        ("C_ACHIEVED", 6),  # allocated wrench
        ("C_TORQUE", 3),  # torque requested by the attitude law [N m]
        ("C_DCM_BN", 9),  # scratch
        ("C_DCM_RN", 9),  # scratch
        ("C_XH_B", 3),  # along-track unit vector in B
        ("C_DCM_BR", 9),  # scratch
        ("C_QE", 4),  # error quaternion q_BR
        ("C_WREF", 3),  # reference rate omega_RN in B [rad/s]
        ("C_STOP", 1),  # 0, or 1 + the tank whose reserve stopped the burn
        ("C_TANK_USED", MAX_TANKS),  # propellant booked per tank [kg]
        ("C_TANK_RATE", MAX_TANKS),  # filtered draw rate per tank [kg/s]
        # Output, with on_ms: the torque commanded to the station's CMGs in B [N m], as allocated
        # by the last cycle that ran the allocation (held through a cycle that did not).
        ("C_CMG_TORQUE", 3),
    ],
)
(
    C_DV_ALONG,
    C_COMPLETE,
    C_INHIBIT,
    C_CYCLE,
    C_ATT_ERR,
    C_REMAINING,
    C_RESIDUAL,
    C_ITER,
    C_FORCE,
    C_INFLIGHT,
    C_WANT,
    C_ACHIEVED,
    C_TORQUE,
    C_DCM_BN,
    C_DCM_RN,
    C_XH_B,
    C_DCM_BR,
    C_QE,
    C_WREF,
    C_STOP,
    C_TANK_USED,
    C_TANK_RATE,
    C_CMG_TORQUE,
) = CTRL.offsets
CTRL_LEN = CTRL.length

# ---- allocation (qp: QP_ROWS x LP columns; E: LP rows x LP columns; Binv: rows x rows) --------
QP = Layout(
    "controller qp rows",
    [
        ("Q_LB", 1),
        ("Q_UB", 1),
        (
            "Q_X",
            1,
        ),  # the LP solution: duties, CMG fractions, gimbal increments [rad], errors, slacks
        ("Q_COST", 1),  # LP costs (actuator part fixed at build)
        ("Q_B", 1),  # LP right-hand sides
        (
            "Q_ANGLE",
            1,
        ),  # gimbal angles [rad] at the gimbal's two columns (state, applied by the plant)
        ("Q_WORK", LP_WORK_ROWS),  # solver scratch (allocation.LP_WORK)
    ],
)
Q_LB, Q_UB, Q_X, Q_COST, Q_B, Q_ANGLE, Q_WORK = QP.offsets
QP_ROWS = QP.length
INTS = Layout(
    "controller ints rows",
    [
        ("I_STATE", 1),  # LP variable states
        ("I_BASIS", 1),  # basic variable of each LP row
    ],
)
I_STATE, I_BASIS = INTS.offsets
LP_ROWS = Layout(
    "controller LP rows",
    [
        ("ROW_WRENCH", 6),  # force in the reboost attitude's LVLH axes, torque in B (scaled)
        ("ROW_ROLE", 1),  # the attitude thrusters' along-track push <= 0
        ("ROW_TANK", MAX_TANKS),  # one per tank, draw <= budget (as many rows as tanks)
    ],
)
ROW_WRENCH, ROW_ROLE, ROW_TANK = LP_ROWS.offsets

# ---- status word ---------------------------------------------------------------------------
ST_BURNING = 1 << 0
ST_COMPLETE = 1 << 1
ST_SATURATED = 1 << 2  # the wanted wrench was not met because an actuator limit binds
ST_INFEASIBLE = 1 << 3  # it was far from met (residual > 10 %) or the solver failed
ST_ATTITUDE_LIMIT = 1 << 4  # attitude error beyond the limit: translation inhibited
ST_RATE_LIMITED = 1 << 5
ST_TORQUE_LIMITED = 1 << 6
ST_THRUSTER_OUT = 1 << 7  # a thruster is failed or stuck: allocated around it
ST_BAD_INPUT = 1 << 8  # non-finite or impossible sensor input: all valves closed
ST_RESERVE = 1 << 9  # a tank would reach its reserve: burn stopped, all valves closed
STATUS_NAMES = {
    ST_BURNING: "burning",
    ST_COMPLETE: "complete",
    ST_SATURATED: "saturated",
    ST_INFEASIBLE: "infeasible",
    ST_ATTITUDE_LIMIT: "attitude_limit",
    ST_RATE_LIMITED: "rate_limited",
    ST_TORQUE_LIMITED: "torque_limited",
    ST_THRUSTER_OUT: "thruster_out",
    ST_BAD_INPUT: "bad_input",
    ST_RESERVE: "reserve",
}

#: What each status means, in an operator's words: the run summary explains the statuses a burn
#: had with these, and docs/controller.md's status table says the same (a test keeps them equal).
STATUS_MEANINGS = {
    ST_BURNING: "translation commanded this cycle",
    ST_COMPLETE: "target delta-v reached",
    ST_SATURATED: "a thruster or gimbal at its limit: the wanted push and torque not fully met",
    ST_INFEASIBLE: "the wanted push and torque missed by more than 10 %, or the solver failed",
    ST_ATTITUDE_LIMIT: "attitude error beyond the limit: translation inhibited",
    ST_RATE_LIMITED: "the rate demand was limited",
    ST_TORQUE_LIMITED: "a torque axis was clamped",
    ST_THRUSTER_OUT: "a thruster is failed or stuck: allocated around it",
    ST_BAD_INPUT: "non-finite or impossible sensors: every valve closed",
    ST_RESERVE: "a tank would reach its reserve: burn stopped, every valve closed",
}

SATURATION_TOL = 1e-4
INFEASIBLE_TOL = 0.1


def describe_status(status: int) -> list[str]:
    """The names of the bits set in a status word."""
    return [name for bit, name in STATUS_NAMES.items() if status & bit]


@kernel
def _close_all(on_ms, mod):
    for i in range(on_ms.shape[0]):
        on_ms[i] = 0
        reset_one(mod[i])


@kernel
def _wrench_column(E, j, u, r, impulse, scale, bh):
    """E[0:6, j] = impulse [dcm_BH' u; r x u] / scale: a force along u (in B) at r, in the LP's
    scaled rows (forces in the reboost attitude's LVLH axes, torques in B)."""
    tx = r[1] * u[2] - r[2] * u[1]
    ty = r[2] * u[0] - r[0] * u[2]
    tz = r[0] * u[1] - r[1] * u[0]
    for k in range(3):
        E[k, j] = impulse * (bh[k] * u[0] + bh[3 + k] * u[1] + bh[6 + k] * u[2]) / scale[k]
    E[3, j] = impulse * tx / scale[3]
    E[4, j] = impulse * ty / scale[4]
    E[5, j] = impulse * tz / scale[5]


@kernel
def step(sens, params, A, E, Binv, qp, ints, thr, mod, health, ctrl, on_ms):
    """One control cycle. Writes ``on_ms`` (n, uint16) and returns the status word (int).

    sens (SENS_LEN), params (PARAM_LEN), A (6, n_act) the actuators' wrench per unit (thruster
    columns scaled by their full-cycle impulse, then CMG columns, then gimbal columns), E
    (LP rows, LP columns) the LP's matrix (its constant rows, and its error and slack columns
    with their costs and bounds in qp, filled once by the build; wrench rows scaled by
    ``params[P_ROW_SCALE]``), Binv (LP rows, LP rows) scratch, qp (QP_ROWS, LP columns), ints
    (2, LP columns) int64, thr (n, THR_COLS), mod (n, MOD_COLS), health (n) int64, ctrl
    (CTRL_LEN) state and diagnostics, on_ms (n) uint16 out.
    """
    # Views that count no references (controller/views.py): the step slices these arrays
    # dozens of times, and the caller holds them for the whole call.
    sens = borrowed(sens)
    params = borrowed(params)
    A = borrowed(A)
    E = borrowed(E)
    Binv = borrowed(Binv)
    qp = borrowed(qp)
    ints = borrowed(ints)
    thr = borrowed(thr)
    mod = borrowed(mod)
    health = borrowed(health)
    ctrl = borrowed(ctrl)
    on_ms = borrowed(on_ms)
    n = on_ms.shape[0]
    period = params[P_PERIOD]
    tick = params[P_TICK]
    ctrl[C_CYCLE] += 1.0
    # -- inputs: never act on garbage ------------------------------------------------------
    ok = sens[S_MASS] > 0.0
    for k in range(SENS_LEN):
        if not math.isfinite(sens[k]):
            ok = False
    rx, ry, rz = sens[S_R], sens[S_R + 1], sens[S_R + 2]
    vx, vy, vz = sens[S_V], sens[S_V + 1], sens[S_V + 2]
    r2 = rx * rx + ry * ry + rz * rz
    hx, hy, hz = ry * vz - rz * vy, rz * vx - rx * vz, rx * vy - ry * vx
    hn = math.sqrt(hx * hx + hy * hy + hz * hz)
    q0, q1, q2, q3 = sens[S_Q], sens[S_Q + 1], sens[S_Q + 2], sens[S_Q + 3]
    qn = math.sqrt(q0 * q0 + q1 * q1 + q2 * q2 + q3 * q3)
    if not ok or not (r2 > 0.0) or not (hn > 0.0) or not (qn > 0.0):
        _close_all(on_ms, mod)
        return ST_BAD_INPUT
    status = 0
    mass = sens[S_MASS]
    q0, q1, q2, q3 = q0 / qn, q1 / qn, q2 / qn, q3 / qn
    # -- frames ------------------------------------------------------------------------------
    bn = ctrl[C_DCM_BN : C_DCM_BN + 9]
    bn[0], bn[1], bn[2], bn[3], bn[4], bn[5], bn[6], bn[7], bn[8] = dcm_entries(q0, q1, q2, q3)
    xx, xy, xz, yx, yy, yz, zx, zy, zz = lvlh_axes(rx, ry, rz, vx, vy, vz)
    bh = params[P_DCM_BH : P_DCM_BH + 9]
    rn = ctrl[C_DCM_RN : C_DCM_RN + 9]
    for i in range(3):
        rn[3 * i] = bh[3 * i] * xx + bh[3 * i + 1] * yx + bh[3 * i + 2] * zx
        rn[3 * i + 1] = bh[3 * i] * xy + bh[3 * i + 1] * yy + bh[3 * i + 2] * zy
        rn[3 * i + 2] = bh[3 * i] * xz + bh[3 * i + 1] * yz + bh[3 * i + 2] * zz
    xb = ctrl[C_XH_B : C_XH_B + 3]
    for i in range(3):
        xb[i] = bn[3 * i] * xx + bn[3 * i + 1] * xy + bn[3 * i + 2] * xz
    # -- gimbals: the engine's LP columns about its present angles -----------------------------
    scale = params[P_ROW_SCALE : P_ROW_SCALE + 6]
    # The along-track direction in the LP's force axes (the reboost attitude's LVLH axes).
    xh0 = bh[0] * xb[0] + bh[3] * xb[1] + bh[6] * xb[2]
    xh1 = bh[1] * xb[0] + bh[4] * xb[1] + bh[7] * xb[2]
    xh2 = bh[2] * xb[0] + bh[5] * xb[1] + bh[8] * xb[2]
    gw = qp[Q_WORK]
    for g in range(int(params[P_N_GIMBALS])):
        rec = params[P_GIMBAL + g * G_STRIDE : P_GIMBAL + (g + 1) * G_STRIDE]
        i = int(rec[G_THRUSTER])
        col = int(rec[G_COL])
        gimbal_direction(
            rec[G_U0 : G_U0 + 3],
            rec[G_E1 : G_E1 + 3],
            rec[G_E2 : G_E2 + 3],
            qp[Q_ANGLE, col],
            qp[Q_ANGLE, col + 1],
            gw[0:3],
            gw[3:6],
            gw[6:9],
        )
        imp = thr[i, T_MAX_IMPULSE]
        _wrench_column(E, i, gw[0:3], rec[G_R : G_R + 3], imp, scale, bh)
        _wrench_column(E, col, gw[3:6], rec[G_R : G_R + 3], imp, scale, bh)
        _wrench_column(E, col + 1, gw[6:9], rec[G_R : G_R + 3], imp, scale, bh)
    # -- guidance ----------------------------------------------------------------------------
    ctrl[C_DV_ALONG] += sens[S_DV] * xb[0] + sens[S_DV + 1] * xb[1] + sens[S_DV + 2] * xb[2]
    inflight = 0.0
    f_along_max = 0.0
    for i in range(n):
        # along-track impulse at x=1 (a gimbaled engine's at its present angles)
        ax = (E[0, i] * xh0 + E[1, i] * xh1 + E[2, i] * xh2) * scale[0]
        t_prev = mod[i, M_LAST_ON]
        if t_prev > 0.0:
            if t_prev == period:
                # A full-cycle command (a main engine firing on): the build computed its spill
                # once, with this same kernel on these same numbers (thr[i, T_FULL_SPILL]).
                spill = thr[i, T_FULL_SPILL]
            else:
                spill = pulse_impulse(
                    t_prev,
                    period,
                    math.inf,
                    thr[i, T_THRUST],
                    thr[i, T_OPEN_DELAY],
                    thr[i, T_CLOSE_DELAY],
                    thr[i, T_TAU_RISE],
                    thr[i, T_TAU_TAIL],
                )
            inflight += spill * ax / thr[i, T_MAX_IMPULSE]
        if thr[i, T_TRANSLATION] > 0.5 and health[i] == HEALTH_NOMINAL and ax > 0.0:
            f_along_max += ax / period
        if health[i] != HEALTH_NOMINAL:
            status |= ST_THRUSTER_OUT
    inflight /= mass
    remaining = params[P_TARGET_DV] - ctrl[C_DV_ALONG] - inflight
    ctrl[C_INFLIGHT] = inflight
    ctrl[C_REMAINING] = remaining
    if ctrl[C_COMPLETE] < 0.5 and remaining <= params[P_DV_TOL]:
        ctrl[C_COMPLETE] = 1.0
        for i in range(n):
            if thr[i, T_TRANSLATION] > 0.5:
                reset_one(mod[i])
    force = 0.0
    if ctrl[C_COMPLETE] > 0.5:
        status |= ST_COMPLETE
    else:
        status |= ST_BURNING
        force = mass * remaining / period
        if force > f_along_max:
            force = f_along_max
    # -- attitude hold -----------------------------------------------------------------------
    # dcm_BR = dcm_BN dcm_RN^T, error quaternion by Sheppard's method (shortest rotation).
    br = ctrl[C_DCM_BR : C_DCM_BR + 9]
    for i in range(3):
        for j in range(3):
            br[3 * i + j] = (
                bn[3 * i] * rn[3 * j]
                + bn[3 * i + 1] * rn[3 * j + 1]
                + bn[3 * i + 2] * rn[3 * j + 2]
            )
    qe = ctrl[C_QE : C_QE + 4]
    q_from_dcm(br.reshape((3, 3)), qe)
    err = 2.0 * math.atan2(math.sqrt(qe[1] ** 2 + qe[2] ** 2 + qe[3] ** 2), abs(qe[0]))
    ctrl[C_ATT_ERR] = err
    sgn = 1.0 if qe[0] >= 0.0 else -1.0
    ex, ey, ez = 2.0 * sgn * qe[1], 2.0 * sgn * qe[2], 2.0 * sgn * qe[3]
    # omega_RN = omega_HN = h / r^2 (in N), in B:
    wrx, wry, wrz = hx / r2, hy / r2, hz / r2
    w_ref = ctrl[C_WREF : C_WREF + 3]
    for i in range(3):
        w_ref[i] = bn[3 * i] * wrx + bn[3 * i + 1] * wry + bn[3 * i + 2] * wrz
    wx, wy, wz = sens[S_W], sens[S_W + 1], sens[S_W + 2]
    kp = params[P_KP : P_KP + 3]
    kd = params[P_KD : P_KD + 3]
    # The proportional term as a rate demand, limited in norm.
    dx, dy, dz = -kp[0] / kd[0] * ex, -kp[1] / kd[1] * ey, -kp[2] / kd[2] * ez
    dn = math.sqrt(dx * dx + dy * dy + dz * dz)
    max_rate = params[P_MAX_RATE]
    if dn > max_rate:
        s = max_rate / dn
        dx, dy, dz = dx * s, dy * s, dz * s
        status |= ST_RATE_LIMITED
    inertia = params[P_INERTIA : P_INERTIA + 9]
    ix = inertia[0] * wx + inertia[1] * wy + inertia[2] * wz
    iy = inertia[3] * wx + inertia[4] * wy + inertia[5] * wz
    iz = inertia[6] * wx + inertia[7] * wy + inertia[8] * wz
    lx = -kd[0] * (wx - w_ref[0] - dx) + (wy * iz - wz * iy)
    ly = -kd[1] * (wy - w_ref[1] - dy) + (wz * ix - wx * iz)
    lz = -kd[2] * (wz - w_ref[2] - dz) + (wx * iy - wy * ix)
    torque = ctrl[C_TORQUE : C_TORQUE + 3]
    torque[0], torque[1], torque[2] = lx, ly, lz
    lim = params[P_TORQUE_LIMIT : P_TORQUE_LIMIT + 3]
    for k in range(3):
        if torque[k] > lim[k]:
            torque[k] = lim[k]
            status |= ST_TORQUE_LIMITED
        elif torque[k] < -lim[k]:
            torque[k] = -lim[k]
            status |= ST_TORQUE_LIMITED
    limit = params[P_ATT_LIMIT]
    if err > limit:
        ctrl[C_INHIBIT] = 1.0
    elif err < 0.8 * limit:
        ctrl[C_INHIBIT] = 0.0
    if ctrl[C_INHIBIT] > 0.5:
        status |= ST_ATTITUDE_LIMIT
        force = 0.0
    ctrl[C_FORCE] = force
    # -- tanks: stop before a reserve is touched ------------------------------------------------
    n_tanks = int(params[P_N_TANKS])
    # A stuck-open valve draws its tank down whatever the burn does: that tank's budget and
    # stop are suspended (stopping would not save it; the host reports the valve).
    stuck = qp[Q_WORK]
    for t in range(n_tanks):
        stuck[t] = 0.0
    for i in range(n):
        if health[i] == HEALTH_STUCK_OPEN:
            stuck[int(thr[i, T_TANK])] = 1.0
    if ctrl[C_STOP] < 0.5 and ctrl[C_COMPLETE] < 0.5:
        t_left = math.inf
        if f_along_max > 0.0 and remaining > 0.0:
            t_left = mass * remaining / f_along_max
        armed = ctrl[C_CYCLE] > params[P_STOP_CYCLES]
        for t in range(n_tanks):
            if params[P_TANK_RESERVED + t] < 0.5 or stuck[t] > 0.5:
                continue
            left = params[P_TANK_ALLOW + t] - ctrl[C_TANK_USED + t] - params[P_TANK_GUARD + t]
            if left <= 0.0 or (armed and ctrl[C_TANK_RATE + t] * t_left > left):
                ctrl[C_STOP] = 1.0 + t
                break
    if ctrl[C_STOP] > 0.5:
        _close_all(on_ms, mod)
        return (status & ~ST_BURNING) | ST_RESERVE
    # -- allocation --------------------------------------------------------------------------
    want = ctrl[C_WANT : C_WANT + 6]
    for k in range(3):
        want[k] = force * xb[k] * period
        want[3 + k] = torque[k] * period
    n_act = int(params[P_N_ACT])
    n_rows = ROW_TANK + n_tanks
    lb = qp[Q_LB]
    ub = qp[Q_UB]
    x = qp[Q_X]
    b = qp[Q_B]
    b[0] = force * period * xh0 / scale[0]
    b[1] = force * period * xh1 / scale[1]
    b[2] = force * period * xh2 / scale[2]
    for k in range(3, 6):
        b[k] = want[k] / scale[k]
    for i in range(n):
        if health[i] == HEALTH_NOMINAL:
            lb[i] = 0.0
            ub[i] = 1.0
        elif health[i] == HEALTH_STUCK_OPEN:
            lb[i] = 1.0  # firing whatever we say: the others must cancel it
            ub[i] = 1.0
        else:
            lb[i] = 0.0
            ub[i] = 0.0
    # Gimbal increments: within the rate limit and the angle limit, and frozen while the
    # engine does not fire (its columns assume it does).
    for g in range(int(params[P_N_GIMBALS])):
        rec = params[P_GIMBAL + g * G_STRIDE : P_GIMBAL + (g + 1) * G_STRIDE]
        i = int(rec[G_THRUSTER])
        col = int(rec[G_COL])
        step_max = rec[G_RATE] * period
        for a in range(2):
            d = qp[Q_ANGLE, col + a]
            lo = max(-rec[G_LIMIT] - d, -step_max)
            hi = min(rec[G_LIMIT] - d, step_max)
            if force <= 0.0 or health[i] != HEALTH_NOMINAL or not (lo <= hi):
                lo = 0.0
                hi = 0.0
            lb[col + a] = lo
            ub[col + a] = hi
    # Roles: the attitude thrusters' summed along-track push is at most zero.
    b[ROW_ROLE] = 0.0
    for j in range(n_act):
        E[ROW_ROLE, j] = 0.0
    for i in range(n):
        if thr[i, T_TRANSLATION] < 0.5:
            E[ROW_ROLE, i] = E[0, i] * xh0 + E[1, i] * xh1 + E[2, i] * xh2
    # Tanks: this cycle's draw within what is left above the reserve (E's tank rows are fixed).
    for t in range(n_tanks):
        left = params[P_TANK_ALLOW + t] - ctrl[C_TANK_USED + t] - params[P_TANK_GUARD + t]
        b[ROW_TANK + t] = left if left > 0.0 else 0.0
        if stuck[t] > 0.5:  # never binding: the most its thrusters could draw, and more
            for i in range(n):
                b[ROW_TANK + t] += E[ROW_TANK + t, i]
            b[ROW_TANK + t] += 1.0
    # From last cycle's basis when it is still feasible (allocation._warm_basis), straight to
    # the pivots: the basic values it computes are the ones solve_lp would compute again; when
    # it is not, by the dual simplex from it (allocation._dual_simplex: qp's work rows are LP
    # columns long, as it needs). The
    # LP's error and slack columns were filled once, by the build (allocation.fill_lp_columns).
    lp_status, iters = allocate_filled(
        E,
        b,
        qp[Q_COST],
        lb,
        ub,
        n_rows,
        6,
        n_act,
        x,
        ints[I_STATE],
        ints[I_BASIS],
        Binv,
        qp[Q_WORK:],
        int(params[P_MAX_ITER]),
        True,
    )
    # Residual as the weighted, relative wrench error (unscaled rows).
    achieved = ctrl[C_ACHIEVED : C_ACHIEVED + 6]
    row_w = params[P_ROW_WEIGHT : P_ROW_WEIGHT + 6]
    num = 0.0
    den = 0.0
    # Actuator by actuator, so only the working ones are visited; each row still sums its terms
    # in actuator order from 0.0, and an idle actuator adds a zero: no bit changes
    # (allocation.py, "Zero terms").
    for k in range(6):
        achieved[k] = 0.0
    for j in range(n_act):
        xj = x[j]
        if xj != 0.0:
            for k in range(6):
                achieved[k] += E[k, j] * xj
    for k in range(6):
        s = achieved[k] * scale[k]
        achieved[k] = s  # forces in the LP's axes for now
        e = s - b[k] * scale[k]
        num += row_w[k] * e * e
        den += row_w[k] * b[k] * scale[k] * b[k] * scale[k]
    fh0, fh1, fh2 = achieved[0], achieved[1], achieved[2]
    for k in range(3):
        achieved[k] = bh[3 * k] * fh0 + bh[3 * k + 1] * fh1 + bh[3 * k + 2] * fh2
    if den > 0.0:
        resid = math.sqrt(num / den)
    else:
        resid = 0.0 if num == 0.0 else math.inf
    binding = False
    for j in range(n_act):
        if ub[j] > lb[j] and ((x[j] >= ub[j] and ub[j] > 0.0) or (x[j] <= lb[j] and lb[j] < 0.0)):
            binding = True
    ctrl[C_RESIDUAL] = resid
    cmg_budget = params[P_CMG_BUDGET]
    if cmg_budget > 0.0:  # the CMG columns follow the thrusters': + and - per axis
        for k in range(3):
            ctrl[C_CMG_TORQUE + k] = (x[n + 2 * k] - x[n + 2 * k + 1]) * cmg_budget
    ctrl[C_ITER] = iters
    if lp_status != LP_OK or resid > INFEASIBLE_TOL:
        status |= ST_INFEASIBLE
    if binding and resid > SATURATION_TOL:
        status |= ST_SATURATED
    for g in range(int(params[P_N_GIMBALS])):
        col = int(params[P_GIMBAL + g * G_STRIDE + G_COL])
        qp[Q_ANGLE, col] += x[col]
        qp[Q_ANGLE, col + 1] += x[col + 1]
    # -- modulation, and the propellant it books per tank ------------------------------------
    draw = qp[Q_WORK]
    for t in range(n_tanks):
        draw[t] = 0.0
    for i in range(n):
        booked = 0.0
        if health[i] == HEALTH_NOMINAL:
            request = x[i] * thr[i, T_MAX_IMPULSE]
            acc = mod[i, M_REMAINDER] + (request if request > 0.0 else 0.0)
            if acc > 2.0 * thr[i, T_MAX_IMPULSE]:
                acc = 2.0 * thr[i, T_MAX_IMPULSE]
            t_on = modulate_one(request, thr[i], mod[i], period, tick)
            on_ms[i] = int(t_on * 1000.0 + 0.5)
            booked = acc - mod[i, M_REMAINDER]
        else:
            reset_one(mod[i])
            on_ms[i] = 0
            if health[i] == HEALTH_STUCK_OPEN:
                booked = thr[i, T_MAX_IMPULSE]
        draw[int(thr[i, T_TANK])] += booked * thr[i, T_KG_PER_NS]
    gain = period / params[P_RATE_TAU]
    if gain > 1.0:
        gain = 1.0
    for t in range(n_tanks):
        ctrl[C_TANK_USED + t] += draw[t]
        ctrl[C_TANK_RATE + t] += (draw[t] / period - ctrl[C_TANK_RATE + t]) * gain
    return status
