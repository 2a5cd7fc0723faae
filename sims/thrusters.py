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

All functions are numba kernels (``sims._jit.kernel``): pure, SI units, outputs preallocated by the
caller, no exceptions (status codes / documented fallback values), deterministic.
"""

import math

import numpy as np

from sims._jit import kernel
from sims.constants import G0

# Thruster health codes (int array ``health`` in cycle_impulses).
HEALTH_NOMINAL = 0
HEALTH_FAILED_OFF = 1  # valve never opens: no thrust whatever the command
HEALTH_STUCK_OPEN = 2  # valve always open: steady-state thrust for the whole cycle

# Status codes of cycle_impulses.
CYCLE_OK = 0
CYCLE_BAD_SHAPE = 1  # array shapes disagree with n_sub / n thrusters: nothing written
CYCLE_BAD_PERIOD = 2  # period not > 0 or n_sub < 1: nothing written
CYCLE_UNKNOWN_HEALTH = 3  # some health code unknown: that thruster treated as failed off

# Fixed iteration budget for on_time_for_impulse's bisection (converges to adjacent doubles well
# before this; the loop stops early when the bracket cannot shrink further).
_BISECT_ITERS = 200
# Smallest positive double: lower end of the bisection bracket in the valve-open time T [s].
_SMALLEST_T = 5e-324


@kernel
def _one_minus_exp(x):
    """``1 - exp(-x)`` accurate for small x."""
    return -math.expm1(-x)


@kernel
def _rise_excess(du, tau):
    """``tau (x - (1 - exp(-x)))`` with ``x = du/tau``, du >= 0, tau > 0, without cancellation or
    overflow (tau may be subnormal).

    With ``sum_{k>=2} (-x)^k/k!`` below x = 0.05 (truncated after x^10: relative error < 1e-18),
    ``x + expm1(-x)`` on [0.05, 1) (relative rounding error < 2 eps/x < 1e-14), and
    ``du - tau (1 - exp(-x))`` from x = 1 (relative rounding error < 3 eps).
    """
    x = du / tau
    if x >= 1.0:
        return du - tau * _one_minus_exp(x)
    return tau * _x_minus_one_minus_exp(x)


@kernel
def _x_minus_one_minus_exp(x):
    """``x - (1 - exp(-x)) = sum_{k>=2} (-x)^k/k!`` for 0 <= x < 1 (see ``_rise_excess``)."""
    if x < 0.05:
        # Horner form of x^2/2! - x^3/3! + ... + x^10/10!
        acc = 1.0 / 3628800.0
        acc = 1.0 / 362880.0 - x * acc
        acc = 1.0 / 40320.0 - x * acc
        acc = 1.0 / 5040.0 - x * acc
        acc = 1.0 / 720.0 - x * acc
        acc = 1.0 / 120.0 - x * acc
        acc = 1.0 / 24.0 - x * acc
        acc = 1.0 / 6.0 - x * acc
        acc = 0.5 - x * acc
        return x * x * acc
    return x + math.expm1(-x)


@kernel
def pulse_impulse(
    t_on_s, t_a_s, t_b_s, thrust_N, open_delay_s, close_delay_s, tau_rise_s, tau_tail_s
):
    """Impulse [N s] of one pulse delivered in the time window ``[t_a_s, t_b_s]`` of the cycle.

    Times from the command instant (t = 0). ``t_b_s`` may be ``inf`` (rest of the pulse) and
    ``t_a_s`` may be ``-inf``. Analytic integral of the module's pulse model; windows that
    partition the time axis give impulses that sum to the whole pulse (to rounding).
    Returns 0 for no pulse, an empty window or ``thrust_N <= 0``.
    """
    if not (t_on_s > 0.0) or not (thrust_N > 0.0) or not (t_b_s > t_a_s):
        return 0.0
    t_o = open_delay_s
    t_c = t_on_s + close_delay_s
    if not (t_c > t_o):
        return 0.0
    total = 0.0
    # Valve open: rising thrust on [t_o, t_c].
    a = max(t_a_s, t_o)
    b = min(t_b_s, t_c)
    if b > a:
        ua = a - t_o
        du = b - a
        if tau_rise_s > 0.0:
            # F_ss [du - tau (exp(-ua/tau) - exp(-ub/tau))]
            #   = F_ss [du (1 - e^{-ua/tau}) + tau e^{-ua/tau} (x - (1 - e^{-x}))], x = du/tau:
            # two non-negative terms, so short windows never come out negative by cancellation.
            e_a = math.exp(-ua / tau_rise_s)
            total += thrust_N * (
                du * _one_minus_exp(ua / tau_rise_s) + e_a * _rise_excess(du, tau_rise_s)
            )
        else:
            total += thrust_N * du
    # Valve closed: tail-off from F(t_c) on [t_c, inf).
    if tau_tail_s > 0.0:
        a = max(t_a_s, t_c)
        if t_b_s > a:
            if tau_rise_s > 0.0:
                f_c = thrust_N * _one_minus_exp((t_c - t_o) / tau_rise_s)
            else:
                f_c = thrust_N
            sa = a - t_c
            total += (
                f_c
                * tau_tail_s
                * math.exp(-sa / tau_tail_s)
                * _one_minus_exp((t_b_s - a) / tau_tail_s)
            )
    return total


@kernel
def _impulse_of_open_time(T, thrust_N, tau_rise_s, tau_tail_s):
    """Whole-pulse impulse for valve-open time T > 0 (closed form, see module docstring)."""
    if tau_rise_s > 0.0:
        return thrust_N * (T + (tau_tail_s - tau_rise_s) * _one_minus_exp(T / tau_rise_s))
    return thrust_N * (T + max(tau_tail_s, 0.0))


@kernel
def effective_impulse(t_on_s, thrust_N, open_delay_s, close_delay_s, tau_rise_s, tau_tail_s):
    """Whole-pulse impulse [N s] of a command ``t_on_s`` [s]:
    ``F_ss [T + (tau_tail - tau_rise)(1 - exp(-T/tau_rise))]`` with ``T = t_on + t_cd - t_od``
    (``F_ss (T + tau_tail)`` when ``tau_rise = 0``); 0 when there is no pulse."""
    if not (t_on_s > 0.0) or not (thrust_N > 0.0):
        return 0.0
    T = t_on_s + close_delay_s - open_delay_s
    if not (T > 0.0):
        return 0.0
    return _impulse_of_open_time(T, thrust_N, tau_rise_s, tau_tail_s)


@kernel
def on_time_for_impulse(impulse_Ns, thrust_N, open_delay_s, close_delay_s, tau_rise_s, tau_tail_s):
    """Commanded on-time [s] whose ``effective_impulse`` equals ``impulse_Ns`` [N s].

    Inverts the strictly increasing closed form in the valve-open time T by bisection on the
    bracket ``[max(0, I/F - tau_tail), I/F + tau_rise]`` (``F T - F tau_rise <= I(T) <=
    F T + F tau_tail``), geometric while the bracket spans more than a factor 4, then arithmetic,
    with a fixed budget of iterations (200; ~70 are used at most) that stops when the bracket
    reaches adjacent doubles. Returns ``T + open_delay - close_delay``, clamped below at 0:

    * ``impulse_Ns <= 0`` (or NaN), ``thrust_N <= 0``: 0.
    * Requests at or below what the shortest possible pulse gives return the on-time of no
      pulse (no impulse): 0.0 when ``close_delay > open_delay`` (an infinitesimal command already
      gives ``I(close_delay - open_delay)``), or ``open_delay - close_delay`` (valve-open time
      T = 0) when ``tau_rise = 0`` and the request is ``<= F tau_tail`` (an instantaneous rise
      makes the impulse jump to ``F tau_tail`` as T -> 0+). The controller decides about
      sub-minimum bits (see ``minimum_impulse_bit``).

    No upper clamp: the caller clamps to the control period.
    """
    if not (impulse_Ns > 0.0) or not (thrust_N > 0.0):
        return 0.0
    ratio = impulse_Ns / thrust_N
    lo = max(0.0, ratio - max(tau_tail_s, 0.0))
    hi = ratio + max(tau_rise_s, 0.0)
    T = hi  # the bracket is a single point when tau_rise = tau_tail = 0: T = I/F exactly
    if lo == 0.0:
        lo = _SMALLEST_T
        if _impulse_of_open_time(lo, thrust_N, tau_rise_s, tau_tail_s) >= impulse_Ns:
            T = 0.0  # even the shortest opening delivers the request: no pulse
            hi = lo
    if hi > lo:
        for _ in range(_BISECT_ITERS):
            if hi > 4.0 * lo:
                # geometric phase: halves log(hi/lo), so a root many decades below the top of
                # the bracket (tiny tau_rise) is reached in ~11 steps instead of ~1000
                mid = math.sqrt(lo) * math.sqrt(hi)
            else:
                mid = 0.5 * (lo + hi)
            if not (mid > lo and mid < hi):
                break
            if _impulse_of_open_time(mid, thrust_N, tau_rise_s, tau_tail_s) < impulse_Ns:
                lo = mid
            else:
                hi = mid
        # pick the closer end of the final bracket
        e_lo = impulse_Ns - _impulse_of_open_time(lo, thrust_N, tau_rise_s, tau_tail_s)
        e_hi = _impulse_of_open_time(hi, thrust_N, tau_rise_s, tau_tail_s) - impulse_Ns
        T = lo if e_lo < e_hi else hi
        if T == _SMALLEST_T:
            T = 0.0
    t_on = T + open_delay_s - close_delay_s
    if T == 0.0:
        # no pulse: make sure rounding in t_on + close_delay - open_delay cannot reopen the valve
        for _ in range(8):
            if not (t_on > 0.0) or not (t_on + close_delay_s - open_delay_s > 0.0):
                break
            t_on = np.nextafter(t_on, -np.inf)
    if not (t_on > 0.0):
        return 0.0
    return t_on


@kernel
def minimum_impulse_bit(
    min_on_time_s, thrust_N, open_delay_s, close_delay_s, tau_rise_s, tau_tail_s
):
    """Impulse [N s] of the shortest allowed command: ``effective_impulse(min_on_time_s, ...)``."""
    return effective_impulse(
        min_on_time_s, thrust_N, open_delay_s, close_delay_s, tau_rise_s, tau_tail_s
    )


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
# One control cycle for a set of thrusters
# --------------------------------------------------------------------------------------------


@kernel
def cycle_impulses(
    on_time_s,
    health,
    thrust_N,
    open_delay_s,
    close_delay_s,
    tau_rise_s,
    tau_tail_s,
    period_s,
    n_sub,
    carry_in_N,
    out_impulse,
    out_carry_N,
):
    """Impulse [N s] of each of n thrusters in each of ``n_sub`` equal sub-steps of one cycle.

    ``out_impulse[k, i]`` is thruster i's impulse in ``[k h, (k+1) h]``, ``h = period_s/n_sub``.

    * Nominal: the command ``on_time_s[i]`` is clamped to ``[0, period_s]`` (NaN -> 0) and the
      pulse model integrated analytically over each sub-step.
    * ``HEALTH_FAILED_OFF``: no thrust whatever the command.
    * ``HEALTH_STUCK_OPEN``: ``thrust_N[i]`` for the whole cycle (``thrust_N[i] * h`` per
      sub-step), no rise or tail modelled.
    * Unknown health codes are treated as failed off and the status is CYCLE_UNKNOWN_HEALTH.

    Carry model (impulse conservation): the part of a nominal pulse after ``t = period_s``
    (close delay and tail-off running past the cycle end, or an open delay beyond the period) is
    not lost: it is returned in ``out_carry_N[i]`` [N s] and the caller passes it back as
    ``carry_in_N`` next cycle, where it is added to sub-step 0 — it is impulse already committed
    by the valve, so it is delivered whatever that thruster's health is next cycle. Stuck-open and
    failed-off thrusters carry nothing out. Hence, per thruster,
    ``sum_k out_impulse[k, i] + out_carry_N[i] = effective_impulse(clamped t_on) + carry_in_N[i]``
    for a nominal thruster. Arguments ``thrust_N`` and the delays/time constants are per
    thruster (n,); the argument name ``carry_in_N`` follows the brief but the unit is N s.

    Returns CYCLE_OK, CYCLE_BAD_SHAPE / CYCLE_BAD_PERIOD (outputs untouched) or
    CYCLE_UNKNOWN_HEALTH.
    """
    n = on_time_s.shape[0]
    if (
        health.shape[0] != n
        or thrust_N.shape[0] != n
        or open_delay_s.shape[0] != n
        or close_delay_s.shape[0] != n
        or tau_rise_s.shape[0] != n
        or tau_tail_s.shape[0] != n
        or carry_in_N.shape[0] != n
        or out_carry_N.shape[0] != n
        or out_impulse.shape[0] != n_sub
        or out_impulse.shape[1] != n
    ):
        return CYCLE_BAD_SHAPE
    if not (period_s > 0.0) or n_sub < 1 or not math.isfinite(period_s):
        return CYCLE_BAD_PERIOD
    status = CYCLE_OK
    h = period_s / n_sub
    for i in range(n):
        code = health[i]
        f = thrust_N[i]
        if code == HEALTH_STUCK_OPEN:
            for k in range(n_sub):
                out_impulse[k, i] = f * h
            out_carry_N[i] = 0.0
        elif code == HEALTH_NOMINAL:
            t_on = on_time_s[i]
            if not (t_on > 0.0):
                t_on = 0.0
            elif t_on > period_s:
                t_on = period_s
            t_od = open_delay_s[i]
            t_cd = close_delay_s[i]
            tr = tau_rise_s[i]
            tt = tau_tail_s[i]
            for k in range(n_sub):
                # sub-step 0 starts at -inf so nothing is lost even for a (non-physical)
                # negative open delay
                t_a = -math.inf if k == 0 else k * h
                t_b = period_s if k == n_sub - 1 else (k + 1) * h
                out_impulse[k, i] = pulse_impulse(t_on, t_a, t_b, f, t_od, t_cd, tr, tt)
            out_carry_N[i] = pulse_impulse(t_on, period_s, math.inf, f, t_od, t_cd, tr, tt)
        else:
            if code != HEALTH_FAILED_OFF:
                status = CYCLE_UNKNOWN_HEALTH
            for k in range(n_sub):
                out_impulse[k, i] = 0.0
            out_carry_N[i] = 0.0
        out_impulse[0, i] += carry_in_N[i]
    return status
