"""Thruster physics: pulse impulse with valve delays and rise/tail-off, blowdown, Isp, health.

Pulse model (one command per control cycle, commanded at t = 0 of the cycle, on-time ``t_on``):

* ``t_on <= 0`` (or NaN): no pulse at all.
* The valve opens at ``t_o = open_delay`` and closes at ``t_c = t_on + close_delay``. If
  ``t_c <= t_o`` the valve never opens and there is no impulse.
* While open, thrust rises first-order: ``F(t) = F_ss (1 - exp(-(t - t_o)/tau_rise))``.
* After closing it tails off: ``F(t) = F(t_c) exp(-(t - t_c)/tau_tail)``.
* ``tau = 0`` means an instantaneous step (handled without dividing by zero).

With ``T = t_c - t_o`` the whole-pulse impulse is (integrating the two pieces by hand)

    I(T) = F_ss [T + (tau_tail - tau_rise)(1 - exp(-T/tau_rise))],

strictly increasing in T, so in ``t_on`` for ``t_on > open_delay - close_delay``.

All functions are numba kernels (``thruster_hil.core.jit.kernel``): pure, SI units, outputs
preallocated by the caller, no exceptions (status codes / documented fallback values),
deterministic.
"""

import math

import numpy as np

from thruster_hil.core.constants import G0

# The pulse model and the health codes live in the core (the controller uses them too); they are
# re-exported here because the plant's thruster physics is where readers look for them.
from thruster_hil.core.health import HEALTH_FAILED_OFF, HEALTH_NOMINAL, HEALTH_STUCK_OPEN
from thruster_hil.core.jit import kernel
from thruster_hil.core.layout import Layout
from thruster_hil.core.pulses import (  # noqa: F401
    _one_minus_exp,
    attributed_impulse,
    effective_impulse,
    gimbal_direction,
    minimum_impulse_bit,
    on_time_for_impulse,
    pulse_impulse,
)

# Status codes of valve_cycle.
CYCLE_OK = 0
CYCLE_BAD_SHAPE = 1  # array shapes disagree with n_sub / n thrusters: nothing written
CYCLE_BAD_PERIOD = 2  # period not > 0 or n_sub < 1: nothing written
CYCLE_UNKNOWN_HEALTH = 3  # some health code unknown: that thruster treated as failed off


# --------------------------------------------------------------------------------------------
# Feed pressure, thrust and Isp
# --------------------------------------------------------------------------------------------


@kernel
def blowdown_pressure_Pa(
    p0_Pa, gas_volume0_m3, propellant_used_kg, propellant_density_kg_m3, polytropic_n
):
    """Blowdown tank pressure [Pa]: ``p0 (V0 / (V0 + used/rho))^n``.

    The pressurant expands polytropically into the ullage freed by the used propellant:
    ``n = 1`` isothermal (slow use), ``n = 1.4`` adiabatic (nitrogen/helium-ish, fast use).
    Negative ``propellant_used_kg`` is treated as 0. Returns NaN for a non-physical tank
    (``gas_volume0_m3 <= 0`` or ``propellant_density_kg_m3 <= 0``); the config loader rejects
    those before they get here. The caller stops thrusting when the propellant is gone.
    """
    if not (gas_volume0_m3 > 0.0) or not (propellant_density_kg_m3 > 0.0):
        return math.nan
    used = max(propellant_used_kg, 0.0)
    v = gas_volume0_m3 + used / propellant_density_kg_m3
    return p0_Pa * (gas_volume0_m3 / v) ** polytropic_n


@kernel
def regulated_pressure_Pa(p_reg_Pa, propellant_used_kg, propellant_load_kg):
    """Regulated feed: ``p_reg`` until the propellant load is used up, then 0 [Pa]."""
    if propellant_used_kg < propellant_load_kg:
        return p_reg_Pa
    return 0.0


@kernel
def thrust_isp_at_pressure(thrust_ref_N, isp_ref_s, p_ref_Pa, p_Pa, thrust_exponent, isp_exponent):
    """Thrust [N] and Isp [s] at feed pressure p: ``F_ref (p/p_ref)^a`` and ``Isp_ref (p/p_ref)^b``.

    The power laws are a modelling assumption, not a cited law: to first order chamber pressure
    (hence thrust) follows feed pressure, so ``a ~ 1``, while Isp changes only weakly with chamber
    pressure, ``b ~ 0.03 - 0.1`` for hydrazine monopropellant / MMH-NTO thrusters over a typical
    4:1 blowdown. Fit ``a``, ``b`` to the thruster's acceptance-test data (vendor data sheets give
    thrust and Isp at beginning and end of blowdown). ``p_Pa <= 0`` (or ``p_ref_Pa <= 0``, or NaN)
    returns ``(0.0, 0.0)``: no flow, no thrust (``propellant_used_kg`` maps Isp 0 to no use).
    """
    if not (p_Pa > 0.0) or not (p_ref_Pa > 0.0):
        return 0.0, 0.0
    ratio = p_Pa / p_ref_Pa
    return thrust_ref_N * ratio**thrust_exponent, isp_ref_s * ratio**isp_exponent


@kernel
def propellant_used_kg(impulse_Ns, isp_s):
    """Propellant mass [kg] for ``impulse_Ns`` [N s] at ``isp_s`` [s]: ``I / (Isp g0)``.

    ``isp_s <= 0`` (no flow, see ``thrust_isp_at_pressure``) returns 0.
    """
    if not (isp_s > 0.0):
        return 0.0
    return impulse_Ns / (isp_s * G0)


# --------------------------------------------------------------------------------------------
# A set of valves over consecutive control cycles
# --------------------------------------------------------------------------------------------
#
# The valve follows its command with a transport delay, ``open_delay`` on a rising command edge
# and ``close_delay`` on a falling one, and the thrust follows the valve through a first-order
# lag (``tau_rise`` while open, ``tau_tail`` while closed). The command of one cycle is "on for
# ``t_on`` from the start of the cycle". Consecutive commands that cover a whole cycle and start
# the next are one continuous command: the valve simply stays open, as a real solenoid does when
# its drive drops for less than its close delay. Likewise a command gap shorter than
# ``close_delay - open_delay`` is swallowed (the close edge would come after the next open edge).
# State carried from one cycle to the next, per thruster (``valve_state[i, :]``):

#: Pending valve edges carried into the next cycle.
MAX_PENDING_EDGES = 2
VALVE_STATE = Layout(
    "valve state columns",
    [
        ("VS_THRUST", 1),  # thrust level at the start of the cycle [N]
        ("VS_OPEN", 1),  # valve open at the start of the cycle (1.0 / 0.0)
        ("VS_CMD_ON", 1),  # the previous command was still on at the end of its cycle (1.0 / 0.0)
        # pending valve edges, [time in this cycle s, +1 open / -1 close] each; time NaN: none
        ("VS_EDGE_T", 2 * MAX_PENDING_EDGES),
    ],
)
VS_THRUST, VS_OPEN, VS_CMD_ON, VS_EDGE_T = VALVE_STATE.offsets
VALVE_STATE_LEN = VALVE_STATE.length

_OPEN = 1.0
_CLOSE = -1.0


@kernel
def _segment(f0, is_open, f_ss, tau_rise_s, tau_tail_s, dt):
    """(impulse [N s], thrust at the end [N]) over ``dt`` with the valve held open or closed."""
    if dt <= 0.0:
        return 0.0, f0
    if is_open:
        if tau_rise_s <= 0.0:
            return f_ss * dt, f_ss
        x = dt / tau_rise_s
        if f0 == f_ss and math.isfinite(f_ss) and tau_rise_s < math.inf and x == x:
            # At steady thrust (most of a burn) f0 - f_ss is a zero and the exponential terms
            # are finite and non-negative: they add a zero, whose bits are those of + 0.0.
            return f_ss * dt + 0.0, f_ss + 0.0
        e = math.exp(-x)
        return f_ss * dt + (f0 - f_ss) * tau_rise_s * _one_minus_exp(x), f_ss + (f0 - f_ss) * e
    if tau_tail_s <= 0.0:
        return 0.0, 0.0
    x = dt / tau_tail_s
    if f0 == 0.0 and tau_tail_s < math.inf and x == x:
        # A closed, quiet valve (most of them, most of the time): zero times finite,
        # non-negative factors is that same zero.
        return f0, f0
    return f0 * tau_tail_s * _one_minus_exp(x), f0 * math.exp(-x)


@kernel
def valve_cycle(
    on_time_s,
    health,
    thrust_N,
    open_delay_s,
    close_delay_s,
    tau_rise_s,
    tau_tail_s,
    period_s,
    valve_state,
    out_impulse,
):
    """Impulse [N s] of each of n thrusters in each of n_sub equal sub-steps of one cycle.

    ``on_time_s`` (n) is the command (clamped to [0, period_s]; NaN is 0), ``health`` (n) int,
    ``thrust_N`` (n) the steady-state thrust at the present feed pressure. ``valve_state``
    (n, VALVE_STATE_LEN) carries the valves and thrust levels from the previous cycle (all zeros
    with the edge columns NaN at rest: :func:`valve_state_at_rest`) and is updated in place.
    ``out_impulse`` is (n_sub, n). Impulse is never lost between cycles: a tail or a close delay
    running past the cycle end is delivered in the next cycle from the carried state.

    Health: HEALTH_FAILED_OFF closes the valve at once (the thrust then tails off);
    HEALTH_STUCK_OPEN holds it open whatever the command. Unknown codes count as failed off and
    return CYCLE_UNKNOWN_HEALTH.
    """
    n = on_time_s.shape[0]
    n_sub = out_impulse.shape[0]
    if (
        health.shape[0] != n
        or thrust_N.shape[0] != n
        or open_delay_s.shape[0] != n
        or close_delay_s.shape[0] != n
        or tau_rise_s.shape[0] != n
        or tau_tail_s.shape[0] != n
        or valve_state.shape[0] != n
        or valve_state.shape[1] != VALVE_STATE_LEN
        or out_impulse.shape[1] != n
    ):
        return CYCLE_BAD_SHAPE
    if not (period_s > 0.0) or n_sub < 1 or not math.isfinite(period_s):
        return CYCLE_BAD_PERIOD
    status = CYCLE_OK
    h = period_s / n_sub
    et = np.empty(4)  # edge times, command order
    ek = np.empty(4)  # edge kinds
    for i in range(n):
        f_ss = thrust_N[i]
        tr = tau_rise_s[i]
        tt = tau_tail_s[i]
        st = valve_state[i]
        code = health[i]
        ne = 0
        if code == HEALTH_NOMINAL:
            t_on = on_time_s[i]
            if not (t_on > 0.0):
                t_on = 0.0
            elif t_on > period_s:
                t_on = period_s
            for p in range(2):
                if st[VS_EDGE_T + 2 * p] == st[VS_EDGE_T + 2 * p]:
                    et[ne] = st[VS_EDGE_T + 2 * p]
                    ek[ne] = st[VS_EDGE_T + 2 * p + 1]
                    ne += 1
            prev_on = st[VS_CMD_ON] > 0.5
            if t_on > 0.0 and not prev_on:
                et[ne] = open_delay_s[i]
                ek[ne] = _OPEN
                ne += 1
            if t_on == 0.0 and prev_on:
                et[ne] = close_delay_s[i]
                ek[ne] = _CLOSE
                ne += 1
            if 0.0 < t_on < period_s:
                et[ne] = t_on + close_delay_s[i]
                ek[ne] = _CLOSE
                ne += 1
            st[VS_CMD_ON] = 1.0 if t_on >= period_s else 0.0
            # An edge that would come no later than the one before it (a gap or a pulse shorter
            # than the delay difference) cancels with it: the valve never moves.
            kept = 0
            for e in range(ne):
                if kept > 0 and ek[e] != ek[kept - 1] and et[e] <= et[kept - 1]:
                    kept -= 1
                else:
                    et[kept] = et[e]
                    ek[kept] = ek[e]
                    kept += 1
            ne = kept
        else:
            if code != HEALTH_FAILED_OFF and code != HEALTH_STUCK_OPEN:
                status = CYCLE_UNKNOWN_HEALTH
            st[VS_OPEN] = 1.0 if code == HEALTH_STUCK_OPEN else 0.0
            st[VS_CMD_ON] = 0.0
        f = st[VS_THRUST]
        is_open = st[VS_OPEN] > 0.5
        e = 0
        for k in range(n_sub):
            a = k * h
            b = period_s if k == n_sub - 1 else (k + 1) * h
            total = 0.0
            while e < ne and et[e] <= b:
                imp, f = _segment(f, is_open, f_ss, tr, tt, et[e] - a)
                total += imp
                a = max(a, et[e])
                is_open = ek[e] == _OPEN
                e += 1
            imp, f = _segment(f, is_open, f_ss, tr, tt, b - a)
            out_impulse[k, i] = total + imp
        st[VS_THRUST] = f
        st[VS_OPEN] = 1.0 if is_open else 0.0
        for p in range(2):
            if e < ne:
                st[VS_EDGE_T + 2 * p] = et[e] - period_s
                st[VS_EDGE_T + 2 * p + 1] = ek[e]
                e += 1
            else:
                st[VS_EDGE_T + 2 * p] = math.nan
                st[VS_EDGE_T + 2 * p + 1] = 0.0
    return status


def valve_state_at_rest(n: int) -> np.ndarray:
    """A (n, VALVE_STATE_LEN) valve state: valves closed, no thrust, no pending edge."""
    state = np.zeros((n, VALVE_STATE_LEN))
    state[:, VS_EDGE_T] = math.nan
    state[:, VS_EDGE_T + 2] = math.nan
    return state


@kernel
def feed_update(
    impulse_Ns,
    isp_s,
    tank_idx,
    tank_load_kg,
    tank_blowdown,
    tank_p0_Pa,
    tank_gas_volume_m3,
    tank_density_kg_m3,
    tank_polytropic_n,
    thrust_ref_N,
    isp_ref_s,
    thrust_exponent,
    isp_exponent,
    tank_used_kg,
    out_thrust_N,
    out_isp_s,
):
    """Draw a cycle's propellant from the tanks, then the next cycle's thrust and Isp.

    ``impulse_Ns`` (n_sub, n) is what each thruster delivered at its present Isp ``isp_s`` (n);
    the propellant ``I / (Isp g0)`` is added to ``tank_used_kg`` (n_tanks) of each thruster's
    tank. Each tank's pressure follows :func:`blowdown_pressure_Pa` or
    :func:`regulated_pressure_Pa`, and each thruster's thrust and Isp follow
    :func:`thrust_isp_at_pressure` against its tank's initial pressure (the exponents are 0 on a
    regulated tank). An empty tank gives no thrust. Writes out_thrust_N and out_isp_s (n).
    """
    n = impulse_Ns.shape[1]
    for i in range(n):
        total = 0.0
        for k in range(impulse_Ns.shape[0]):
            total += impulse_Ns[k, i]
        tank_used_kg[tank_idx[i]] += propellant_used_kg(total, isp_s[i])
    # Tank by tank: the pressure once per tank, and (p/p0)^a once per run of thrusters with
    # the same exponent, instead of three powers per thruster. Equal inputs give equal bits, so
    # the results are :func:`thrust_isp_at_pressure`'s (exponents +0.0 and -0.0 both give 1.0).
    for t in range(tank_used_kg.shape[0]):
        used = tank_used_kg[t]
        if used >= tank_load_kg[t]:
            p = 0.0
        elif tank_blowdown[t]:
            p = blowdown_pressure_Pa(
                tank_p0_Pa[t],
                tank_gas_volume_m3[t],
                used,
                tank_density_kg_m3[t],
                tank_polytropic_n[t],
            )
        else:
            p = tank_p0_Pa[t]
        flow = p > 0.0 and tank_p0_Pa[t] > 0.0
        ratio = p / tank_p0_Pa[t] if flow else 0.0
        a_last = math.nan
        pow_a = 0.0
        b_last = math.nan
        pow_b = 0.0
        for i in range(n):
            if tank_idx[i] != t:
                continue
            if not flow:  # no flow, no thrust (thrust_isp_at_pressure's (0.0, 0.0))
                out_thrust_N[i] = 0.0
                out_isp_s[i] = isp_ref_s[i]
                continue
            if not thrust_exponent[i] == a_last:
                a_last = thrust_exponent[i]
                pow_a = ratio**a_last
            if not isp_exponent[i] == b_last:
                b_last = isp_exponent[i]
                pow_b = ratio**b_last
            isp = isp_ref_s[i] * pow_b
            out_thrust_N[i] = thrust_ref_N[i] * pow_a
            out_isp_s[i] = isp if isp > 0.0 else isp_ref_s[i]


# --------------------------------------------------------------------------------------------
# A two-axis gimbal
# --------------------------------------------------------------------------------------------
