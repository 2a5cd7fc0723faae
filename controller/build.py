"""The thin, validated Python layer: build the controller's arrays once from a stack model.

Everything here runs once, before the first cycle; :func:`thruster_hil.controller.cycle.step` then
runs every cycle on the arrays built here without allocating.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numba
import numpy as np
from thruster_hil.controller import cycle as st
from thruster_hil.controller import modulation as mo
from thruster_hil.controller.allocation import LP_WORK_ROWS, fill_lp_columns, lp_columns
from thruster_hil.controller.packing import ARRAY_NAMES, pack, step_packed

from thruster_hil.core.constants import G0
from thruster_hil.core.health import HEALTH_NOMINAL
from thruster_hil.core.massprops import gimbal_trim
from thruster_hil.core.pulses import effective_impulse, pulse_impulse

#: Attitude-hold bandwidth [rad/s] and damping ratio of the PD law (per axis, Kp = I w^2,
#: Kd = 2 zeta w I). 0.05 rad/s (a 2-minute period) is far below the 2 Hz control rate and far
#: above the orbit rate, and keeps pulses of the attitude thrusters sparse.
BANDWIDTH_RAD_S = 0.05
DAMPING = 0.9
#: Allocation: torque errors cost more than force errors, which cost more than propellant
#: (attitude first, then the push, then the least propellant; see controller/allocation.py).
TORQUE_PRIORITY = 1e3
#: Lever arm [m] that puts a torque error in the same units as a force error.
LEVER_REF_M = 10.0
#: LP cost of a unit force error (one full-cycle impulse of the translation set) against the
#: propellant of the translation set's full-cycle pulse (cost 1).
FORCE_ERROR_COST = 1e3
#: LP cost of a unit sideways force error (radial or cross-track): a tenth of what the same
#: impulse costs the translation set in propellant. A side force on a 4e5 kg stack changes the
#: orbit by millimetres per second and the mean altitude only to second order; cancelling it
#: with short-lever couples of attitude thrusters would cost many times the propellant, and
#: holding it off with the CMGs would spend their finite momentum. So it is priced low, not
#: demanded like the push.
SIDE_FORCE_ERROR_COST = 0.1
#: Attitude thrusters cost this many times their propellant: they fire only where the torque
#: needs them, never to help the push.
ATTITUDE_COST_FACTOR = 10.0
#: LP cost of a CMG's full budget for a cycle: small, so CMGs (electric) come before thrusters,
#: but a gimbal (free) before the CMGs, whose momentum is finite. It must also exceed what
#: turning a gimbaled engine off its trim would save in cosine loss (~0.2 of a full pulse per
#: radian against ~9 budgets of torque per radian for Cygnus), or the LP would point the
#: engine along the velocity and hold the torque on the CMGs.
CMG_COST = 0.1
#: A reserve-protected tank's draw rate is filtered with this time constant [s] and projected
#: over the rest of the burn once this many seconds have passed.
RATE_TAU_S = 30.0
STOP_ARM_S = 30.0


@dataclass(eq=False)
class Controller:
    """The controller's arrays for one stack and one burn. ``step`` runs one cycle.

    The twelve arrays are views into the one buffer ``packed``
    (:mod:`thruster_hil.controller.packing`), made when the controller is made: write into them
    (``ctrl.sens[:] = ...``, ``ctrl.health[:] = ...``), never rebind them, or ``step`` would not
    see the new array.
    """

    thruster_names: tuple[str, ...]
    n: int
    m: int
    period_s: float
    tick_s: float
    params: np.ndarray
    A: np.ndarray
    E: np.ndarray
    Binv: np.ndarray
    qp: np.ndarray
    ints: np.ndarray
    thr: np.ndarray
    mod: np.ndarray
    health: np.ndarray
    ctrl: np.ndarray
    on_ms: np.ndarray
    sens: np.ndarray = field(default_factory=lambda: np.zeros(st.SENS_LEN))
    packed: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.packed, views = pack({name: getattr(self, name) for name in ARRAY_NAMES})
        for name, view in views.items():
            setattr(self, name, view)
        # Each instance's step is the kernel with its buffer bound: a Python method in between
        # costs about as much as the call into numba itself (measured: ~0.25 us of ~0.6 us).
        # And it is the kernel compiled for the buffer's type (Dispatcher.compile returns that
        # compiled function), not the dispatcher: the buffer is always this one array, so the
        # dispatcher's work each call (typing the argument, picking the compiled version) is
        # known in advance; skipping it saves ~0.08 us of the ~0.2 us a call costs (issue 18).
        self.step = functools.partial(
            step_packed.compile((numba.typeof(self.packed),)), self.packed
        )

    def step(self) -> int:
        """One cycle on ``self.sens``; on-times land in ``self.on_ms``. Returns the status.

        One array crosses into numba (see :mod:`thruster_hil.controller.packing`): the same
        numbers as ``cycle.step`` on the twelve arrays. (An instance's ``step`` is this,
        bound in ``__post_init__`` without a Python frame in between.)"""
        return step_packed(self.packed)

    @property
    def complete(self) -> bool:
        return self.ctrl[st.C_COMPLETE] > 0.5

    @property
    def attitude_error_rad(self) -> float:
        return float(self.ctrl[st.C_ATT_ERR])

    @property
    def dv_along_mps(self) -> float:
        return float(self.ctrl[st.C_DV_ALONG])

    @property
    def stopped_tank(self) -> int:
        """The tank whose reserve stopped the burn, or -1."""
        return int(self.ctrl[st.C_STOP]) - 1


def build_controller(
    model,
    target_dv_mps: float,
    *,
    tick_s: float = 1e-3,
    bandwidth_rad_s: float = BANDWIDTH_RAD_S,
    damping: float = DAMPING,
    use_cmg: bool = True,
) -> Controller:
    """Controller arrays for ``model`` (a :class:`thruster_hil.config.StackModel`) and a target
    along-track delta-v [m/s]."""
    if not (math.isfinite(target_dv_mps) and target_dv_mps > 0.0):
        raise ValueError(f"target_dv_mps: expected a finite number > 0, got {target_dv_mps!r}")
    period = float(model.control_period_s)
    n = len(model.thruster_names)
    budget = float(model.cmg_torque_budget_Nm) if use_cmg else 0.0
    n_cmg = 6 if budget > 0.0 else 0  # + and - per axis
    gimbaled = [i for i in range(n) if model.gimbal_limit_rad[i] > 0.0]
    n_g = len(gimbaled)
    if n_g > st.MAX_GIMBALS or len(model.tank_names) > st.MAX_TANKS:
        raise ValueError(f"at most {st.MAX_GIMBALS} gimbals and {st.MAX_TANKS} tanks")
    m = n + n_cmg + 2 * n_g
    n_tanks = len(model.tank_names)
    n_rows = st.ROW_TANK + n_tanks
    n_cols = lp_columns(n_rows, 6, m)

    thr = np.zeros((n, mo.THR_COLS))
    min_on = np.ceil(np.asarray(model.min_on_time_s) / tick_s - 1e-9) * tick_s
    for i in range(n):
        args = (
            model.thrust_N[i],
            model.open_delay_s[i],
            model.close_delay_s[i],
            model.rise_time_s[i],
            model.tail_off_s[i],
        )
        thr[i, mo.T_THRUST : mo.T_TAU_TAIL + 1] = args
        thr[i, mo.T_MIN_ON] = min_on[i]
        thr[i, mo.T_MIB] = effective_impulse(min_on[i], *args)
        thr[i, mo.T_MAX_IMPULSE] = model.thrust_N[i] * period
        thr[i, mo.T_KG_PER_NS] = 1.0 / (model.isp_s[i] * G0)
        thr[i, mo.T_TANK] = model.tank_idx[i]
        # What controller.step's guidance counts in flight after a full-cycle command: the same
        # kernel on the same numbers it would call every cycle such a command runs.
        thr[i, mo.T_FULL_SPILL] = pulse_impulse(period, period, math.inf, *args)
    thr[model.translation_idx, mo.T_TRANSLATION] = 1.0

    # Wrench per unit of each actuator: thrusters (impulse units), CMG +/- per axis, gimbals.
    A = np.zeros((6, m))
    full = thr[:, mo.T_MAX_IMPULSE]
    A[0:3, :n] = (model.u_T_B * full[:, None]).T
    A[3:6, :n] = (model.torque_arm_B * full[:, None]).T
    for k in range(n_cmg // 2):
        A[3 + k, n + 2 * k] = budget * period
        A[3 + k, n + 2 * k + 1] = -budget * period
    f_ref = float(np.sum(model.thrust_N[model.translation_idx])) * period
    scale = np.array([f_ref] * 3 + [f_ref * LEVER_REF_M] * 3)
    # Weights of the residual that status reports: the push and the torque (the sideways force
    # is priced like propellant, not demanded: weight 0).
    row_w = np.array(
        [1.0 / f_ref**2, 0.0, 0.0] + [TORQUE_PRIORITY / (f_ref * LEVER_REF_M) ** 2] * 3
    )

    qp = np.zeros((st.QP_ROWS, n_cols))
    qp[st.Q_UB, : n + n_cmg] = 1.0
    kg_full = full * thr[:, mo.T_KG_PER_NS]  # propellant of a full-cycle pulse [kg]
    p_ref = float(np.sum(kg_full[model.translation_idx]))
    role = np.full(n, ATTITUDE_COST_FACTOR)
    role[model.translation_idx] = 1.0
    qp[st.Q_COST, :n] = kg_full / p_ref * role
    qp[st.Q_COST, n : n + n_cmg] = CMG_COST

    params = np.zeros(st.PARAM_LEN)
    # Gimbals, pre-positioned at the trim that points the thrust through the CoM.
    for g, i in enumerate(gimbaled):
        col = n + n_cmg + 2 * g
        u0 = np.asarray(model.u_T_B[i], dtype=np.float64)
        e1 = np.asarray(model.gimbal_e1_B[i], dtype=np.float64)
        e2 = np.asarray(model.gimbal_e2_B[i], dtype=np.float64)
        r = np.asarray(model.r_TC_B[i], dtype=np.float64)
        lim = float(model.gimbal_limit_rad[i])
        d1, d2 = gimbal_trim(u0, e1, e2, r, lim)
        qp[st.Q_ANGLE, col] = d1
        qp[st.Q_ANGLE, col + 1] = d2
        rec = params[st.P_GIMBAL + g * st.G_STRIDE : st.P_GIMBAL + (g + 1) * st.G_STRIDE]
        rec[st.G_THRUSTER] = i
        rec[st.G_COL] = col
        rec[st.G_LIMIT] = lim
        rec[st.G_RATE] = float(model.gimbal_rate_rad_s[i])
        rec[st.G_U0 : st.G_U0 + 3] = u0
        rec[st.G_E1 : st.G_E1 + 3] = e1
        rec[st.G_E2 : st.G_E2 + 3] = e2
        rec[st.G_R : st.G_R + 3] = r
        for j, v in ((col, e1), (col + 1, e2)):
            A[0:3, j] = v * full[i]
            A[3:6, j] = np.cross(r, v) * full[i]

    assert st.QP_ROWS - st.Q_WORK == LP_WORK_ROWS
    E = np.zeros((n_rows, n_cols))
    # Force rows in the reboost attitude's LVLH axes (along-track, -orbit normal, nadir), so
    # the push and the sideways force can be priced apart; torque rows in B.
    E[0:3, :m] = np.asarray(model.dcm_BH).T @ A[0:3] / scale[0:3, None]
    E[3:6, :m] = A[3:6] / scale[3:6, None]
    for i in range(n):
        E[st.ROW_TANK + model.tank_idx[i], i] = kg_full[i]

    inertia = np.asarray(model.I_B, dtype=np.float64)
    w = bandwidth_rad_s
    kp = np.diag(inertia) * w * w
    kd = 2.0 * damping * w * np.diag(inertia)
    # Torque limit per axis: what the attitude thrusters can give (half of them at once, a
    # conservative figure) plus the CMG budget.
    att = np.asarray(model.attitude_idx)
    arm = np.abs(model.torque_arm_B[att]) * model.thrust_N[att][:, None]
    torque_limit = 0.5 * arm.sum(axis=0) + budget

    params[st.P_PERIOD] = period
    params[st.P_TICK] = tick_s
    params[st.P_TARGET_DV] = target_dv_mps
    params[st.P_KP : st.P_KP + 3] = kp
    params[st.P_KD : st.P_KD + 3] = kd
    params[st.P_MAX_RATE] = model.max_rate_rad_s
    params[st.P_TORQUE_LIMIT : st.P_TORQUE_LIMIT + 3] = torque_limit
    params[st.P_ATT_LIMIT] = model.max_attitude_error_rad
    # Complete within one minimum impulse bit of the largest translation thruster.
    params[st.P_DV_TOL] = float(np.max(thr[model.translation_idx, mo.T_MIB])) / model.mass_kg
    params[st.P_DCM_BH : st.P_DCM_BH + 9] = np.asarray(model.dcm_BH).ravel()
    params[st.P_INERTIA : st.P_INERTIA + 9] = inertia.ravel()
    params[st.P_ROW_WEIGHT : st.P_ROW_WEIGHT + 6] = row_w
    params[st.P_MAX_ITER] = 4 * n_cols + 20
    params[st.P_ROW_SCALE : st.P_ROW_SCALE + 6] = scale
    params[st.P_ERR_COST : st.P_ERR_COST + 6] = [
        FORCE_ERROR_COST,
        SIDE_FORCE_ERROR_COST,
        SIDE_FORCE_ERROR_COST,
    ] + [FORCE_ERROR_COST * TORQUE_PRIORITY] * 3
    params[st.P_N_ACT] = m
    params[st.P_N_TANKS] = n_tanks
    params[st.P_N_GIMBALS] = n_g
    params[st.P_STOP_CYCLES] = math.ceil(STOP_ARM_S / period)
    params[st.P_RATE_TAU] = RATE_TAU_S
    params[st.P_CMG_BUDGET] = budget
    reserve = np.asarray(model.tank_reserve_kg, dtype=np.float64)
    params[st.P_TANK_ALLOW : st.P_TANK_ALLOW + n_tanks] = model.tank_propellant_kg - reserve
    params[st.P_TANK_RESERVED : st.P_TANK_RESERVED + n_tanks] = reserve > 0.0
    for t in range(n_tanks):
        mine = np.asarray(model.tank_idx) == t
        params[st.P_TANK_GUARD + t] = 2.0 * float(
            np.sum(thr[mine, mo.T_MIB] * thr[mine, mo.T_KG_PER_NS])
        )

    # The LP's error and slack columns (and their costs and bounds) never change: filled here
    # once rather than every cycle.
    fill_lp_columns(
        E,
        qp[st.Q_COST],
        qp[st.Q_LB],
        qp[st.Q_UB],
        n_rows,
        6,
        m,
        params[st.P_ERR_COST : st.P_ERR_COST + 6],
    )

    return Controller(
        thruster_names=tuple(model.thruster_names),
        n=n,
        m=m,
        period_s=period,
        tick_s=tick_s,
        params=params,
        A=A,
        E=E,
        Binv=np.zeros((n_rows, n_rows)),
        qp=qp,
        ints=np.zeros((2, n_cols), np.int64),
        thr=thr,
        mod=np.zeros((n, mo.MOD_COLS)),
        health=np.full(n, HEALTH_NOMINAL, np.int64),
        ctrl=np.zeros(st.CTRL_LEN),
        on_ms=np.zeros(n, np.uint16),
    )
