"""One control cycle as numba kernels, shared by every way of flying a burn.

A cycle is ``sensors -> controller.step -> unit -> valve_cycle -> plant_cycle -> feed_update``.
Two kernels split it where the unit sits, so a serial unit (HIL) can execute in between:

* :func:`pre_unit`: the plant state becomes the sensor vector (with the case's sensor errors,
  if any), then ``controller.step`` computes the on-times;
* :func:`post_unit`: the executed on-times drive the valves, the plant integrates the cycle and
  the tanks update the next cycle's thrust and Isp.

:func:`fly` loops the two with the in-process ideal unit between them entirely in numba (the
software-in-the-loop reference, and one case of a Monte-Carlo batch), and :func:`finish` turns the
end state into the burn's numbers (delta-v, propellant, the mean-element change against a no-burn
twin). ``thruster_hil.closedloop.runner.run_burn`` calls ``pre_unit``/``post_unit`` per cycle for a
serial unit (or when it records every cycle) and ``fly`` otherwise;
``thruster_hil.closedloop.batch`` calls ``fly`` for many cases at once. The same compiled functions
in the same order give the same numbers in every path: a batch case reproduces ``run --unit sim``
bit for bit.

Truth and model. The *plant* arrays (``pthr``, ``geom``, ``pscal``, the initial state) carry
the true stack, which a dispersion case perturbs (thrust, Isp, misalignment, delays, mass,
centre of mass); the *controller* arrays always carry the nominal stack, as flight software
would. Sensor errors sit between the two: white noise on attitude, rate and the accelerometer
from a counter-based generator (:func:`normal`) keyed by the case seed and the cycle, so a case
gives the same noise on any thread, worker or machine, plus a constant accelerometer bias and
the error of the controller's initial mass estimate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from thruster_hil.controller import cycle as cst
from thruster_hil.controller.modulation import T_TRANSLATION
from thruster_hil.controller.views import borrowed
from thruster_hil.core.constants import MU_EARTH, R_EARTH
from thruster_hil.core.frames import dcm_entries
from thruster_hil.core.jit import inline_kernel, kernel
from thruster_hil.core.layout import Layout
from thruster_hil.sims.atmosphere import log_density_slopes
from thruster_hil.sims.orbit import (
    STATUS_BAD_ARGS,
    STATUS_NONFINITE,
    STATUS_OK,
    coast_step,
    coast_step_call,
    coast_step_pair,
    coast_to,
    finite_state,
    lvlh_axes,
)
from thruster_hil.sims.plant import M, Q, R, V, W, plant_cycle
from thruster_hil.sims.thrusters import (
    HEALTH_NOMINAL,
    VS_EDGE_T,
    VS_THRUST,
    feed_update,
    gimbal_direction,
    valve_cycle,
)

#: RK4 sub-steps per control cycle (0.1 s at the 0.5 s control period).
N_SUB = 5
#: Step of the orbit-only propagations that measure the burn's effect [s]: the twin's coast over
#: the burn takes steps of about this, the one-orbit mean-element window steps of exactly
#: (period / round(period / COAST_STEP_S)), so that its samples span one period (docs/montecarlo.md,
#: "The orbit evaluation's step": RK4's error at 4 s is tens of micrometres).
COAST_STEP_S = 4.0

# ---- plant thruster constants: pthr (PT_LEN, n), one row per quantity ------------------------
PLANT_THRUSTERS = Layout(
    "plant thruster rows",
    [
        ("PT_THRUST", 1),  # reference (initial-pressure) steady-state thrust [N]
        ("PT_ISP", 1),  # reference Isp [s]
        ("PT_OPEN_DELAY", 1),  # [s]
        ("PT_CLOSE_DELAY", 1),  # [s]
        ("PT_TAU_RISE", 1),  # [s]
        ("PT_TAU_TAIL", 1),  # [s]
        ("PT_THRUST_EXP", 1),  # thrust ~ (p/p0)^a
        ("PT_ISP_EXP", 1),  # Isp ~ (p/p0)^b
        ("PT_GIMBAL_COL", 1),  # the controller's first gimbal column of a gimbaled engine, -1 fixed
    ],
)
(
    PT_THRUST,
    PT_ISP,
    PT_OPEN_DELAY,
    PT_CLOSE_DELAY,
    PT_TAU_RISE,
    PT_TAU_TAIL,
    PT_THRUST_EXP,
    PT_ISP_EXP,
    PT_GIMBAL_COL,
) = PLANT_THRUSTERS.offsets
PT_LEN = PLANT_THRUSTERS.length
# ---- geometry: geom (G_LEN, n, 3) ---------------------------------------------------------------
GEOMETRY = Layout(
    "plant thruster geometry",
    [
        ("G_U", 1),  # u_T_B: unit force directions (a gimbaled engine's as gimbaled this cycle)
        ("G_R", 1),  # r_TC_B [m] (from the CoM)
        ("G_U0", 1),  # the undeflected directions
        ("G_E1", 1),  # a gimbaled engine's gimbal axes (zeros when fixed)
        ("G_E2", 1),
    ],
)
G_U, G_R, G_U0, G_E1, G_E2 = GEOMETRY.offsets
G_LEN = GEOMETRY.length
# ---- tanks: ptank (TK_LEN, n_tanks) -----------------------------------------------------------
TANKS = Layout(
    "plant tank rows",
    [
        ("TK_LOAD", 1),  # propellant load [kg]
        ("TK_BLOWDOWN", 1),  # 1.0 blowdown, 0.0 regulated
        ("TK_P0", 1),  # initial / regulated pressure [Pa]
        ("TK_GAS_V", 1),  # initial gas volume [m^3]
        ("TK_RHO", 1),  # propellant density [kg/m^3]
        ("TK_POLY", 1),  # polytropic exponent
    ],
)
TK_LOAD, TK_BLOWDOWN, TK_P0, TK_GAS_V, TK_RHO, TK_POLY = TANKS.offsets
TK_LEN = TANKS.length
# ---- plant scalars: pscal (PS_LEN) ------------------------------------------------------------
PLANT_SCALARS = Layout(
    "plant scalars",
    [
        ("PS_PERIOD", 1),  # control period [s]
        ("PS_PERIOD_MS", 1),  # control period [ms] (whole)
        ("PS_CD_AREA", 1),  # drag coefficient x area [m^2]
        ("PS_MASS_EST", 1),  # controller's mass estimate minus the true mass [kg] (0: exact)
        ("PS_NOISE_ATT", 1),  # attitude noise, 1 sigma per axis per cycle [rad]
        ("PS_NOISE_RATE", 1),  # rate noise, 1 sigma per axis per cycle [rad/s]
        ("PS_NOISE_DV", 1),  # accelerometer delta-v noise, 1 sigma per axis per cycle [m/s]
        ("PS_ACC_BIAS", 3),  # accelerometer bias in B [m/s^2]
        ("PS_INERTIA", 9),  # true inertia about the CoM in B [kg m^2]
        ("PS_INERTIA_INV", 9),  # its inverse
    ],
)
(
    PS_PERIOD,
    PS_PERIOD_MS,
    PS_CD_AREA,
    PS_MASS_EST,
    PS_NOISE_ATT,
    PS_NOISE_RATE,
    PS_NOISE_DV,
    PS_ACC_BIAS,
    PS_INERTIA,
    PS_INERTIA_INV,
) = PLANT_SCALARS.offsets
PS_LEN = PLANT_SCALARS.length
# ---- per-case accumulators: acc (ACC_LEN) -----------------------------------------------------
ACCUMULATORS = Layout(
    "case accumulators",
    [
        (
            "A_TRUE_DV",
            1,
        ),  # true along-track delta-v so far (ideal accelerometer, true attitude) [m/s]
        ("A_XB", 3),  # true along-track unit vector in B at the last cycle
    ],
)
A_TRUE_DV, A_XB = ACCUMULATORS.offsets
ACC_LEN = ACCUMULATORS.length
# ---- live plant quantities: live (LV_LEN, n) ----------------------------------------------------
LIVE = Layout(
    "live thruster rows",
    [
        ("LV_THRUST", 1),  # present thrust (follows the feed pressure) [N]
        ("LV_ISP", 1),  # present Isp [s]
        ("LV_ON_S", 1),  # executed on-time this cycle [s]
    ],
)
LV_THRUST, LV_ISP, LV_ON_S = LIVE.offsets
LV_LEN = LIVE.length
#: Scratch of post_unit (GIMBAL_WORK_LEN): the gimbal kernel's two derivative directions, which
#: the plant does not use (3 floats each).
GIMBAL_WORK_LEN = 6
# ---- post_unit flags ----------------------------------------------------------------------------
F_QUIET = 1  # every valve closed, no thrust left, no pending edge
F_PLANT_SHIFT = 1  # plant_cycle status << F_PLANT_SHIFT
# ---- finish() output: the burn's numbers (OUT_LEN) --------------------------------------------
FINISH = Layout(
    "burn numbers",
    [
        ("O_ACHIEVED_DV", 1),  # along-track delta-v the controller sensed, last tail included [m/s]
        ("O_TRUE_DV", 1),  # true along-track delta-v (ideal accelerometer, true attitude) [m/s]
        ("O_PROPELLANT", 1),  # [kg]
        ("O_D_A", 1),  # mean semi-major axis change against the no-burn twin [m]
        ("O_D_PERIGEE", 1),  # [m]
        ("O_D_APOGEE", 1),  # [m]
        ("O_ORBIT_STATUS", 1),  # propagate() status of the orbit-after propagations (0 ok)
    ],
)
(O_ACHIEVED_DV, O_TRUE_DV, O_PROPELLANT, O_D_A, O_D_PERIGEE, O_D_APOGEE, O_ORBIT_STATUS) = (
    FINISH.offsets
)
OUT_LEN = FINISH.length

# Counter-based random numbers: SplitMix64's finaliser (Steele, Lea, Flood 2014) as a hash of
# (seed, counter). Stateless, so noise never depends on which thread ran which case.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S11 = np.uint64(11)
_TWO_M53 = 2.0**-53
#: Noise channels per cycle (counter stride): attitude 3, rate 3, accelerometer 3.
NOISE_STRIDE = 16


@kernel
def mix64(x):
    """SplitMix64 finaliser of a uint64 (a bijection with full avalanche)."""
    z = x + _GOLDEN
    z = (z ^ (z >> _S30)) * _MIX1
    z = (z ^ (z >> _S27)) * _MIX2
    return z ^ (z >> _S31)


@kernel
def uniform(seed, counter):
    """A uniform double in (0, 1) from (seed, counter), both non-negative int64."""
    z = mix64(np.uint64(seed) ^ mix64(np.uint64(counter)))
    return (float(z >> _S11) + 0.5) * _TWO_M53


@kernel
def normal(seed, counter):
    """A standard normal from (seed, counter) by Box-Muller on two counter-derived uniforms."""
    u1 = uniform(seed, 2 * counter)
    u2 = uniform(seed, 2 * counter + 1)
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


@kernel
def fill_uniform(seed, base, out):
    """out[i] = uniform(seed, base + i): the (0, 1) draws of one dispersed parameter."""
    for i in range(out.shape[0]):
        out[i] = uniform(seed, base + i)


@kernel
def fill_normal(seed, base, out):
    """out[i] = normal(seed, base + i): the standard-normal draws of one dispersed parameter."""
    for i in range(out.shape[0]):
        out[i] = normal(seed, base + i)


@kernel
def along_track_B(y, out):
    """The LVLH along-track unit vector in B from the plant state, computed exactly as
    ``controller.step`` computes it from the sensor vector (so with ideal sensors the two agree
    to the bit)."""
    q0, q1, q2, q3 = y[Q], y[Q + 1], y[Q + 2], y[Q + 3]
    qn = math.sqrt(q0 * q0 + q1 * q1 + q2 * q2 + q3 * q3)
    q0, q1, q2, q3 = q0 / qn, q1 / qn, q2 / qn, q3 / qn
    b0, b1, b2, b3, b4, b5, b6, b7, b8 = dcm_entries(q0, q1, q2, q3)
    xx, xy, xz, _yx, _yy, _yz, _zx, _zy, _zz = lvlh_axes(
        y[R], y[R + 1], y[R + 2], y[V], y[V + 1], y[V + 2]
    )
    out[0] = b0 * xx + b1 * xy + b2 * xz
    out[1] = b3 * xx + b4 * xy + b5 * xz
    out[2] = b6 * xx + b7 * xy + b8 * xz


@kernel
def sense(k, seed, y, sensed, pscal, sens):
    """The sensor vector of cycle ``k`` from the plant state ``y`` and the accelerometer's
    delta-v ``sensed`` [dv_B, dv_N]: ideal, plus the case's noise and bias where they are set."""
    for i in range(3):
        sens[cst.S_R + i] = y[R + i]
        sens[cst.S_V + i] = y[V + i]
        sens[cst.S_W + i] = y[W + i]
        sens[cst.S_DV + i] = sensed[i]
    for i in range(4):
        sens[cst.S_Q + i] = y[Q + i]
    sens[cst.S_MASS] = y[M] + pscal[PS_MASS_EST]
    base = k * NOISE_STRIDE
    s_att = pscal[PS_NOISE_ATT]
    if s_att > 0.0:
        # The measured attitude is the true one turned by a small body-frame rotation dtheta:
        # q' = q (x) [1, dtheta/2] (the controller renormalises).
        hx = 0.5 * s_att * normal(seed, base)
        hy = 0.5 * s_att * normal(seed, base + 1)
        hz = 0.5 * s_att * normal(seed, base + 2)
        q0, q1, q2, q3 = y[Q], y[Q + 1], y[Q + 2], y[Q + 3]
        sens[cst.S_Q] = q0 - q1 * hx - q2 * hy - q3 * hz
        sens[cst.S_Q + 1] = q1 + q0 * hx + q2 * hz - q3 * hy
        sens[cst.S_Q + 2] = q2 + q0 * hy + q3 * hx - q1 * hz
        sens[cst.S_Q + 3] = q3 + q0 * hz + q1 * hy - q2 * hx
    s_rate = pscal[PS_NOISE_RATE]
    if s_rate > 0.0:
        for i in range(3):
            sens[cst.S_W + i] += s_rate * normal(seed, base + 3 + i)
    s_dv = pscal[PS_NOISE_DV]
    period = pscal[PS_PERIOD]
    for i in range(3):
        bias = pscal[PS_ACC_BIAS + i]
        if bias != 0.0:
            sens[cst.S_DV + i] += bias * period
        if s_dv > 0.0:
            sens[cst.S_DV + i] += s_dv * normal(seed, base + 6 + i)


@kernel
def pre_unit(
    k,
    seed,
    y,
    sensed,
    pscal,
    acc,
    sens,
    params,
    A,
    E,
    Binv,
    qp,
    ints,
    thr,
    mod,
    health,
    ctrl,
    on_ms,
):
    """Sensors and ``controller.step`` for cycle ``k``: on-times land in ``on_ms``; returns the
    controller's status word. Books the last cycle's true along-track delta-v into ``acc`` and
    clears the accelerometer accumulator ``sensed`` for this cycle."""
    xb = acc[A_XB : A_XB + 3]
    along_track_B(y, xb)
    acc[A_TRUE_DV] += sensed[0] * xb[0] + sensed[1] * xb[1] + sensed[2] * xb[2]
    sense(k, seed, y, sensed, pscal, sens)
    for i in range(sensed.shape[0]):
        sensed[i] = 0.0
    return cst.step(sens, params, A, E, Binv, qp, ints, thr, mod, health, ctrl, on_ms)


@kernel
def post_unit(
    executed_ms,
    true_health,
    y,
    sensed,
    pscal,
    pthr,
    geom,
    ptank,
    tank_idx,
    table,
    qp,
    ctrl,
    valves,
    impulse,
    live,
    tank_used,
    gimbal_work,
):
    """The executed on-times [ms] through the valves and the plant over one cycle, then the
    tanks. The controller's outputs drive the plant: the gimbal angles in ``qp[Q_ANGLE]`` and
    the CMG torque in ``ctrl[C_CMG_TORQUE]``. Returns flags: F_QUIET when no valve is open,
    thrusting or about to move, and the plant's status shifted by F_PLANT_SHIFT."""
    n = executed_ms.shape[0]
    period = pscal[PS_PERIOD]
    on_s = live[LV_ON_S]
    thrust = live[LV_THRUST]
    isp = live[LV_ISP]
    for i in range(n):
        on_s[i] = executed_ms[i] * 1e-3
    valve_cycle(
        on_s,
        true_health,
        thrust,
        pthr[PT_OPEN_DELAY],
        pthr[PT_CLOSE_DELAY],
        pthr[PT_TAU_RISE],
        pthr[PT_TAU_TAIL],
        period,
        valves,
        impulse,
    )
    for i in range(n):
        col = int(pthr[PT_GIMBAL_COL, i])
        if col >= 0:  # the engine points as the controller commanded its gimbal this cycle
            gimbal_direction(
                geom[G_U0, i],
                geom[G_E1, i],
                geom[G_E2, i],
                qp[cst.Q_ANGLE, col],
                qp[cst.Q_ANGLE, col + 1],
                geom[G_U, i],
                gimbal_work[0:3],
                gimbal_work[3:6],
            )
    inertia = pscal[PS_INERTIA : PS_INERTIA + 9].reshape((3, 3))
    inertia_inv = pscal[PS_INERTIA_INV : PS_INERTIA_INV + 9].reshape((3, 3))
    cmg = ctrl[cst.C_CMG_TORQUE : cst.C_CMG_TORQUE + 3]
    status = plant_cycle(
        y,
        period,
        impulse,
        geom[G_U],
        geom[G_R],
        isp,
        cmg,
        inertia,
        inertia_inv,
        pscal[PS_CD_AREA],
        1.0,
        1.0,
        table[0],
        table[1],
        y,
        sensed,
    )
    feed_update(
        impulse,
        isp,
        tank_idx,
        ptank[TK_LOAD],
        ptank[TK_BLOWDOWN],
        ptank[TK_P0],
        ptank[TK_GAS_V],
        ptank[TK_RHO],
        ptank[TK_POLY],
        pthr[PT_THRUST],
        pthr[PT_ISP],
        pthr[PT_THRUST_EXP],
        pthr[PT_ISP_EXP],
        tank_used,
        thrust,
        isp,
    )
    quiet = True
    for i in range(n):
        if not (valves[i, VS_THRUST] < 1e-9 * thrust[i]):
            quiet = False
        if valves[i, VS_EDGE_T] == valves[i, VS_EDGE_T]:
            quiet = False
    return (F_QUIET if quiet else 0) | (status << F_PLANT_SHIFT)


@kernel
def fly(
    max_cycles,
    seed,
    fail_idx,
    fail_at,
    fail_code,
    fail_cycle,
    y,
    sensed,
    pscal,
    acc,
    pthr,
    geom,
    ptank,
    tank_idx,
    table,
    valves,
    impulse,
    live,
    tank_used,
    gimbal_work,
    true_health,
    executed,
    sens,
    params,
    A,
    E,
    Binv,
    qp,
    ints,
    thr,
    mod,
    health,
    ctrl,
    on_ms,
    statuses,
    att_err,
    longest,
):
    """Fly a burn with the ideal unit (every command executed, clamped to the period, none on a
    failed thruster) until the controller reports it complete and the last tail-off is
    delivered, or ``max_cycles``. Failures: thruster ``fail_idx[f]`` (-1: none) gets health
    ``fail_code[f]`` from the first cycle starting at or after ``fail_at[f]`` [s]; the cycle
    lands in ``fail_cycle[f]``. Per-cycle records go to ``statuses``, ``att_err`` [rad] and
    ``longest`` (longest command [ms]). Returns (cycles, complete cycle or -1, worst plant
    status)."""
    # Views that count no references (controller/views.py), as controller.step takes them:
    # every cycle slices these arrays dozens of times (the plant's rows of pthr, geom, ptank,
    # the tables), and each slice of a counted array is an atomic increment and decrement of
    # its owner's count, one shared by every thread of a Monte-Carlo batch for the arrays the
    # cases share (params, A, thr, ptank, table). The caller holds them for the whole call.
    fail_idx = borrowed(fail_idx)
    fail_at = borrowed(fail_at)
    fail_code = borrowed(fail_code)
    fail_cycle = borrowed(fail_cycle)
    y = borrowed(y)
    sensed = borrowed(sensed)
    pscal = borrowed(pscal)
    acc = borrowed(acc)
    pthr = borrowed(pthr)
    geom = borrowed(geom)
    ptank = borrowed(ptank)
    tank_idx = borrowed(tank_idx)
    table = borrowed(table)
    valves = borrowed(valves)
    impulse = borrowed(impulse)
    live = borrowed(live)
    tank_used = borrowed(tank_used)
    gimbal_work = borrowed(gimbal_work)
    true_health = borrowed(true_health)
    executed = borrowed(executed)
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
    statuses = borrowed(statuses)
    att_err = borrowed(att_err)
    longest = borrowed(longest)
    n = on_ms.shape[0]
    period = pscal[PS_PERIOD]
    period_ms = int(pscal[PS_PERIOD_MS])
    complete = -1
    plant_status = 0
    k = 0
    while k < max_cycles:
        t = k * period
        for f in range(fail_idx.shape[0]):
            if fail_idx[f] >= 0 and fail_cycle[f] < 0 and t >= fail_at[f]:
                fail_cycle[f] = k
                true_health[fail_idx[f]] = fail_code[f]
        status = pre_unit(
            k,
            seed,
            y,
            sensed,
            pscal,
            acc,
            sens,
            params,
            A,
            E,
            Binv,
            qp,
            ints,
            thr,
            mod,
            health,
            ctrl,
            on_ms,
        )
        statuses[k] = status
        att_err[k] = ctrl[cst.C_ATT_ERR]
        if complete < 0 and ctrl[cst.C_COMPLETE] > 0.5:
            complete = k
        top = 0
        for i in range(n):
            if on_ms[i] > top:
                top = on_ms[i]
            if true_health[i] != HEALTH_NOMINAL:
                executed[i] = 0
            elif on_ms[i] > period_ms:
                executed[i] = period_ms
            else:
                executed[i] = on_ms[i]
            health[i] = true_health[i]
        longest[k] = top
        flags = post_unit(
            executed,
            true_health,
            y,
            sensed,
            pscal,
            pthr,
            geom,
            ptank,
            tank_idx,
            table,
            qp,
            ctrl,
            valves,
            impulse,
            live,
            tank_used,
            gimbal_work,
        )
        ps = flags >> F_PLANT_SHIFT
        if ps > plant_status:
            plant_status = ps
        k += 1
        if ctrl[cst.C_STOP] > 0.5 and flags & F_QUIET:
            break  # stopped before a tank's reserve, every valve closed
        if complete >= 0 and flags & F_QUIET:
            firing = False
            for i in range(n):
                if thr[i, T_TRANSLATION] > 0.5 and on_ms[i] > 0:
                    firing = True
            if not firing:
                break
    return k, complete, plant_status


@kernel
def round_half_even(x):
    """``round(x)`` as Python rounds a float: halves to the even integer."""
    r = math.floor(x)
    d = x - r
    if d > 0.5 or (d == 0.5 and r % 2.0 == 1.0):
        r += 1.0
    return int(r)


@inline_kernel
def _mean_terms(w, rx, ry, rz, vx, vy, vz, sa, ex, ey, ez):
    """The sums of :func:`mean_apsides` with one more state of weight w [s]."""
    rn = math.sqrt(rx * rx + ry * ry + rz * rz)
    v2 = vx * vx + vy * vy + vz * vz
    rv = rx * vx + ry * vy + rz * vz
    a = -MU_EARTH / (2.0 * (0.5 * v2 - MU_EARTH / rn))
    c = v2 - MU_EARTH / rn
    return (
        sa + w * a,
        ex + w * (c * rx - rv * vx) / MU_EARTH,
        ey + w * (c * ry - rv * vy) / MU_EARTH,
        ez + w * (c * rz - rv * vz) / MU_EARTH,
    )


@inline_kernel
def _mean_result(sa, ex, ey, ez, wsum):
    a_mean = sa / wsum
    e_mean = math.sqrt(ex * ex + ey * ey + ez * ez) / wsum
    return a_mean, a_mean * (1.0 - e_mean) - R_EARTH, a_mean * (1.0 + e_mean) - R_EARTH


@kernel
def mean_apsides(states, n, dt_s):
    """(a_mean [m], perigee altitude [m], apogee altitude [m]) orbit-averaged over the first
    ``n`` rows of ``states`` (trapezoid rule on the osculating a and eccentricity vector, as
    :func:`thruster_hil.sims.orbit.mean_apsides`)."""
    wsum = 0.0
    sa = 0.0
    ex = 0.0
    ey = 0.0
    ez = 0.0
    for i in range(n):
        w = 0.5 * dt_s if i == 0 or i == n - 1 else dt_s
        sa, ex, ey, ez = _mean_terms(
            w,
            states[i, 0],
            states[i, 1],
            states[i, 2],
            states[i, 3],
            states[i, 4],
            states[i, 5],
            sa,
            ex,
            ey,
            ez,
        )
        wsum += w
    return _mean_result(sa, ex, ey, ez, wsum)


@kernel
def coast_mean_apsides(y0, dt_s, n, cd_area_m2, table):
    """(status, a_mean, perigee altitude, apogee altitude) [m] of the orbit coasted from y0 (7,):
    bit for bit ``propagate(y0, dt_s, n, 1, no thrust, ...)`` into an (n + 1, 7) window, then
    :func:`mean_apsides` over its first n rows, without the window (the states are summed as
    they are made; the last step is taken only for propagate()'s status)."""
    if not (dt_s > 0.0) or n < 0:
        return STATUS_BAD_ARGS, math.nan, math.nan, math.nan
    slope = log_density_slopes(table[0], table[1])
    rx, ry, rz, vx, vy, vz, m = y0[0], y0[1], y0[2], y0[3], y0[4], y0[5], y0[6]
    status = STATUS_OK
    wsum = 0.0
    sa = 0.0
    ex = 0.0
    ey = 0.0
    ez = 0.0
    for i in range(n + 1):
        if i > 0 and status == STATUS_OK:  # row i: one step from row i - 1 (as propagate())
            t0 = (i - 1) * dt_s + 0 * dt_s
            t1 = i * dt_s
            if t0 < t1:
                rx, ry, rz, vx, vy, vz = coast_step(
                    rx, ry, rz, vx, vy, vz, m, t1 - t0, cd_area_m2, 1.0, table[0], table[1], slope
                )
            if not finite_state(rx, ry, rz, vx, vy, vz, m):
                status = STATUS_NONFINITE  # this row and every later one are NaN
                rx = ry = rz = vx = vy = vz = m = math.nan
        if i < n:
            w = 0.5 * dt_s if i == 0 or i == n - 1 else dt_s
            sa, ex, ey, ez = _mean_terms(w, rx, ry, rz, vx, vy, vz, sa, ex, ey, ez)
            wsum += w
    a_mean, rp, ra = _mean_result(sa, ex, ey, ez, wsum)
    return status, a_mean, rp, ra


@kernel
def coast_mean_apsides_pair(yb, yc, dt_s, n, cd_area_m2, table):
    """:func:`coast_mean_apsides` of two states over the same window, coasted side by side
    (:func:`thruster_hil.sims.orbit.coast_step_pair`): (status, a_mean, perigee, apogee) of
    ``yb`` then of ``yc`` [m], each bit for bit what :func:`coast_mean_apsides` gives it alone
    (a state that became non-finite stops stepping, as there, while the other goes on)."""
    if not (dt_s > 0.0) or n < 0:
        return (
            (STATUS_BAD_ARGS, math.nan, math.nan, math.nan),
            (STATUS_BAD_ARGS, math.nan, math.nan, math.nan),
        )
    rx, ry, rz, vx, vy, vz, m = yb[0], yb[1], yb[2], yb[3], yb[4], yb[5], yb[6]
    qx, qy, qz, ux, uy, uz, mq = yc[0], yc[1], yc[2], yc[3], yc[4], yc[5], yc[6]
    tab_h = table[0]
    tab_lr = table[1]
    tab_sl = log_density_slopes(tab_h, tab_lr)
    sb = STATUS_OK
    sc = STATUS_OK
    wsum = 0.0
    sa = 0.0
    ex = 0.0
    ey = 0.0
    ez = 0.0
    sa_c = 0.0
    ex_c = 0.0
    ey_c = 0.0
    ez_c = 0.0
    for i in range(n + 1):
        if i > 0 and (sb == STATUS_OK or sc == STATUS_OK):
            t0 = (i - 1) * dt_s + 0 * dt_s
            t1 = i * dt_s
            if t0 < t1:
                h = t1 - t0
                if sb == STATUS_OK and sc == STATUS_OK:
                    rx, ry, rz, vx, vy, vz, qx, qy, qz, ux, uy, uz = coast_step_pair(
                        rx, ry, rz, vx, vy, vz, m, qx, qy, qz, ux, uy, uz, mq, h, cd_area_m2,
                        tab_h, tab_lr, tab_sl,
                    )  # fmt: skip
                elif sb == STATUS_OK:  # the cold paths: a call, not two more inlined copies
                    rx, ry, rz, vx, vy, vz = coast_step_call(
                        rx, ry, rz, vx, vy, vz, m, h, cd_area_m2, 1.0, tab_h, tab_lr, tab_sl
                    )
                else:
                    qx, qy, qz, ux, uy, uz = coast_step_call(
                        qx, qy, qz, ux, uy, uz, mq, h, cd_area_m2, 1.0, tab_h, tab_lr, tab_sl
                    )
            if sb == STATUS_OK and not finite_state(rx, ry, rz, vx, vy, vz, m):
                sb = STATUS_NONFINITE  # this row and every later one are NaN
                rx = ry = rz = vx = vy = vz = m = math.nan
            if sc == STATUS_OK and not finite_state(qx, qy, qz, ux, uy, uz, mq):
                sc = STATUS_NONFINITE
                qx = qy = qz = ux = uy = uz = mq = math.nan
        if i < n:
            w = 0.5 * dt_s if i == 0 or i == n - 1 else dt_s
            sa, ex, ey, ez = _mean_terms(w, rx, ry, rz, vx, vy, vz, sa, ex, ey, ez)
            sa_c, ex_c, ey_c, ez_c = _mean_terms(w, qx, qy, qz, ux, uy, uz, sa_c, ex_c, ey_c, ez_c)
            wsum += w
    a_b, rp_b, ra_b = _mean_result(sa, ex, ey, ez, wsum)
    a_c, rp_c, ra_c = _mean_result(sa_c, ex_c, ey_c, ez_c, wsum)
    return (sb, a_b, rp_b, ra_b), (sc, a_c, rp_c, ra_c)


@kernel
def orbit_change(y_start, y_end, elapsed_s, window_s, cd_area_m2, table, out):
    """What the burn did to the orbit: the no-burn twin of ``y_start`` is propagated over the same
    ``elapsed_s`` (steps of about COAST_STEP_S), then the burned and the twin state are each
    propagated over ``window_s`` [s] (one orbital period) in n = round(window_s / COAST_STEP_S)
    equal steps and their mean elements (:func:`mean_apsides` over the n + 1 states from 0 to
    window_s, so the trapezoid spans exactly the window) differenced. Two-body + J2 + drag, RK4
    (the scalar coast kernels :func:`thruster_hil.sims.orbit.coast_to` and
    :func:`coast_mean_apsides`, bit for bit :func:`thruster_hil.sims.orbit.propagate`). Writes
    out[O_D_A], out[O_D_PERIGEE], out[O_D_APOGEE] [m] and out[O_ORBIT_STATUS]."""
    n_coast = round_half_even(elapsed_s / COAST_STEP_S)
    if n_coast < 1:
        n_coast = 1
    y7 = np.empty(7)
    for i in range(6):
        y7[i] = y_start[i]
    y7[6] = y_start[M]
    twin = np.empty(7)
    status = coast_to(y7, elapsed_s / n_coast, n_coast, cd_area_m2, 1.0, table[0], table[1], twin)
    for i in range(6):
        y7[i] = y_end[i]
    y7[6] = y_end[M]
    n_window = round_half_even(window_s / COAST_STEP_S)
    if n_window < 1:
        n_window = 1
    # n_window + 1 rows (the states at 0, h, ..., window_s); the kernel's one step beyond them
    # only sets the status.
    (s_b, a_b, rp_b, ra_b), (s_c, a_c, rp_c, ra_c) = coast_mean_apsides_pair(
        y7, twin, window_s / n_window, n_window + 1, cd_area_m2, table
    )
    status = max(status, s_b)
    status = max(status, s_c)
    out[O_D_A] = a_b - a_c
    out[O_D_PERIGEE] = rp_b - rp_c
    out[O_D_APOGEE] = ra_b - ra_c
    out[O_ORBIT_STATUS] = status


@kernel
def finish(cycles, y_start, y, sensed, pscal, acc, ctrl, window_s, table, out):
    """The burn's numbers after ``cycles`` cycles into ``out`` (OUT_LEN): the last cycle's
    accelerometer increment (the tail) still belongs to the burn."""
    xb = ctrl[cst.C_XH_B : cst.C_XH_B + 3]
    tail = sensed[0] * xb[0] + sensed[1] * xb[1] + sensed[2] * xb[2]
    out[O_ACHIEVED_DV] = ctrl[cst.C_DV_ALONG] + tail
    xt = acc[A_XB : A_XB + 3]
    out[O_TRUE_DV] = acc[A_TRUE_DV] + (sensed[0] * xt[0] + sensed[1] * xt[1] + sensed[2] * xt[2])
    out[O_PROPELLANT] = y_start[M] - y[M]
    orbit_change(y_start, y, cycles * pscal[PS_PERIOD], window_s, pscal[PS_CD_AREA], table, out)


# ------------------------------------------------------------------------------------------------
# The arrays, built once per burn (nominal) and once per case (the true plant)
# ------------------------------------------------------------------------------------------------

#: Cycles allowed beyond the planned burn before the run is declared overdue.
OVERRUN_FACTOR = 3.0


@dataclass(frozen=True, eq=False)
class PlantCase:
    """How one case's true stack and sensors differ from the nominal model. The defaults are
    the nominal stack with ideal sensors; arrays are per thruster (the model's order)."""

    seed: int = 0  # keys the sensor noise (non-negative, < 2**63)
    thrust_scale: np.ndarray | None = None  # true / nominal steady-state thrust
    isp_scale: np.ndarray | None = None  # true / nominal Isp
    misalign_rad: np.ndarray | None = None  # angle of the true thrust axis from the nominal
    misalign_azimuth_rad: np.ndarray | None = None  # direction of that tilt about the axis
    d_open_delay_s: np.ndarray | None = None  # added to the valve open delay [s]
    d_close_delay_s: np.ndarray | None = None  # added to the valve close delay [s]
    d_mass_kg: float = 0.0  # true minus nominal stack mass [kg]
    d_com_B_m: np.ndarray | None = None  # true minus nominal CoM, in B [m]
    noise_att_rad: float = 0.0
    noise_rate_rad_s: float = 0.0
    noise_dv_mps: float = 0.0
    acc_bias_B_mps2: np.ndarray | None = None
    fail_index: int = -1  # a thruster failing off (-1: none) ...
    fail_at_s: float = math.inf  # ... at this time into the burn [s]


@dataclass(frozen=True, eq=False)
class BurnSetup:
    """What every case of one burn shares: the nominal controller template, the tanks, the
    atmosphere, the ignition state and the nominal plant arrays."""

    n: int
    period_s: float
    period_ms: int
    max_cycles: int
    window_s: float  # the mean-element window: one period of the ignition orbit [s]
    y0: np.ndarray  # nominal ignition state (PLANT_STATE_LEN)
    pscal: np.ndarray
    pthr: np.ndarray
    geom: np.ndarray
    ptank: np.ndarray
    tank_idx: np.ndarray
    table: np.ndarray  # (2, K): altitude [m], ln density
    target_dv_mps: float


def setup_burn(model, plan: dict) -> BurnSetup:
    """The nominal arrays of ``model`` (a StackModel) flying ``plan`` (from plan_burn)."""
    from thruster_hil.sims import atmosphere, orbit
    from thruster_hil.sims.attitude import dcm_from_q, lvlh_attitude_q, lvlh_rate_B
    from thruster_hil.sims.plant import initial_state

    period = float(model.control_period_s)
    n = len(model.thruster_names)
    # Ignition state: half the planned burn before the apsis, in the reboost attitude.
    a0, e0 = orbit.a_e_from_apsis_altitudes(
        plan["perigee_km_before"] * 1e3, plan["apogee_km_before"] * 1e3
    )
    incl = math.radians(plan["inclination_deg"])
    r0, v0 = orbit.rv_before_apsis(a0, e0, incl, plan["burn_duration_s"] / 2.0, plan["burn_centre"])
    q0 = np.empty(4)
    lvlh_attitude_q(r0, v0, np.ascontiguousarray(model.dcm_BH), q0)
    dcm = np.empty((3, 3))
    dcm_from_q(q0, dcm)
    w0 = np.empty(3)
    lvlh_rate_B(r0, v0, dcm, w0)
    y0 = initial_state(r0, v0, q0, w0, model.mass_kg)

    alt, log_rho = atmosphere.density_table(atmosphere.plan_activity(plan))
    pscal = np.zeros(PS_LEN)
    pscal[PS_PERIOD] = period
    pscal[PS_PERIOD_MS] = int(round(period * 1000))
    pscal[PS_CD_AREA] = model.drag_coefficient * model.drag_area_m2
    inertia = np.ascontiguousarray(model.I_B, dtype=np.float64)
    pscal[PS_INERTIA : PS_INERTIA + 9] = inertia.ravel()
    pscal[PS_INERTIA_INV : PS_INERTIA_INV + 9] = np.linalg.inv(inertia).ravel()
    pthr = np.empty((PT_LEN, n))
    pthr[PT_THRUST] = model.thrust_N
    pthr[PT_ISP] = model.isp_s
    pthr[PT_OPEN_DELAY] = model.open_delay_s
    pthr[PT_CLOSE_DELAY] = model.close_delay_s
    pthr[PT_TAU_RISE] = model.rise_time_s
    pthr[PT_TAU_TAIL] = model.tail_off_s
    pthr[PT_THRUST_EXP] = model.thrust_exponent
    pthr[PT_ISP_EXP] = model.isp_exponent
    pthr[PT_GIMBAL_COL] = gimbal_columns(model)
    geom = np.zeros((G_LEN, n, 3))
    geom[G_U] = model.u_T_B
    geom[G_R] = model.r_TC_B
    geom[G_U0] = model.u_T_B
    geom[G_E1] = model.gimbal_e1_B
    geom[G_E2] = model.gimbal_e2_B
    nt = len(model.tank_names)
    ptank = np.empty((TK_LEN, nt))
    ptank[TK_LOAD] = model.tank_propellant_kg
    ptank[TK_BLOWDOWN] = np.asarray(model.tank_blowdown, dtype=np.float64)
    ptank[TK_P0] = model.tank_pressure_Pa
    ptank[TK_GAS_V] = model.tank_gas_volume_m3
    ptank[TK_RHO] = model.tank_propellant_density_kg_m3
    ptank[TK_POLY] = model.tank_polytropic_n
    from thruster_hil.core.constants import MU_EARTH as mu

    return BurnSetup(
        n=n,
        period_s=period,
        period_ms=int(round(period * 1000)),
        max_cycles=int(math.ceil(OVERRUN_FACTOR * plan["burn_duration_s"] / period)) + 40,
        window_s=orbit.period_s(a0, mu),
        y0=y0,
        pscal=pscal,
        pthr=pthr,
        geom=geom,
        ptank=ptank,
        tank_idx=np.ascontiguousarray(model.tank_idx, dtype=np.int64),
        table=np.ascontiguousarray(np.stack([alt, log_rho])),
        target_dv_mps=float(plan["delta_v_mps"]),
    )


def gimbal_columns(model) -> np.ndarray:
    """Per thruster, the first of the controller's two gimbal columns (-1 for a fixed one), as
    :func:`thruster_hil.controller.build.build_controller` lays them out: thrusters, CMG +/- per
    axis, then two per gimbaled engine in thruster order."""
    n = len(model.thruster_names)
    col = n + (6 if model.cmg_torque_budget_Nm > 0.0 else 0)
    out = np.full(n, -1.0)
    for i in range(n):
        if model.gimbal_limit_rad[i] > 0.0:
            out[i] = col
            col += 2
    return out


def _cross(a, b) -> np.ndarray:
    """``a x b`` of two 3-sequences of floats, each component as :func:`numpy.cross` computes
    it (two rounded products, one rounded difference), without its per-call axis handling
    (which made building a case's arrays cost about a tenth of flying it)."""
    return np.array(
        [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
    )


def _tilt(u: np.ndarray, angle: float, azimuth: float) -> np.ndarray:
    """``u`` turned by ``angle`` [rad] towards the perpendicular direction at ``azimuth`` [rad]
    (measured in the plane normal to u from the B axis least aligned with u). The lengths are
    ``sqrt(x . x)`` as :func:`numpy.linalg.norm` takes them."""
    uu = u.tolist()
    a = [0.0, 0.0, 0.0]
    a[int(np.argmin(np.abs(u)))] = 1.0
    e1 = _cross(uu, a)
    e1 /= math.sqrt(e1.dot(e1))
    e2 = _cross(uu, e1.tolist())
    d = math.cos(azimuth) * e1 + math.sin(azimuth) * e2
    out = math.cos(angle) * u + math.sin(angle) * d
    return out / math.sqrt(out.dot(out))


def case_arrays(setup: BurnSetup, case: PlantCase | None):
    """The true plant of one case: (pscal, pthr, geom, y0) copies of the nominal ones with the
    case's differences applied (the nominal arrays themselves when ``case`` is None)."""
    if case is None:  # geom is the plant's state (a gimbal turns an engine): a copy each burn
        return setup.pscal, setup.pthr, setup.geom.copy(), setup.y0
    pscal = setup.pscal.copy()
    pthr = setup.pthr.copy()
    geom = setup.geom.copy()
    y0 = setup.y0.copy()
    if case.thrust_scale is not None:
        pthr[PT_THRUST] *= case.thrust_scale
    if case.isp_scale is not None:
        pthr[PT_ISP] *= case.isp_scale
    if case.d_open_delay_s is not None:
        pthr[PT_OPEN_DELAY] = np.maximum(pthr[PT_OPEN_DELAY] + case.d_open_delay_s, 0.0)
    if case.d_close_delay_s is not None:
        pthr[PT_CLOSE_DELAY] = np.maximum(pthr[PT_CLOSE_DELAY] + case.d_close_delay_s, 0.0)
    if case.misalign_rad is not None:
        az = (
            case.misalign_azimuth_rad
            if case.misalign_azimuth_rad is not None
            else np.zeros(setup.n)
        )
        for i in range(setup.n):
            if case.misalign_rad[i] != 0.0:
                geom[G_U, i] = _tilt(geom[G_U, i], float(case.misalign_rad[i]), float(az[i]))
                geom[G_U0, i] = geom[G_U, i]
    if case.d_com_B_m is not None:
        geom[G_R] -= case.d_com_B_m  # thruster positions from the true CoM
    if case.d_mass_kg != 0.0:
        y0[M] += case.d_mass_kg
        pscal[PS_MASS_EST] = -case.d_mass_kg  # the controller still believes the nominal mass
    pscal[PS_NOISE_ATT] = case.noise_att_rad
    pscal[PS_NOISE_RATE] = case.noise_rate_rad_s
    pscal[PS_NOISE_DV] = case.noise_dv_mps
    if case.acc_bias_B_mps2 is not None:
        pscal[PS_ACC_BIAS : PS_ACC_BIAS + 3] = case.acc_bias_B_mps2
    return pscal, pthr, geom, y0


@dataclass(eq=False)
class Sim:
    """The mutable arrays of one burn in flight (plant, valves, tanks, accumulators) next to its
    controller; ``pre``/``post`` run the two halves of a cycle, ``fly`` a whole burn."""

    setup: BurnSetup
    ctrl: object  # thruster_hil.controller.build.Controller
    seed: int
    pscal: np.ndarray
    pthr: np.ndarray
    geom: np.ndarray
    y_start: np.ndarray
    y: np.ndarray
    sensed: np.ndarray = field(default=None)
    acc: np.ndarray = field(default=None)
    valves: np.ndarray = field(default=None)
    impulse: np.ndarray = field(default=None)
    live: np.ndarray = field(default=None)
    tank_used: np.ndarray = field(default=None)
    gimbal_work: np.ndarray = field(default=None)
    true_health: np.ndarray = field(default=None)
    executed: np.ndarray = field(default=None)

    @property
    def thrust(self) -> np.ndarray:
        return self.live[LV_THRUST]

    def pre(self, k: int) -> int:
        c = self.ctrl
        return pre_unit(
            k,
            self.seed,
            self.y,
            self.sensed,
            self.pscal,
            self.acc,
            c.sens,
            c.params,
            c.A,
            c.E,
            c.Binv,
            c.qp,
            c.ints,
            c.thr,
            c.mod,
            c.health,
            c.ctrl,
            c.on_ms,
        )

    def post(self, executed_ms: np.ndarray) -> int:
        s = self.setup
        return post_unit(
            executed_ms,
            self.true_health,
            self.y,
            self.sensed,
            self.pscal,
            self.pthr,
            self.geom,
            s.ptank,
            s.tank_idx,
            s.table,
            self.ctrl.qp,
            self.ctrl.ctrl,
            self.valves,
            self.impulse,
            self.live,
            self.tank_used,
            self.gimbal_work,
        )

    def fly(self, fail_idx, fail_at, fail_code, fail_cycle, statuses, att_err, longest):
        s = self.setup
        c = self.ctrl
        return fly(
            s.max_cycles,
            self.seed,
            fail_idx,
            fail_at,
            fail_code,
            fail_cycle,
            self.y,
            self.sensed,
            self.pscal,
            self.acc,
            self.pthr,
            self.geom,
            s.ptank,
            s.tank_idx,
            s.table,
            self.valves,
            self.impulse,
            self.live,
            self.tank_used,
            self.gimbal_work,
            self.true_health,
            self.executed,
            c.sens,
            c.params,
            c.A,
            c.E,
            c.Binv,
            c.qp,
            c.ints,
            c.thr,
            c.mod,
            c.health,
            c.ctrl,
            c.on_ms,
            statuses,
            att_err,
            longest,
        )

    def finish(self, cycles: int) -> np.ndarray:
        out = np.zeros(OUT_LEN)
        finish(
            cycles,
            self.y_start,
            self.y,
            self.sensed,
            self.pscal,
            self.acc,
            self.ctrl.ctrl,
            self.setup.window_s,
            self.setup.table,
            out,
        )
        return out


def new_sim(
    model, plan: dict, case: PlantCase | None = None, setup: BurnSetup | None = None
) -> Sim:
    """A burn ready to fly: the nominal controller and the (dispersed) plant at ignition."""
    from thruster_hil.controller.build import build_controller
    from thruster_hil.sims.plant import SENSED_LEN
    from thruster_hil.sims.thrusters import valve_state_at_rest

    setup = setup if setup is not None else setup_burn(model, plan)
    pscal, pthr, geom, y0 = case_arrays(setup, case)
    n = setup.n
    live = np.zeros((LV_LEN, n))
    live[LV_THRUST] = pthr[PT_THRUST]
    live[LV_ISP] = pthr[PT_ISP]
    return Sim(
        setup=setup,
        ctrl=build_controller(model, plan["delta_v_mps"]),
        seed=int(case.seed) if case is not None else 0,
        pscal=pscal,
        pthr=pthr,
        geom=geom,
        y_start=y0.copy(),
        y=y0.copy(),
        sensed=np.zeros(SENSED_LEN),
        acc=np.zeros(ACC_LEN),
        valves=valve_state_at_rest(n),
        impulse=np.zeros((N_SUB, n)),
        live=live,
        tank_used=np.zeros(setup.ptank.shape[1]),
        gimbal_work=np.empty(GIMBAL_WORK_LEN),
        true_health=np.full(n, HEALTH_NOMINAL, np.int64),
        executed=np.zeros(n, np.uint16),
    )


def warm_up(model, plan: dict) -> None:
    """Compile (or load from numba's cache) every kernel a cycle runs, on a scratch burn.

    A run calls this before it arms a serial unit: compiling ``pre_unit``/``post_unit`` on a
    fresh machine takes seconds, and a unit armed meanwhile would see its link watchdog expire
    and refuse the first FIREs (the watchdog is right to: the host was silent).
    """
    sim = new_sim(model, plan)
    sim.pre(0)
    sim.post(np.zeros(sim.setup.n, np.uint16))
