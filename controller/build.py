"""The thin, validated Python layer: build the controller's arrays once from a stack model.

Everything here runs once, before the first cycle; :func:`controller.cycle.step` then runs every
cycle on the arrays built here without allocating.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from controller import cycle as st
from controller import modulation as mo
from controller.allocation import ALLOC_WORK_ROWS, AT_LOWER, FREE, normal_matrix
from sims.thrusters import HEALTH_NOMINAL, effective_impulse

#: Attitude-hold bandwidth [rad/s] and damping ratio of the PD law (per axis, Kp = I w^2,
#: Kd = 2 zeta w I). 0.05 rad/s (a 2-minute period) is far below the 2 Hz control rate and far
#: above the orbit rate, and keeps pulses of the attitude thrusters sparse.
BANDWIDTH_RAD_S = 0.05
DAMPING = 0.9
#: Allocation: torque errors cost more than force errors (attitude first when saturated).
TORQUE_PRIORITY = 1e3
#: Lever arm [m] that puts a torque error in the same units as a force error.
LEVER_REF_M = 10.0
#: Quadratic effort cost of every actuator, in units of its full range.
EFFORT_REG = 1e-6


@dataclass(eq=False)
class Controller:
    """The controller's arrays for one stack and one burn. ``step`` runs one cycle."""

    thruster_names: tuple[str, ...]
    n: int
    m: int
    period_s: float
    tick_s: float
    params: np.ndarray
    A: np.ndarray
    H: np.ndarray
    L: np.ndarray
    qp: np.ndarray
    ints: np.ndarray
    thr: np.ndarray
    mod: np.ndarray
    health: np.ndarray
    ctrl: np.ndarray
    on_ms: np.ndarray
    sens: np.ndarray = field(default_factory=lambda: np.zeros(st.SENS_LEN))

    def step(self) -> int:
        """One cycle on ``self.sens``; on-times land in ``self.on_ms``. Returns the status."""
        return st.step(self.sens, self.params, self.A, self.H, self.L, self.qp, self.ints,
                       self.thr, self.mod, self.health, self.ctrl, self.on_ms)

    @property
    def complete(self) -> bool:
        return self.ctrl[st.C_COMPLETE] > 0.5

    @property
    def attitude_error_rad(self) -> float:
        return float(self.ctrl[st.C_ATT_ERR])

    @property
    def dv_along_mps(self) -> float:
        return float(self.ctrl[st.C_DV_ALONG])


def build_controller(model, target_dv_mps: float, *, tick_s: float = 1e-3,
                     bandwidth_rad_s: float = BANDWIDTH_RAD_S, damping: float = DAMPING,
                     use_cmg: bool = True) -> Controller:
    """Controller arrays for ``model`` (a :class:`thruster_hil.config.StackModel`) and a target
    along-track delta-v [m/s]."""
    if not (math.isfinite(target_dv_mps) and target_dv_mps > 0.0):
        raise ValueError(f"target_dv_mps: expected a finite number > 0, got {target_dv_mps!r}")
    period = float(model.control_period_s)
    n = len(model.thruster_names)
    budget = float(model.cmg_torque_budget_Nm) if use_cmg else 0.0
    n_cmg = 3 if budget > 0.0 else 0
    m = n + n_cmg

    thr = np.zeros((n, mo.THR_COLS))
    min_on = np.ceil(np.asarray(model.min_on_time_s) / tick_s - 1e-9) * tick_s
    for i in range(n):
        args = (model.thrust_N[i], model.open_delay_s[i], model.close_delay_s[i],
                model.rise_time_s[i], model.tail_off_s[i])
        thr[i, mo.T_THRUST:mo.T_TAU_TAIL + 1] = args
        thr[i, mo.T_MIN_ON] = min_on[i]
        thr[i, mo.T_MIB] = effective_impulse(min_on[i], *args)
        thr[i, mo.T_MAX_IMPULSE] = model.thrust_N[i] * period
    thr[model.translation_idx, mo.T_TRANSLATION] = 1.0

    # Allocation matrix in impulse units per unit of each actuator's range.
    A = np.zeros((6, m))
    full = thr[:, mo.T_MAX_IMPULSE]
    A[0:3, :n] = (model.u_T_B * full[:, None]).T
    A[3:6, :n] = (model.torque_arm_B * full[:, None]).T
    for k in range(n_cmg):
        A[3 + k, n + k] = budget * period
    f_ref = float(np.sum(model.thrust_N[model.translation_idx])) * period
    row_w = np.array([1.0 / f_ref**2] * 3 + [TORQUE_PRIORITY / (f_ref * LEVER_REF_M) ** 2] * 3)
    H = np.empty((m, m))
    normal_matrix(A, row_w, np.full(m, EFFORT_REG), H)

    qp = np.zeros((st.QP_ROWS, m))
    qp[st.Q_UB, :n] = 1.0
    qp[st.Q_LB, n:] = -1.0
    qp[st.Q_UB, n:] = 1.0
    ints = np.zeros((2, m), np.int64)
    ints[st.I_WSET, :n] = AT_LOWER
    ints[st.I_WSET, n:] = FREE
    assert st.QP_ROWS - st.Q_WORK >= ALLOC_WORK_ROWS

    inertia = np.asarray(model.I_B, dtype=np.float64)
    w = bandwidth_rad_s
    kp = np.diag(inertia) * w * w
    kd = 2.0 * damping * w * np.diag(inertia)
    # Torque limit per axis: what the attitude thrusters can give (half of them at once, a
    # conservative figure) plus the CMG budget.
    att = np.asarray(model.attitude_idx)
    arm = np.abs(model.torque_arm_B[att]) * model.thrust_N[att][:, None]
    torque_limit = 0.5 * arm.sum(axis=0) + budget

    params = np.zeros(st.PARAM_LEN)
    params[st.P_PERIOD] = period
    params[st.P_TICK] = tick_s
    params[st.P_TARGET_DV] = target_dv_mps
    params[st.P_KP:st.P_KP + 3] = kp
    params[st.P_KD:st.P_KD + 3] = kd
    params[st.P_MAX_RATE] = model.max_rate_rad_s
    params[st.P_TORQUE_LIMIT:st.P_TORQUE_LIMIT + 3] = torque_limit
    params[st.P_ATT_LIMIT] = model.max_attitude_error_rad
    # Complete within one minimum impulse bit of the largest translation thruster.
    params[st.P_DV_TOL] = float(np.max(thr[model.translation_idx, mo.T_MIB])) / model.mass_kg
    params[st.P_DCM_BH:st.P_DCM_BH + 9] = np.asarray(model.dcm_BH).ravel()
    params[st.P_INERTIA:st.P_INERTIA + 9] = inertia.ravel()
    params[st.P_ROW_WEIGHT:st.P_ROW_WEIGHT + 6] = row_w
    params[st.P_MAX_ITER] = 4 * m + 10

    return Controller(
        thruster_names=tuple(model.thruster_names), n=n, m=m, period_s=period, tick_s=tick_s,
        params=params, A=A, H=H, L=np.zeros((m, m)), qp=qp, ints=ints, thr=thr,
        mod=np.zeros((n, mo.MOD_COLS)), health=np.full(n, HEALTH_NOMINAL, np.int64),
        ctrl=np.zeros(st.CTRL_LEN), on_ms=np.zeros(n, np.uint16),
    )
